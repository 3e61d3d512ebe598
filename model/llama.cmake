# The Llama family (Llama 2/3, Mistral, Qwen2) and its Hugging Face import/export.
target_sources(ftrain_model PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/llama.cpp
  ${CMAKE_CURRENT_LIST_DIR}/llama_checkpoint.cpp)
