# Dropout with a hashed mask (model/dropout.h). -O3 so that GCC vectorises its loop.
target_sources(ftrain_model PRIVATE ${CMAKE_CURRENT_LIST_DIR}/dropout.cpp)
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/dropout.cpp PROPERTIES COMPILE_OPTIONS "-O3")
