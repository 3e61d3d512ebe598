# Tests of text generation (model/generation.h, the cached forward of GPT-2 and Llama,
# ftrain-generate) against transformers and numpy.
add_executable(generation_tool ${CMAKE_CURRENT_LIST_DIR}/generation_tool.cpp)
target_link_libraries(generation_tool PRIVATE ftrain_model)

ftrain_python_test(test_generation SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_generation.py)
# The script runs the tools (gpt2_forward to export a model as ftrain does); ctest has no
# build step, so say what it needs.
set_tests_properties(test_generation PROPERTIES REQUIRED_FILES
  "$<TARGET_FILE:generation_tool>;$<TARGET_FILE:ftrain-generate>;$<TARGET_FILE:gpt2_forward>")
