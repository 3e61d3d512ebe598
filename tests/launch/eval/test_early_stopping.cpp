// Early stopping and the best validation: which evaluation is best for metrics where
// lower or higher is better, when patience runs out, and the state checkpoints carry.
#include <boost/test/unit_test.hpp>

#include <stdexcept>

#include "launch/eval/early_stopping.h"

BOOST_AUTO_TEST_SUITE(test_early_stopping)

using ftrain::launch::EarlyStopping;

BOOST_AUTO_TEST_CASE(lower_loss_is_better_and_patience_counts_evaluations_in_a_row) {
  EarlyStopping stopping("loss", 2);
  BOOST_TEST(stopping.observe(3.0, 10));   // the first value is the best so far
  BOOST_TEST(!stopping.observe(3.5, 20));
  BOOST_TEST(!stopping.should_stop());
  BOOST_TEST(stopping.observe(2.0, 30));   // an improvement resets the count
  BOOST_TEST(stopping.bad_evaluations() == 0);
  BOOST_TEST(!stopping.observe(2.0, 40));  // a tie is no improvement
  BOOST_TEST(!stopping.should_stop());
  BOOST_TEST(!stopping.observe(2.5, 50));
  BOOST_TEST(stopping.should_stop());
  BOOST_TEST(stopping.best_step() == 30);
  BOOST_TEST(*stopping.best_value() == 2.0);
}

BOOST_AUTO_TEST_CASE(higher_accuracy_is_better) {
  for (const char* metric : {"accuracy", "macro_f1", "entity_f1"}) {
    EarlyStopping stopping(metric, 1);
    BOOST_TEST(stopping.observe(0.5, 1));
    BOOST_TEST(stopping.observe(0.7, 2));
    BOOST_TEST(!stopping.observe(0.6, 3));
    BOOST_TEST(stopping.best_step() == 2);
    BOOST_TEST(stopping.should_stop());
  }
  EarlyStopping perplexity("perplexity", 1);
  BOOST_TEST(perplexity.observe(20.0, 1));
  BOOST_TEST(perplexity.observe(10.0, 2));
}

BOOST_AUTO_TEST_CASE(patience_zero_never_stops) {
  EarlyStopping stopping("loss", 0);
  stopping.observe(1.0, 1);
  for (int step = 2; step < 50; ++step) stopping.observe(2.0, step);
  BOOST_TEST(stopping.bad_evaluations() == 48);
  BOOST_TEST(!stopping.should_stop());
}

BOOST_AUTO_TEST_CASE(an_unknown_metric_is_refused) {
  BOOST_CHECK_THROW(EarlyStopping("meteor", 1), std::exception);
}

BOOST_AUTO_TEST_CASE(the_state_survives_a_checkpoint_of_the_same_metric_only) {
  EarlyStopping before("accuracy", 3);
  before.observe(0.8, 4);
  before.observe(0.7, 8);
  const nlohmann::json state = before.state();
  BOOST_TEST(state.at("metric") == "accuracy");
  BOOST_TEST(state.at("bad_evaluations") == 1);

  EarlyStopping after("accuracy", 3);
  after.restore(state);
  BOOST_TEST(after.best_step() == 4);
  BOOST_TEST(*after.best_value() == 0.8);
  BOOST_TEST(after.bad_evaluations() == 1);
  BOOST_TEST(!after.observe(0.75, 12));
  BOOST_TEST(!after.observe(0.75, 16));
  BOOST_TEST(after.should_stop());

  EarlyStopping other("macro_f1", 3);  // values of another metric do not compare
  other.restore(state);
  BOOST_TEST(!other.best_value().has_value());
  BOOST_TEST(other.bad_evaluations() == 0);
  BOOST_TEST(other.state() == nlohmann::json({{"metric", "macro_f1"}, {"bad_evaluations", 0}}));
}

BOOST_AUTO_TEST_SUITE_END()  // test_early_stopping
