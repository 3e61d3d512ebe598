// Dropout (Srivastava et al., 2014) whose mask is a hash of each element's index under
// a seed drawn from the default generator, instead of one Bernoulli draw per element.
//
// On the CPU, LibTorch's dropout samples its mask element by element and stores it;
// drawing the mask was over a tenth of a BERT-small training step there. Here the mask
// is computed, not sampled: element i is kept when the top 24 bits of
// hash(seed, i) fall below (1 - p) 2^24, so the forward pass is one vectorised loop,
// no mask is stored, and the backward pass computes the same mask again from the seed.
// The seed is one 64-bit draw from LibTorch's default CPU generator, so
// torch::manual_seed fixes the masks, and restoring the generator's state (as
// activation checkpointing does before recomputing a block) gives the same masks.
//
// Anything but a CPU tensor of a floating dtype goes to torch::dropout unchanged (the
// CUDA kernels already generate their masks in parallel), unless the tensor is a part of
// a larger one (below).
//
// A part: when a parallel layout splits an activation over ranks (tensor parallelism
// splits attention by heads, sequence parallelism the residual stream by position),
// each rank drops its part with that part of the whole activation's mask, so the
// training equals the unsplit model's, dropout included. On other devices than the CPU
// a part's mask is the same hash computed with tensor operations.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace ftrain::model {

// Where a tensor lies in the one the unsplit model computes: along `dim` it holds the
// entries [offset, offset + size(dim)) of `whole`; every other dimension is complete.
struct SliceOf {
  int64_t dim = 0;
  int64_t offset = 0;
  int64_t whole = 0;
};

// x with each element zeroed with probability p and the others scaled by 1 / (1 - p),
// when training; x itself otherwise or when p == 0. p in [0, 1).
at::Tensor hashed_dropout(const at::Tensor& x, double p, bool training);
// The same for x that is the part `part` of a whole tensor: x gets the mask entries the
// whole tensor would get at its positions. Throws std::invalid_argument when the part
// does not fit x (a dimension out of range, or offset + size beyond whole).
at::Tensor hashed_dropout(const at::Tensor& x, double p, bool training, const std::optional<SliceOf>& part);

// The keep mask hashed_dropout() applies for `seed`, as 0 / 1 values of x's shape (float32):
// what the forward and backward passes compute, for tests. With a part, the mask of that
// part of the whole tensor, computed on `device` (the tensor-operation form off the CPU,
// and on the CPU too when `tensor_ops` is set, so tests compare the two).
at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed);
at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed, const SliceOf& part,
                                    bool tensor_ops = false);

// at::scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, scale), the same
// arguments and result, except that on the CPU with dropout_p > 0 (where LibTorch runs
// its unfused form anyway) it is written out with hashed_dropout on the attention
// probabilities: softmax(q k^T scale + mask) -> dropout -> @ v. `mask` is boolean
// (true: may attend) or additive. `heads`: q holds the heads [offset, offset + nh) of
// `whole` (tensor parallelism), and the probabilities are dropped as that part of the
// whole model's; with dropout on another device this also takes the written-out form.
at::Tensor dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& mask, double dropout_p, bool is_causal,
                                 std::optional<double> scale = std::nullopt,
                                 const std::optional<SliceOf>& heads = std::nullopt);

}  // namespace ftrain::model
