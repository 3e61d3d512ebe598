# Activation checkpointing (model/activation_checkpoint.h) on tiny models, one process.
ftrain_unit_test(test_activation_checkpoint SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_activation_checkpoint.cpp
                 LIBS ftrain_model)
