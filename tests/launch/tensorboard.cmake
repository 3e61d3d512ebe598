# The TensorBoard event-file writer: framing and CRCs in one process, and a 2-rank run's
# event files read back by the tensorboard package against its metrics.jsonl.
ftrain_unit_test(test_tensorboard SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tensorboard.cpp LIBS ftrain_tensorboard)
ftrain_python_test(test_tensorboard_run SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_tensorboard.py LABELS mpi TIMEOUT 600)
