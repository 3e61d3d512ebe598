#include "launch/precision.h"

#include <ATen/autocast_mode.h>

#include <stdexcept>

namespace ftrain::launch {

std::optional<c10::ScalarType> compute_dtype(Precision precision) {
  switch (precision) {
    case Precision::bf16: return c10::ScalarType::BFloat16;
    case Precision::fp16: return c10::ScalarType::Half;
    case Precision::fp32: break;
  }
  return std::nullopt;
}

AutocastScope::AutocastScope(c10::DeviceType device, std::optional<c10::ScalarType> dtype) : device_(device) {
  if (!dtype) return;
  active_ = true;
  was_enabled_ = at::autocast::is_autocast_enabled(device_);
  previous_dtype_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, *dtype);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // Casts of the weights are cached for the scope only: the weights change every step.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_, was_enabled_);
  at::autocast::set_autocast_dtype(device_, previous_dtype_);
}

WeightCastCache::WeightCastCache(bool on) : on_(on) {
  if (on_) at::autocast::increment_nesting();
}

WeightCastCache::~WeightCastCache() {
  if (on_ && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

LossScaler::LossScaler(bool enabled, double initial_scale, int64_t growth_interval)
    : enabled_(enabled), scale_(initial_scale), growth_interval_(growth_interval) {}

bool LossScaler::update(bool gradients_finite) {
  if (!enabled_) return true;
  if (!gradients_finite) {
    scale_ /= 2;
    good_steps_ = 0;
    return false;
  }
  if (++good_steps_ >= growth_interval_) {
    scale_ *= 2;
    good_steps_ = 0;
  }
  return true;
}

void LossScaler::restore(double scale, int64_t good_steps) {
  scale_ = scale;
  good_steps_ = good_steps;
}

void LossScaler::register_state(StateRegistry& registry) {
  registry.add_meta(
      "loss_scale", [this] { return nlohmann::json{{"scale", scale()}, {"good_steps", good_steps_}}; },
      [this](const nlohmann::json& saved) {
        if (enabled_) restore(saved.at("scale").get<double>(), saved.at("good_steps").get<int64_t>());
      });
}

}  // namespace ftrain::launch
