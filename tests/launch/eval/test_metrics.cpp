#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "launch/eval/metrics.h"

BOOST_AUTO_TEST_SUITE(test_metrics)

using namespace ftrain::launch;
namespace tt = boost::test_tools;

namespace {

// Whether `f` throws std::runtime_error with every one of `parts` in its message.
template <typename F>
bool throws_naming(F f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    for (const auto& part : parts)
      if (message.find(part) == std::string::npos) return false;
    return true;
  }
  return false;
}

// The pairs of the hand-computed matrix below, and one ignored position.
const std::vector<int64_t> kTruth{0, 0, 0, 1, 1, 2, 2, 2, 2, -100};
const std::vector<int64_t> kPredicted{0, 0, 1, 1, 2, 2, 2, 0, 1, 0};

const std::vector<std::string> kBio{"O", "B-PER", "I-PER", "B-LOC", "I-LOC"};
constexpr int64_t O = 0, B_PER = 1, I_PER = 2, B_LOC = 3, I_LOC = 4;

std::vector<EntitySpan> entities(const std::vector<int64_t>& tags,
                                 const std::vector<std::string>& names = kBio) {
  return extract_entities(tags, names);
}

}  // namespace

BOOST_AUTO_TEST_CASE(confusion_matrix_by_hand) {
  ConfusionMatrix matrix(3);
  matrix.add(kTruth, kPredicted);
  // rows = truth:  [2 1 0]
  //                [0 1 1]
  //                [1 1 2]
  BOOST_TEST(matrix.counts() == (std::vector<int64_t>{2, 1, 0, 0, 1, 1, 1, 1, 2}), tt::per_element());
  BOOST_TEST(matrix.total() == 9);
  BOOST_TEST(matrix.accuracy() == 5.0 / 9.0, tt::tolerance(1e-12));
  // label 0: tp 2 fp 1 fn 1 -> P 2/3, R 2/3, F1 4/6
  // label 1: tp 1 fp 2 fn 1 -> P 1/3, R 1/2, F1 2/5
  // label 2: tp 2 fp 1 fn 2 -> P 2/3, R 1/2, F1 4/7
  BOOST_TEST(matrix.precision(1) == 1.0 / 3.0, tt::tolerance(1e-12));
  BOOST_TEST(matrix.recall(1) == 0.5, tt::tolerance(1e-12));
  BOOST_TEST(matrix.f1(0) == 2.0 / 3.0, tt::tolerance(1e-12));
  BOOST_TEST(matrix.f1(1) == 2.0 / 5.0, tt::tolerance(1e-12));
  BOOST_TEST(matrix.f1(2) == 4.0 / 7.0, tt::tolerance(1e-12));
  // (2/3 + 2/5 + 4/7) / 3 = (70 + 42 + 60) / 315
  BOOST_TEST(matrix.macro_f1() == 172.0 / 315.0, tt::tolerance(1e-12));
}

BOOST_AUTO_TEST_CASE(macro_f1_averages_labels_present_in_truth_or_predictions) {
  ConfusionMatrix unused_label(4);
  unused_label.add(kTruth, kPredicted);
  BOOST_TEST(unused_label.macro_f1() == 172.0 / 315.0, tt::tolerance(1e-12));

  // Label 3 only predicted: it enters the mean with F1 0, and label 0 gains a false
  // negative: tp 2 fp 1 fn 2 -> 4/7. (4/7 + 2/5 + 4/7 + 0) / 4 = 27/70.
  ConfusionMatrix predicted_only(4);
  predicted_only.add(kTruth, kPredicted);
  predicted_only.add(0, 3);
  BOOST_TEST(predicted_only.f1(3) == 0.0);
  BOOST_TEST(predicted_only.precision(3) == 0.0);
  BOOST_TEST(predicted_only.recall(3) == 0.0);
  BOOST_TEST(predicted_only.macro_f1() == 27.0 / 70.0, tt::tolerance(1e-12));
}

BOOST_AUTO_TEST_CASE(confusion_matrix_empty_and_errors) {
  ConfusionMatrix matrix(3);
  matrix.add(-100, 7);  // ignored whatever the prediction
  BOOST_TEST(matrix.total() == 0);
  BOOST_TEST(matrix.accuracy() == 0.0);
  BOOST_TEST(matrix.macro_f1() == 0.0);
  BOOST_TEST(throws_naming([&] { matrix.add(3, 0); }, {"truth 3", "[0, 3)"}));
  BOOST_TEST(throws_naming([&] { matrix.add(0, 3); }, {"predicted 3"}));
  BOOST_TEST(throws_naming([&] { matrix.add(0, -1); }, {"predicted -1"}));
  const std::vector<int64_t> two{0, 1}, one{0};
  BOOST_TEST(throws_naming([&] { matrix.add(two, one); }, {"2 true labels", "1 predictions"}));
  BOOST_TEST(throws_naming([] { ConfusionMatrix none(0); }, {"num_labels"}));
}

