# The byte-level BPE tokenizer. Deliberately free of LibTorch so that ftrain-prep and
# its tests link it without the training stack.
add_library(ftrain_tokenizer STATIC ${CMAKE_CURRENT_LIST_DIR}/bpe_tokenizer.cpp)
target_link_libraries(ftrain_tokenizer
  PUBLIC ftrain_flags
  PRIVATE nlohmann_json::nlohmann_json PkgConfig::PCRE2)
