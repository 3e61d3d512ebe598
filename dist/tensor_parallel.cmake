# Tensor parallelism for the models: the paired autograd functions, the parallel layer
# styles and apply_tensor_parallel. Its own library, as it joins dist/ and model/.
add_library(ftrain_tensor_parallel STATIC ${CMAKE_CURRENT_LIST_DIR}/tensor_parallel.cpp)
target_link_libraries(ftrain_tensor_parallel PUBLIC ftrain_dist ftrain_model ftrain_flags)
