// The language-modelling head and its cross-entropy in one pass over row chunks, so the
// (rows, V) logits are never held whole, in float32 or in the compute dtype.
//
// For each chunk of rows the logits are computed, the loss of each row taken from them,
// and, when gradients are wanted, the gradient of the logits (softmax - one-hot) turned
// straight into the chunk's share of the hidden states' and the head weight's gradients.
// Backward then only scales those by the incoming gradient. Peak extra memory is one
// chunk of logits (about 512 MiB at most) plus the two gradients, instead of the
// float32 logits, their softmax and their gradient over every row.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

namespace ftrain::model {

// The vocabulary rows a head weight holds when tensor parallelism splits it, and how to
// combine per-row statistics with the ranks holding the others. The model never
// communicates: dist/ fills the two reductions (dist::vocab_shards). A whole head needs
// none of this.
struct VocabShards {
  int64_t start = 0;       // vocabulary id of the weight's first row
  int64_t vocab_size = 0;  // the real vocabulary; rows at or past it are padding
  // In place over the ranks that hold the other rows: element-wise maximum, and sum.
  std::function<void(at::Tensor&)> all_reduce_max;
  std::function<void(at::Tensor&)> all_reduce_sum;
};

// sum_i row_weights[i] * CE(hidden[i] @ weight^T, targets[i]):
//   hidden (N, C), the head's input (any float dtype; under autocast the product runs in
//     the autocast dtype, as a linear layer would);
//   weight (V_local, C), the whole head or this rank's vocabulary rows (shards);
//   targets (N) int64 token ids, or ignore_index (such rows add nothing);
//   row_weights (N) float, or undefined for all ones (a loss mask, say);
//   chunk_rows: rows per chunk, 0 for cross_entropy_chunk_rows' choice.
// -> a float32 scalar, differentiable with respect to hidden and weight. Equal to the
// unfused computation (F::linear, then cross_entropy on float32 logits) within float32
// rounding. Throws std::invalid_argument for mismatched shapes and, for targets held on
// the CPU, for a target outside the vocabulary.
at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                    const at::Tensor& row_weights, const VocabShards* shards = nullptr,
                                    int64_t ignore_index = -100, int64_t chunk_rows = 0);

// Rows per chunk for a vocabulary of `columns` whose per-element work takes
// `bytes_per_element`: 512 MiB of logits work at most, and at least one row.
int64_t cross_entropy_chunk_rows(int64_t columns, int64_t bytes_per_element);

}  // namespace ftrain::model
