#include "dist/grad_reducer.h"

#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace ftrain::dist {

GradientReducer::GradientReducer(std::vector<at::Tensor> params, Group& dp,
                                 std::size_t bucket_bytes)
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
  for (Bucket& bucket : buckets_) {
    bucket.flat = params_[bucket.params.front()].new_empty({bucket.numel});
  }
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
