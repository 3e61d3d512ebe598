// ZeRO-3's vocabulary matrices used without gathering them whole (dist/zero.h,
// "Vocabulary units"): the token embedding's look-up and the language-modelling head's
// cross-entropy, computed window by window.
//
// Rank k owns rows k R .. k R + R - 1 (R = ceil(V / N)). Window w is the w-th slice of
// Rw rows of every owner's R: one all-gather brings it to every rank (N Rw rows, owner
// k's rows of window w at k Rw), which uses it on its own tokens and drops it. In
// backward every rank builds its gradient of the window's rows from its own tokens, and
// one reduce-scatter sums it onto the owners, each adding its part to its shard's
// gradient. The windows are as few as keep one under RowShards::window_bytes (64 MiB, or
// the largest block if it is smaller: dist/zero.h, kStreamWindowBytes), so a rank
// holds one window of rows and one of their gradient beside its shard: the whole (V, C)
// matrix and its gradient never exist in any process, however large the vocabulary.
// Per pass the bytes are those of gathering (or reduce-scattering) the matrix once, in
// W collectives whatever N is. The head needs the rows twice (forward, backward).
//
// The head's loss uses the online log-sum-exp: each window's logits update a running
// maximum and sum per row, so only (rows, N Rw) logits exist at a time.
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
// The same for an encoder-decoder (T5): both stacks read the token embedding, and so
// does a tied head, so the embedding and an untied head stream and there is no input
// unit. Tensor parallelism leaves both whole, so they stream at any tp.
ZeroUnitNames zero3_seq2seq_unit_names(torch::nn::Module& root, const std::string& head_weight_name);

// The style for the token embedding whose weight `rows` holds: (...) int64 ids ->
// (..., C), as torch's embedding computes it; with padding_idx that row's gradient stays
// zero, as torch's does. Its tied-head logits are streamed_logits. `rows` must outlive
// the model's use of the style.
// window_bytes: the windows' size limit; 0, the default, is rows.window_bytes (tests
// make it small to get many windows).
model::EmbeddingStyle streamed_embedding(const ZeroSharding::RowShards& rows, std::optional<int64_t> padding_idx,
                                         int64_t window_bytes = 0);

// hidden (..., C) -> (..., V): its logits against every row of the matrix `rows` holds,
// one window at a time (each rank computes its own rows' logits, whole). For evaluation
// and generation: it has no gradient, and throws std::logic_error where one is being
// recorded (a loss streams the head with streamed_linear_cross_entropy_sum).
at::Tensor streamed_logits(const ZeroSharding::RowShards& rows, const at::Tensor& hidden, int64_t window_bytes = 0);

// The style for an untied head (a model::Linear without bias) whose weight `rows` holds:
// streamed_logits.
model::LinearStyle streamed_head(const ZeroSharding::RowShards& rows);
// Sets that style on the model::Linear of `root` whose weight `rows` holds; false when
// no such layer is found.
bool stream_head(torch::nn::Module& root, const ZeroSharding::RowShards& rows);

// model::linear_cross_entropy_sum for the head whose weight `rows` holds: hidden (N, C),
// targets (N) int64 or ignore_index, row_weights (N) or undefined. Equal to it within
// float32 rounding; differentiable with respect to hidden, and, when the head trains,
// its gradient goes to the owners' shards in backward.
at::Tensor streamed_linear_cross_entropy_sum(const ZeroSharding::RowShards& rows, const at::Tensor& hidden,
                                             const at::Tensor& targets, const at::Tensor& row_weights,
                                             int64_t ignore_index = -100, int64_t window_bytes = 0);

}  // namespace ftrain::dist
