#include "dist/tensor_parallel.h"

#include "model/families.h"
#include "model/t5.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/functional/embedding.h>
#include <torch/nn/functional/linear.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ftrain::dist {

namespace F = torch::nn::functional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---------------------------------------------------------------------------------
// The paired functions

namespace {

// The group a function's backward communicates over. Autograd keeps only IValues in
// ctx->saved_data; a capsule holds this typed reference, so the group travels from
// forward to backward without a global registry or a pointer disguised as an integer.
struct GroupHandle : torch::CustomClassHolder {
  explicit GroupHandle(Group& group) : group(group) {}
  Group& group;
};

void save_group(AutogradContext* ctx, Group& group) {
  ctx->saved_data["group"] = c10::IValue::make_capsule(c10::make_intrusive<GroupHandle>(group));
}

Group& saved_group(AutogradContext* ctx) {
  return static_cast<GroupHandle*>(ctx->saved_data.at("group").toCapsule().get())->group;
}

std::string who(const Group& group, const char* function) {
  return std::string("ftrain::dist::") + function + " (" + group.name() + " group, rank " +
         std::to_string(group.rank()) + " of " + std::to_string(group.size()) + ")";
}

void check_has_last_dim(const at::Tensor& x, const Group& group, const char* function) {
  if (!x.defined() || x.dim() == 0)
    throw std::invalid_argument(who(group, function) + ": needs a tensor with at least one dimension");
}

// (..., n) on every rank -> (..., N n), the ranks' tensors side by side in rank order.
at::Tensor all_gather_last_dim(const at::Tensor& x, Group& group) {
  const int64_t ranks = group.size();
  std::vector<int64_t> stacked = {ranks};
  for (int64_t size : x.sizes()) stacked.push_back(size);
  at::Tensor parts = at::empty(stacked, x.options());  // (N, ..., n)
  group.all_gather(parts, x.contiguous());
  // (N, ..., n) -> (..., N, n) -> (..., N n)
  std::vector<int64_t> gathered(x.sizes().begin(), x.sizes().end());
  gathered.back() *= ranks;
  return parts.movedim(0, -2).reshape(gathered);
}

// This rank's slice of the last dimension: (..., N n) -> (..., n).
at::Tensor own_slice_last_dim(const at::Tensor& x, Group& group, const char* function) {
  const int64_t width = x.size(-1);
  if (width % group.size() != 0)
    throw std::invalid_argument(who(group, function) + ": the last dimension, " + std::to_string(width) +
                                ", is not a multiple of the group size " + std::to_string(group.size()));
  const int64_t part = width / group.size();
  return x.narrow(-1, group.rank() * part, part).contiguous();
}

// The sequence (dimension 1) of (B, T, ...) split over the group: t = T / N positions a rank.
int64_t positions_per_rank(const at::Tensor& x, Group& group, const char* function, int64_t whole) {
  if (!x.defined() || x.dim() < 2)
    throw std::invalid_argument(who(group, function) + ": needs a (B, T, ...) tensor, got " +
                                (x.defined() ? c10::str(x.sizes()) : std::string("an undefined tensor")));
  if (whole % group.size() != 0)
    throw std::invalid_argument(who(group, function) + ": the sequence length " + std::to_string(whole) +
                                " is not a multiple of the group size " + std::to_string(group.size()) +
                                " (sequence parallelism splits it evenly)");
  return whole / group.size();
}

// (B, t, ...) on every rank -> (B, N t, ...), the ranks' positions in rank order.
at::Tensor all_gather_sequence(const at::Tensor& x, Group& group) {
  std::vector<int64_t> stacked = {group.size()};
  for (int64_t size : x.sizes()) stacked.push_back(size);
  at::Tensor parts = at::empty(stacked, x.options());  // (N, B, t, ...)
  group.all_gather(parts, x.contiguous());
  std::vector<int64_t> gathered(x.sizes().begin(), x.sizes().end());
  gathered[1] *= group.size();
  return parts.movedim(0, 1).reshape(gathered);  // (B, N, t, ...) -> (B, N t, ...)
}

// (B, T, ...) partial sums on every rank -> (B, T / N, ...): this rank's positions of the sum.
at::Tensor reduce_scatter_sequence(const at::Tensor& x, Group& group, const char* function) {
  const int64_t t = positions_per_rank(x, group, function, x.size(1));
  std::vector<int64_t> split = {x.size(0), group.size(), t};
  for (int64_t d = 2; d < x.dim(); ++d) split.push_back(x.size(d));
  const at::Tensor chunks = x.reshape(split).movedim(1, 0).contiguous();  // (N, B, t, ...), chunk r for rank r
  std::vector<int64_t> mine = x.sizes().vec();
  mine[1] = t;
  at::Tensor out = at::empty(mine, x.options());
  group.reduce_scatter(out, chunks);
  return out;
}

// This rank's positions (B, T / N, ...) of (B, T, ...).
at::Tensor own_positions(const at::Tensor& x, Group& group, const char* function) {
  const int64_t t = positions_per_rank(x, group, function, x.size(1));
  return x.narrow(1, group.rank() * t, t).contiguous();
}

struct ScatterToSequenceRegion : torch::autograd::Function<ScatterToSequenceRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group) {
    save_group(ctx, *group);
    return own_positions(x, *group, "scatter_to_sequence_region");
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_gather_sequence(grads[0], saved_group(ctx)), at::Tensor()};
  }
};

