# ftrain-supervise against a fake command, then restarting ftrain on 2 ranks.
ftrain_python_test(test_supervise SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/test_supervise.py LABELS mpi TIMEOUT 900)
# The script runs the programs; ctest has no build step, so say what it needs.
set_tests_properties(test_supervise PROPERTIES
  REQUIRED_FILES "$<TARGET_FILE:ftrain-supervise>;$<TARGET_FILE:ftrain>;$<TARGET_FILE:ftrain-prep>")
