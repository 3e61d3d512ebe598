#include "dist/sharded_load.h"

#include "dist/streamed_vocab.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "model/transformer_body.h"

namespace ftrain::dist {
namespace {

// Flat indices into a tensor-parallel part (of shape `part_shape`) -> flat indices into
// the whole parameter, for a parameter split along shard.dim at the global positions
// shard.index, and where the part holds padding (index -1: vocabulary padding rows).
std::pair<at::Tensor, at::Tensor> global_flat_indices(const ParameterShard& shard, const std::vector<int64_t>& part_shape,
                                                      const at::Tensor& part_index) {
  const int64_t part_columns = part_shape.size() == 2 ? part_shape[1] : 1;
  const int64_t global_columns = shard.global_shape.size() == 2 ? shard.global_shape[1] : 1;
  const at::Tensor row = part_index.div(part_columns, "floor");
  const at::Tensor column = part_index.remainder(part_columns);
  at::Tensor position = shard.index.index_select(0, shard.dim == 0 ? row : column);
  const at::Tensor padding = position.lt(0);
  position = position.clamp_min(0);
  at::Tensor global = shard.dim == 0 ? position * global_columns + column : row * global_columns + position;
  return {global, padding};
}

// The split a loader calls once the model is built without values: tensor parallelism
// first, then every parameter moved into a ZeroSharding built Unfilled (into `zero`),
// whose fill_shard receives each parameter's part as it is read. `units` names the
// parameters only the embeddings use and the vocabulary matrices (dist/zero.h).
model::ParameterSlices split_into_shards(torch::nn::Module& module, const std::function<TensorParallelPlan()>& split_tp,
                                         Communicator& comm, c10::Device device, ZeroUnitNames units,
                                         TensorParallelPlan& plan, std::unique_ptr<ZeroSharding>& zero) {
  model::ParameterSlices slices;
  if (comm.tp().size() > 1) {
    plan = split_tp();
    slices = plan.slices();
  } else {
    slices.global_shape = [](const std::string&, const at::Tensor& local) { return local.sizes().vec(); };
    slices.part = [](const std::string&, const at::Tensor& whole) { return whole; };
  }
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& item : module.named_parameters()) params.emplace_back(item.key(), item.value());
  zero = std::make_unique<ZeroSharding>(std::move(params), comm.dp(), model::block_parameter_names(module),
                                        ZeroSharding::Unfilled{device, at::kFloat}, std::move(units.input),
                                        std::move(units.vocabulary));
  ZeroSharding* target = zero.get();
  slices.take = [target](const std::string& name, const at::Tensor& part) { target->fill_shard(name, part); };
  // Values element by element: only this rank's flat range of its part is computed,
  // each element asked for at its index in the whole parameter.
  const TensorParallelPlan* split = comm.tp().size() > 1 ? &plan : nullptr;
  slices.take_at = [target, split](const std::string& name, const model::ParameterSlices::ValuesAt& values) {
    const auto [offset, count] = target->own_range(name);
    const at::Tensor part_index = at::arange(offset, offset + count, at::kLong);
    at::Tensor global_index = part_index;
    at::Tensor padding;  // entries of the part that pad the vocabulary: 0
    if (split)
      if (auto found = split->sharded.find(name); found != split->sharded.end())
        std::tie(global_index, padding) = global_flat_indices(found->second, target->parameter_shape(name), part_index);
    at::Tensor own = values(global_index);
    if (padding.defined()) own.masked_fill_(padding, 0.0);
    target->fill_own_range(name, own);
  };
  return slices;
}

// The loaders check that every parameter is stored; this is the shards' own check.
void check_filled(const ZeroSharding& zero, const std::filesystem::path& path) {
  if (const std::vector<std::string> missing = zero.unfilled(); !missing.empty())
    throw std::logic_error("load_zero3: " + path.string() + ": parameter '" + missing.front() +
                           "' was not read into its shard");
}

}  // namespace

ShardedCausalLm load_zero3(model::CausalLmOptions options, Communicator& comm, c10::Device device,
                           TensorParallelPlan& plan) {
  std::unique_ptr<ZeroSharding> zero;
  options.split = [&](model::CausalLm& lm) {
    return split_into_shards(
        lm.module(), [&] { return apply_tensor_parallel(lm, comm, ParameterValues::uninitialised); }, comm, device,
        zero3_unit_names(lm.module(), lm.head_weight_name(), lm.ties_embeddings(), comm.tp().size()), plan, zero);
  };
  model::CausalLm lm = model::CausalLm::load(options);
  check_filled(*zero, options.path);
  return ShardedCausalLm{std::move(lm), std::move(zero)};
}

ShardedClassifier load_zero3(model::ClassifierOptions options, Communicator& comm, c10::Device device,
                             TensorParallelPlan& plan, model::ClassifierLoadReport* report) {
  std::unique_ptr<ZeroSharding> zero;
  options.split = [&](model::Classifier& classifier) {
    // A classifier's head is its own layer: the embeddings are always a unit apart.
    return split_into_shards(
        classifier.module(), [&] { return apply_tensor_parallel(classifier, comm, ParameterValues::uninitialised); },
        comm, device, zero3_unit_names(classifier.module(), "", false, comm.tp().size()), plan, zero);
  };
  model::Classifier classifier = model::Classifier::load(options, report);
  check_filled(*zero, options.path);
  return ShardedClassifier{std::move(classifier), std::move(zero)};
}

ShardedSeq2SeqLm load_zero3(model::Seq2SeqLmOptions options, Communicator& comm, c10::Device device,
                            TensorParallelPlan& plan) {
  std::unique_ptr<ZeroSharding> zero;
  options.split = [&](model::Seq2SeqLm& s2s) {
    return split_into_shards(
        s2s.module(), [&] { return apply_tensor_parallel(s2s, comm, ParameterValues::uninitialised); }, comm, device,
        zero3_seq2seq_unit_names(s2s.module(), s2s.head_weight_name()), plan, zero);
  };
  model::Seq2SeqLm s2s = model::Seq2SeqLm::load(options);
  check_filled(*zero, options.path);
  return ShardedSeq2SeqLm{std::move(s2s), std::move(zero)};
}

}  // namespace ftrain::dist
