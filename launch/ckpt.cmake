# ftrain-ckpt: list, verify and export a run's checkpoints (docs/checkpoint-tool.md). Its
# work is a library of its own so that tests can call it without the command line.
add_library(ftrain_ckpt_tool STATIC ${CMAKE_CURRENT_LIST_DIR}/ckpt_tool.cpp)
target_link_libraries(ftrain_ckpt_tool PUBLIC ftrain_launch)

add_executable(ftrain-ckpt ${CMAKE_CURRENT_LIST_DIR}/ckpt_main.cpp)
target_link_libraries(ftrain-ckpt PRIVATE ftrain_ckpt_tool Boost::program_options)
set_target_properties(ftrain-ckpt PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
