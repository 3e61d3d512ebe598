// Tensor parallelism (Shoeybi et al., 2019, "Megatron-LM"): the weights of each layer
// are split over the ranks of the tensor-parallel group, each rank computes its part
// of every layer, and a few collectives join the parts.
//
// Three layers of it, each on the one below:
//   1. Paired autograd functions, the only places tensor parallelism communicates.
//   2. Styles for model/linear.h's layers: column-parallel and row-parallel linear
//      layers, the vocabulary-parallel embedding, and the cross-entropy that reads
//      vocabulary-parallel logits.
//   3. apply_tensor_parallel, which shards a whole GPT-2, Llama, BERT or T5 in place and
//      sets the styles (each family's split is its own file in dist/splits/), and
//      load_tensor_parallel, which splits a pretrained model before reading it so that
//      each rank reads only its part of the files.
//      docs/tensor-parallel.md says which weight is split how.
//
// Every member of the group makes the same calls in the same order. The group (or
// communicator) must outlive the tensors and models that use it: autograd graphs and
// styles keep a reference to it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "model/bert.h"
#include "model/causal_lm.h"
#include "model/fused_cross_entropy.h"
#include "model/classifier.h"
#include "model/gpt2.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/seq2seq_lm.h"

namespace ftrain::dist {

// ---------------------------------------------------------------------------------
// 1. The paired functions. N = group.size(), r = group.rank().

// Forward: identity. Backward: all-reduce (sum) of the gradient.
// Where a replicated activation enters layers whose weights are split.
at::Tensor copy_to_tp_region(const at::Tensor& x, Group& group);

// Forward: all-reduce (sum). Backward: identity.
// Where the partial outputs of a split layer are joined into the replicated one.
at::Tensor reduce_from_tp_region(const at::Tensor& x, Group& group);

// Forward: all-gather along the last dimension, in rank order: (..., n) -> (..., N n).
// Backward: this rank's slice [r n, (r + 1) n) of the gradient's last dimension.
at::Tensor gather_from_tp_region(const at::Tensor& x, Group& group);

// Forward: this rank's slice along the last dimension: (..., N n) -> (..., n).
// Backward: all-gather of the gradient along the last dimension.
// Throws std::invalid_argument when N does not divide the last dimension.
at::Tensor scatter_to_tp_region(const at::Tensor& x, Group& group);

// Forward: identity. Backward: the sum of the gradients of the `replicas` consecutive
// ranks (r / replicas equal) that hold copies of the same tensor, on each of them.
// For key/value heads of grouped-query attention when N exceeds their number: the
// copies then get the gradient the undivided head would get, and stay equal.
// `replicas` divides N.
at::Tensor sum_over_replicas(const at::Tensor& x, Group& group, int replicas);

// Sequence parallelism (Korthikanti et al., 2022, "Reducing Activation Recomputation in
// Large Transformer Models"): between the split layers, where every rank would compute
// the same norms, dropout and residual adds over the whole sequence, each rank keeps
// only its positions. Activations there are (B, T, ...) with the sequence on dimension
// 1, T a multiple of N; rank r holds positions [r T / N, (r + 1) T / N). Each function
// throws std::invalid_argument when N does not divide the sequence.

// Forward: this rank's positions (B, T, ...) -> (B, T / N, ...). Backward: all-gather
// of the gradient along the sequence. Where replicated activations (the embeddings)
// enter the sequence-parallel region.
at::Tensor scatter_to_sequence_region(const at::Tensor& x, Group& group);

// Who reads an activation gathered from the sequence-parallel region, which decides its
// backward pass.
enum class GatheredFor {
  // Split layers (column-parallel): each rank's gradient is its part of the sum, and
  // the backward pass reduce-scatters it along the sequence.
  tensor_parallel,
  // Computations every rank repeats (a classifier head): the gradients are equal on
  // every rank, and the backward pass keeps this rank's positions of it.
  replicated,
};

// Forward: all-gather along the sequence, (B, T / N, ...) -> (B, T, ...), in rank order.
// Backward as `reader` says. Where the sequence-parallel region's activation enters the
// column-parallel layers (in place of copy_to_tp_region), or leaves the body.
at::Tensor gather_from_sequence_region(const at::Tensor& x, Group& group,
                                       GatheredFor reader = GatheredFor::tensor_parallel);

// Forward: reduce-scatter along the sequence: the partial outputs (B, T, ...) of a
// row-parallel layer summed, and this rank's positions (B, T / N, ...) of the sum kept.
// Backward: all-gather of the gradient. In place of reduce_from_tp_region.
at::Tensor reduce_scatter_to_sequence_region(const at::Tensor& x, Group& group);

// ---------------------------------------------------------------------------------
// 2. Layer styles and the vocabulary-parallel loss.

// The rows of a vocabulary of V tokens that rank r of N holds: V is padded up to a
// multiple of N so that every rank holds as many rows; the padding rows are zero,
// never looked up, and masked out of the loss.
struct VocabShard {
  int64_t vocab_size = 0;   // V
  int64_t padded_size = 0;  // V rounded up to a multiple of N
  int64_t start = 0;        // first row of rank r: r * rows
  int64_t rows = 0;         // padded_size / N

