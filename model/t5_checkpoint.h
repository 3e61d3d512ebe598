// T5 in a Hugging Face model directory: config.json plus model.safetensors (or a
// sharded model.safetensors.index.json), and fresh initialisation the way Hugging
// Face initialises T5.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "model/hf_checkpoint.h"
#include "model/parameter_init.h"
#include "model/safetensors.h"
#include "model/t5.h"

namespace ftrain::model {

// Reads config.json and the weights of a Hugging Face T5 directory (model.safetensors or
// its sharded index). Throws std::runtime_error naming the file and the tensors that do
// not match config.json, or the config key ftrain does not support.
T5 load_t5(const std::filesystem::path& dir);

// The parameters under their Hugging Face names (lm_head only when untied).
NamedTensors to_hf_state(T5& model);

// Copies tensors named as Hugging Face stores them into the model, after checking that
// every parameter is present once with its shape. encoder/decoder.embed_tokens.weight
// (copies of shared.weight) and, when tied, lm_head.weight are accepted when equal to
// shared.weight; anything else unknown is an error, all problems in one message. With
// `slices`, each parameter takes only its part of the stored tensor (global shapes are
// checked), and each file tensor's pages are given back once it is copied.
void load_hf_state(T5& model, const NamedTensors& tensors, const std::string& source,
                   const ParameterSlices* slices = nullptr);

// How parameter `name` starts in a fresh T5, as transformers initialises it (with
// initializer_factor f): the embedding and an untied head normal(0, f); q
// normal(0, f (d_model d_kv)^-0.5), k, v and the relative bias normal(0, f d_model^-0.5),
// o normal(0, f (H d_kv)^-0.5); wi, wi_0, wi_1 normal(0, f d_model^-0.5), wo
// normal(0, f d_ff^-0.5); layer norms 1.
ParameterInit t5_parameter_init(const T5Config& config, const std::string& name);
// A fresh T5, each element drawn from (seed, name, index) (model/parameter_init.h).
T5 init_t5(const T5Config& config, uint64_t seed);

// Writes config.json and model.safetensors in Hugging Face's layout.
// With `values`, each tensor's data is asked of it as it is written (see save_gpt2).
void save_t5(T5& model, const std::filesystem::path& dir, ExistingDirectory existing = ExistingDirectory::refuse,
             const TensorValues& values = {});

struct ModelFamily;
// T5's entry in the registry of model families (model/families.h).
ModelFamily t5_family();

}  // namespace ftrain::model
