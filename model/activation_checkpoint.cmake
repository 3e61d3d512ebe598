# Activation checkpointing of transformer blocks through the models' block runners.
target_sources(ftrain_model PRIVATE ${CMAKE_CURRENT_LIST_DIR}/activation_checkpoint.cpp)
