# ftrain-supervise: runs `mpirun ... ftrain ...` again after a failure, from the newest
# checkpoint. It only starts processes, so it links neither MPI nor LibTorch (the
# JSON library is header-only); signals.cpp is plain POSIX and gives it the names of
# signals and ftrain's exit status 75.
add_executable(ftrain-supervise ${CMAKE_CURRENT_LIST_DIR}/supervise_main.cpp ${CMAKE_CURRENT_LIST_DIR}/supervise.cpp
  ${CMAKE_CURRENT_LIST_DIR}/signals.cpp)
target_link_libraries(ftrain-supervise PRIVATE Boost::program_options nlohmann_json::nlohmann_json ftrain_flags)
set_target_properties(ftrain-supervise PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
