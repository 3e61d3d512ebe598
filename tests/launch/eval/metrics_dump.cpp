// Reads labelled predictions as JSON on stdin and prints ftrain's metrics of them as
// JSON, for test_metrics_reference.py to compare with scikit-learn and seqeval.
//
//   {"task": "classification", "num_labels": n, "shards": k, "truth": [...], "predicted": [...]}
//   {"task": "entities", "label_names": [...], "shards": k,
//    "sentences": [{"truth": [...], "predicted": [...]}, ...]}
//   {"task": "squad", "items": [{"prediction": text, "answers": [text, ...]}, ...]}
//       -> {"normalized": [...], "exact_match": [...], "f1": [...]} per item
//   {"task": "text", "shards": k, "pairs": [{"prediction": text, "reference": text}, ...]}
//       -> {"rouge": [[r1, r2, rL], ...] per pair, "rouge_stemmed": [...], "tokens_13a": [...],
//           "bleu": corpus BLEU}
//   {"task": "stem", "words": [...]}  ->  {"stems": [...]} (the Porter stemmer)
//
// Example i is counted on shard i % k and the shards' count vectors are summed, as the
// all-reduce of an evaluation does, before any score is computed. Entities are listed per
// sentence as [type, begin, end] over the words that remain once positions with a
// negative true label are dropped.
#include <nlohmann/json.hpp>

#include <iostream>
#include <stdexcept>
#include <vector>

#include "launch/eval/metrics.h"
#include "launch/eval/squad.h"
#include "launch/eval/text_metrics.h"

using namespace ftrain::launch;
using nlohmann::json;

namespace {

std::vector<int64_t> sum_elementwise(const std::vector<std::vector<int64_t>>& shards) {
  std::vector<int64_t> sum(shards.front().size(), 0);
  for (const auto& shard : shards)
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += shard[i];
  return sum;
}

json classification(const json& input, int64_t num_shards) {
  const int64_t num_labels = input.at("num_labels");
  const auto truth = input.at("truth").get<std::vector<int64_t>>();
  const auto predicted = input.at("predicted").get<std::vector<int64_t>>();
  if (truth.size() != predicted.size()) throw std::runtime_error("truth and predicted differ in length");
  std::vector<ConfusionMatrix> shards(num_shards, ConfusionMatrix(num_labels));
  for (size_t i = 0; i < truth.size(); ++i) shards[i % num_shards].add(truth[i], predicted[i]);
  std::vector<std::vector<int64_t>> buffers;
  for (const auto& shard : shards) buffers.push_back(shard.counts());
  ConfusionMatrix matrix(num_labels);
  matrix.counts() = sum_elementwise(buffers);

  json out{{"counts", matrix.counts()}, {"accuracy", matrix.accuracy()}, {"macro_f1", matrix.macro_f1()}};
  for (int64_t label = 0; label < num_labels; ++label) {
    out["precision"].push_back(matrix.precision(label));
    out["recall"].push_back(matrix.recall(label));
    out["f1"].push_back(matrix.f1(label));
  }
  return out;
}

json entity_list(const std::vector<int64_t>& tags, const std::vector<std::string>& label_names) {
  json list = json::array();
  for (const auto& entity : extract_entities(tags, label_names))
    list.push_back(json::array({entity.type, entity.begin, entity.end}));
  return list;
}

json entities(const json& input, int64_t num_shards) {
  const auto label_names = input.at("label_names").get<std::vector<std::string>>();
  check_entity_labels(label_names);
  std::vector<EntityCounts> shards(num_shards);
  json true_entities = json::array(), predicted_entities = json::array();
  const json& sentences = input.at("sentences");
  for (size_t i = 0; i < sentences.size(); ++i) {
    const auto truth = sentences[i].at("truth").get<std::vector<int64_t>>();
    const auto predicted = sentences[i].at("predicted").get<std::vector<int64_t>>();
    add_sentence(shards[i % num_shards], truth, predicted, label_names);
    std::vector<int64_t> true_words, predicted_words;
    for (size_t t = 0; t < truth.size() && t < predicted.size(); ++t) {
      if (truth[t] < 0) continue;
      true_words.push_back(truth[t]);
      predicted_words.push_back(predicted[t]);
    }
    true_entities.push_back(entity_list(true_words, label_names));
    predicted_entities.push_back(entity_list(predicted_words, label_names));
  }
  std::vector<std::vector<int64_t>> buffers;
  for (const auto& shard : shards) buffers.push_back(shard.as_vector());
  const EntityCounts counts = EntityCounts::from_vector(sum_elementwise(buffers));
  return json{{"counts", counts.as_vector()},       {"precision", counts.precision()},
              {"recall", counts.recall()},          {"f1", counts.f1()},
              {"true_entities", true_entities},     {"predicted_entities", predicted_entities}};
}

json squad(const json& input) {
  json out = {{"normalized", json::array()}, {"exact_match", json::array()}, {"f1", json::array()}};
  for (const json& item : input.at("items")) {
    const std::string prediction = item.at("prediction");
    const auto answers = item.at("answers").get<std::vector<std::string>>();
    out["normalized"].push_back(squad_normalize(prediction));
    out["exact_match"].push_back(squad_exact_match(prediction, answers));
    out["f1"].push_back(squad_f1(prediction, answers));
  }
  return out;
}

json text(const json& input, int64_t num_shards) {
  json out = {{"rouge", json::array()}, {"tokens_13a", json::array()}};
  std::vector<BleuCounts> shards(num_shards);
  const json& pairs = input.at("pairs");
  for (size_t i = 0; i < pairs.size(); ++i) {
    const std::string prediction = pairs[i].at("prediction"), reference = pairs[i].at("reference");
    const auto rouge = rouge_f(prediction, reference);
    out["rouge"].push_back(json::array({rouge[0], rouge[1], rouge[2]}));
    const auto stemmed = rouge_f(prediction, reference, /*stem=*/true);
    out["rouge_stemmed"].push_back(json::array({stemmed[0], stemmed[1], stemmed[2]}));
    out["tokens_13a"].push_back(bleu_13a(prediction));
    shards[i % num_shards].add(prediction, reference);
  }
  std::vector<std::vector<int64_t>> buffers;
  for (const auto& shard : shards) buffers.push_back(shard.as_vector());
  out["bleu"] = BleuCounts::from_vector(sum_elementwise(buffers)).score();
  return out;
}

}  // namespace

int main() {
  try {
    const json input = json::parse(std::cin);
    const int64_t num_shards = input.value("shards", int64_t{1});
    if (num_shards < 1) throw std::runtime_error("shards must be at least 1");
    const std::string task = input.at("task");
    if (task == "classification") {
      std::cout << classification(input, num_shards).dump() << "\n";
    } else if (task == "entities") {
      std::cout << entities(input, num_shards).dump() << "\n";
    } else if (task == "stem") {
      json stems = json::array();
      for (const auto& word : input.at("words")) stems.push_back(porter_stem(word.get<std::string>()));
      std::cout << json{{"stems", stems}}.dump() << "\n";
    } else if (task == "text") {
      std::cout << text(input, num_shards).dump() << "\n";
    } else if (task == "squad") {
      std::cout << squad(input).dump() << "\n";
    } else {
      throw std::runtime_error("unknown task '" + task + "'");
    }
  } catch (const std::exception& e) {
    std::cerr << "metrics_dump: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
