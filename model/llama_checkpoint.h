// Llama, Mistral and Qwen2 in a Hugging Face model directory: config.json plus
// model.safetensors (or a sharded model.safetensors.index.json), and fresh
// initialisation the way Hugging Face initialises these models.
#pragma once

#include "model/hf_checkpoint.h"  // ExistingDirectory
#include "model/llama.h"
#include "model/safetensors.h"

#include <cstdint>
#include <filesystem>
#include <string>

namespace ftrain::model {

// Reads config.json and the weights of a Hugging Face Llama, Mistral or Qwen2
// directory. Weights come from model.safetensors, or from
// model.safetensors.index.json and its shards when there is no single file. Tensor
// names may carry the `model.` prefix (…ForCausalLM) or not (LlamaModel).
// Parameters are float32 on the CPU whatever dtype the file stores. Throws
// std::runtime_error naming the file when it cannot read the directory or when the
// tensors do not match config.json.
Llama load_llama(const std::filesystem::path& dir);

// A model with Hugging Face's initialisation: every linear weight and the embedding
// normal(0, initializer_range), the pad_token_id row of the embedding 0, biases 0,
// RMSNorm scales 1. The same config and seed give the same parameters (drawn per
// element, model/parameter_init.h).
Llama init_llama(const LlamaConfig& config, uint64_t seed);

// How parameter `name` starts, and its whole initial value written into `value`, as
// gpt2_parameter_init and init_gpt2_parameter: the same in every process.
ParameterInit llama_parameter_init(const LlamaConfig& config, const std::string& name);
void init_llama_parameter(const LlamaConfig& config, uint64_t seed, const std::string& name, at::Tensor& value);

// Writes config.json and model.safetensors in Hugging Face's layout (no
// lm_head.weight when tied), each file replaced atomically. model.safetensors takes
// precedence over any index file already in the directory.
// With `values`, each tensor's data is asked of it as it is written (see save_gpt2).
void save_llama(Llama& model, const std::filesystem::path& dir,
                ExistingDirectory existing = ExistingDirectory::refuse, const TensorValues& values = {});

// The model's parameters under their Hugging Face names, in module order; the
// lm_head is omitted when tied.
NamedTensors to_hf_state(Llama& model);

// Copies tensors named as Hugging Face stores them into the model, after checking
// that every parameter is present exactly once with the right shape and that nothing
// else is there (rotary `inv_freq` buffers that older checkpoints carry are ignored).
// All problems are reported in one std::runtime_error prefixed by `source`. With
// `slices`, each parameter takes only its part of the stored tensor (see
// ParameterSlices), and each file tensor's pages are given back once copied.
void load_hf_state(Llama& model, const NamedTensors& tensors, const std::string& source,
                   const ParameterSlices* slices = nullptr);

struct ModelFamily;
// The Llama family's entry in the registry of model families (model/families.h).
ModelFamily llama_family();

}  // namespace ftrain::model
