#include "dist/tensor_parallel.h"

#include "dist/splits/cutting.h"
#include "model/families.h"

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
// The registry of splits, one line per family of model/families.cpp; each family's
// split is its own file in dist/splits/.

namespace {

const splits::FamilySplit& family_split(const std::string& model_type) {
  static const std::vector<splits::FamilySplit> registry = {
      splits::gpt2_split(),
      splits::llama_split(),
      splits::bert_split(),
      splits::t5_split(),
  };
  const model::ModelFamily& family = model::model_family({{"model_type", model_type}}, "apply_tensor_parallel");
  for (const splits::FamilySplit& split : registry)
    if (split.family == family.name) return split;
  throw std::invalid_argument("apply_tensor_parallel: model family '" + family.name + "' has no tensor-parallel split");
}

}  // namespace

TensorParallelPlan apply_tensor_parallel(model::CausalLm& model, Communicator& comm, ParameterValues values) {
  const splits::FamilySplit& split = family_split(model.family());
  if (!split.causal_lm)
    throw std::invalid_argument("apply_tensor_parallel: a " + model.family() + " language model cannot be split");
  return split.causal_lm(model.module(), comm, values);
}

TensorParallelPlan apply_tensor_parallel(model::Classifier& model, Communicator& comm, ParameterValues values) {
  const splits::FamilySplit& split = family_split(model.family());
  std::shared_ptr<torch::nn::Module> body = model.module().named_children()[model.body_name()];
  if (!split.classifier_body)
    throw std::invalid_argument("apply_tensor_parallel: a " + model.family() + " classifier has no body that can be split");
  return split.classifier_body(*body, model.body_name() + ".", comm, values);
}

TensorParallelPlan apply_tensor_parallel(model::Seq2SeqLm& model, Communicator& comm, ParameterValues values) {
  const splits::FamilySplit& split = family_split(model.family());
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
        return splits::slice_of(found->second, whole);
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
  return splits::shard_along(found->second, full);
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
