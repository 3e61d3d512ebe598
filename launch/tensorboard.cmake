# TensorBoard event files of rank 0's metrics (launch/tensorboard.h). The event
# messages come from launch/tensorboard.proto through protoc; the library has no LibTorch,
# so its test builds quickly.
protobuf_generate_cpp(FTRAIN_TENSORBOARD_PROTO_SOURCES FTRAIN_TENSORBOARD_PROTO_HEADERS
  ${CMAKE_CURRENT_LIST_DIR}/tensorboard.proto)
add_library(ftrain_tensorboard STATIC ${CMAKE_CURRENT_LIST_DIR}/tensorboard.cpp ${FTRAIN_TENSORBOARD_PROTO_SOURCES})
# The generated header is included as "launch/tensorboard.pb.h".
target_include_directories(ftrain_tensorboard PUBLIC ${PROJECT_BINARY_DIR})
target_link_libraries(ftrain_tensorboard PUBLIC protobuf::libprotobuf-lite nlohmann_json::nlohmann_json Boost::headers ftrain_flags)
target_link_libraries(ftrain_launch PUBLIC ftrain_tensorboard)
