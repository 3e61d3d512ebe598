#include "dist/splits/cutting.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ftrain::dist::splits {

namespace {

// Replaces a parameter's values with `value` (a slice of them, or a padded copy),
// keeping the tensor the module registered, so named_parameters() and the module's
// member see the shard.
void replace_with(at::Tensor& parameter, const at::Tensor& value) {
  at::Tensor shard = value.contiguous().clone();
  parameter.mutable_grad().reset();
  parameter.set_data(shard);
}

}  // namespace

at::Tensor range(int64_t start, int64_t count) { return at::arange(start, start + count, at::kLong); }

// The entries `shard.index` of `full` along `shard.dim`, zeros where the index is -1.
at::Tensor shard_along(const ParameterShard& shard, const at::Tensor& full) {
  const at::Tensor index = shard.index.to(full.device());
  at::Tensor local = full.index_select(shard.dim, index.clamp_min(0));
  std::vector<int64_t> mask_shape(full.dim(), 1);
  mask_shape[shard.dim] = index.numel();
  return local * (index >= 0).view(mask_shape).to(local.scalar_type());
}

// The entries `shard.index` of `whole` along `shard.dim`: a view when they are one
// run of real entries (most splits), else shard_along's copy.
at::Tensor slice_of(const ParameterShard& shard, const at::Tensor& whole) {
  const int64_t count = shard.index.numel();
  if (count > 0) {
    const int64_t first = shard.index[0].item<int64_t>();
    if (first >= 0 && at::equal(shard.index, range(first, count))) return whole.narrow(shard.dim, first, count);
  }
  return shard_along(shard, whole);
}

Cutting cutting_for(Communicator& comm, ParameterValues values) {
  return Cutting{.plan = {.tp_size = comm.tp().size(),
                          .sequence_parallel = comm.options().sequence_parallel && comm.tp().size() > 1,
                          .sharded = {}},
                 .values = values};
}

// Where an activation enters column-parallel layers: copied, or with sequence
// parallelism gathered along the sequence.
model::InputHook into_split_layers(const Cutting& plan, Group& group) {
  return plan.plan.sequence_parallel ? gather_from_sequence_region_hook(group) : copy_to_tp_region_hook(group);
}

// Heads [r n, (r + 1) n) of the model's N n, for attention probabilities (B, n, T, T)
// computed from queries (B, n, T, hs).
model::PartHook heads_of_rank(Group& group) {
  return {"heads of rank " + std::to_string(group.rank()) + " of " + std::to_string(group.size()),
          [&group](const at::Tensor& q) {
            return model::SliceOf{.dim = 1, .offset = group.rank() * q.size(1), .whole = group.size() * q.size(1)};
          }};
}

// Positions [r t, (r + 1) t) of the model's N t, for (B, t, ...) activations.
model::PartHook positions_of_rank(Group& group) {
  return {"positions of rank " + std::to_string(group.rank()) + " of " + std::to_string(group.size()),
          [&group](const at::Tensor& x) {
            return model::SliceOf{.dim = 1, .offset = group.rank() * x.size(1), .whole = group.size() * x.size(1)};
          }};
}

// The parameters of `module` (named prefix + their name) that the plan leaves whole
// see only this rank's positions under sequence parallelism: each gets a hook that sums
// its gradient over the group as it is computed, before anything else (data-parallel
// buckets, ZeRO) reads it. Parameters that are frozen now keep no hook.
void sum_gradients_over_sequence(torch::nn::Module& module, const std::string& prefix, const Cutting& plan,
                                 Group& group) {
  for (auto& item : module.named_parameters()) {
    if (plan.plan.sharded.count(prefix + item.key()) || !item.value().requires_grad()) continue;
    item.value().register_hook([&group](const at::Tensor& grad) {
      at::Tensor sum = grad.clone(at::MemoryFormat::Contiguous);
      group.all_reduce(sum);
      return sum;
    });
  }
}

// Cuts parameter `name` to the entries `index` (global indices, -1 for padding) along
// `dim` and records how, so the whole tensor can be rebuilt from the ranks' parts.
void cut(Cutting& cutting, const std::string& name, at::Tensor& parameter, int64_t dim, at::Tensor index,
         int replicas) {
  ParameterShard shard{dim, index, parameter.sizes().vec(), replicas};
  if (cutting.values == ParameterValues::sliced) {
    replace_with(parameter, shard_along(shard, parameter));
  } else {
    // The whole tensor was never written; its part is allocated, not written either.
    std::vector<int64_t> local = parameter.sizes().vec();
    local[dim] = index.numel();
    parameter.mutable_grad().reset();
    parameter.set_data(at::empty(local, parameter.options()));
  }
  cutting.plan.sharded[name] = std::move(shard);
}

