# BpeTokenizer: unit tests, and parity with Hugging Face `tokenizers` through bpe_encode.
ftrain_unit_test(test_bpe_tokenizer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bpe_tokenizer.cpp
  LIBS ftrain_tokenizer)

add_executable(bpe_encode ${CMAKE_CURRENT_LIST_DIR}/bpe_encode.cpp)
target_link_libraries(bpe_encode PRIVATE ftrain_tokenizer ftrain_flags nlohmann_json::nlohmann_json)

ftrain_python_test(test_bpe_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_bpe_parity.py)
