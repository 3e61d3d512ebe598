# Tests of the Llama family (model/llama*.h).
ftrain_unit_test(test_llama_config SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_llama_config.cpp LIBS ftrain_model)
ftrain_unit_test(test_llama_checkpoint SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_llama_checkpoint.cpp LIBS ftrain_model)

# Tools driven by test_llama_parity.py, which compares them with Hugging Face.
add_executable(llama_forward ${CMAKE_CURRENT_LIST_DIR}/llama_forward.cpp)
target_link_libraries(llama_forward PRIVATE ftrain_model)
add_executable(llama_init ${CMAKE_CURRENT_LIST_DIR}/llama_init.cpp)
target_link_libraries(llama_init PRIVATE ftrain_model)

ftrain_python_test(test_llama_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_llama_parity.py)
# The script runs the tools; ctest has no build step, so say what it needs.
set_tests_properties(test_llama_parity PROPERTIES REQUIRED_FILES
  "$<TARGET_FILE:llama_forward>;$<TARGET_FILE:llama_init>")
