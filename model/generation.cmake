# Text generation: the KV cache, the next-token distribution, sampling and the decoding loop.
target_sources(ftrain_model PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/generation.cpp)
