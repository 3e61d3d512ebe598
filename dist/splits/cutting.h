// What each family's tensor-parallel split (dist/splits/<family>.cpp) is made of: the
// plan being made (Cutting), the cut of one layer (column- or row-parallel, the
// vocabulary-parallel embedding and head), the hooks that bring activations into the
// split layers, and the entry a family gives the registry of splits (FamilySplit;
// the registry is in dist/tensor_parallel.cpp, which applies it).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/torch.h>  // NoGradGuard

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/tensor_parallel.h"
#include "model/linear.h"
#include "model/transformer_body.h"

namespace ftrain::dist::splits {

// The global indices [start, start + count), int64.
at::Tensor range(int64_t start, int64_t count);

// The entries `shard.index` of `full` along `shard.dim`, zeros where the index is -1.
at::Tensor shard_along(const ParameterShard& shard, const at::Tensor& full);

// The entries `shard.index` of `whole` along `shard.dim`: a view when they are one
// run of real entries (most splits), else shard_along's copy.
at::Tensor slice_of(const ParameterShard& shard, const at::Tensor& whole);

// A plan being made, and what cutting does with the values.
struct Cutting {
  TensorParallelPlan plan;
  ParameterValues values = ParameterValues::sliced;
};

// An empty plan for comm.tp(), with sequence parallelism as comm's options ask.
Cutting cutting_for(Communicator& comm, ParameterValues values);

// Where an activation enters column-parallel layers: copied, or with sequence
// parallelism gathered along the sequence.
model::InputHook into_split_layers(const Cutting& plan, Group& group);

// Heads [r n, (r + 1) n) of the model's N n, for attention probabilities (B, n, T, T)
// computed from queries (B, n, T, hs).
model::PartHook heads_of_rank(Group& group);

// Positions [r t, (r + 1) t) of the model's N t, for (B, t, ...) activations.
model::PartHook positions_of_rank(Group& group);

// The parameters of `module` (named prefix + their name) that the plan leaves whole
// see only this rank's positions under sequence parallelism: each gets a hook that sums
// its gradient over the group as it is computed, before anything else (data-parallel
// buckets, ZeRO) reads it. Parameters that are frozen now keep no hook.
void sum_gradients_over_sequence(torch::nn::Module& module, const std::string& prefix, const Cutting& plan,
                                 Group& group);

// Cuts parameter `name` to the entries `index` (global indices, -1 for padding) along
// `dim` and records how, so the whole tensor can be rebuilt from the ranks' parts.
void cut(Cutting& cutting, const std::string& name, at::Tensor& parameter, int64_t dim, at::Tensor index,
         int replicas = 1);

// `layer` as a layer ftrain can make parallel. Throws std::invalid_argument naming it
// when it is a plain torch::nn::Linear or already parallel.
model::LinearImpl& own_linear(model::Linear& layer, const std::string& name);

// Column-parallel: rows [start, start + count) of W (out, in) and of b.
void shard_rows(Cutting& plan, model::Linear& layer, const std::string& name, int64_t start, int64_t count,
                Group& group, const ColumnParallelOptions& options);

// Row-parallel: columns [start, start + count) of W (out, in); b whole.
void shard_columns(Cutting& plan, model::Linear& layer, const std::string& name, int64_t start,
                   int64_t count, Group& group);

// The global rows of this rank's part of a (V, C) table, -1 for the zero rows past V:
// (V, C) -> (V_pad / N, C).
at::Tensor vocab_rows(const VocabShard& shard);

// Vocabulary-parallel: this rank's rows of the (V, C) table (padding rows past V are
// zero), its padding_idx moved into the shard or dropped.
void shard_embedding(Cutting& plan, model::Embedding& embedding, const std::string& name,
                     const VocabShard& shard, Group& group);

// The head (V, C) when it is not the embedding: rows as the embedding's; its input
// goes through head_input_hook, so the layer itself does not copy.
void shard_head(Cutting& plan, model::Linear& head, const VocabShard& shard, Group& group);

// "apply_tensor_parallel: <family> over a tensor-parallel group of <tp> ranks: ", which
// begins each refusal.
std::string refusal(const std::string& family, int tp);

// Throws std::invalid_argument when `weight` is not `expected`, the whole shape: the
// model was already split.
void check_unsharded(const at::Tensor& weight, std::vector<int64_t> expected, const std::string& name,
                     const std::string& prefix);

// A decoder body's ends around its split blocks: the token embedding `name` split by
// vocabulary rows and, under sequence parallelism, the embeddings scattered along the
// sequence into the first block, the blocks' output gathered for `output_reader`, and
// the gradients of the final norm (named norm_prefix + its parameters) summed over the
// group.
void split_body_ends(Cutting& plan, model::TransformerBody& body, model::Embedding& embedding, const std::string& name,
                     int64_t vocab_size, torch::nn::Module& final_norm, const std::string& norm_prefix, Group& group,
                     GatheredFor output_reader);

// How a family is split: as a language model, and as a classifier's body registered
// under `prefix` (its hidden states whole on every rank, so the head reads them as it
// would unsplit). An empty member: the family has no such model.
struct FamilySplit {
  std::string family;
  std::function<TensorParallelPlan(torch::nn::Module& model, Communicator& comm, ParameterValues values)> causal_lm;
  std::function<TensorParallelPlan(torch::nn::Module& body, const std::string& prefix, Communicator& comm,
                                   ParameterValues values)>
      classifier_body;
  std::function<TensorParallelPlan(torch::nn::Module& model, Communicator& comm, ParameterValues values)> seq2seq = {};
};

// Each family's entry, one per file in dist/splits/.
FamilySplit gpt2_split();
FamilySplit llama_split();
FamilySplit bert_split();
FamilySplit t5_split();

// ---------------------------------------------------------------------------------
// What the decoders' splits share

// A language model of either family: its body split by `split_body`, an untied head
// split by vocabulary rows like the embedding, and the head's input entering the
// tensor-parallel region.
template <typename Model, typename Body, typename SplitBody>
TensorParallelPlan split_language_model(Model& model, Body& body, const std::string& prefix, Communicator& comm,
                                        ParameterValues values, SplitBody split_body) {
  Group& group = comm.tp();
  Cutting plan = cutting_for(comm, values);
  const bool untied = !model->config().tie_word_embeddings;
  // With sequence parallelism the body's output is gathered for the head, whose
  // gradients are its vocabulary shard's part: gathering's backward sums them.
  split_body(body, prefix, group, plan, [&] {
    if (untied) own_linear(model->lm_head, "lm_head");
  }, GatheredFor::tensor_parallel);
  torch::NoGradGuard no_grad;
  if (untied) shard_head(plan, model->lm_head, VocabShard::of(model->config().vocab_size, group.size(), group.rank()), group);
  if (!plan.plan.sequence_parallel) model->head_input_hook = copy_to_tp_region_hook(group);
  return plan.plan;
}

// A family's language model split by its own overload of apply_tensor_parallel.
template <typename Model>
TensorParallelPlan split_lm(torch::nn::Module& module, Communicator& comm, ParameterValues values) {
  Model model(std::dynamic_pointer_cast<typename Model::ContainedType>(module.shared_from_this()));
  return apply_tensor_parallel(model, comm, values);
}

// A decoder's body as a classifier's, split by `SplitBody`; its output gathered whole on
// every rank for the head.
template <typename Body, auto SplitBody>
TensorParallelPlan split_decoder_body(torch::nn::Module& module, const std::string& prefix, Communicator& comm,
                                      ParameterValues values) {
  Cutting plan = cutting_for(comm, values);
  SplitBody(dynamic_cast<Body&>(module), prefix, comm.tp(), plan, {}, GatheredFor::replicated);
  return plan.plan;
}

}  // namespace ftrain::dist::splits
