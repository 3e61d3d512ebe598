// GPT-2 in a Hugging Face model directory: config.json plus model.safetensors (or a
// sharded model.safetensors.index.json), and fresh initialisation the way Hugging
// Face initialises GPT-2.
#pragma once

#include "model/gpt2.h"
#include "model/hf_checkpoint.h"
#include "model/parameter_init.h"
#include "model/safetensors.h"

#include <cstdint>
#include <filesystem>
#include <string>

namespace ftrain::model {

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

struct ModelFamily;
// GPT-2's entry in the registry of model families (model/families.h).
ModelFamily gpt2_family();

}  // namespace ftrain::model
