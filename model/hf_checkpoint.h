// GPT-2 in a Hugging Face model directory: config.json plus model.safetensors (or a
// sharded model.safetensors.index.json), and fresh initialisation the way Hugging
// Face initialises GPT-2.
#pragma once

#include "model/gpt2.h"
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

// Reads config.json and the weights of a Hugging Face GPT-2 directory. Weights come
// from model.safetensors, or from model.safetensors.index.json and its shards when
// there is no single file. Tensor names may carry the `transformer.` prefix
// (GPT2LMHeadModel) or not (GPT2Model). Parameters are float32 on the CPU whatever
// dtype the file stores. Throws std::runtime_error naming the file when it cannot
// read the directory or when the tensors do not match config.json.
Gpt2 load_gpt2(const std::filesystem::path& dir);

// A GPT-2 with Hugging Face's initialisation: weights and embeddings
// normal(0, initializer_range), biases 0, LayerNorm scale 1 and shift 0, and the
// residual projections (attn.c_proj, mlp.c_proj) normal(0, initializer_range /
// sqrt(2 * n_layer)). The same config and seed give the same parameters.
Gpt2 init_gpt2(const Gpt2Config& config, uint64_t seed);

// How parameter `name` (as the model names it, in the model's layout) starts.
ParameterInit gpt2_parameter_init(const Gpt2Config& config, const std::string& name);

// The initial value of one parameter, written into `value` (its whole shape). Each
// element's value depends only on (seed, name, its index) (model/parameter_init.h), so a
// process that holds only some parameters, or parts of them, computes the same values
// as one that holds the whole model, drawing only its own elements.
void init_gpt2_parameter(const Gpt2Config& config, uint64_t seed, const std::string& name, at::Tensor& value);

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

// Writes config.json and model.safetensors in Hugging Face's layout (Conv1D weights
// (in, out); no lm_head.weight when tied), each file replaced atomically.
// model.safetensors takes precedence over any index file already in the directory.
// With `values`, the model's parameters only describe the file (a model built without
// values), and each tensor's data is asked of `values` as it is written.
void save_gpt2(Gpt2& model, const std::filesystem::path& dir,
               ExistingDirectory existing = ExistingDirectory::refuse, const TensorValues& values = {});

// The model's parameters under their Hugging Face names and layouts, in module
// order. Conv1D weights are transposed views; the lm_head is omitted when tied.
NamedTensors to_hf_state(Gpt2& model);

// Copies tensors named and laid out as Hugging Face stores them into the model,
// after checking that every parameter is present exactly once with the right shape
// and that nothing else is there (attention-mask buffers `h.<i>.attn.bias` and
// `h.<i>.attn.masked_bias` are ignored). All problems are reported in one
// std::runtime_error prefixed by `source`. With `slices`, each parameter takes only its
// part of the stored tensor (global shapes are checked), and the pages of each file
// tensor are given back once it is copied (release_mapped_pages).
void load_hf_state(Gpt2& model, const NamedTensors& tensors, const std::string& source,
                   const ParameterSlices* slices = nullptr);

}  // namespace ftrain::model
