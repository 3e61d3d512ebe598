# Sequence and token classifiers over any supported family.
target_sources(ftrain_model PRIVATE ${CMAKE_CURRENT_LIST_DIR}/classifier.cpp)
