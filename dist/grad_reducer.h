// Data-parallel gradient reduction in buckets: the gradients of every data-parallel
// rank are summed or averaged with a few large all-reduces instead of one per
// parameter, either after backward (reduce) or while it runs (arm, then finish).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "dist/comm.h"

namespace ftrain::dist {

class GradientReducer {
 public:
  // `params` in registration order. Buckets are filled walking the parameters in
  // reverse, the order backward produces their gradients; a bucket holds parameters of
  // one dtype and device and is closed once it reaches `bucket_bytes` (a parameter larger
  // than that gets a bucket of its own). Buckets are numbered in the order they were
  // opened. `dp` must outlive the reducer. `reduce_dtype`, when given, is the dtype the
  // buckets hold and are summed in (e.g. bf16 to halve the bytes of fp32 gradients);
  // the gradients keep their own dtype.
  GradientReducer(std::vector<at::Tensor> params, Group& dp, std::size_t bucket_bytes,
                  std::optional<c10::ScalarType> reduce_dtype = std::nullopt);

  // After backward, on every rank of `dp`: per bucket, flatten the gradients into one
  // buffer (a parameter without a gradient contributes zeros), all-reduce it, and copy
  // the result back. A parameter without a gradient receives the reduced one, so every
  // rank ends with the same gradients and takes the same optimizer step.
  void reduce(ReduceOp op = ReduceOp::Avg);

  // Overlapped reduction. arm() before the backward pass whose gradients complete the
  // step (the last micro-batch); as backward produces each parameter's gradient, a hook
  // copies its accumulated value into the bucket, and a bucket whose parameters are all
  // there starts its all-reduce at once, in bucket order on every rank. finish() after
  // backward starts the buckets that did not fill (parameters without a gradient count
  // as zeros), waits for all of them and writes the results to the gradients: the same
  // gradients as reduce(op).
  void arm(ReduceOp op = ReduceOp::Avg);
  void finish();
  // Buckets whose all-reduce started during the last armed backward pass.
  std::size_t started_during_backward() const { return started_during_backward_; }

  std::size_t num_buckets() const { return buckets_.size(); }
  // Indices into `params` of bucket i's members, in their order inside its buffer.
  const std::vector<std::size_t>& bucket_params(std::size_t i) const { return buckets_.at(i).params; }
  std::size_t bucket_bytes(std::size_t i) const;
  std::size_t total_bucket_bytes() const;

 private:
  struct Bucket {
    std::vector<std::size_t> params;
    std::vector<std::int64_t> offsets;  // element offset of each member in `flat`
    std::int64_t numel = 0;
    at::Tensor flat;                    // (numel,), the reduce dtype (else the params') on their device
    std::size_t ready = 0;              // members whose gradient is in `flat` (armed pass)
    std::vector<char> filled;           // per member: its hook ran in the armed pass
    PendingAllReduce pending;
  };

  void on_gradient(std::size_t param, const at::Tensor& incoming);
  void start_ready_buckets();

  std::vector<at::Tensor> params_;
  Group& dp_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<std::size_t, std::size_t>> slot_of_;  // param -> (bucket, member)
  bool armed_ = false;
  ReduceOp op_ = ReduceOp::Avg;
  std::size_t next_to_start_ = 0;
  std::size_t started_during_backward_ = 0;
};

}  // namespace ftrain::dist