BOOST_AUTO_TEST_CASE(confusion_counts_of_shards_sum_to_the_whole) {
  ConfusionMatrix whole(3), first(3), second(3);
  whole.add(kTruth, kPredicted);
  const std::span<const int64_t> truth(kTruth), predicted(kPredicted);
  first.add(truth.first(4), predicted.first(4));
  second.add(truth.subspan(4), predicted.subspan(4));
  // What an all-reduce with MPI_SUM does to the two buffers.
  for (size_t i = 0; i < first.counts().size(); ++i) first.counts()[i] += second.counts()[i];
  BOOST_TEST(first.counts() == whole.counts(), tt::per_element());
  BOOST_TEST(first.macro_f1() == whole.macro_f1());
}

BOOST_AUTO_TEST_CASE(inside_after_outside_starts_an_entity) {
  BOOST_TEST((entities({O, I_PER, I_PER, O}) == std::vector<EntitySpan>{{"PER", 1, 3}}));
  BOOST_TEST((entities({I_LOC}) == std::vector<EntitySpan>{{"LOC", 0, 1}}));
}

BOOST_AUTO_TEST_CASE(type_change_or_begin_splits_a_run) {
  BOOST_TEST((entities({B_PER, I_PER, I_LOC, I_LOC}) == std::vector<EntitySpan>{{"PER", 0, 2}, {"LOC", 2, 4}}));
  BOOST_TEST((entities({B_PER, I_PER, B_PER}) == std::vector<EntitySpan>{{"PER", 0, 2}, {"PER", 2, 3}}));
  BOOST_TEST((entities({B_PER, B_LOC, I_PER}) ==
              std::vector<EntitySpan>{{"PER", 0, 1}, {"LOC", 1, 2}, {"PER", 2, 3}}));
}

BOOST_AUTO_TEST_CASE(entity_at_the_end_and_all_outside) {
  BOOST_TEST((entities({O, O, B_LOC, I_LOC}) == std::vector<EntitySpan>{{"LOC", 2, 4}}));
  BOOST_TEST(entities({O, O, O}).empty());
  BOOST_TEST(entities({}).empty());
}

BOOST_AUTO_TEST_CASE(iobes_and_untyped_tags) {
  const std::vector<std::string> iobes{"O", "B-PER", "I-PER", "E-PER", "S-PER", "E-LOC", "S-LOC"};
  // B E | I | S | E: an entity ends after E- and S-, and an E- after S- starts one.
  BOOST_TEST((entities({1, 3, 2, 6, 5}, iobes) ==
              std::vector<EntitySpan>{{"PER", 0, 2}, {"PER", 2, 3}, {"LOC", 3, 4}, {"LOC", 4, 5}}));
  BOOST_TEST((entities({4, 4, 0, 1, 2, 3}, iobes) ==
              std::vector<EntitySpan>{{"PER", 0, 1}, {"PER", 1, 2}, {"PER", 3, 6}}));
  const std::vector<std::string> untyped{"O", "B", "I"};
  BOOST_TEST((entities({1, 2, 0, 2, 1}, untyped) ==
              std::vector<EntitySpan>{{"", 0, 2}, {"", 3, 4}, {"", 4, 5}}));
}

BOOST_AUTO_TEST_CASE(label_names_without_a_tag_prefix_are_refused) {
  BOOST_TEST(throws_naming([] { check_entity_labels({"O", "PER"}); }, {"label_names", "'PER'"}));
  BOOST_TEST(throws_naming([] { check_entity_labels({"O", "B_PER"}); }, {"'B_PER'"}));
  BOOST_TEST(throws_naming([] { check_entity_labels({"O", ""}); }, {"''"}));
  BOOST_TEST(throws_naming([] { check_entity_labels({"O-X"}); }, {"'O-X'"}));
  check_entity_labels(kBio);
  BOOST_TEST(throws_naming([] { entities({O, 5}); }, {"tag id 5", "position 1", "5 names"}));
}

