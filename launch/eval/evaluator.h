// Evaluation during and after training: the task's metrics over a split, with every
// row evaluated by exactly one data-parallel rank and the counts summed over ranks;
// validation every train.eval_every steps, with early stopping; and the test report.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "launch/checkpoint/registry.h"
#include "launch/eval/early_stopping.h"
#include "launch/options.h"
#include "launch/telemetry/memory.h"
#include "launch/telemetry/run_log.h"
#include "launch/watchdog.h"

namespace ftrain::launch {

class Task;

class Evaluator {
 public:
  // Decides once, identically on every rank (the file is the same), whether the data
  // has a validation split, so evaluation never leaves some ranks in a collective.
  Evaluator(const Config& config, Task& task, dist::Communicator& comm, dist::DataParallel& data_parallel,
            std::optional<c10::ScalarType> autocast_dtype, Watchdog& watchdog, PhaseMemory& phases, RunLog& log);

  bool has_validation() const { return has_validation_; }
  bool has_split(const std::string& split) const;

  // The task's metrics over the first max_samples rows of `split` (all if < 0); none
  // when it has no rows. Collective.
  std::optional<nlohmann::json> evaluate(const std::string& split, int64_t max_samples, int64_t step);

  // Validation at `step`: evaluates train.eval_split, prints and logs the metrics and
  // tells early stopping. Returns whether this is the best validation so far (false
  // without a validation split). Collective.
  bool validate(int64_t step);
  EarlyStopping& early_stopping() { return early_stopping_; }
  // Why early stopping ends training, for the log.
  std::string stop_reason() const;
  // "validation": early stopping's state, kept in checkpoints.
  void register_state(StateRegistry& registry);

  // The test split's metrics with the weights of `weights_step`, printed and written to
  // test_report.json; nothing without a test split. Collective.
  void test(int64_t weights_step);

  // "loss 1.2345 | accuracy 0.9000 | ...": the metrics a person reads first.
  static std::string describe(const nlohmann::json& metrics);

 private:
  const Config& config_;
  Task& task_;
  dist::Communicator& comm_;
  dist::DataParallel& data_parallel_;
  std::optional<c10::ScalarType> autocast_dtype_;
  Watchdog& watchdog_;
  PhaseMemory& phases_;
  RunLog& log_;
  EarlyStopping early_stopping_;
  bool has_validation_ = false;
};

}  // namespace ftrain::launch
