// The logits of an output layer: the one product of the language models whose speed
// depends on the vocabulary's size.
#pragma once

#include <torch/nn/functional/linear.h>
#include <torch/nn/functional/padding.h>

namespace ftrain::model {

// (..., C) @ (V, C)^T -> (..., V): the logits of an output layer over a vocabulary of V
// rows. On CUDA, a V that is not a multiple of 64 (GPT-2's 50257) leaves the logits'
// rows unaligned, and cuBLAS falls back to kernels that take about three times as long
// for what are the largest matrix products of a small model. The product then runs on
// the weight padded with zero rows, and the logits are cut back to V columns: the same
// values, from aligned kernels.
inline torch::Tensor vocab_logits(const torch::Tensor& hidden, const torch::Tensor& weight) {
  constexpr int64_t kAlign = 64;
  const int64_t vocab = weight.size(0);
  if (!weight.is_cuda() || vocab % kAlign == 0) return torch::nn::functional::linear(hidden, weight);
  const int64_t padded = (vocab + kAlign - 1) / kAlign * kAlign;
  const torch::Tensor padded_weight = at::constant_pad_nd(weight, {0, 0, 0, padded - vocab});
  return torch::nn::functional::linear(hidden, padded_weight).narrow(-1, 0, vocab);
}

}  // namespace ftrain::model
