# The TensorBoard event-file writer: framing and CRCs in one process.
ftrain_unit_test(test_tensorboard SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tensorboard.cpp LIBS ftrain_tensorboard)
