#include "model/fused_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#ifdef FTRAIN_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "model/fused_cross_entropy_cuda.h"
#endif

namespace ftrain::model {

int64_t cross_entropy_chunk_rows(int64_t columns, int64_t bytes_per_element) {
  constexpr int64_t kBudgetBytes = int64_t{512} << 20;
  return std::max<int64_t>(1, kBudgetBytes / std::max<int64_t>(1, columns * bytes_per_element));
}

namespace {

// On CUDA a vocabulary that is not a multiple of 64 leaves the logits' rows unaligned
// and cuBLAS falls back to slow kernels (see model/logits.h); the product then runs on
// the weight padded with zero rows, whose columns the loss ignores.
constexpr int64_t kCudaAlign = 64;

#ifdef FTRAIN_WITH_CUDA_KERNELS
cuda::LogitType logit_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::LogitType::float32;
    case at::kBFloat16: return cuda::LogitType::bfloat16;
    case at::kHalf: return cuda::LogitType::float16;
    default: throw std::invalid_argument("linear_cross_entropy_sum: no CUDA kernel for logits of " +
                                         std::string(c10::toString(t.scalar_type())));
  }
}

// The loss of each row of one chunk's logits (rows, cols), of which `valid` columns are
// vocabulary ids start .. start + valid, in float32. With want_grad the logits' gradient,
// each row scaled by row_scale, is left in `logits`.
at::Tensor chunk_loss_cuda(at::Tensor& logits, int64_t valid, const at::Tensor& targets, int64_t start,
                           const at::Tensor& row_scale, const at::Tensor& counted, const VocabShards* shards,
                           bool want_grad) {
  const int64_t rows = logits.size(0), cols = logits.size(1);
  const auto f32 = targets.options().dtype(at::kFloat);
  at::Tensor row_max = at::empty({rows}, f32), row_sum = at::empty({rows}, f32), target_logit = at::empty({rows}, f32);
  void* stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  cuda::cross_entropy_row_stats(logits.data_ptr(), logit_type(logits), rows, cols, valid, targets.data_ptr<int64_t>(),
                                start, row_max.data_ptr<float>(), row_sum.data_ptr<float>(),
                                target_logit.data_ptr<float>(), stream);
  if (shards) {
    // This shard's sum is relative to its own maximum; rebase it on the global one.
    at::Tensor global_max = row_max.clone();
    shards->all_reduce_max(global_max);
    row_sum.mul_((row_max - global_max).exp_());
    shards->all_reduce_sum(row_sum);
    shards->all_reduce_sum(target_logit);
    row_max = global_max;
  }
  if (want_grad)
    cuda::cross_entropy_logit_grad(logits.data_ptr(), logit_type(logits), rows, cols, valid,
                                   targets.data_ptr<int64_t>(), start, row_max.data_ptr<float>(),
                                   row_sum.data_ptr<float>(), row_scale.data_ptr<float>(), stream);
  return at::where(counted, row_sum.log() + row_max - target_logit, at::zeros_like(row_sum));
}
#endif

// The same with ATen operations (the CPU, and any device without the kernels).
at::Tensor chunk_loss_aten(at::Tensor& logits, int64_t valid, const at::Tensor& targets, int64_t start,
                           const at::Tensor& row_scale, const at::Tensor& counted, const VocabShards* shards,
                           bool want_grad) {
  const int64_t cols = logits.size(1);
  // float32 work (float64 kept as it is); a fresh tensor either way, so written in place.
  at::Tensor work = logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
  if (valid < cols) work.narrow(1, valid, cols - valid).fill_(-std::numeric_limits<double>::infinity());
  at::Tensor row_max = std::get<0>(work.max(1));  // (rows)
  if (shards) shards->all_reduce_max(row_max);
  const at::Tensor local = targets - start;
  const at::Tensor held = counted & (local >= 0) & (local < valid);
  const at::Tensor index = at::where(held, local, at::zeros_like(local)).unsqueeze(1);  // (rows, 1)
  at::Tensor target_logit = at::where(held, work.gather(1, index).squeeze(1), at::zeros_like(row_max));
  if (shards) shards->all_reduce_sum(target_logit);
  work.sub_(row_max.unsqueeze(1)).exp_();  // exp(logit - max), 0 in padding columns
  at::Tensor row_sum = work.sum(1);
  if (shards) shards->all_reduce_sum(row_sum);
  at::Tensor per_row = at::where(counted, row_sum.log() + row_max - target_logit, at::zeros_like(row_sum));
  if (want_grad) {
    // softmax - one-hot, each row times its scale
    work.div_(row_sum.unsqueeze(1));
    work.scatter_add_(1, index, -held.to(work.scalar_type()).unsqueeze(1));
    work.mul_(row_scale.to(work.scalar_type()).unsqueeze(1));
    if (work.data_ptr() != logits.data_ptr()) logits.copy_(work);
  }
  return per_row;
}

class LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, const at::Tensor& row_weights, const VocabShards* shards,
                            int64_t ignore_index, c10::ScalarType compute_dtype, bool want_grad,
                            int64_t chunk_rows) {
    // The casts and products below are this function's own; autocast must not redo them.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t rows = hidden.size(0), vocab_rows = weight.size(0);
    const int64_t start = shards ? shards->start : 0;
    const int64_t vocab_size = shards ? shards->vocab_size : vocab_rows;
    const int64_t valid = std::clamp<int64_t>(vocab_size - start, 0, vocab_rows);

    const at::Tensor h = hidden.to(compute_dtype);
    at::Tensor w = weight.to(compute_dtype);
    if (w.is_cuda() && vocab_rows % kCudaAlign != 0)
      w = at::constant_pad_nd(w, {0, 0, 0, (vocab_rows + kCudaAlign - 1) / kCudaAlign * kCudaAlign - vocab_rows});
    const int64_t cols = w.size(0);

    bool kernels = false;
#ifdef FTRAIN_WITH_CUDA_KERNELS
    kernels = w.is_cuda() && compute_dtype != at::kDouble;
#endif
    const int64_t chunk =
        chunk_rows > 0 ? chunk_rows
                       : cross_entropy_chunk_rows(cols, kernels ? static_cast<int64_t>(c10::elementSize(compute_dtype)) : 4);
    // Sums, scales and the weight's gradient in float32 (float64 for a float64 model).
    const c10::ScalarType accumulate = compute_dtype == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor counted = targets != ignore_index;
    const at::Tensor scale =
        (row_weights.defined() ? row_weights.to(accumulate) : at::ones({rows}, hidden.options().dtype(accumulate))) *
        counted.to(accumulate);

    at::Tensor grad_hidden, grad_weight;
    if (want_grad) {
      grad_hidden = at::empty_like(hidden);
      grad_weight = at::zeros({cols, weight.size(1)}, weight.options().dtype(accumulate));
    }
    at::Tensor loss = at::zeros({}, hidden.options().dtype(accumulate));
    for (int64_t begin = 0; begin < rows; begin += chunk) {
      const int64_t n = std::min(chunk, rows - begin);
      const at::Tensor h_chunk = h.narrow(0, begin, n);
      at::Tensor logits = at::mm(h_chunk, w.t());  // (n, C) @ (C, cols) -> (n, cols)
      const at::Tensor t = targets.narrow(0, begin, n), c = counted.narrow(0, begin, n), s = scale.narrow(0, begin, n);
      at::Tensor per_row;
#ifdef FTRAIN_WITH_CUDA_KERNELS
      if (kernels) per_row = chunk_loss_cuda(logits, valid, t, start, s, c, shards, want_grad);
#endif
      if (!kernels) per_row = chunk_loss_aten(logits, valid, t, start, s, c, shards, want_grad);
      loss.add_((per_row.to(accumulate) * s).sum());
      if (!want_grad) continue;
      // logits now hold d loss / d logits (n, cols): (n, cols) @ (cols, C) and (cols, n) @ (n, C)
      grad_hidden.narrow(0, begin, n).copy_(at::mm(logits, w));
      grad_weight.add_(at::mm(logits.t(), h_chunk));
    }
    if (want_grad) {
      if (cols != vocab_rows) grad_weight = grad_weight.narrow(0, 0, vocab_rows);
      ctx->save_for_backward({grad_hidden, grad_weight.to(weight.scalar_type())});
    }
    return loss;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grad_outputs[0];
    at::Tensor grad_hidden, grad_weight;
    if (!saved.empty()) {
      grad_hidden = saved[0] * g.to(saved[0].scalar_type());
      grad_weight = saved[1] * g.to(saved[1].scalar_type());
    }
    return {grad_hidden, grad_weight, {}, {}, {}, {}, {}, {}, {}};
  }
};

std::string shape(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : "undefined"; }

}  // namespace

at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                    const at::Tensor& row_weights, const VocabShards* shards, int64_t ignore_index,
                                    int64_t chunk_rows) {
  if (!hidden.defined() || !weight.defined() || hidden.dim() != 2 || weight.dim() != 2 ||
      hidden.size(1) != weight.size(1))
    throw std::invalid_argument("linear_cross_entropy_sum: hidden (N, C) and weight (V, C) expected, got " +
                                shape(hidden) + " and " + shape(weight));
  if (!targets.defined() || targets.scalar_type() != at::kLong || targets.dim() != 1 ||
      targets.size(0) != hidden.size(0))
    throw std::invalid_argument("linear_cross_entropy_sum: targets must be int64 of shape (" +
                                std::to_string(hidden.size(0)) + "), got " + shape(targets));
  if (row_weights.defined() && row_weights.sizes() != targets.sizes())
    throw std::invalid_argument("linear_cross_entropy_sum: row_weights must have the targets' shape (" +
                                std::to_string(targets.size(0)) + "), got " + shape(row_weights));
  const int64_t vocab_size = shards ? shards->vocab_size : weight.size(0);
  if (targets.is_cpu()) {
    // A device check would stop the step for a host synchronisation; targets made on
    // the host are checked there before they move.
    const at::Tensor bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab_size));
    if (bad.any().item<bool>())
      throw std::invalid_argument("linear_cross_entropy_sum: a target is outside [0, " + std::to_string(vocab_size) +
                                  ") and is not ignore_index " + std::to_string(ignore_index));
  }
  const c10::DeviceType device = hidden.device().type();
  const c10::ScalarType compute_dtype =
      at::autocast::is_autocast_enabled(device) ? at::autocast::get_autocast_dtype(device) : weight.scalar_type();
  const bool want_grad = at::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  return LinearCrossEntropy::apply(hidden, weight, targets, row_weights, shards, ignore_index, compute_dtype,
                                   want_grad, chunk_rows);
}

}  // namespace ftrain::model
