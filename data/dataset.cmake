# The HDF5 token-dataset format, its readers (TokenDataset, StreamingLoader, EvalReader)
# and ftrain-prep. ftrain_data has no Torch dependency, so tools and tests that only move
# tokens stay light.

add_library(ftrain_data STATIC
  ${CMAKE_CURRENT_LIST_DIR}/dataset_format.cpp
  ${CMAKE_CURRENT_LIST_DIR}/hdf5_handle.cpp
  ${CMAKE_CURRENT_LIST_DIR}/token_dataset.cpp
  ${CMAKE_CURRENT_LIST_DIR}/sample_order.cpp
  ${CMAKE_CURRENT_LIST_DIR}/streaming_loader.cpp
  ${CMAKE_CURRENT_LIST_DIR}/row_packer.cpp
  ${CMAKE_CURRENT_LIST_DIR}/document_reader.cpp
  ${CMAKE_CURRENT_LIST_DIR}/prep_records.cpp
)
target_link_libraries(ftrain_data
  PUBLIC ftrain_flags Threads::Threads
  PRIVATE ftrain_hdf5 nlohmann_json::nlohmann_json)

# ftrain-prep needs the tokenizer, which lives in its own part of data/.
if(TARGET ftrain_tokenizer)
  add_executable(ftrain-prep
    ${CMAKE_CURRENT_LIST_DIR}/prep_main.cpp
    ${CMAKE_CURRENT_LIST_DIR}/prep_tasks.cpp
    ${CMAKE_CURRENT_LIST_DIR}/prep_examples.cpp)
  target_link_libraries(ftrain-prep PRIVATE ftrain_data ftrain_tokenizer ftrain_hdf5 nlohmann_json::nlohmann_json
    Boost::program_options Threads::Threads)
  set_target_properties(ftrain-prep PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
endif()
