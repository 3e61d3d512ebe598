// CUDA kernels of model/fused_ops.cpp, on raw device pointers so that only this
// header's callers, not the kernels, see LibTorch (whose headers need C++20; CUDA files
// are C++17). Each launches on `stream`, a cudaStream_t of the current device (the
// caller sets both), and throws std::runtime_error when the launch fails. Matrices are
// row-major (rows, cols) and contiguous; arithmetic is float32 whatever the storage
// type, and every value written is rounded once.
#pragma once

#include <cstdint>

namespace ftrain::model::fused::cuda {

enum class DType { float32, bfloat16, float16 };

// ---------------------------------------------------------------------------------
// Residual sum and norm, one block per row.

// residual = x + y (when y is given; else the residual is x and nothing is written),
// in in_type, then per row, from the rounded residual: rstd = 1 / sqrt(mean(r^2) + eps)
// (rms) or mean and rstd = 1 / sqrt(var + eps) (LayerNorm, biased variance), and
// normed = weight * normalised (+ bias) in out_type. weight (cols) float32; bias (cols)
// float32 or null, and null for rms, where mean is not written either (may be null).
void add_norm_forward(bool rms, const void* x, const void* y, DType in_type, const float* weight, const float* bias,
                      float eps, int64_t rows, int64_t cols, void* residual, void* normed, DType out_type, float* mean,
                      float* rstd, void* stream);

// grad_input = d/d residual: the norm's backward of grad_normed (out_type) plus
// grad_residual (in_type; null when the residual output has no gradient), in in_type.
void add_norm_backward(bool rms, const void* grad_normed, DType out_type, const void* grad_residual,
                       const void* residual, DType in_type, const float* weight, const float* mean, const float* rstd,
                       int64_t rows, int64_t cols, void* grad_input, void* stream);

// How many blocks of rows the column reductions below split the rows into: the first
// dimension of their (blocks, cols) float32 partial sums, which the caller sums.
int64_t column_blocks(int64_t rows, int64_t cols);

// Partial sums over blocks of rows of grad_normed * normalised (for the weight) and of
// grad_normed (for the bias; bias_partial null to skip, and always for rms).
void norm_param_grad(bool rms, const void* grad_normed, DType out_type, const void* residual, DType in_type,
                     const float* mean, const float* rstd, int64_t rows, int64_t cols, int64_t blocks,
                     float* weight_partial, float* bias_partial, void* stream);

// ---------------------------------------------------------------------------------
// Element-wise.

// out = silu(gate) * up, n elements of one type.
void swiglu_forward(const void* gate, const void* up, void* out, DType type, int64_t n, void* stream);
// grad_gate and grad_up from grad_out, all of one type.
void swiglu_backward(const void* grad_out, const void* gate, const void* up, void* grad_gate, void* grad_up,
                     DType type, int64_t n, void* stream);

// out = gelu(x + bias) with the tanh approximation or erf; bias (cols) float32 or null.
void bias_gelu_forward(const void* x, const float* bias, DType type, int64_t rows, int64_t cols, bool tanh_approximation,
                       void* out, void* stream);
// grad_x = grad_out * gelu'(x + bias) (bias float32 or null), and, when bias_partial is
// given, grad_x's partial sums over `blocks` blocks of rows (blocks, cols) for the bias's
// gradient (see column_blocks).
void bias_gelu_backward(const void* grad_out, const void* x, const float* bias, DType type, int64_t rows, int64_t cols,
                        bool tanh_approximation, void* grad_x, int64_t blocks, float* bias_partial, void* stream);

// ---------------------------------------------------------------------------------
// Rotary embeddings of queries and keys, one launch for both.

// One (B, heads, T, hs) tensor read and one written, each with its last dimension
// contiguous; strides in elements of B, heads and T.
struct RotaryOperand {
  const void* in = nullptr;
  void* out = nullptr;
  int64_t heads = 0;
  int64_t in_strides[3] = {0, 0, 0};
  int64_t out_strides[3] = {0, 0, 0};
};

// out = in * cos + rotate_half(in) * sin for q and k (one type); with `inverse` the
// transposed map, which takes the outputs' gradient to the inputs':
// in * cos + cat(v2, -v1) where (v1, v2) are the halves of in * sin. cos and sin
// float32, contiguous (angle_batches, T, hs), angle_batches 1 (shared by every batch) or B.
void rotary(const RotaryOperand& q, const RotaryOperand& k, DType type, int64_t batch, int64_t seq, int64_t head_size,
            const float* cos, const float* sin, int64_t angle_batches, bool inverse, void* stream);

}  // namespace ftrain::model::fused::cuda
