#include "dist/zero.h"

#include <torch/torch.h>

#include <stdexcept>

namespace ftrain::dist {

void ZeroOptions::validate() const {
  if (stage < 0 || stage > 2)
    throw std::invalid_argument("option 'dist.zero': must be 0, 1 or 2 (stage 3, sharded parameters, is not "
                                "available yet), got " + std::to_string(stage));
}

ZeroSharding::ZeroSharding(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp, int stage)
    : dp_(dp), stage_(stage), params_(std::move(named_params)) {
  if (params_.empty()) throw std::invalid_argument("ZeroSharding: no parameters");
  const auto options = params_.front().second.options().requires_grad(false);
  int64_t total = 0;
  for (const auto& [name, p] : params_) {
    if (p.scalar_type() != options.dtype().toScalarType() || p.device() != options.device())
      throw std::invalid_argument("ZeroSharding: parameter '" + name + "' differs in dtype or device");
    offsets_.push_back(total);
    total += p.numel();
  }
  const int64_t ranks = dp_.size();
  shard_numel_ = (total + ranks - 1) / ranks;
  flat_params_ = torch::zeros({shard_numel_ * ranks}, options);
  flat_grads_ = torch::zeros({shard_numel_ * ranks}, options);
  if (stage_ == 2) shard_grads_ = torch::zeros({shard_numel_}, options);

  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    at::Tensor view = flat_params_.narrow(0, offsets_[i], p.numel());
    view.copy_(p.detach().reshape({-1}));
    p.set_data(view.view(p.sizes()));
    // Autograd accumulates into an existing gradient in place, so gradients land in
    // the flat buffer directly.
    p.mutable_grad() = flat_grads_.narrow(0, offsets_[i], p.numel()).view(p.sizes());
  }

  const int64_t shard_begin = shard_numel_ * dp_.rank();
  const int64_t shard_end = shard_begin + shard_numel_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t begin = std::max(shard_begin, offsets_[i]);
    const int64_t end = std::min(shard_end, offsets_[i] + params_[i].second.numel());
    if (begin >= end) continue;
    at::Tensor grad = stage_ == 2 ? shard_grads_.narrow(0, begin - shard_begin, end - begin)
                                  : flat_grads_.narrow(0, begin, end - begin);
    slices_.push_back(Slice{params_[i].first, flat_params_.narrow(0, begin, end - begin), grad, begin - offsets_[i],
                            params_[i].second.numel(), params_[i].second.dim() >= 2, i});
  }
}

void ZeroSharding::reduce_gradients() {
  // The optimizer reads only this rank's shard, so a reduce-scatter suffices at both
  // stages; stage 1 leaves the sum in its part of the full buffer.
  if (stage_ == 2) {
    dp_.reduce_scatter(shard_grads_, flat_grads_, ReduceOp::Sum);
  } else {
    at::Tensor mine = flat_grads_.narrow(0, shard_numel_ * dp_.rank(), shard_numel_);
    dp_.reduce_scatter(mine, flat_grads_, ReduceOp::Sum);
  }
}

double ZeroSharding::gradient_square_sum() {
  // Each rank sums the squares of its own shard; padding is zero.
  at::Tensor local = stage_ == 2 ? shard_grads_ : flat_grads_.narrow(0, shard_numel_ * dp_.rank(), shard_numel_);
  const double mine = local.to(torch::kFloat64).pow(2).sum().item<double>();
  return dp_.all_reduce(mine, ReduceOp::Sum);
}

void ZeroSharding::scale_gradients(double factor) {
  torch::NoGradGuard no_grad;
  if (stage_ == 2) {
    shard_grads_.mul_(factor);
  } else {
    flat_grads_.narrow(0, shard_numel_ * dp_.rank(), shard_numel_).mul_(factor);
  }
}

void ZeroSharding::gather_parameters() {
  torch::NoGradGuard no_grad;
  at::Tensor mine = flat_params_.narrow(0, shard_numel_ * dp_.rank(), shard_numel_);
  dp_.all_gather(flat_params_, mine);
}

void ZeroSharding::zero_grad() {
  flat_grads_.zero_();
  if (shard_grads_.defined()) shard_grads_.zero_();
}

std::vector<std::pair<std::string, at::Tensor>> ZeroSharding::gather_state(
    const std::vector<at::Tensor>& slice_states) {
  if (slice_states.size() != slices_.size())
    throw std::invalid_argument("ZeroSharding::gather_state: one state tensor per local slice expected");
  torch::NoGradGuard no_grad;
  const auto options = slice_states.empty() ? flat_params_.options().dtype(torch::kFloat32)
                                            : slice_states.front().options();
  at::Tensor shard = torch::zeros({shard_numel_}, options);
  const int64_t shard_begin = shard_numel_ * dp_.rank();
  for (size_t k = 0; k < slices_.size(); ++k) {
    const int64_t flat_begin = offsets_[slices_[k].param_index] + slices_[k].param_offset;
    shard.narrow(0, flat_begin - shard_begin, slice_states[k].numel()).copy_(slice_states[k]);
  }
  at::Tensor full = torch::empty({shard_numel_ * dp_.size()}, options);
  dp_.all_gather(full, shard);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i)
    out.emplace_back(params_[i].first,
                     full.narrow(0, offsets_[i], params_[i].second.numel()).view(params_[i].second.sizes()));
  return out;
}

std::vector<at::Tensor> ZeroSharding::shard_state(const std::vector<at::Tensor>& full_states) const {
  if (full_states.size() != params_.size())
    throw std::invalid_argument("ZeroSharding::shard_state: one state tensor per parameter expected");
  std::vector<at::Tensor> out;
  for (const Slice& slice : slices_)
    out.push_back(
        full_states[slice.param_index].reshape({-1}).narrow(0, slice.param_offset, slice.param.numel()).clone());
  return out;
}

}  // namespace ftrain::dist
