// The learning-rate schedule: linear warmup, then cosine, linear or constant decay.
#pragma once

#include <cstdint>
#include <string>

namespace ftrain::launch {

struct LrScheduleOptions {
  double lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  std::string decay = "cosine";  // cosine | linear | constant
};

// Learning rate for optimizer step `step` (1-based): linear warmup from 0 to lr over
// warmup_steps, then decay to min_lr at total_steps.
double learning_rate(const LrScheduleOptions& schedule, int64_t step);

}  // namespace ftrain::launch