struct GatherFromSequenceRegion : torch::autograd::Function<GatherFromSequenceRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group, bool reduce_gradients) {
    save_group(ctx, *group);
    ctx->saved_data["reduce"] = reduce_gradients;
    return all_gather_sequence(x, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Group& group = saved_group(ctx);
    const char* function = "gather_from_sequence_region";
    at::Tensor grad = ctx->saved_data.at("reduce").toBool() ? reduce_scatter_sequence(grads[0], group, function)
                                                             : own_positions(grads[0], group, function);
    return {grad, at::Tensor(), at::Tensor()};
  }
};

struct ReduceScatterToSequenceRegion : torch::autograd::Function<ReduceScatterToSequenceRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group) {
    save_group(ctx, *group);
    return reduce_scatter_sequence(x, *group, "reduce_scatter_to_sequence_region");
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_gather_sequence(grads[0], saved_group(ctx)), at::Tensor()};
  }
};

struct CopyToTpRegion : torch::autograd::Function<CopyToTpRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group) {
    save_group(ctx, *group);
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad = grads[0].clone(at::MemoryFormat::Contiguous);
    saved_group(ctx).all_reduce(grad);
    return {grad, at::Tensor()};
  }
};

struct ReduceFromTpRegion : torch::autograd::Function<ReduceFromTpRegion> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, Group* group) {
    at::Tensor sum = x.clone(at::MemoryFormat::Contiguous);
    group->all_reduce(sum);
    return sum;
  }
  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], at::Tensor()}; }
};

struct GatherFromTpRegion : torch::autograd::Function<GatherFromTpRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group) {
    save_group(ctx, *group);
    return all_gather_last_dim(x, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {own_slice_last_dim(grads[0], saved_group(ctx), "gather_from_tp_region"), at::Tensor()};
  }
};

struct ScatterToTpRegion : torch::autograd::Function<ScatterToTpRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group) {
    save_group(ctx, *group);
    return own_slice_last_dim(x, *group, "scatter_to_tp_region");
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_gather_last_dim(grads[0], saved_group(ctx)), at::Tensor()};
  }
};

