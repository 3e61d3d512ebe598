#include "launch/eval/early_stopping.h"

#include <utility>

#include "launch/eval/metrics.h"

namespace ftrain::launch {

EarlyStopping::EarlyStopping(std::string metric, int64_t patience)
    : metric_(std::move(metric)), higher_is_better_(higher_is_better(metric_)), patience_(patience) {}

bool EarlyStopping::observe(double value, int64_t step) {
  const bool improved = !best_value_ || (higher_is_better_ ? value > *best_value_ : value < *best_value_);
  if (improved) {
    best_value_ = value;
    best_step_ = step;
    bad_evaluations_ = 0;
  } else {
    ++bad_evaluations_;
  }
  return improved;
}

nlohmann::json EarlyStopping::state() const {
  nlohmann::json state = {{"metric", metric_}, {"bad_evaluations", bad_evaluations_}};
  if (best_value_) state["best"] = {{"value", *best_value_}, {"step", best_step_}};
  return state;
}

void EarlyStopping::restore(const nlohmann::json& state) {
  if (!state.is_object() || state.value("metric", std::string()) != metric_) return;
  bad_evaluations_ = state.value("bad_evaluations", int64_t{0});
  if (state.contains("best")) {
    best_value_ = state["best"]["value"].get<double>();
    best_step_ = state["best"]["step"].get<int64_t>();
  }
}

}  // namespace ftrain::launch
