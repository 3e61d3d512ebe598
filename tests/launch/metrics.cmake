ftrain_unit_test(test_metrics SOURCES test_metrics.cpp LIBS ftrain_metrics)