struct SumOverReplicas : torch::autograd::Function<SumOverReplicas> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Group* group, int64_t replicas) {
    save_group(ctx, *group);
    ctx->saved_data["replicas"] = replicas;
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Group& group = saved_group(ctx);
    const int64_t replicas = ctx->saved_data.at("replicas").toInt();
    // One slot per set of copies; each rank writes its gradient into its set's slot and
    // the all-reduce sums every set at once: (N / replicas, ...).
    std::vector<int64_t> slots = {group.size() / replicas};
    for (int64_t size : grads[0].sizes()) slots.push_back(size);
    at::Tensor sums = at::zeros(slots, grads[0].options());
    const int64_t mine = group.rank() / replicas;
    sums[mine].copy_(grads[0]);
    group.all_reduce(sums);
    return {sums[mine].clone(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor copy_to_tp_region(const at::Tensor& x, Group& group) { return CopyToTpRegion::apply(x, &group); }

at::Tensor reduce_from_tp_region(const at::Tensor& x, Group& group) { return ReduceFromTpRegion::apply(x, &group); }

at::Tensor gather_from_tp_region(const at::Tensor& x, Group& group) {
  check_has_last_dim(x, group, "gather_from_tp_region");
  return GatherFromTpRegion::apply(x, &group);
}

at::Tensor scatter_to_tp_region(const at::Tensor& x, Group& group) {
  check_has_last_dim(x, group, "scatter_to_tp_region");
  return ScatterToTpRegion::apply(x, &group);
}

at::Tensor scatter_to_sequence_region(const at::Tensor& x, Group& group) {
  positions_per_rank(x, group, "scatter_to_sequence_region", x.defined() && x.dim() >= 2 ? x.size(1) : 0);
  return ScatterToSequenceRegion::apply(x, &group);
}

at::Tensor gather_from_sequence_region(const at::Tensor& x, Group& group, GatheredFor reader) {
  positions_per_rank(x, group, "gather_from_sequence_region",
                     x.defined() && x.dim() >= 2 ? x.size(1) * group.size() : 0);
  return GatherFromSequenceRegion::apply(x, &group, reader == GatheredFor::tensor_parallel);
}

at::Tensor reduce_scatter_to_sequence_region(const at::Tensor& x, Group& group) {
  positions_per_rank(x, group, "reduce_scatter_to_sequence_region", x.defined() && x.dim() >= 2 ? x.size(1) : 0);
  return ReduceScatterToSequenceRegion::apply(x, &group);
}

at::Tensor sum_over_replicas(const at::Tensor& x, Group& group, int replicas) {
  if (replicas < 1 || group.size() % replicas != 0)
    throw std::invalid_argument(who(group, "sum_over_replicas") + ": replicas " + std::to_string(replicas) +
                                " does not divide the group size " + std::to_string(group.size()));
  if (replicas == 1) return x;
  return SumOverReplicas::apply(x, &group, static_cast<int64_t>(replicas));
}

// ---------------------------------------------------------------------------------
// Layer styles

VocabShard VocabShard::of(int64_t vocab_size, int tp_size, int tp_rank) {
  if (vocab_size < 1 || tp_size < 1 || tp_rank < 0 || tp_rank >= tp_size)
    throw std::invalid_argument("ftrain::dist::VocabShard: vocab_size " + std::to_string(vocab_size) +
                                ", rank " + std::to_string(tp_rank) + " of " + std::to_string(tp_size));
  VocabShard shard;
  shard.vocab_size = vocab_size;
  shard.padded_size = (vocab_size + tp_size - 1) / tp_size * tp_size;
  shard.rows = shard.padded_size / tp_size;
  shard.start = tp_rank * shard.rows;
  return shard;
}

namespace {

std::string over(const Group& group) {
  return "over " + group.name() + " group of " + std::to_string(group.size());
}

}  // namespace

model::LinearStyle column_parallel(Group& group, const ColumnParallelOptions& options) {
  if (options.replicas < 1 || group.size() % options.replicas != 0)
    throw std::invalid_argument(who(group, "column_parallel") + ": replicas " + std::to_string(options.replicas) +
                                " does not divide the group size " + std::to_string(group.size()));
  std::string name = "column-parallel " + over(group);
  if (options.replicas > 1) name += ", rows held by " + std::to_string(options.replicas) + " ranks each";
  if (options.gather_output) name += ", output gathered";
  if (options.copy_input && options.sequence_parallel) name += ", input gathered along the sequence";
  return {name, [&group, options](const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
            at::Tensor x = input;
            if (options.copy_input)
              x = options.sequence_parallel ? gather_from_sequence_region(input, group) : copy_to_tp_region(input, group);
            const at::Tensor w = sum_over_replicas(weight, group, options.replicas);
            const at::Tensor b = bias.defined() ? sum_over_replicas(bias, group, options.replicas) : bias;
            // (..., in) -> (..., out / N)
            at::Tensor y = F::linear(x, w, b);
            return options.gather_output ? gather_from_tp_region(y, group) : y;
          }};
}

model::LinearStyle row_parallel(Group& group, const RowParallelOptions& options) {
  return {"row-parallel " + over(group) + (options.scatter_input ? ", input scattered" : "") +
              (options.sequence_parallel ? ", output reduce-scattered along the sequence" : ""),
          [&group, options](const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
            const at::Tensor x = options.scatter_input ? scatter_to_tp_region(input, group) : input;
            // (..., in / N) -> (..., out) partial sums -> the whole output (or this rank's
            // positions of it), then the bias once
            const at::Tensor partial = F::linear(x, weight);
            at::Tensor y = options.sequence_parallel ? reduce_scatter_to_sequence_region(partial, group)
                                                     : reduce_from_tp_region(partial, group);
            return bias.defined() ? y + bias : y;
          }};
}

model::EmbeddingStyle vocab_parallel_embedding(Group& group, const VocabShard& shard,
                                               std::optional<int64_t> padding_idx) {
  return {"vocabulary-parallel rows [" + std::to_string(shard.start) + ", " +
              std::to_string(shard.start + shard.rows) + ") of " + std::to_string(shard.padded_size) + " " +
              over(group),
          [&group, shard, padding_idx](const at::Tensor& ids, const at::Tensor& weight) {
            // (...) ids -> (...) whether this rank holds the row, and its local index
            const at::Tensor held = (ids >= shard.start) & (ids < shard.start + shard.rows);
            const at::Tensor local = at::where(held, ids - shard.start, at::zeros_like(ids));
            auto options = F::EmbeddingFuncOptions();
            if (padding_idx) options.padding_idx(*padding_idx);
            // (...) -> (..., C), zero where another rank holds the row, then summed over ranks
            at::Tensor partial = F::embedding(local, weight, options).masked_fill(held.logical_not().unsqueeze(-1), 0);
            return reduce_from_tp_region(partial, group);
          }};
}

model::InputHook copy_to_tp_region_hook(Group& group) {
  return {"copy_to_tp_region " + over(group), [&group](const at::Tensor& x) { return copy_to_tp_region(x, group); }};
}

model::InputHook gather_from_sequence_region_hook(Group& group, GatheredFor reader) {
  return {std::string("gather_from_sequence_region ") +
              (reader == GatheredFor::tensor_parallel ? "for split layers " : "for replicated ones ") + over(group),
          [&group, reader](const at::Tensor& x) { return gather_from_sequence_region(x, group, reader); }};
}

model::InputHook scatter_to_sequence_region_hook(Group& group) {
  return {"scatter_to_sequence_region " + over(group),
          [&group](const at::Tensor& x) { return scatter_to_sequence_region(x, group); }};
}

// ---------------------------------------------------------------------------------
// Vocabulary-parallel cross-entropy

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& local_logits, const at::Tensor& targets, Group& group,
                                        int64_t vocab_size, int64_t ignore_index) {
  const char* function = "vocab_parallel_cross_entropy";
  check_has_last_dim(local_logits, group, function);
  if (!targets.defined() || targets.scalar_type() != at::kLong ||
      targets.sizes() != local_logits.sizes().slice(0, local_logits.dim() - 1))
    throw std::invalid_argument(who(group, function) + ": targets must be int64 of shape " +
                                c10::str(local_logits.sizes().slice(0, local_logits.dim() - 1)) +
                                " (the logits' without the vocabulary), got " +
                                (targets.defined() ? std::string(c10::toString(targets.scalar_type())) + " " +
                                                         c10::str(targets.sizes())
                                                   : std::string("an undefined tensor")));
  const VocabShard shard = VocabShard::of(vocab_size, group.size(), group.rank());
  if (local_logits.size(-1) != shard.rows)
    throw std::invalid_argument(who(group, function) + ": logits hold " + std::to_string(local_logits.size(-1)) +
                                " vocabulary columns; a shard of vocab_size " + std::to_string(vocab_size) +
                                " padded to " + std::to_string(shard.padded_size) + " has " +
                                std::to_string(shard.rows));
  const at::Tensor counted = targets != ignore_index;
  if ((counted & ((targets < 0) | (targets >= vocab_size))).any().item<bool>())
    throw std::invalid_argument(who(group, function) + ": a target is outside [0, " + std::to_string(vocab_size) +
                                ") and is not ignore_index " + std::to_string(ignore_index));

  at::Tensor logits = local_logits.scalar_type() == at::kDouble ? local_logits : local_logits.to(at::kFloat);
  if (shard.start + shard.rows > vocab_size) {  // padding columns take no part
    const at::Tensor column = at::arange(shard.start, shard.start + shard.rows, targets.options());
    logits = logits.masked_fill(column >= vocab_size, -std::numeric_limits<double>::infinity());
  }
  // (..., V / N) -> (..., 1): the largest logit of each position over every rank, a
  // constant shift that keeps exp() finite.
  at::Tensor max = logits.detach().amax(-1, /*keepdim=*/true);
  group.all_reduce(max, ReduceOp::Max);
  const at::Tensor shifted = logits - max;
  // (...) sum over the whole vocabulary of exp(logit - max)
  const at::Tensor sum_exp = reduce_from_tp_region(shifted.exp().sum(-1), group);
  // (...) the target's shifted logit, from the one rank that holds it, 0 on the others
  const at::Tensor held = (targets >= shard.start) & (targets < shard.start + shard.rows);
  const at::Tensor local = at::where(held, targets - shard.start, at::zeros_like(targets));
  const at::Tensor picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1);
  const at::Tensor target_logit = reduce_from_tp_region(at::where(held, picked, at::zeros_like(picked)), group);
  // -log softmax(target) = log sum exp(logit - max) - (target logit - max)
  const at::Tensor loss = sum_exp.log() - target_logit;
  return at::where(counted, loss, at::zeros_like(loss));
}

model::VocabShards vocab_shards(Group& group, int64_t vocab_size) {
  const VocabShard shard = VocabShard::of(vocab_size, group.size(), group.rank());
  model::VocabShards shards;
  shards.start = shard.start;
  shards.vocab_size = vocab_size;
  shards.all_reduce_max = [&group](at::Tensor& t) { group.all_reduce(t, ReduceOp::Max); };
  shards.all_reduce_sum = [&group](at::Tensor& t) { group.all_reduce(t, ReduceOp::Sum); };
  return shards;
}

// ---------------------------------------------------------------------------------
// Whole models

namespace {

at::Tensor range(int64_t start, int64_t count) { return at::arange(start, start + count, at::kLong); }

// The entries `shard.index` of `full` along `shard.dim`, zeros where the index is -1.
at::Tensor shard_along(const ParameterShard& shard, const at::Tensor& full) {
  const at::Tensor index = shard.index.to(full.device());
  at::Tensor local = full.index_select(shard.dim, index.clamp_min(0));
  std::vector<int64_t> mask_shape(full.dim(), 1);
  mask_shape[shard.dim] = index.numel();
  return local * (index >= 0).view(mask_shape).to(local.scalar_type());
}

// Replaces a parameter's values with `value` (a slice of them, or a padded copy),
// keeping the tensor the module registered, so named_parameters() and the module's
// member see the shard.
void replace_with(at::Tensor& parameter, const at::Tensor& value) {
  at::Tensor shard = value.contiguous().clone();
  parameter.mutable_grad().reset();
  parameter.set_data(shard);
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

// A plan being made, and what cutting does with the values.
struct Cutting {
  TensorParallelPlan plan;
  ParameterValues values = ParameterValues::sliced;
};

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
         int replicas = 1) {
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

}  // namespace

namespace {

// GPT-2's body (GPT2Model, registered under `prefix`, "transformer."): the blocks split
// by heads and MLP width, wte by vocabulary rows. `check_also` runs after the body's
// own checks and before anything is changed, for the parts around the body.
void split_gpt2_body(model::Gpt2TransformerImpl& body, const std::string& prefix, Group& group, Cutting& plan,
                     const std::function<void()>& check_also, GatheredFor output_reader) {
  const int64_t N = group.size(), r = group.rank();
  const model::Gpt2Config& config = body.config();
  const int64_t C = config.n_embd, inner = config.inner_dim();
  const std::string refused = refusal("GPT-2", group.size());
  if (config.n_head % N != 0)
    throw std::invalid_argument(refused + "n_head " + std::to_string(config.n_head) +
                                " is not a multiple of " + std::to_string(N) + " (attention is split by heads)");
  if (inner % N != 0)
    throw std::invalid_argument(refused + "the MLP width (n_inner) " + std::to_string(inner) +
                                " is not a multiple of " + std::to_string(N));
  check_unsharded(body.wte->weight, {config.vocab_size, C}, prefix + "wte.weight", refused);
  // Every layer is checked before any is changed.
  for (size_t i = 0; i < body.h->size(); ++i) {
    auto& block = *body.h[i]->as<model::BlockImpl>();
    const std::string layer = prefix + "h." + std::to_string(i) + ".";
    for (auto [layer_ref, name] : {std::pair{&block.attn->c_attn, "attn.c_attn"}, std::pair{&block.attn->c_proj, "attn.c_proj"},
                                   std::pair{&block.mlp->c_fc, "mlp.c_fc"}, std::pair{&block.mlp->c_proj, "mlp.c_proj"}})
      own_linear(*layer_ref, layer + name);  // throws for a layer that cannot be sharded
  }
  if (check_also) check_also();

  torch::NoGradGuard no_grad;
  const int64_t width = C / N;  // this rank's heads: n_head / N of them, head_dim each
  for (size_t i = 0; i < body.h->size(); ++i) {
    auto& block = *body.h[i]->as<model::BlockImpl>();
    const std::string layer = prefix + "h." + std::to_string(i) + ".";
    auto& attn = *block.attn;
    // c_attn (3C, C) is [queries; keys; values]: this rank's heads of each, (3C / N, C).
    {
      model::LinearImpl& impl = own_linear(attn.c_attn, layer + "attn.c_attn");
      const at::Tensor heads = at::cat({range(r * width, width), range(C + r * width, width),
                                        range(2 * C + r * width, width)});
      cut(plan, layer + "attn.c_attn.weight", impl.weight, 0, heads);
      if (impl.bias.defined()) cut(plan, layer + "attn.c_attn.bias", impl.bias, 0, heads);
      impl.options.out_features(3 * width);
      impl.set_style(column_parallel(group, {.copy_input = false}));
    }
    attn.input_hook = into_split_layers(plan, group);
    attn.heads_part = heads_of_rank(group);
    shard_columns(plan, attn.c_proj, layer + "attn.c_proj", r * width, width, group);

    auto& mlp = *block.mlp;
    mlp.input_hook = into_split_layers(plan, group);
    shard_rows(plan, mlp.c_fc, layer + "mlp.c_fc", r * (inner / N), inner / N, group, {.copy_input = false});
    shard_columns(plan, mlp.c_proj, layer + "mlp.c_proj", r * (inner / N), inner / N, group);
    if (plan.plan.sequence_parallel) {
      attn.residual_part = positions_of_rank(group);
      mlp.residual_part = positions_of_rank(group);
      sum_gradients_over_sequence(block, layer, plan, group);
    }
  }
  const VocabShard shard = VocabShard::of(config.vocab_size, group.size(), group.rank());
  shard_embedding(plan, body.wte, prefix + "wte", shard, group);
  if (plan.plan.sequence_parallel) {
    body.blocks_input = scatter_to_sequence_region_hook(group);
    body.blocks_output = gather_from_sequence_region_hook(group, output_reader);
    sum_gradients_over_sequence(*body.ln_f, prefix + "ln_f.", plan, group);
  }
}

// The Llama family's body (LlamaModel, registered under `prefix`, "model."), as
// split_gpt2_body.
void split_llama_body(model::LlamaModelImpl& body, const std::string& prefix, Group& group, Cutting& plan,
                      const std::function<void()>& check_also, GatheredFor output_reader) {
  const int64_t N = group.size(), r = group.rank();
  const model::LlamaConfig& config = body.config();
  const int64_t heads = config.num_attention_heads, kv_heads = config.num_key_value_heads;
  const int64_t hs = config.head_size(), inner = config.intermediate_size;
  const std::string refused = refusal(config.model_type, group.size());
  if (heads % N != 0)
    throw std::invalid_argument(refused + "num_attention_heads " + std::to_string(heads) + " is not a multiple of " +
                                std::to_string(N) + " (attention is split by heads)");
  if (kv_heads % N != 0 && N % kv_heads != 0)
    throw std::invalid_argument(refused + "num_key_value_heads " + std::to_string(kv_heads) +
                                " is neither a multiple nor a divisor of " + std::to_string(N) +
                                " (key/value heads are split, or each rank keeps the one its query heads use)");
  if (inner % N != 0)
    throw std::invalid_argument(refused + "intermediate_size " + std::to_string(inner) + " is not a multiple of " +
                                std::to_string(N));
  check_unsharded(body.embed_tokens->weight, {config.vocab_size, config.hidden_size}, prefix + "embed_tokens.weight",
                  refused);
  // Every layer is checked before any is changed.
  for (size_t i = 0; i < body.layers->size(); ++i) {
    auto& block = *body.layers[i]->as<model::LlamaBlockImpl>();
    const std::string layer = prefix + "layers." + std::to_string(i) + ".";
    for (auto [layer_ref, name] : {std::pair{&block.self_attn->q_proj, "self_attn.q_proj"},
                                   std::pair{&block.self_attn->k_proj, "self_attn.k_proj"},
                                   std::pair{&block.self_attn->v_proj, "self_attn.v_proj"},
                                   std::pair{&block.self_attn->o_proj, "self_attn.o_proj"},
                                   std::pair{&block.mlp->gate_proj, "mlp.gate_proj"},
                                   std::pair{&block.mlp->up_proj, "mlp.up_proj"},
                                   std::pair{&block.mlp->down_proj, "mlp.down_proj"}})
      own_linear(*layer_ref, layer + name);
  }
  if (check_also) check_also();

  // Rank r computes query heads [r nh / N, (r + 1) nh / N). Query head j reads key/value
  // head j / (nh / nkv), so r's key/value heads are [r nkv / N, (r + 1) nkv / N) when N
  // divides nkv, else the single head r / (N / nkv), which N / nkv ranks share.
  const int64_t q_heads = heads / N;
  const int64_t local_kv_heads = kv_heads % N == 0 ? kv_heads / N : 1;
  const int64_t first_kv_head = kv_heads % N == 0 ? r * local_kv_heads : r / (N / kv_heads);
  const int replicas = kv_heads % N == 0 ? 1 : static_cast<int>(N / kv_heads);

  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < body.layers->size(); ++i) {
    auto& block = *body.layers[i]->as<model::LlamaBlockImpl>();
    const std::string layer = prefix + "layers." + std::to_string(i) + ".";
    auto& attn = *block.self_attn;
    attn.input_hook = into_split_layers(plan, group);
    attn.heads_part = heads_of_rank(group);
    shard_rows(plan, attn.q_proj, layer + "self_attn.q_proj", r * q_heads * hs, q_heads * hs, group, {.copy_input = false});
    const ColumnParallelOptions kv = {.copy_input = false, .replicas = replicas};
    shard_rows(plan, attn.k_proj, layer + "self_attn.k_proj", first_kv_head * hs, local_kv_heads * hs, group, kv);
    shard_rows(plan, attn.v_proj, layer + "self_attn.v_proj", first_kv_head * hs, local_kv_heads * hs, group, kv);
    shard_columns(plan, attn.o_proj, layer + "self_attn.o_proj", r * q_heads * hs, q_heads * hs, group);

    auto& mlp = *block.mlp;
    mlp.input_hook = into_split_layers(plan, group);
    shard_rows(plan, mlp.gate_proj, layer + "mlp.gate_proj", r * (inner / N), inner / N, group, {.copy_input = false});
    shard_rows(plan, mlp.up_proj, layer + "mlp.up_proj", r * (inner / N), inner / N, group, {.copy_input = false});
    shard_columns(plan, mlp.down_proj, layer + "mlp.down_proj", r * (inner / N), inner / N, group);
    if (plan.plan.sequence_parallel) sum_gradients_over_sequence(block, layer, plan, group);
  }
  const VocabShard shard = VocabShard::of(config.vocab_size, group.size(), group.rank());
  shard_embedding(plan, body.embed_tokens, prefix + "embed_tokens", shard, group);
  if (plan.plan.sequence_parallel) {
    body.blocks_input = scatter_to_sequence_region_hook(group);
    body.blocks_output = gather_from_sequence_region_hook(group, output_reader);
    sum_gradients_over_sequence(*body.norm, prefix + "norm.", plan, group);
  }
}

}  // namespace

namespace {

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

}  // namespace

TensorParallelPlan apply_tensor_parallel(model::Gpt2& model, Communicator& comm, ParameterValues values) {
  return split_language_model(model, *model->transformer, "transformer.", comm, values, split_gpt2_body);
}

TensorParallelPlan apply_tensor_parallel(model::Llama& model, Communicator& comm, ParameterValues values) {
  return split_language_model(model, *model->model, "model.", comm, values, split_llama_body);
}

TensorParallelPlan apply_tensor_parallel(model::Bert& model, Communicator& comm, const std::string& prefix,
                                         ParameterValues values) {
  Group& group = comm.tp();
  const int64_t N = group.size(), r = group.rank();
  const model::BertConfig& config = model->config();
  const int64_t C = config.hidden_size, inner = config.intermediate_size;
  const std::string refused = refusal("BERT", group.size());
  if (config.num_attention_heads % N != 0)
    throw std::invalid_argument(refused + "num_attention_heads " + std::to_string(config.num_attention_heads) +
                                " is not a multiple of " + std::to_string(N) + " (attention is split by heads)");
  if (inner % N != 0)
    throw std::invalid_argument(refused + "intermediate_size " + std::to_string(inner) + " is not a multiple of " +
                                std::to_string(N));
  check_unsharded(model->embeddings->word_embeddings->weight, {config.vocab_size, C},
                  prefix + "embeddings.word_embeddings.weight", refused);
  for (size_t i = 0; i < model->encoder->layer->size(); ++i) {
    auto& layer = *model->encoder->layer[i]->as<model::BertLayerImpl>();
    const std::string name = prefix + "encoder.layer." + std::to_string(i) + ".";
    auto& self = *layer.attention->self;
    for (auto [layer_ref, what] : {std::pair{&self.query, "attention.self.query"}, std::pair{&self.key, "attention.self.key"},
                                   std::pair{&self.value, "attention.self.value"},
                                   std::pair{&layer.attention->output->dense, "attention.output.dense"},
                                   std::pair{&layer.intermediate->dense, "intermediate.dense"},
                                   std::pair{&layer.output->dense, "output.dense"}})
      own_linear(*layer_ref, name + what);
  }

  Cutting plan = cutting_for(comm, values);
  const bool sequence = plan.plan.sequence_parallel;
  torch::NoGradGuard no_grad;
  const int64_t width = C / N;  // this rank's heads
  for (size_t i = 0; i < model->encoder->layer->size(); ++i) {
    auto& layer = *model->encoder->layer[i]->as<model::BertLayerImpl>();
    const std::string name = prefix + "encoder.layer." + std::to_string(i) + ".";
    auto& self = *layer.attention->self;
    self.input_hook = into_split_layers(plan, group);
    self.heads_part = heads_of_rank(group);
    shard_rows(plan, self.query, name + "attention.self.query", r * width, width, group, {.copy_input = false});
    shard_rows(plan, self.key, name + "attention.self.key", r * width, width, group, {.copy_input = false});
    shard_rows(plan, self.value, name + "attention.self.value", r * width, width, group, {.copy_input = false});
    shard_columns(plan, layer.attention->output->dense, name + "attention.output.dense", r * width, width, group);
    shard_rows(plan, layer.intermediate->dense, name + "intermediate.dense", r * (inner / N), inner / N, group,
               {.sequence_parallel = sequence});
    shard_columns(plan, layer.output->dense, name + "output.dense", r * (inner / N), inner / N, group);
    if (sequence) {
      layer.attention->output->residual_part = positions_of_rank(group);
      layer.output->residual_part = positions_of_rank(group);
      sum_gradients_over_sequence(layer, name, plan, group);
    }
  }
  const VocabShard shard = VocabShard::of(config.vocab_size, group.size(), group.rank());
  shard_embedding(plan, model->embeddings->word_embeddings, prefix + "embeddings.word_embeddings", shard, group);
  if (sequence) {
    // The encoder's output goes to the pooler and the classifier's head, whole on every rank.
    model->encoder->blocks_input = scatter_to_sequence_region_hook(group);
    model->encoder->blocks_output = gather_from_sequence_region_hook(group, GatheredFor::replicated);
  }
  return plan.plan;
}

// ---------------------------------------------------------------------------------
// T5

namespace {

TensorParallelPlan split_t5(torch::nn::Module& module, Communicator& comm, ParameterValues values) {
  model::T5 t5(std::dynamic_pointer_cast<model::T5Impl>(module.shared_from_this()));
  Group& group = comm.tp();
  const int64_t N = group.size(), r = group.rank();
  const model::T5Config& config = t5->config();
  const std::string refused = refusal("T5", group.size());
  if (config.num_heads % N != 0)
    throw std::invalid_argument(refused + "num_heads " + std::to_string(config.num_heads) + " is not a multiple of " +
                                std::to_string(N) + " (attention is split by heads)");
  if (config.d_ff % N != 0)
    throw std::invalid_argument(refused + "d_ff " + std::to_string(config.d_ff) + " is not a multiple of " +
                                std::to_string(N));
  if (comm.options().sequence_parallel)
    throw std::invalid_argument(refused + "sequence parallelism is not available for T5");
  Cutting plan = cutting_for(comm, values);
  torch::NoGradGuard no_grad;
  const int64_t heads = config.num_heads / N, width = heads * config.d_kv, hidden = config.d_ff / N;
  for (auto [stack_name, stack] : {std::pair{std::string("encoder."), t5->encoder},
                                    std::pair{std::string("decoder."), t5->decoder}}) {
    for (size_t b = 0; b < stack->block->size(); ++b) {
      auto* layers = stack->block[b]->named_children()[0].value()->as<torch::nn::ModuleList>();
      for (size_t l = 0; l < layers->size(); ++l) {
        auto& sublayer = *layers->ptr(l)->as<model::T5SublayerImpl>();
        const std::string name = stack_name + "block." + std::to_string(b) + ".layer." + std::to_string(l) + ".";
        if (sublayer.attention) {
          auto& attention = *sublayer.attention;
          const bool cross = l == 1;  // the decoder's second sublayer
          const std::string prefix = name + (cross ? "EncDecAttention." : "SelfAttention.");
          attention.input_hook = into_split_layers(plan, group);
          attention.heads_part = heads_of_rank(group);
          if (cross) attention.memory_hook = into_split_layers(plan, group);
          shard_rows(plan, attention.q, prefix + "q", r * width, width, group, {.copy_input = false});
          shard_rows(plan, attention.k, prefix + "k", r * width, width, group, {.copy_input = false});
          shard_rows(plan, attention.v, prefix + "v", r * width, width, group, {.copy_input = false});
          shard_columns(plan, attention.o, prefix + "o", r * width, width, group);
          if (attention.relative_attention_bias)
            cut(plan, prefix + "relative_attention_bias.weight", attention.relative_attention_bias->weight, 1,
                range(r * heads, heads));
        } else {
          auto& ff = *sublayer.feed_forward;
          const std::string prefix = name + "DenseReluDense.";
          ff.input_hook = into_split_layers(plan, group);
          ff.hidden_part = {"hidden units of rank " + std::to_string(r) + " of " + std::to_string(N),
                            [&group](const at::Tensor& h) {
                              return model::SliceOf{.dim = h.dim() - 1, .offset = group.rank() * h.size(-1),
                                                    .whole = group.size() * h.size(-1)};
                            }};
          for (auto [layer, what] : {std::pair{&ff.wi, "wi"}, std::pair{&ff.wi_0, "wi_0"}, std::pair{&ff.wi_1, "wi_1"}})
            if (*layer) shard_rows(plan, *layer, prefix + what, r * hidden, hidden, group, {.copy_input = false});
          shard_columns(plan, ff.wo, prefix + "wo", r * hidden, hidden, group);
        }
      }
    }
  }
  return plan.plan;
}

}  // namespace

// ---------------------------------------------------------------------------------
// The registry of splits, one line per family of model/families.cpp.

namespace {

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

template <typename Model>
TensorParallelPlan split_lm(torch::nn::Module& module, Communicator& comm, ParameterValues values) {
  Model model(std::dynamic_pointer_cast<typename Model::ContainedType>(module.shared_from_this()));
  return apply_tensor_parallel(model, comm, values);
}

template <typename Body, auto SplitBody>
TensorParallelPlan split_decoder_body(torch::nn::Module& module, const std::string& prefix, Communicator& comm,
                                      ParameterValues values) {
  Cutting plan = cutting_for(comm, values);
  SplitBody(dynamic_cast<Body&>(module), prefix, comm.tp(), plan, {}, GatheredFor::replicated);
  return plan.plan;
}

TensorParallelPlan split_bert_body(torch::nn::Module& module, const std::string& prefix, Communicator& comm,
                                   ParameterValues values) {
  model::Bert bert(std::dynamic_pointer_cast<model::BertImpl>(module.shared_from_this()));
  return apply_tensor_parallel(bert, comm, prefix, values);
}

const FamilySplit& family_split(const std::string& model_type) {
  static const std::vector<FamilySplit> splits = {
      {"gpt2", split_lm<model::Gpt2>, split_decoder_body<model::Gpt2TransformerImpl, split_gpt2_body>},
      {"llama", split_lm<model::Llama>, split_decoder_body<model::LlamaModelImpl, split_llama_body>},
      {"bert", nullptr, split_bert_body},
      {"t5", nullptr, nullptr, split_t5},
  };
  const model::ModelFamily& family = model::model_family({{"model_type", model_type}}, "apply_tensor_parallel");
  for (const FamilySplit& split : splits)
    if (split.family == family.name) return split;
  throw std::invalid_argument("apply_tensor_parallel: model family '" + family.name + "' has no tensor-parallel split");
}

}  // namespace

TensorParallelPlan apply_tensor_parallel(model::CausalLm& model, Communicator& comm, ParameterValues values) {
  const FamilySplit& split = family_split(model.family());
  if (!split.causal_lm)
    throw std::invalid_argument("apply_tensor_parallel: a " + model.family() + " language model cannot be split");
  return split.causal_lm(model.module(), comm, values);
}

TensorParallelPlan apply_tensor_parallel(model::Classifier& model, Communicator& comm, ParameterValues values) {
  const FamilySplit& split = family_split(model.family());
  std::shared_ptr<torch::nn::Module> body = model.module().named_children()[model.body_name()];
  if (!split.classifier_body)
    throw std::invalid_argument("apply_tensor_parallel: a " + model.family() + " classifier has no body that can be split");
  return split.classifier_body(*body, model.body_name() + ".", comm, values);
}

TensorParallelPlan apply_tensor_parallel(model::Seq2SeqLm& model, Communicator& comm, ParameterValues values) {
  const FamilySplit& split = family_split(model.family());
  if (!split.seq2seq)
    throw std::invalid_argument("apply_tensor_parallel: a " + model.family() + " encoder-decoder cannot be split");
  return split.seq2seq(model.module(), comm, values);
}

// ---------------------------------------------------------------------------------
// Loading split

model::CausalLm load_tensor_parallel(model::CausalLmOptions options, Communicator& comm, TensorParallelPlan& plan) {
  // Pretrained or freshly drawn, each rank keeps only its part (CausalLmOptions::split).
  options.split = [&comm, &plan](model::CausalLm& model) {
    plan = apply_tensor_parallel(model, comm, ParameterValues::uninitialised);
    return plan.slices();
  };
  return model::CausalLm::load(options);
}

model::Classifier load_tensor_parallel(model::ClassifierOptions options, Communicator& comm, TensorParallelPlan& plan,
                                       model::ClassifierLoadReport* report) {
  // Pretrained or freshly drawn, each rank keeps only its part (ClassifierOptions::split).
  options.split = [&comm, &plan](model::Classifier& model) {
    plan = apply_tensor_parallel(model, comm, ParameterValues::uninitialised);
    return plan.slices();
  };
  return model::Classifier::load(options, report);
}

// ---------------------------------------------------------------------------------
// The plan

model::ParameterSlices TensorParallelPlan::slices() const {
  auto plan = std::make_shared<const TensorParallelPlan>(*this);
  return model::ParameterSlices{
      [plan](const std::string& name, const at::Tensor& local) { return plan->global_shape(name, local); },
      [plan](const std::string& name, const at::Tensor& whole) {
        auto found = plan->sharded.find(name);
        if (found == plan->sharded.end()) return whole;
        if (whole.sizes() != c10::IntArrayRef(found->second.global_shape))
          throw std::invalid_argument("TensorParallelPlan::slices: " + name + " is " + c10::str(whole.sizes()) +
                                      ", the model's is " + c10::str(c10::IntArrayRef(found->second.global_shape)));
        return slice_of(found->second, whole);
      },
      {},
      {}};
}

int TensorParallelPlan::replicas(const std::string& name) const {
  auto found = sharded.find(name);
  return found == sharded.end() ? tp_size : found->second.replicas;
}

std::vector<int64_t> TensorParallelPlan::global_shape(const std::string& name, const at::Tensor& local) const {
  auto found = sharded.find(name);
  return found == sharded.end() ? local.sizes().vec() : found->second.global_shape;
}

at::Tensor TensorParallelPlan::shard(const std::string& name, const at::Tensor& full) const {
  auto found = sharded.find(name);
  if (found == sharded.end()) return full;
  if (full.sizes() != c10::IntArrayRef(found->second.global_shape))
    throw std::invalid_argument("TensorParallelPlan::shard: " + name + " is " + c10::str(full.sizes()) +
                                ", the model's is " + c10::str(c10::IntArrayRef(found->second.global_shape)));
  return shard_along(found->second, full);
}

at::Tensor TensorParallelPlan::gather(const std::string& name, const at::Tensor& local, Group& tp) const {
  auto found = sharded.find(name);
  if (found == sharded.end()) return local;
  const ParameterShard& shard = found->second;
  const int64_t ranks = tp.size();
  // Every rank's part and every rank's indices, stacked: (N, local...), (N, n).
  std::vector<int64_t> stacked = {ranks};
  for (int64_t size : local.sizes()) stacked.push_back(size);
  at::Tensor parts = at::empty(stacked, local.options());
  tp.all_gather(parts, local.contiguous());
  at::Tensor indices = at::empty({ranks, shard.index.numel()}, at::kLong);
  tp.all_gather(indices, shard.index.contiguous());
  at::Tensor full = at::zeros(shard.global_shape, local.options());
  for (int64_t k = 0; k < ranks; ++k) {
    const at::Tensor index = indices[k];
    const at::Tensor held = (index >= 0).nonzero().reshape({-1});  // positions of real entries
    full.index_copy_(shard.dim, index.index_select(0, held).to(local.device()),
                     parts[k].index_select(shard.dim, held.to(local.device())));
  }
  return full;
}

}  // namespace ftrain::dist
