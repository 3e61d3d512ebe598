#include "launch/eval/evaluator.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "data/durable_file.h"
#include "data/streaming_loader.h"
#include "launch/precision.h"
#include "launch/task.h"

using nlohmann::json;

namespace ftrain::launch {

Evaluator::Evaluator(const Config& config, Task& task, dist::Communicator& comm, dist::DataParallel& data_parallel,
                     std::optional<c10::ScalarType> autocast_dtype, Watchdog& watchdog, PhaseMemory& phases,
                     RunLog& log)
    : config_(config),
      task_(task),
      comm_(comm),
      data_parallel_(data_parallel),
      autocast_dtype_(autocast_dtype),
      watchdog_(watchdog),
      phases_(phases),
      log_(log),
      early_stopping_(config.train.eval_metric == "auto" ? task.default_metric() : config.train.eval_metric,
                      config.train.early_stopping_patience) {
  has_validation_ = has_split(config_.train.eval_split);
  if (!has_validation_ && comm_.rank() == 0)
    std::cout << "ftrain: " << config_.data.path << " has no '" << config_.train.eval_split
              << "' split; validation is off (train.eval_split)\n";
}

bool Evaluator::has_split(const std::string& split) const {
  if (split.empty()) return false;
  const auto splits = data::list_splits(config_.data.path);
  return std::find(splits.begin(), splits.end(), split) != splits.end();
}

std::optional<json> Evaluator::evaluate(const std::string& split, int64_t max_samples, int64_t step) {
  Watchdog::Scope watched(watchdog_, "evaluating split '" + split + "' at step " + std::to_string(step));
  PhaseMemory::Scope phase(phases_, "evaluate");
  const int dp_size = comm_.layout().dp_size;
  data::EvalReader reader(config_.data.path, split, config_.data.micro_batch_size, max_samples,
                          comm_.layout().dp_rank(comm_.rank()), dp_size);
  torch::NoGradGuard no_grad;
  task_.module().eval();
  EvalTotals totals = task_.empty_totals(split);
  while (auto batch = reader.next()) {
    data_parallel_.before_forward();
    AutocastScope autocast(comm_.device().type(), autocast_dtype_);
    task_.evaluate(task_.prepare(*batch, comm_.device()), totals);
  }
  data_parallel_.after_evaluation();
  task_.module().train();

  // One all-reduce for every count, one for the loss.
  std::vector<int64_t> counts = {totals.count};
  counts.insert(counts.end(), totals.confusion.begin(), totals.confusion.end());
  counts.insert(counts.end(), totals.entities.begin(), totals.entities.end());
  counts.insert(counts.end(), totals.generated.begin(), totals.generated.end());  // each row from one rank
  at::Tensor packed = torch::tensor(counts, torch::kInt64);
  comm_.dp().all_reduce(packed, dist::ReduceOp::Sum);
  const int64_t* summed = packed.data_ptr<int64_t>();
  totals.count = summed[0];
  std::copy_n(summed + 1, totals.confusion.size(), totals.confusion.begin());
  std::copy_n(summed + 1 + totals.confusion.size(), totals.entities.size(), totals.entities.begin());
  std::copy_n(summed + 1 + totals.confusion.size() + totals.entities.size(), totals.generated.size(),
              totals.generated.begin());
  totals.loss_sum = comm_.dp().all_reduce(totals.loss_sum, dist::ReduceOp::Sum);
  if (!totals.spans.empty()) {  // each row's span, filled by the one rank that evaluated it
    at::Tensor spans = torch::from_blob(totals.spans.data(), {static_cast<int64_t>(totals.spans.size())},
                                        torch::kFloat64);
    comm_.dp().all_reduce(spans, dist::ReduceOp::Sum);
    if (spans.data_ptr<double>() != totals.spans.data())
      std::copy_n(spans.contiguous().data_ptr<double>(), totals.spans.size(), totals.spans.begin());
  }
  if (totals.count == 0) return std::nullopt;
  // Question answering and seq2seq: what was predicted, as run_qa's predictions.json and
  // run_summarization's generated_predictions, written by rank 0.
  nlohmann::json predictions;
  json metrics = task_.metrics(totals, comm_.rank() == 0 ? &predictions : nullptr);
  if (!predictions.is_null()) {
    data::write_file_atomically(std::filesystem::path(config_.run.dir) / ("predictions-" + split + ".json"),
                                predictions.dump(2) + "\n");
  }
  return metrics;
}

bool Evaluator::validate(int64_t step) {
  if (!has_validation_) return false;
  const auto metrics =
      evaluate(config_.train.eval_split, config_.train.eval_samples > 0 ? config_.train.eval_samples : -1, step);
  if (!metrics) return false;
  const bool improved = early_stopping_.observe(metrics->at(early_stopping_.metric()).get<double>(), step);
  if (comm_.rank() == 0) {
    std::printf("step %6lld | validation %s%s\n", static_cast<long long>(step), describe(*metrics).c_str(),
                improved ? " | best" : "");
    std::fflush(stdout);
  }
  json record = {{"step", step}};
  for (const auto& [key, entry] : metrics->items()) record["val_" + key] = entry;
  log_.write(record);
  return improved;
}

void Evaluator::test(int64_t weights_step) {
  if (!has_split(config_.train.test_split)) return;
  const auto metrics = evaluate(config_.train.test_split, -1, weights_step);
  if (!metrics || comm_.rank() != 0) return;
  std::printf("test (%s, weights of step %lld) | %s\n", config_.train.test_split.c_str(),
              static_cast<long long>(weights_step), describe(*metrics).c_str());
  std::fflush(stdout);
  const json report = {
      {"split", config_.train.test_split}, {"step", weights_step}, {"task", task_.name()}, {"metrics", *metrics}};
  data::write_file_atomically(std::filesystem::path(config_.run.dir) / "test_report.json", report.dump(2) + "\n");
}

std::string Evaluator::stop_reason() const {
  return "validation " + early_stopping_.metric() + " has not improved for " +
         std::to_string(early_stopping_.bad_evaluations()) + " evaluations (train.early_stopping_patience)";
}

void Evaluator::register_state(StateRegistry& registry) {
  registry.add_meta("validation", [this] { return early_stopping_.state(); },
                    [this](const json& saved) { early_stopping_.restore(saved); });
}

std::string Evaluator::describe(const json& metrics) {
  std::string line;
  char text[64];
  for (const char* key :
       {"loss", "perplexity", "accuracy", "macro_f1", "entity_precision", "entity_recall", "entity_f1", "exact_match",
        "f1", "rouge1", "rouge2", "rougeL", "bleu"}) {
    if (!metrics.contains(key)) continue;
    std::snprintf(text, sizeof(text), "%s%s %.4f", line.empty() ? "" : " | ", key, metrics[key].get<double>());
    line += text;
  }
  return line;
}

}  // namespace ftrain::launch
