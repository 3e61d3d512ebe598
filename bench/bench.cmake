# Benchmarks: speed is measured here and reported (bench/*.sh), never asserted in tests.

# ftrain-bench-checkpoint: sharded checkpoint save and load against a raw write of the
# same bytes on the same disk (bench/checkpoint.sh, docs/checkpoint-bandwidth.md).
add_executable(ftrain-bench-checkpoint ${CMAKE_CURRENT_LIST_DIR}/checkpoint_bandwidth.cpp)
target_link_libraries(ftrain-bench-checkpoint PRIVATE ftrain_launch Boost::program_options)
set_target_properties(ftrain-bench-checkpoint PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})

# Smoke test: tiny sizes under mpirun; checks the tables and the checkpoint, no timing.
ftrain_python_test(test_checkpoint_bandwidth SCRIPT ${PROJECT_SOURCE_DIR}/tests/bench/test_checkpoint_bandwidth.py
                   LABELS mpi TIMEOUT 300)
# ctest has no build step, so say what the script runs.
set_tests_properties(test_checkpoint_bandwidth PROPERTIES REQUIRED_FILES "$<TARGET_FILE:ftrain-bench-checkpoint>")

# ftrain-bench-loader: the training data loader alone, in tokens/s (bench/compare.py).
add_executable(ftrain-bench-loader ${CMAKE_CURRENT_LIST_DIR}/loader_throughput.cpp)
target_link_libraries(ftrain-bench-loader PRIVATE ftrain_data Boost::program_options nlohmann_json::nlohmann_json)
set_target_properties(ftrain-bench-loader PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})

# Smoke test of bench/compare.py on a tiny GPT-2: every side and table, the same first
# loss on every side; no timing.
ftrain_python_test(test_compare SCRIPT ${PROJECT_SOURCE_DIR}/tests/bench/test_compare.py TIMEOUT 900)
set_tests_properties(test_compare PROPERTIES REQUIRED_FILES
                     "$<TARGET_FILE:ftrain>;$<TARGET_FILE:ftrain-bench-loader>;$<TARGET_FILE:ftrain-bench-checkpoint>")

# Smoke test of bench/overlap.py on a tiny GPT-2 under mpirun: both sides of two ZeRO
# stages run, send the same bytes and train alike; no timing.
ftrain_python_test(test_overlap SCRIPT ${PROJECT_SOURCE_DIR}/tests/bench/test_overlap.py LABELS mpi TIMEOUT 300)
set_tests_properties(test_overlap PROPERTIES REQUIRED_FILES "$<TARGET_FILE:ftrain>")