model::LinearImpl& own_linear(model::Linear& layer, const std::string& name) {
  model::LinearImpl* impl = layer.styled();
  if (!impl)
    throw std::invalid_argument("apply_tensor_parallel: " + name +
                                " is a plain torch::nn::Linear, which cannot be made parallel");
  if (impl->style().forward)
    throw std::invalid_argument("apply_tensor_parallel: " + name + " is already " + impl->style().name);
  return *impl;
}

// Column-parallel: rows [start, start + count) of W (out, in) and of b.
void shard_rows(Cutting& plan, model::Linear& layer, const std::string& name, int64_t start, int64_t count,
                Group& group, const ColumnParallelOptions& options) {
  model::LinearImpl& impl = own_linear(layer, name);
  cut(plan, name + ".weight", impl.weight, 0, range(start, count), options.replicas);
  if (impl.bias.defined()) cut(plan, name + ".bias", impl.bias, 0, range(start, count), options.replicas);
  impl.options.out_features(count);
  impl.set_style(column_parallel(group, options));
}

// Row-parallel: columns [start, start + count) of W (out, in); b whole.
void shard_columns(Cutting& plan, model::Linear& layer, const std::string& name, int64_t start,
                   int64_t count, Group& group) {
  model::LinearImpl& impl = own_linear(layer, name);
  cut(plan, name + ".weight", impl.weight, 1, range(start, count));
  impl.options.in_features(count);
  impl.set_style(row_parallel(group, {.sequence_parallel = plan.plan.sequence_parallel}));
}

// The global rows of this rank's part of a (V, C) table, -1 for the zero rows past V:
// (V, C) -> (V_pad / N, C).
at::Tensor vocab_rows(const VocabShard& shard) {
  at::Tensor rows = range(shard.start, shard.rows);
  return rows.masked_fill(rows >= shard.vocab_size, -1);
}

void shard_embedding(Cutting& plan, model::Embedding& embedding, const std::string& name,
                     const VocabShard& shard, Group& group) {
  model::EmbeddingImpl& impl = *embedding;
  if (impl.style().forward) throw std::invalid_argument("apply_tensor_parallel: " + name + " is already " + impl.style().name);
  std::optional<int64_t> padding;
  if (auto global = impl.options.padding_idx(); global && shard.holds(*global)) padding = *global - shard.start;
  cut(plan, name + ".weight", impl.weight, 0, vocab_rows(shard));
  impl.options.num_embeddings(shard.rows);
  impl.options.padding_idx(padding);
  impl.set_style(vocab_parallel_embedding(group, shard, padding));
}

// The head (V, C) when it is not the embedding: rows as the embedding's; its input
// goes through head_input_hook, so the layer itself does not copy.
void shard_head(Cutting& plan, model::Linear& head, const VocabShard& shard, Group& group) {
  model::LinearImpl& impl = own_linear(head, "lm_head");
  cut(plan, "lm_head.weight", impl.weight, 0, vocab_rows(shard));
  impl.options.out_features(shard.rows);
  impl.set_style(column_parallel(group, {.copy_input = false}));
}

std::string refusal(const std::string& family, int tp) {
  return "apply_tensor_parallel: " + family + " over a tensor-parallel group of " + std::to_string(tp) + " ranks: ";
}

void check_unsharded(const at::Tensor& weight, std::vector<int64_t> expected, const std::string& name,
                     const std::string& prefix) {
  if (weight.sizes() != c10::IntArrayRef(expected))
    throw std::invalid_argument(prefix + name + " is " + c10::str(weight.sizes()) + ", not the full " +
                                c10::str(c10::IntArrayRef(expected)) + "; the model is already sharded");
}

void split_body_ends(Cutting& plan, model::TransformerBody& body, model::Embedding& embedding, const std::string& name,
                     int64_t vocab_size, torch::nn::Module& final_norm, const std::string& norm_prefix, Group& group,
                     GatheredFor output_reader) {
  shard_embedding(plan, embedding, name, VocabShard::of(vocab_size, group.size(), group.rank()), group);
  if (!plan.plan.sequence_parallel) return;
  body.blocks_input = scatter_to_sequence_region_hook(group);
  body.blocks_output = gather_from_sequence_region_hook(group, output_reader);
  sum_gradients_over_sequence(final_norm, norm_prefix, plan, group);
}

}  // namespace ftrain::dist::splits
