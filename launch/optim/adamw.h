// AdamW with decoupled weight decay, fp32 state, and named state tensors so the
// checkpoint registry can store them. Sharding of its state over data-parallel ranks
// is applied from dist/, not here.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "launch/optim/options.h"

namespace ftrain::launch {

// One tensor the optimizer updates in place. `grad` may be given explicitly (e.g. a
// shard of a reduced gradient buffer); undefined means param.grad() at step time.
struct AdamWSlot {
  std::string name;
  at::Tensor param;
  at::Tensor grad;
  bool decay = true;
};

class AdamW {
 public:
  // Parameters with two or more dimensions (matrices, embeddings) get weight decay;
  // biases and norm gains do not, as is usual for transformers. Reads beta1, beta2, eps
  // and weight_decay of `options`; the learning rate comes with each step.
  AdamW(std::vector<std::pair<std::string, at::Tensor>> named_params, const OptimOptions& options);
  AdamW(std::vector<AdamWSlot> slots, const OptimOptions& options);

  // One update with learning rate `lr`; parameters without a gradient are skipped.
  // fp32 parameters go through LibTorch's fused AdamW kernel (one pass over parameter,
  // gradient and both moments, a launch per group of parameters on CUDA); the same
  // update, with rounding that may differ in the last bit from the op-by-op form.
  void step(double lr);
  void zero_grad();

  // Slots whose name `frozen` accepts are left alone by step(): no update, no weight
  // decay, and their own count of updates (which sets their bias correction) stays, so
  // a slot unfrozen later starts its moments as a fresh one would. Empty: none frozen.
  void set_frozen(std::function<bool(const std::string&)> frozen);

  // Number of step() calls.
  int64_t step_count() const { return step_count_; }
  // For a resumed run: `steps` calls so far, in which each slot was updated
  // `updates(name)` times (steps when empty).
  void set_step_count(int64_t steps, const std::function<int64_t(const std::string&)>& updates = {});

  // State for checkpoints: ("exp_avg/<param>", tensor), ("exp_avg_sq/<param>", tensor).
  std::vector<std::pair<std::string, at::Tensor>> named_state();
  std::vector<at::Tensor> exp_avgs() const;
  std::vector<at::Tensor> exp_avg_sqs() const;
  int64_t state_bytes() const;  // the moments this optimizer holds

 private:
  struct Slot {
    std::string name;
    at::Tensor param;
    at::Tensor grad;
    at::Tensor exp_avg;
    at::Tensor exp_avg_sq;
    bool decay;
    int64_t updates = 0;
    bool frozen = false;
    // `updates` as the float32 scalar on the parameter's device that the fused kernel
    // reads its bias correction from; kept equal to `updates`.
    at::Tensor fused_step;
  };
  // The slots LibTorch's fused AdamW kernel takes (fp32 parameter and gradient of one
  // shape on one device); the others are updated op by op.
  bool fusable(const Slot& slot, const at::Tensor& grad) const;
  void step_unfused(Slot& slot, const at::Tensor& grad, double lr);
  std::vector<Slot> slots_;
  OptimOptions options_;
  int64_t step_count_ = 0;
};

}  // namespace ftrain::launch
