// The learning-rate schedule: linear warmup, then cosine, linear or constant decay.
#pragma once

#include <cstdint>

#include "launch/optim/options.h"

namespace ftrain::launch {

// Learning rate for optimizer step `step` (1-based) of `total_steps`: linear warmup
// from 0 to lr over warmup_steps, then the decay to min_lr at total_steps.
double learning_rate(const OptimOptions& optim, int64_t total_steps, int64_t step);

}  // namespace ftrain::launch