  static VocabShard of(int64_t vocab_size, int tp_size, int tp_rank);
  bool holds(int64_t token) const { return token >= start && token < start + rows; }
};

struct ColumnParallelOptions {
  // Pass the input through copy_to_tp_region. False where an InputHook in front of
  // the layer already does (several layers reading one input share one).
  bool copy_input = true;
  // All-gather the output so every rank holds all of it; false leaves each rank its
  // columns of the output, as the next row-parallel layer wants them.
  bool gather_output = false;
  // > 1: this many consecutive ranks hold the same rows (replicated key/value heads),
  // and the gradients of weight and bias are summed over them (sum_over_replicas).
  int replicas = 1;
  // The input holds this rank's positions of the sequence, and copy_input gathers them
  // all (gather_from_sequence_region) instead of copying.
  bool sequence_parallel = false;
};

// Column-parallel linear: this rank holds rows (output features) of W (out, in) and
// the same entries of b: y_r = x W_r^T + b_r, (..., in) -> (..., out / N).
model::LinearStyle column_parallel(Group& group, const ColumnParallelOptions& options = {});

struct RowParallelOptions {
  // The input is the whole (..., in), and each rank takes its slice (scatter_to_tp_region).
  bool scatter_input = false;
  // The output keeps this rank's positions of the sequence: the partial sums are
  // reduce-scattered (reduce_scatter_to_sequence_region) instead of all-reduced, and
  // the bias is added to those positions.
  bool sequence_parallel = false;
};

// Row-parallel linear: this rank holds columns (input features) of W and the whole b,
// and reads its slice of the input: y = all-reduce(x_r W_r^T) + b, the bias added
// once after the reduction. (..., in / N) -> (..., out).
model::LinearStyle row_parallel(Group& group, const RowParallelOptions& options = {});

// Vocabulary-parallel embedding: this rank holds rows [shard.start, shard.start +
// shard.rows) of the table. Ids it does not hold look up zero vectors; the partial
// embeddings are summed over the ranks (reduce_from_tp_region). `padding_idx` is the
// local row that gets no gradient, if this rank holds the padding token.
model::EmbeddingStyle vocab_parallel_embedding(Group& group, const VocabShard& shard,
                                               std::optional<int64_t> padding_idx = std::nullopt);

// The InputHook that puts copy_to_tp_region in front of column-parallel layers.
model::InputHook copy_to_tp_region_hook(Group& group);
// The InputHooks of sequence parallelism: gather_from_sequence_region in front of
// column-parallel layers or where the body's output leaves, scatter_to_sequence_region
// where the embeddings enter the blocks.
model::InputHook gather_from_sequence_region_hook(Group& group, GatheredFor reader = GatheredFor::tensor_parallel);
model::InputHook scatter_to_sequence_region_hook(Group& group);

// Cross-entropy of each position from this rank's vocabulary shard of the logits,
// without any rank holding all of them:
//   local_logits (..., V_pad / N), the columns [r V_pad / N, (r + 1) V_pad / N) of the
//     logits over the padded vocabulary; columns >= vocab_size are ignored.
//   targets (...) int64 token ids in [0, vocab_size), or ignore_index.
// -> (...) loss of each position (0 where the target is ignore_index), equal on every
// rank, in float32 (float64 for float64 logits). Three all-reduces of one value per
// position: the maximum logit, the sum of exponentials, the target's logit (from the
// rank that holds it). Differentiable with respect to local_logits.
// Throws std::invalid_argument for a target outside the vocabulary or mismatched shapes.
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& local_logits, const at::Tensor& targets, Group& group,
                                        int64_t vocab_size, int64_t ignore_index = -100);

