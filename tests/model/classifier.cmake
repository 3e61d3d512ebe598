# Classification heads: parity with Hugging Face's *ForSequenceClassification and
# *ForTokenClassification through the classifier_forward tool.
add_executable(classifier_forward ${CMAKE_CURRENT_LIST_DIR}/classifier_forward.cpp)
target_link_libraries(classifier_forward PRIVATE ftrain_model)

ftrain_python_test(test_classifier_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_classifier_parity.py)
set_tests_properties(test_classifier_parity PROPERTIES REQUIRED_FILES "$<TARGET_FILE:classifier_forward>")
