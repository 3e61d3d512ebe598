# Tests of the token-dataset format, its readers and ftrain-prep.

ftrain_unit_test(test_token_dataset
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_token_dataset.cpp
  LIBS ftrain_data ftrain_hdf5)
ftrain_unit_test(test_sample_order
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sample_order.cpp
  LIBS ftrain_data)
ftrain_unit_test(test_streaming_loader
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_streaming_loader.cpp
  LIBS ftrain_data ftrain_hdf5)

# ftrain-prep needs the tokenizer library; without it there is nothing to test.
if(TARGET ftrain-prep)
  ftrain_python_test(test_prep SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_prep.py)
endif()
if(TARGET ftrain-prep)
  ftrain_python_test(test_prep_tasks SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_prep_tasks.py)
endif()
