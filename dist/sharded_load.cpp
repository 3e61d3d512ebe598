#include "dist/sharded_load.h"

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer_body.h"

namespace ftrain::dist {
namespace {

// The split a loader calls once the model is built without values: tensor parallelism
// first, then every parameter moved into a ZeroSharding built Unfilled (into `zero`),
// whose fill_shard receives each parameter's part as it is read. `input` names the
// parameters only the embeddings use (ZeRO-3's input unit).
model::ParameterSlices split_into_shards(torch::nn::Module& module, const std::function<TensorParallelPlan()>& split_tp,
                                         Communicator& comm, c10::Device device, std::vector<std::string> input,
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
                                        ZeroSharding::Unfilled{device, at::kFloat}, std::move(input));
  ZeroSharding* target = zero.get();
  slices.take = [target](const std::string& name, const at::Tensor& part) { target->fill_shard(name, part); };
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
    // The embeddings are a unit of their own unless the head reads them too.
    std::vector<std::string> input;
    if (!lm.ties_embeddings()) input = model::input_parameter_names(lm.module());
    return split_into_shards(
        lm.module(), [&] { return apply_tensor_parallel(lm, comm, ParameterValues::uninitialised); }, comm, device,
        std::move(input), plan, zero);
  };
  model::CausalLm lm = model::CausalLm::load(options);
  check_filled(*zero, options.path);
  return ShardedCausalLm{std::move(lm), std::move(zero)};
}

ShardedClassifier load_zero3(model::ClassifierOptions options, Communicator& comm, c10::Device device,
                             TensorParallelPlan& plan, model::ClassifierLoadReport* report) {
  if (!options.pretrained) throw std::logic_error("load_zero3: a classifier is read into shards only when pretrained");
  std::unique_ptr<ZeroSharding> zero;
  options.split = [&](model::Classifier& classifier) {
    // A classifier's head is its own layer: the embeddings are always a unit apart.
    return split_into_shards(
        classifier.module(), [&] { return apply_tensor_parallel(classifier, comm, ParameterValues::uninitialised); },
        comm, device, model::input_parameter_names(classifier.module()), plan, zero);
  };
  model::Classifier classifier = model::Classifier::load(options, report);
  check_filled(*zero, options.path);
  return ShardedClassifier{std::move(classifier), std::move(zero)};
}

}  // namespace ftrain::dist
