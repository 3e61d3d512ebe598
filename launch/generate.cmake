# ftrain-generate: continue a prompt with a causal language model from a Hugging Face directory.
add_executable(ftrain-generate ${CMAKE_CURRENT_LIST_DIR}/generate_main.cpp)
target_link_libraries(ftrain-generate PRIVATE ftrain_model ftrain_tokenizer Boost::program_options
  nlohmann_json::nlohmann_json ${TORCH_LIBRARIES} ftrain_flags)
set_target_properties(ftrain-generate PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
