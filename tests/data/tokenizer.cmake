# The tokenizers: unit tests worked by hand, and parity with Hugging Face `tokenizers`
# (and transformers' BertTokenizer) through the bpe_encode and tokenize_dump tools.
ftrain_unit_test(test_bpe_tokenizer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bpe_tokenizer.cpp
  LIBS ftrain_tokenizer)

ftrain_unit_test(test_bpe_byte_fallback
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bpe_byte_fallback.cpp
  LIBS ftrain_tokenizer)
ftrain_unit_test(test_tokenizer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tokenizer.cpp
  LIBS ftrain_tokenizer)
ftrain_unit_test(test_wordpiece_tokenizer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_wordpiece_tokenizer.cpp
  LIBS ftrain_tokenizer)

add_executable(bpe_encode ${CMAKE_CURRENT_LIST_DIR}/bpe_encode.cpp)
target_link_libraries(bpe_encode PRIVATE ftrain_tokenizer ftrain_flags nlohmann_json::nlohmann_json)

add_executable(tokenize_dump ${CMAKE_CURRENT_LIST_DIR}/tokenize_dump.cpp)
target_link_libraries(tokenize_dump PRIVATE ftrain_tokenizer ftrain_flags nlohmann_json::nlohmann_json)

ftrain_python_test(test_bpe_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_bpe_parity.py)
ftrain_python_test(test_wordpiece_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_wordpiece_parity.py)
ftrain_python_test(test_bpe_byte_fallback_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_bpe_byte_fallback_parity.py)
ftrain_python_test(test_tokenizer_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_tokenizer_parity.py)