// This rank's vocabulary rows of a head split over `group`, with the two reductions of
// per-row statistics over the group, for model::linear_cross_entropy_sum: the same loss
// as vocab_parallel_cross_entropy without any rank holding a whole chunk of logits.
model::VocabShards vocab_shards(Group& group, int64_t vocab_size);

// ---------------------------------------------------------------------------------
// 3. Whole models.

// How apply_tensor_parallel cut one parameter: along `dim`, this rank holds the
// entries whose global indices are `index` (-1: a zero padding entry, e.g. vocabulary
// padding), and `replicas` consecutive ranks hold the same entries.
struct ParameterShard {
  int64_t dim = 0;
  at::Tensor index;                   // (local size along dim) int64, on the CPU
  std::vector<int64_t> global_shape;  // the parameter of the whole model
  int replicas = 1;
};

// What apply_tensor_parallel did, so that checkpoints and exports can store every
// parameter once with its global shape and load it under any tensor-parallel size.
// Parameters it does not name are whole on every rank of the group.
struct TensorParallelPlan {
  int tp_size = 1;
  bool sequence_parallel = false;  // the blocks keep their part of the sequence (comm.options())
  std::map<std::string, ParameterShard> sharded;

  // The ranks of the tensor-parallel group holding the same values of `name`: tp_size
  // for whole parameters. Gradient norms count each value once by weighting with 1/replicas.
  int replicas(const std::string& name) const;
  std::vector<int64_t> global_shape(const std::string& name, const at::Tensor& local) const;
  // Full tensor (global shape) -> this rank's part (the local shape), on full's device.
  at::Tensor shard(const std::string& name, const at::Tensor& full) const;
  // This rank's part -> the full tensor, on every rank. Collective over `tp` for sharded
  // parameters (one all-gather); whole ones are returned as they are.
  at::Tensor gather(const std::string& name, const at::Tensor& local, Group& tp) const;
  // The plan as the model loaders read it: each parameter's global shape, and its part
  // of a whole tensor (a view where the part is one run of entries, else as shard()).
  // Holds a copy of the plan.
  model::ParameterSlices slices() const;
};

// What apply_tensor_parallel does with the values of the parameters it splits.
enum class ParameterValues {
  // The model holds its whole weights (loaded or initialised); each split parameter
  // keeps its part of them.
  sliced,
  // The model was built under model::SkipInitialisation, and its weights are read
  // afterwards through the plan's slices(): split parameters get their local shapes,
  // allocated and not written, and the whole ones are never read.
  uninitialised,
};

//
// Shards, in place, a model that holds the full weights on every rank (as loading
// and init_* make it) to this rank's part for comm.tp(), and sets the styles:
// attention split by heads, the MLP column- then row-parallel, the token embedding
// and the language-modelling head (tied or not) split by vocabulary rows. Call it
// before making the optimizer. Afterwards:
//   - forward() returns this rank's vocabulary shard of the logits, (B, T, V_pad / N),
//     for vocab_parallel_cross_entropy; hidden_states() are whole and equal on every
//     rank.
//   - the parameters of split layers hold this rank's slice; named_parameters() keeps
//     the names. Gradients of replicated parameters (norms, position embedding,
//     row-parallel biases) are whole and equal on every rank.
//   - dropout draws the masks of the unsplit model, given the same generator state on
//     every rank (the same seed): replicated activations get the whole mask, and the
//     attention of this rank's heads those heads' part of it (heads_part).
// With comm.options().sequence_parallel the blocks' norm and dropout regions keep this
// rank's positions only: the embeddings are scattered along the sequence as they enter
// the first block, the column-parallel layers gather it, the row-parallel layers
// reduce-scatter their output, dropout there draws this rank's part of the whole mask,
// and the final norm's output is gathered again, so forward() and hidden_states() are
// as without it. The parameters those regions repeat on every rank (norms, the biases
// of row-parallel layers) see only this rank's positions, so their gradients are summed
// over the group as they are computed (an all-reduce per parameter). The sequence
// length of every batch must be a multiple of the group size; a cached
// forward (generation) is not available on a model split this way.
// With a tensor-parallel group of one rank the model computes as before.
//
// Throws std::invalid_argument, before changing anything, when the group size does not
// divide the heads or the MLP width (naming the sizes), or when the model was already
// sharded.
TensorParallelPlan apply_tensor_parallel(model::Gpt2& model, Communicator& comm,
                                         ParameterValues values = ParameterValues::sliced);
