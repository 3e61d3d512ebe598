// [optim]: AdamW and its learning-rate schedule, one struct for both, consumed as it is
// by AdamW (launch/optim/adamw.h) and learning_rate (launch/optim/schedule.h).
#pragma once

#include <cstdint>

namespace ftrain::launch {

// optim.decay: the shape of the learning rate after warmup.
enum class Decay { cosine, linear, constant };

struct OptimOptions {
  double lr = 3e-4;             // peak learning rate
  double min_lr = 3e-5;         // learning rate at the end of the decay
  int64_t warmup_steps = 0;     // linear warmup from 0 to lr
  Decay decay = Decay::cosine;  // from lr to min_lr after warmup
  double weight_decay = 0.1;    // decoupled; applied to matrices and embeddings, not to biases or norms
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;

  // Throws std::runtime_error "<optim.key>: <what is wrong>".
  void validate() const;
};

}  // namespace ftrain::launch
