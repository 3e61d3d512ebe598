# ftrain-sweep: a tiny local sweep, its report, and the analytic model against it.
ftrain_python_test(test_sweep SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/test_sweep.py LABELS mpi TIMEOUT 900)
# The script runs the programs; ctest has no build step, so say what it needs.
set_tests_properties(test_sweep PROPERTIES
  REQUIRED_FILES "$<TARGET_FILE:ftrain>;$<TARGET_FILE:ftrain-prep>;${PROJECT_BINARY_DIR}/ftrain-sweep")
