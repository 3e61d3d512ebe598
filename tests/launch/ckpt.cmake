# ftrain-ckpt against runs of the tiny GPT-2 and a BERT classifier under mpirun.
ftrain_python_test(test_ckpt_tool SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/test_ckpt_tool.py LABELS mpi TIMEOUT 900)
# The script runs the tool; ctest has no build step, so say what it needs.
set_tests_properties(test_ckpt_tool PROPERTIES REQUIRED_FILES "$<TARGET_FILE:ftrain-ckpt>")
