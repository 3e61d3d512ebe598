// Which validation was best, and when to stop: the bookkeeping behind
// checkpoint.keep_best and train.early_stopping_patience. It sees only the validation
// values of one metric, in the order they were measured, and is the same on every rank.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace ftrain::launch {

class EarlyStopping {
 public:
  // `metric`: the validation metric followed (higher_is_better() says which way is
  // better; an unknown name throws). `patience`: evaluations in a row without
  // improvement that end training; 0 never stops.
  EarlyStopping(std::string metric, int64_t patience);

  // Records the metric's value at `step`; returns whether it is the best so far (the
  // first value always is; a tie is not an improvement).
  bool observe(double value, int64_t step);
  // Whether the last `patience` evaluations in a row brought no improvement.
  bool should_stop() const { return patience_ > 0 && bad_evaluations_ >= patience_; }

  const std::string& metric() const { return metric_; }
  std::optional<double> best_value() const { return best_value_; }
  int64_t best_step() const { return best_step_; }  // 0 before the first observation
  int64_t bad_evaluations() const { return bad_evaluations_; }

  // For checkpoints: {"metric", "bad_evaluations", "best": {"value", "step"}}.
  nlohmann::json state() const;
  // Restores state() from a checkpoint; one that followed another metric is ignored, as
  // its values do not compare.
  void restore(const nlohmann::json& state);

 private:
  std::string metric_;
  bool higher_is_better_;
  int64_t patience_;
  std::optional<double> best_value_;
  int64_t best_step_ = 0;
  int64_t bad_evaluations_ = 0;  // evaluations in a row without improvement
};

}  // namespace ftrain::launch
