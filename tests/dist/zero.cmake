# ZeRO stages 1-3 (dist/zero.h) under mpirun, against an unsharded reference trained on
# every rank's batches at once.
ftrain_unit_test(test_zero SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_zero.cpp LIBS ftrain_dist ftrain_model)
set(_zero $<TARGET_FILE:test_zero>)
ftrain_mpi_test(test_zero_np2 NP 2 TIMEOUT 300 COMMAND ${_zero})
ftrain_mpi_test(test_zero_np4 NP 4 TIMEOUT 600 COMMAND ${_zero})