BOOST_AUTO_TEST_CASE(ignored_positions_are_dropped_before_reading_entities) {
  // [CLS] Jo ##hn Smith lives [SEP]: tags on first sub-tokens only.
  const std::vector<int64_t> truth{-100, B_PER, -100, I_PER, O, -100};
  // Read at every position this would be PER, PER, LOC; on words it is one PER.
  const std::vector<int64_t> predicted{O, B_PER, O, I_PER, O, B_LOC};
  EntityCounts counts;
  add_sentence(counts, truth, predicted, kBio);
  BOOST_TEST(counts.true_entities == 1);
  BOOST_TEST(counts.predicted_entities == 1);
  BOOST_TEST(counts.correct == 1);

  // A prediction covering only part of the entity is not correct.
  add_sentence(counts, truth, std::vector<int64_t>{O, B_PER, O, O, O, O}, kBio);
  BOOST_TEST((counts.as_vector() == std::vector<int64_t>{2, 2, 1}), tt::per_element());

  BOOST_TEST(throws_naming([&] { add_sentence(counts, truth, std::vector<int64_t>{O}, kBio); },
                           {"6 true tags", "1 predicted"}));
}

BOOST_AUTO_TEST_CASE(entity_scores_from_counts) {
  EntityCounts counts{4, 5, 3};
  BOOST_TEST(counts.precision() == 3.0 / 5.0, tt::tolerance(1e-12));
  BOOST_TEST(counts.recall() == 3.0 / 4.0, tt::tolerance(1e-12));
  // 2 P R / (P + R) = (18/20) / (27/20)
  BOOST_TEST(counts.f1() == 2.0 / 3.0, tt::tolerance(1e-12));

  EntityCounts nothing;
  BOOST_TEST(nothing.precision() == 0.0);
  BOOST_TEST(nothing.recall() == 0.0);
  BOOST_TEST(nothing.f1() == 0.0);
  EntityCounts none_right{3, 2, 0};
  BOOST_TEST(none_right.f1() == 0.0);
}

BOOST_AUTO_TEST_CASE(entity_counts_round_trip_and_sum_over_shards) {
  const std::vector<std::vector<int64_t>> truth{
      {B_PER, I_PER, O, B_LOC}, {O, O}, {I_LOC, I_LOC, B_PER}, {B_LOC, -100, I_LOC, O}};
  const std::vector<std::vector<int64_t>> predicted{
      {B_PER, I_PER, O, I_PER}, {B_LOC, O}, {B_LOC, I_LOC, B_PER}, {B_LOC, O, I_LOC, I_LOC}};
  EntityCounts whole, first, second;
  for (size_t i = 0; i < truth.size(); ++i) {
    add_sentence(whole, truth[i], predicted[i], kBio);
    add_sentence(i < 2 ? first : second, truth[i], predicted[i], kBio);
  }
  // Truth PER LOC | - | LOC PER | LOC (over two words); predictions PER PER | LOC |
  // LOC PER | LOC (over three words): 5 true, 6 predicted, 3 correct.
  BOOST_TEST((whole.as_vector() == std::vector<int64_t>{5, 6, 3}), tt::per_element());

  auto summed = first.as_vector();
  const auto other = second.as_vector();
  for (size_t i = 0; i < summed.size(); ++i) summed[i] += other[i];
  BOOST_TEST(summed == whole.as_vector(), tt::per_element());

  const EntityCounts back = EntityCounts::from_vector(whole.as_vector());
  BOOST_TEST(back.true_entities == whole.true_entities);
  BOOST_TEST(back.predicted_entities == whole.predicted_entities);
  BOOST_TEST(back.correct == whole.correct);
  BOOST_TEST(throws_naming([] { EntityCounts::from_vector(std::vector<int64_t>{1, 2}); }, {"expected 3", "got 2"}));
}

BOOST_AUTO_TEST_CASE(perplexity_is_exp_and_saturates) {
  BOOST_TEST(perplexity(0.0) == 1.0);
  BOOST_TEST(perplexity(std::log(7.0)) == 7.0, tt::tolerance(1e-12));
  BOOST_TEST(perplexity(700.0) == std::exp(700.0), tt::tolerance(1e-12));
  BOOST_TEST(std::isinf(perplexity(1000.0)));
  BOOST_TEST(perplexity(1000.0) > 0);
}

BOOST_AUTO_TEST_CASE(metric_directions) {
  BOOST_TEST(!higher_is_better("loss"));
  BOOST_TEST(!higher_is_better("perplexity"));
  BOOST_TEST(higher_is_better("accuracy"));
  BOOST_TEST(higher_is_better("macro_f1"));
  BOOST_TEST(higher_is_better("entity_f1"));
  BOOST_TEST(higher_is_better("exact_match"));
  BOOST_TEST(higher_is_better("f1"));
  for (const char* metric : {"rouge1", "rouge2", "rougeL", "bleu"}) BOOST_TEST(higher_is_better(metric));
  BOOST_TEST(throws_naming([] { higher_is_better("meteor"); },
                           {"train.eval_metric", "'meteor'", "loss", "perplexity", "accuracy", "macro_f1", "entity_f1",
                            "exact_match", "rougeL", "bleu"}));
}

BOOST_AUTO_TEST_SUITE_END()  // test_metrics
