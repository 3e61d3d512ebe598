# model/dropout.h: rates, scaling, independence, seeding and the gradient, one process.
ftrain_unit_test(test_dropout SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_dropout.cpp LIBS ftrain_model)
