#include "launch/optim/adamw.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <numbers>

namespace ftrain::launch {

namespace {

std::vector<AdamWSlot> slots_of(std::vector<std::pair<std::string, at::Tensor>> named_params) {
  std::vector<AdamWSlot> slots;
  for (auto& [name, param] : named_params) slots.push_back(AdamWSlot{name, param, {}, param.dim() >= 2});
  return slots;
}

}  // namespace

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> named_params, const OptimOptions& options)
    : AdamW(slots_of(std::move(named_params)), options) {}

AdamW::AdamW(std::vector<AdamWSlot> slots, const OptimOptions& options) : options_(options) {
  for (auto& slot : slots) {
    auto state_options = slot.param.options().dtype(torch::kFloat32);
    slots_.push_back(Slot{slot.name, slot.param, slot.grad, torch::zeros_like(slot.param, state_options),
                          torch::zeros_like(slot.param, state_options), slot.decay});
  }
}

void AdamW::set_frozen(std::function<bool(const std::string&)> frozen) {
  for (auto& slot : slots_) slot.frozen = frozen && frozen(slot.name);
}

void AdamW::set_step_count(int64_t steps, const std::function<int64_t(const std::string&)>& updates) {
  step_count_ = steps;
  for (auto& slot : slots_) {
    slot.updates = updates ? updates(slot.name) : steps;
    if (slot.fused_step.defined()) slot.fused_step.fill_(static_cast<double>(slot.updates));
  }
}

bool AdamW::fusable(const Slot& slot, const at::Tensor& grad) const {
  return slot.param.scalar_type() == torch::kFloat32 && grad.scalar_type() == torch::kFloat32 &&
         grad.device() == slot.param.device() && grad.sizes() == slot.param.sizes() &&
         (slot.param.is_cpu() || slot.param.is_cuda());
}

void AdamW::step_unfused(Slot& slot, const at::Tensor& grad, double lr) {
  const double bias_correction1 = 1 - std::pow(options_.beta1, slot.updates);
  const double sqrt_bc2 = std::sqrt(1 - std::pow(options_.beta2, slot.updates));
  const double step_size = lr / bias_correction1;
  at::Tensor g = grad.to(torch::kFloat32);
  if (slot.decay && options_.weight_decay != 0) slot.param.mul_(1 - lr * options_.weight_decay);
  slot.exp_avg.lerp_(g, 1 - options_.beta1);
  slot.exp_avg_sq.mul_(options_.beta2).addcmul_(g, g, 1 - options_.beta2);
  at::Tensor denom = (slot.exp_avg_sq.sqrt() / sqrt_bc2).add_(options_.eps);
  if (slot.param.scalar_type() == torch::kFloat32) {
    slot.param.addcdiv_(slot.exp_avg, denom, -step_size);
  } else {
    slot.param.copy_(slot.param.to(torch::kFloat32).addcdiv_(slot.exp_avg, denom, -step_size));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_count_;
  // One fused call per (device, weight decay or not): the kernel takes one decay.
  struct Group {
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  };
  std::map<std::pair<std::string, bool>, Group> groups;
  for (auto& slot : slots_) {
    if (slot.frozen) continue;
    const at::Tensor& grad = slot.grad.defined() ? slot.grad : slot.param.grad();
    if (!grad.defined()) continue;
    ++slot.updates;
    if (!fusable(slot, grad)) {
      step_unfused(slot, grad, lr);
      continue;
    }
    if (!slot.fused_step.defined())
      slot.fused_step = torch::full({}, static_cast<double>(slot.updates - 1),
                                    slot.param.options().dtype(torch::kFloat32));
    Group& group = groups[{slot.param.device().str(), slot.decay}];
    group.params.push_back(slot.param);
    group.grads.push_back(grad);
    group.exp_avgs.push_back(slot.exp_avg);
    group.exp_avg_sqs.push_back(slot.exp_avg_sq);
    group.steps.push_back(slot.fused_step);
  }
  for (auto& [key, group] : groups) {
    at::_foreach_add_(group.steps, 1.0);
    const double weight_decay = key.second ? options_.weight_decay : 0.0;
    at::_fused_adamw_(group.params, group.grads, group.exp_avgs, group.exp_avg_sqs, /*max_exp_avg_sqs=*/{},
                      group.steps, lr, options_.beta1, options_.beta2, weight_decay, options_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  }
}

void AdamW::zero_grad() {
  for (auto& slot : slots_) {
    if (slot.grad.defined()) {
      slot.grad.zero_();
      continue;
    }
    at::Tensor& grad = slot.param.mutable_grad();
    if (grad.defined()) grad.zero_();
  }
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& slot : slots_) bytes += slot.exp_avg.nbytes() + slot.exp_avg_sq.nbytes();
  return bytes;
}

std::vector<at::Tensor> AdamW::exp_avgs() const {
  std::vector<at::Tensor> out;
  for (const auto& slot : slots_) out.push_back(slot.exp_avg);
  return out;
}

std::vector<at::Tensor> AdamW::exp_avg_sqs() const {
  std::vector<at::Tensor> out;
  for (const auto& slot : slots_) out.push_back(slot.exp_avg_sq);
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::named_state() {
  std::vector<std::pair<std::string, at::Tensor>> state;
  for (auto& slot : slots_) state.emplace_back("exp_avg/" + slot.name, slot.exp_avg);
  for (auto& slot : slots_) state.emplace_back("exp_avg_sq/" + slot.name, slot.exp_avg_sq);
  return state;
}

}  // namespace ftrain::launch
