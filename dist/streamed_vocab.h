// ZeRO-3's vocabulary matrices used without gathering them (dist/zero.h, "Vocabulary
// units"): the token embedding's look-up and the language-modelling head's
// cross-entropy, computed shard by shard.
//
// For k = 0 .. N-1 in turn, rank k broadcasts its R rows (vocabulary ids k R ..
// k R + R - 1); every rank uses them on its own tokens, then drops them. In backward
// every rank computes the gradient of those rows from its own tokens, and a reduce sums
// it onto rank k, which adds it to its shard's gradient. Beside its own shard a rank
// holds one shard of rows and one of their gradient at a time, so the whole (V, C)
// matrix and its gradient never exist in any process, however large the vocabulary.
// The bytes are those of gathering and reduce-scattering the matrix, plus, for the head,
// one more pass of broadcasts in backward, since its weight is needed again there.
//
// The head's loss uses the online log-sum-exp: each shard's logits update a running
// maximum and sum per row, so only (rows, R) logits exist at a time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "dist/zero.h"
#include "model/linear.h"

namespace ftrain::dist {

// How ZeRO-3 cuts a model with blocks besides its blocks (dist/zero.h): the parameters
// only the embeddings use (the input unit) and the vocabulary matrices that stream.
// These are the token embedding and, for a language model, its head weight
// (`head_weight_name`; empty for a classifier); none when tensor parallelism splits
// the model (tp_size > 1: its vocabulary-parallel layers hold those rows split
// already). A head tied to the embedding that does not stream keeps the embedding in
// the root: then there is no input unit.
struct ZeroUnitNames {
  std::vector<std::string> input;
  std::vector<std::string> vocabulary;
};
ZeroUnitNames zero3_unit_names(torch::nn::Module& root, const std::string& head_weight_name, bool ties_embeddings,
                               int tp_size);

// The style for the token embedding whose weight `rows` holds: (...) int64 ids ->
// (..., C), as torch's embedding computes it; with padding_idx that row's gradient stays
// zero, as torch's does. `rows` must outlive the model's use of the style.
model::EmbeddingStyle streamed_embedding(const ZeroSharding::RowShards& rows, std::optional<int64_t> padding_idx);

// model::linear_cross_entropy_sum for the head whose weight `rows` holds: hidden (N, C),
// targets (N) int64 or ignore_index, row_weights (N) or undefined. Equal to it within
// float32 rounding; differentiable with respect to hidden, and, when the head trains,
// its gradient goes to the owners' shards in backward.
at::Tensor streamed_linear_cross_entropy_sum(const ZeroSharding::RowShards& rows, const at::Tensor& hidden,
                                             const at::Tensor& targets, const at::Tensor& row_weights,
                                             int64_t ignore_index = -100);

}  // namespace ftrain::dist
