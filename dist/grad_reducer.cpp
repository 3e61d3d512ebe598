#include "dist/grad_reducer.h"

#include <ATen/ATen.h>

#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace ftrain::dist {

GradientReducer::GradientReducer(std::vector<at::Tensor> params, Group& dp,
                                 std::size_t bucket_bytes, std::optional<c10::ScalarType> reduce_dtype)
    : params_(std::move(params)), dp_(dp) {
  if (bucket_bytes == 0) {
    throw std::invalid_argument("GradientReducer: bucket_bytes must be positive");
  }
  // Open bucket per (dtype, device), by index into buckets_.
  std::map<std::pair<int, std::string>, std::size_t> open;
  std::vector<std::size_t> bytes;
  for (std::size_t i = params_.size(); i-- > 0;) {
    const at::Tensor& param = params_[i];
    if (!param.defined()) {
      throw std::invalid_argument("GradientReducer: parameter " + std::to_string(i) +
                                  " is an undefined tensor");
    }
    const auto key = std::make_pair(static_cast<int>(param.scalar_type()), param.device().str());
    auto slot = open.find(key);
    if (slot == open.end()) {
      slot = open.emplace(key, buckets_.size()).first;
      buckets_.emplace_back();
      bytes.push_back(0);
    }
    Bucket& bucket = buckets_[slot->second];
    bucket.params.push_back(i);
    bucket.offsets.push_back(bucket.numel);
    bucket.numel += param.numel();
    bytes[slot->second] += param.numel() * param.element_size();
    if (bytes[slot->second] >= bucket_bytes) open.erase(slot);
  }
  slot_of_.resize(params_.size());
  for (std::size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    const at::Tensor& first = params_[bucket.params.front()];
    bucket.flat = first.new_empty({bucket.numel}, first.options().dtype(reduce_dtype.value_or(first.scalar_type())));
    for (std::size_t k = 0; k < bucket.params.size(); ++k) slot_of_[bucket.params[k]] = {b, k};
  }
  // The hook sees the gradient about to be accumulated into param.grad(); what the
  // parameter will hold is that plus the gradient of earlier micro-batches.
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].requires_grad()) continue;
    params_[i].register_hook([this, i](const at::Tensor& incoming) {
      if (armed_) on_gradient(i, incoming);
      return at::Tensor();  // leave the gradient as it is
    });
  }
}

void GradientReducer::arm(ReduceOp op) {
  armed_ = true;
  op_ = op;
  next_to_start_ = 0;
  started_during_backward_ = 0;
  for (Bucket& bucket : buckets_) {
    bucket.ready = 0;
    bucket.filled.assign(bucket.params.size(), 0);
  }
}

void GradientReducer::on_gradient(std::size_t param, const at::Tensor& incoming) {
  const auto [b, k] = slot_of_[param];
  Bucket& bucket = buckets_[b];
  const at::Tensor& accumulated = params_[param].grad();
  at::Tensor slot = bucket.flat.narrow(0, bucket.offsets[k], params_[param].numel()).view(params_[param].sizes());
  if (accumulated.defined() && slot.scalar_type() == accumulated.scalar_type()) {
    slot.copy_(accumulated).add_(incoming);
  } else if (accumulated.defined()) {
    slot.copy_(at::add(accumulated, incoming));  // summed in the gradients' dtype, then converted
  } else {
    slot.copy_(incoming);
  }
  bucket.filled[k] = 1;
  if (++bucket.ready == bucket.params.size()) start_ready_buckets();
  // Buckets already started move on while backward computes the rest.
  for (std::size_t i = 0; i < next_to_start_; ++i)
    if (!buckets_[i].pending.done()) buckets_[i].pending.progress();
}

void GradientReducer::start_ready_buckets() {
  // In bucket order, so every rank issues the same collectives in the same order.
  while (next_to_start_ < buckets_.size() && buckets_[next_to_start_].ready == buckets_[next_to_start_].params.size()) {
    Bucket& bucket = buckets_[next_to_start_++];
    bucket.pending = dp_.start_all_reduce(bucket.flat, op_);
    ++started_during_backward_;
  }
}

void GradientReducer::finish() {
  if (!armed_) throw std::logic_error("GradientReducer::finish without arm");
  armed_ = false;
  for (std::size_t b = next_to_start_; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    // Members whose hook did not run (no gradient in the armed pass, e.g. a frozen
    // parameter) contribute what they hold: an earlier micro-batch's gradient, or zeros.
    for (std::size_t k = 0; k < bucket.params.size(); ++k) {
      if (bucket.filled[k]) continue;
      const at::Tensor& param = params_[bucket.params[k]];
      at::Tensor slot = bucket.flat.narrow(0, bucket.offsets[k], param.numel()).view(param.sizes());
      if (param.grad().defined()) slot.copy_(param.grad());
      else slot.zero_();
    }
    bucket.pending = dp_.start_all_reduce(bucket.flat, op_);
  }
  next_to_start_ = buckets_.size();
  for (Bucket& bucket : buckets_) {
    bucket.pending.wait();
    for (std::size_t k = 0; k < bucket.params.size(); ++k) {
      const at::Tensor& param = params_[bucket.params[k]];
      at::Tensor slot = bucket.flat.narrow(0, bucket.offsets[k], param.numel()).view(param.sizes());
      if (param.grad().defined()) {
        param.mutable_grad().copy_(slot);
      } else {
        param.mutable_grad() = slot.clone();
      }
    }
  }
}

std::size_t GradientReducer::total_bucket_bytes() const {
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < buckets_.size(); ++i) bytes += bucket_bytes(i);
  return bytes;
}

std::size_t GradientReducer::bucket_bytes(std::size_t i) const {
  const Bucket& bucket = buckets_.at(i);
  return bucket.numel * bucket.flat.element_size();
}

void GradientReducer::reduce(ReduceOp op) {
  for (Bucket& bucket : buckets_) {
    for (std::size_t k = 0; k < bucket.params.size(); ++k) {
      const at::Tensor& param = params_[bucket.params[k]];
      at::Tensor slot = bucket.flat.narrow(0, bucket.offsets[k], param.numel()).view(param.sizes());
      const at::Tensor& grad = param.grad();
      if (!grad.defined()) {
        slot.zero_();
        continue;
      }
      if (grad.is_sparse() || !grad.sizes().equals(param.sizes())) {
        throw std::invalid_argument("GradientReducer: the gradient of parameter " +
                                    std::to_string(bucket.params[k]) +
                                    " is sparse or shaped unlike its parameter");
      }
      slot.copy_(grad);
    }

    dp_.all_reduce(bucket.flat, op);

    for (std::size_t k = 0; k < bucket.params.size(); ++k) {
      const at::Tensor& param = params_[bucket.params[k]];
      at::Tensor slot = bucket.flat.narrow(0, bucket.offsets[k], param.numel()).view(param.sizes());
      if (param.grad().defined()) {
        param.mutable_grad().copy_(slot);
      } else {
        param.mutable_grad() = slot.clone();
      }
    }
  }
}

}  // namespace ftrain::dist
