// Data-parallel gradient reduction in buckets: after backward, the gradients of every
// data-parallel rank are summed or averaged with a few large all-reduces instead of one
// per parameter.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dist/comm.h"

namespace ftrain::dist {

class GradientReducer {
 public:
  // `params` in registration order. Buckets are filled walking the parameters in
  // reverse, the order backward produces their gradients; a bucket holds parameters of
  // one dtype and device and is closed once it reaches `bucket_bytes` (a parameter larger
  // than that gets a bucket of its own). Buckets are numbered in the order they were
  // opened. `dp` must outlive the reducer.
  GradientReducer(std::vector<at::Tensor> params, Group& dp, std::size_t bucket_bytes);

  // After backward, on every rank of `dp`: per bucket, flatten the gradients into one
  // buffer (a parameter without a gradient contributes zeros), all-reduce it, and copy
  // the result back. A parameter without a gradient receives the reduced one, so every
  // rank ends with the same gradients and takes the same optimizer step.
  void reduce(ReduceOp op = ReduceOp::Avg);

  std::size_t num_buckets() const { return buckets_.size(); }
  // Indices into `params` of bucket i's members, in their order inside its buffer.
  const std::vector<std::size_t>& bucket_params(std::size_t i) const { return buckets_.at(i).params; }
  std::size_t bucket_bytes(std::size_t i) const;

 private:
  struct Bucket {
    std::vector<std::size_t> params;
    std::vector<std::int64_t> offsets;  // element offset of each member in `flat`
    std::int64_t numel = 0;
    at::Tensor flat;                    // (numel,), the params' dtype and device
  };

  std::vector<at::Tensor> params_;
  Group& dp_;
  std::vector<Bucket> buckets_;
};

}  // namespace ftrain::dist