// Grouped-query attention: key/value heads are split when N divides
// num_key_value_heads; when N is a multiple of it, each rank keeps the one key/value
// head its query heads use (N / num_key_value_heads ranks hold each, summing their
// gradients); anything else is refused.
TensorParallelPlan apply_tensor_parallel(model::Llama& model, Communicator& comm,
                                         ParameterValues values = ParameterValues::sliced);
// A causal language model of either family (model::CausalLm); refuses other families.
TensorParallelPlan apply_tensor_parallel(model::CausalLm& model, Communicator& comm,
                                         ParameterValues values = ParameterValues::sliced);
// BERT (the encoder of a classifier): attention split by heads (query, key, value
// column-parallel, attention.output.dense row-parallel), the feed-forward's
// intermediate.dense column- and output.dense row-parallel, word embeddings split by
// vocabulary rows; position and token-type embeddings, LayerNorms and the pooler whole.
// The hidden states it returns are whole on every rank; with sequence parallelism the
// encoder's layers keep this rank's positions between the split layers (as for GPT-2)
// and its output is gathered whole for the pooler and head. `prefix` is the module's name
// in the model that holds it (plan names are prefix + parameter name, e.g. "bert.").
TensorParallelPlan apply_tensor_parallel(model::Bert& model, Communicator& comm, const std::string& prefix = "",
                                         ParameterValues values = ParameterValues::sliced);
// A classifier: its body is split (BERT as above; a GPT-2 or Llama-family body as in
// the language model: blocks by heads and MLP width, the token embedding by vocabulary
// rows), and its head, which reads the whole hidden states, stays whole on every rank.
TensorParallelPlan apply_tensor_parallel(model::Classifier& model, Communicator& comm,
                                         ParameterValues values = ParameterValues::sliced);

// An encoder-decoder (T5): every attention layer (self-attention of both stacks and the
// decoder's cross-attention) split by heads (q, k, v column-parallel, o row-parallel,
// each first block's relative_attention_bias by its head columns), the feed-forward's wi
// (or wi_0 and wi_1) column- and wo row-parallel; the shared embedding, the head and the
// layer norms whole on every rank, so the logits are whole. No sequence parallelism.
TensorParallelPlan apply_tensor_parallel(model::Seq2SeqLm& model, Communicator& comm,
                                         ParameterValues values = ParameterValues::sliced);

// Sharded loading: a pretrained model read split over comm.tp(), each rank reading
// only its part of every stored tensor from the memory-mapped safetensors files. The
// model is built without initialising its linear layers and embeddings (their memory
// is allocated and never written), split by apply_tensor_parallel with uninitialised
// values, and then each parameter copies its slice of the stored tensor, converted to
// float32, and the file pages of that tensor are given back. A rank's memory therefore
// grows by about its part of the model plus one stored tensor, not by the whole model.
// The result equals loading the whole model and then calling apply_tensor_parallel, and
// `plan` is what that call returns: vocabulary padding rows are zero, replicated
// key/value heads are read by each rank holding them, a tied head is checked against
// the embedding, and a classifier's new head (and a missing BERT pooler) is drawn from
// the seed whole on every rank. A model that is not pretrained (options.pretrained
// false) is drawn the same way: each parameter's whole value at a time, from
// (seed, name, element), keeping this rank's part (model/parameter_init.h).
// Throws as CausalLm::load / Classifier::load do (std::runtime_error naming the file
// and tensors for a tensor missing or of the wrong shape) and as apply_tensor_parallel
// does (std::invalid_argument for sizes the group does not divide).
model::CausalLm load_tensor_parallel(model::CausalLmOptions options, Communicator& comm, TensorParallelPlan& plan);
model::Classifier load_tensor_parallel(model::ClassifierOptions options, Communicator& comm, TensorParallelPlan& plan,
                                       model::ClassifierLoadReport* report = nullptr);

}  // namespace ftrain::dist
