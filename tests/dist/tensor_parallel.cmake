# Tensor parallelism (dist/tensor_parallel.h) under mpirun: every rank of the world is one
# tensor-parallel group of 2 or 4, checked against an unsharded copy of the same model.

ftrain_unit_test(test_tensor_parallel SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tensor_parallel.cpp
                 LIBS ftrain_tensor_parallel)
set(_tensor_parallel $<TARGET_FILE:test_tensor_parallel>)
ftrain_mpi_test(test_tensor_parallel_np2 NP 2 TIMEOUT 120 COMMAND ${_tensor_parallel})
ftrain_mpi_test(test_tensor_parallel_np4 NP 4 TIMEOUT 180 COMMAND ${_tensor_parallel})
