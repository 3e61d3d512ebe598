#include "dist/sharded_load.h"

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer_body.h"

namespace ftrain::dist {

ShardedCausalLm load_zero3(model::CausalLmOptions options, Communicator& comm, c10::Device device,
                           TensorParallelPlan& plan) {
  std::unique_ptr<ZeroSharding> zero;
  options.split = [&](model::CausalLm& lm) {
    model::ParameterSlices slices;
    if (comm.tp().size() > 1) {
      plan = apply_tensor_parallel(lm, comm, ParameterValues::uninitialised);
      slices = plan.slices();
    } else {
      slices.global_shape = [](const std::string&, const at::Tensor& local) { return local.sizes().vec(); };
      slices.part = [](const std::string&, const at::Tensor& whole) { return whole; };
    }
    std::vector<std::pair<std::string, at::Tensor>> params;
    for (const auto& item : lm.module().named_parameters()) params.emplace_back(item.key(), item.value());
    // The embeddings are a unit of their own unless the head reads them too.
    std::vector<std::string> input;
    if (!lm.ties_embeddings()) input = model::input_parameter_names(lm.module());
    zero = std::make_unique<ZeroSharding>(std::move(params), comm.dp(), model::block_parameter_names(lm.module()),
                                          ZeroSharding::Unfilled{device, at::kFloat}, std::move(input));
    ZeroSharding* target = zero.get();
    slices.take = [target](const std::string& name, const at::Tensor& part) { target->fill_shard(name, part); };
    return slices;
  };
  model::CausalLm lm = model::CausalLm::load(options);
  // The loaders check that every parameter is stored; this is the shards' own check.
  if (const std::vector<std::string> missing = zero->unfilled(); !missing.empty())
    throw std::logic_error("load_zero3: " + options.path.string() + ": parameter '" + missing.front() +
                           "' was not read into its shard");
  return ShardedCausalLm{std::move(lm), std::move(zero)};
}

}  // namespace ftrain::dist
