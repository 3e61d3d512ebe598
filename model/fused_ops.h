// Element-wise steps of the transformer blocks that read and write an activation once
// each on CUDA instead of once per ATen operation: a residual sum and the norm that
// reads it, SwiGLU, bias + GELU, and the rotation of queries and keys.
//
// Each function runs one CUDA kernel forward and one or two backward when its inputs
// are CUDA tensors of float32, bfloat16 or float16 and the library was built with
// the kernels (model/fused_ops.cmake); elsewhere it runs its reference below, the ATen
// operations the models wrote before, differentiable through ordinary autograd. The
// kernels compute in float32 and round each output once, so in bfloat16 they differ
// from the reference by rounding; in float32 they agree within float32 rounding.
// The kernels' gradients are first-order only (no double backward).
//
// Shapes: leading dimensions arbitrary, last dimension C, unless said otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>

namespace ftrain::model::fused {

// (residual, normed): residual = x + y (just x when y is undefined) in x's dtype, y cast
// to x's dtype first; normed = weight * (residual * rsqrt(mean(residual^2) + eps)),
// statistics and arithmetic in float32, in out_dtype (default: residual's dtype).
// Both outputs carry gradients: the residual continues the stream, normed feeds the
// next layer. Throws std::invalid_argument unless y (when defined) has x's shape and
// weight has shape (C).
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                               double eps, std::optional<c10::ScalarType> out_dtype = std::nullopt);

// The same with LayerNorm (biased variance, as at::layer_norm); weight and bias (C), the
// bias may be undefined.
std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps,
                                                 std::optional<c10::ScalarType> out_dtype = std::nullopt);

// silu(gate) * up in their dtype. Throws std::invalid_argument unless gate and up have
// the same shape and dtype.
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);

// gelu(x + bias) in x's dtype, with the tanh approximation (GPT-2's gelu_new) or the
// exact erf; bias (C) is broadcast over the rows and may be undefined.
at::Tensor bias_gelu(const at::Tensor& x, const at::Tensor& bias, bool tanh_approximation);

// (q, k) turned by their positions' angles: x * cos + rotate_half(x) * sin, where
// rotate_half(x) = cat(-x2, x1) of the halves of the last dimension (Hugging Face's
// layout). q (B, nh, T, hs) and k (B, nkv, T, hs), views allowed (transposes of
// (B, T, n, hs)); cos and sin (B or 1, T, hs), the angles repeated over both halves.
// -> (B, nh, T, hs) and (B, nkv, T, hs) in q's and k's dtype. Gradients flow to q and k;
// on CUDA cos and sin are constants (the reference runs when they need gradients).
// Throws std::invalid_argument for mismatched shapes or dtypes of q and k, or odd hs.
std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                         const at::Tensor& sin);

// The dtype a linear layer reading x computes in: autocast's for x's device when
// autocast is on there and x is a float32, bfloat16 or float16 tensor, else x's. A norm
// that writes this dtype saves the cast the layer would make.
c10::ScalarType input_dtype_for_linear(const at::Tensor& x);

// Whether this build has the CUDA kernels (otherwise CUDA tensors run the references).
bool has_cuda_kernels();

// The unfused computations, on any device and dtype, exactly as the models wrote them
// (so Hugging Face parity holds bit for bit on the CPU). Same contracts as above.
namespace reference {

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                               double eps, std::optional<c10::ScalarType> out_dtype = std::nullopt);
std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps,
                                                 std::optional<c10::ScalarType> out_dtype = std::nullopt);
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);
at::Tensor bias_gelu(const at::Tensor& x, const at::Tensor& bias, bool tanh_approximation);
std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                         const at::Tensor& sin);

}  // namespace reference

}  // namespace ftrain::model::fused
