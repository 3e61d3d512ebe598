ftrain_unit_test(test_metrics SOURCES test_metrics.cpp LIBS ftrain_metrics)

# Driven by test_metrics_reference.py, which compares it with scikit-learn and seqeval.
add_executable(metrics_dump metrics_dump.cpp)
target_link_libraries(metrics_dump PRIVATE ftrain_metrics nlohmann_json::nlohmann_json)

ftrain_python_test(test_metrics_reference SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/test_metrics_reference.py)
# The script runs the tool; ctest has no build step, so say what it needs.
set_tests_properties(test_metrics_reference PROPERTIES REQUIRED_FILES "$<TARGET_FILE:metrics_dump>")
