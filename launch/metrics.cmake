# Evaluation metrics are plain counting code without LibTorch: a library of their own
# lets their tests and tools build without the rest of launch/.
add_library(ftrain_metrics STATIC ${CMAKE_CURRENT_SOURCE_DIR}/metrics.cpp)
target_link_libraries(ftrain_metrics PUBLIC ftrain_flags)
target_link_libraries(ftrain_launch PUBLIC ftrain_metrics)
