# Tensor parallelism (dist/tensor_parallel.h) under mpirun: every rank of the world is one
# tensor-parallel group of 2 or 4, checked against an unsharded copy of the same model.

ftrain_unit_test(test_tensor_parallel SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tensor_parallel.cpp
                 LIBS ftrain_tensor_parallel)
set(_tensor_parallel $<TARGET_FILE:test_tensor_parallel>)
ftrain_mpi_test(test_tensor_parallel_np2 NP 2 TIMEOUT 120 COMMAND ${_tensor_parallel})
ftrain_mpi_test(test_tensor_parallel_np4 NP 4 TIMEOUT 180 COMMAND ${_tensor_parallel})

# Sharded loading (dist::load_tensor_parallel): each rank's parts equal the whole model
# split after loading; broken files are refused naming file and tensor.
ftrain_unit_test(test_tensor_parallel_load SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tensor_parallel_load.cpp
                 LIBS ftrain_tensor_parallel)
set(_tensor_parallel_load $<TARGET_FILE:test_tensor_parallel_load>)
ftrain_mpi_test(test_tensor_parallel_load_np2 NP 2 TIMEOUT 120 COMMAND ${_tensor_parallel_load})
ftrain_mpi_test(test_tensor_parallel_load_np4 NP 4 TIMEOUT 180 COMMAND ${_tensor_parallel_load})

# Peak memory of the split read against the whole one, and ftrain's exit on broken files.
add_executable(tensor_parallel_load_memory ${CMAKE_CURRENT_LIST_DIR}/tensor_parallel_load_memory.cpp)
target_link_libraries(tensor_parallel_load_memory PRIVATE ftrain_tensor_parallel)
set_target_properties(tensor_parallel_load_memory PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
ftrain_python_test(test_tensor_parallel_load_memory SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_tensor_parallel_load.py
                   LABELS mpi TIMEOUT 600)
set_tests_properties(test_tensor_parallel_load_memory PROPERTIES REQUIRED_FILES
  "$<TARGET_FILE:tensor_parallel_load_memory>;$<TARGET_FILE:ftrain>;$<TARGET_FILE:ftrain-prep>")
