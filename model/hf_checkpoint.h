// What every family's Hugging Face mapping shares: a model directory's weights
// (model.safetensors, or a sharded model.safetensors.index.json), reading each
// parameter's part of them (ParameterSlices), drawing fresh values, and preparing a
// directory to write to. Each family's own mapping is <family>_checkpoint.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "model/linear.h"  // SkipInitialisation
#include "model/parameter_init.h"
#include "model/safetensors.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::model {

// Which part of each whole stored tensor a parameter holds, for a model whose
// parameters were cut to this process's parts after it was built (under
// SkipInitialisation) and before its weights were read: the loaders then check each
// stored tensor against the parameter's global shape and copy only its part, so the
// whole model is never resident. Names are the model's parameter names; both functions
// take tensors in the model's layout (a GPT-2 Conv1D weight already transposed).
// dist::TensorParallelPlan::slices() describes a tensor-parallel split this way.
struct ParameterSlices {
  // The shape of parameter `name` in the whole model; `local` is the parameter.
  std::function<std::vector<int64_t>(const std::string& name, const at::Tensor& local)> global_shape;
  // This process's part of `whole` (global shape): a view of it, or a new tensor.
  std::function<at::Tensor(const std::string& name, const at::Tensor& whole)> part;
  // Where the part goes instead of into the parameter, when set: for parameters whose
  // values are held elsewhere (ZeRO-3 shards, dist::ZeroSharding::fill_shard). Called
  // once per parameter with a view of the file that is valid only during the call.
  std::function<void(const std::string& name, const at::Tensor& part)> take;
  // For values given element by element (a random initialisation), when set: asks
  // `values` for the parameter's values at the global flat indices this process holds
  // (an int64 tensor) and keeps them, so no process draws more than its own elements.
  using ValuesAt = std::function<at::Tensor(const at::Tensor& global_flat_indices)>;
  std::function<void(const std::string& name, const ValuesAt& values)> take_at;

  // Puts this process's part of `whole` into `parameter`, or hands it to `take`.
  void load(const std::string& name, at::Tensor& parameter, const at::Tensor& whole) const;

  // The same parts for a module registered under `prefix` in the model described
  // (for a BERT body at "bert." in a classifier).
  ParameterSlices under(const std::string& prefix) const;
};

// Draws the initial values of each parameter of `module` that `init_of` describes (it
// returns nullopt for those drawn elsewhere), under `seed` (model/parameter_init.h).
// With `slices`, the module is split: each parameter draws only the elements this
// process holds when the slices take values element by element (take_at, ZeRO-3
// shards), else the whole value one parameter at a time, keeping its part.
void draw_parameters(torch::nn::Module& module,
                     const std::function<std::optional<ParameterInit>(const std::string& name)>& init_of,
                     uint64_t seed, const ParameterSlices* slices);

// A model built without values (SkipInitialisation), then every parameter written by
// init_parameter(config, seed, name, value): the whole-model form of a family's
// per-parameter initialisation.
template <typename Model, typename Config, typename InitParameter>
Model init_each_parameter(const Config& config, uint64_t seed, InitParameter init_parameter) {
  Model model = [&] {
    SkipInitialisation skip;
    return Model(config);
  }();
  for (auto& item : model->named_parameters()) init_parameter(config, seed, item.key(), item.value());
  return model;
}

enum class ExistingDirectory {
  refuse,     // error if the directory exists and is not empty
  overwrite,  // replace config.json and model.safetensors in it (other files stay)
};

// The weights of a Hugging Face model directory: model.safetensors, or the shards of
// model.safetensors.index.json when there is no single file (memory-mapped). `source`
// names the file read, for error messages. Throws naming the directory when neither exists.
struct ModelTensors {
  NamedTensors tensors;
  std::string source;
};
ModelTensors read_model_tensors(const std::filesystem::path& dir);

// Whether two stored tensors hold the same values, compared in float32 when their
// dtypes differ (a tied head stored beside its embedding).
bool same_values(const at::Tensor& a, const at::Tensor& b);

// Makes `dir` ready to receive a model directory: creates it, or checks that an
// existing one may be written to. Throws std::runtime_error naming the directory.
void prepare_model_directory(const std::filesystem::path& dir, ExistingDirectory existing);

}  // namespace ftrain::model
