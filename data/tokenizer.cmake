# The tokenizers (byte-level and SentencePiece-style BPE, WordPiece) and load_tokenizer.
# Deliberately free of LibTorch so that ftrain-prep and its tests link it without the
# training stack. ICU supplies the Unicode data of BERT's normalizer.
if(NOT TARGET ICU::uc)
  find_package(ICU QUIET COMPONENTS uc)
  ftrain_require(ICU_FOUND "ICU (Unicode data for the WordPiece tokenizer)" "apt-get install libicu-dev")
endif()

add_library(ftrain_tokenizer STATIC
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cpp
  ${CMAKE_CURRENT_LIST_DIR}/bpe_tokenizer.cpp
  ${CMAKE_CURRENT_LIST_DIR}/wordpiece_tokenizer.cpp)
target_link_libraries(ftrain_tokenizer
  PUBLIC ftrain_flags nlohmann_json::nlohmann_json
  PRIVATE PkgConfig::PCRE2 ICU::uc)
