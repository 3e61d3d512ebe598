# BERT-family encoders and their Hugging Face directory import/export.
target_sources(ftrain_model PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/bert.cpp
  ${CMAKE_CURRENT_LIST_DIR}/bert_checkpoint.cpp)
