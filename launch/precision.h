// Mixed precision for the training loop: the forward pass under autocast (bf16 or fp16
// matrix products, fp32 master weights, fp32 optimizer state), and dynamic loss scaling
// for fp16, whose narrow exponent range would flush small gradients to zero.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>

#include "launch/checkpoint/registry.h"
#include "launch/options.h"

namespace ftrain::launch {

// The autocast dtype of train.precision, none for fp32.
std::optional<c10::ScalarType> compute_dtype(Precision precision);

// Autocast for one device type while alive; nothing when dtype is empty.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, std::optional<c10::ScalarType> dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool active_ = false;
  bool was_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::ScalarType::Undefined;
};

// While alive (and `on`), autocast keeps its casts of the weights: each fp32 master
// weight is cast to the compute dtype once, at its first use, and every later use in
// any micro-batch of the step, and any recomputation under activation checkpointing,
// reads that copy. Autocast scopes opened inside it no longer drop the cache at their
// end; it is dropped when this ends, before the optimizer changes the weights. Off
// where the weights are not held between uses (ZeRO-3 gathers and frees them per
// block), where a kept copy would hold a whole model.
class WeightCastCache {
 public:
  explicit WeightCastCache(bool on);
  ~WeightCastCache();
  WeightCastCache(const WeightCastCache&) = delete;
  WeightCastCache& operator=(const WeightCastCache&) = delete;

 private:
  bool on_;
};

// Dynamic loss scaling: the loss is multiplied by scale() before backward and the
// gradients divided by it after the reduction. A step whose gradients are not finite
// is skipped and the scale halved; after `growth_interval` finite steps in a row it
// doubles. Disabled, scale() is 1 and every step is taken.
class LossScaler {
 public:
  LossScaler(bool enabled, double initial_scale, int64_t growth_interval);

  bool enabled() const { return enabled_; }
  double scale() const { return enabled_ ? scale_ : 1.0; }
  // Records the outcome of a step; returns whether the optimizer may step.
  bool update(bool gradients_finite);

  // For checkpoints, so a resumed run scales as an uninterrupted one.
  int64_t good_steps() const { return good_steps_; }
  void restore(double scale, int64_t good_steps);
  // "loss_scale": the scale and good_steps(), kept in checkpoints.
  void register_state(StateRegistry& registry);

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_;
  int64_t good_steps_ = 0;
};

}  // namespace ftrain::launch
