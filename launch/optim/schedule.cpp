#include "launch/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ftrain::launch {

double learning_rate(const OptimOptions& s, int64_t total_steps, int64_t step) {
  if (s.warmup_steps > 0 && step <= s.warmup_steps)
    return s.lr * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  if (s.decay == Decay::constant) return s.lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - s.warmup_steps);
  const double progress =
      std::clamp(static_cast<double>(step - s.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double shape = s.decay == Decay::linear ? 1 - progress : 0.5 * (1 + std::cos(std::numbers::pi * progress));
  return s.min_lr + shape * (s.lr - s.min_lr);
}

}  // namespace ftrain::launch
