# BERT-family encoders: config.json parsing, the module and checkpoints in C++, and
# parity with Hugging Face transformers through the bert_forward tool.
ftrain_unit_test(test_bert_config SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bert_config.cpp LIBS ftrain_model)
ftrain_unit_test(test_bert_checkpoint SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bert_checkpoint.cpp LIBS ftrain_model)

add_executable(bert_forward ${CMAKE_CURRENT_LIST_DIR}/bert_forward.cpp)
target_link_libraries(bert_forward PRIVATE ftrain_model)

ftrain_python_test(test_bert_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_bert_parity.py)
# The script runs the tool; ctest has no build step, so say what it needs.
set_tests_properties(test_bert_parity PROPERTIES REQUIRED_FILES "$<TARGET_FILE:bert_forward>")
