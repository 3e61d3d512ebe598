// A decoder-only language model of any supported family, as the training loop sees
// it: built from a Hugging Face directory, producing next-token logits, saved back in
// the same format. The family is read from config.json's model_type.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "model/hf_checkpoint.h"

namespace ftrain::model {

class CausalLm;

struct CausalLmOptions {
  std::filesystem::path path;   // Hugging Face model directory
  bool pretrained = true;       // load the safetensors; false: fresh init from config.json
  uint64_t seed = 1234;         // init seed when not pretrained
  double dropout = -1;          // override every dropout probability; < 0 keeps config.json's
  // The model is built without initialising its linear layers and embeddings
  // (SkipInitialisation), handed to `split`, which cuts its parameters to this
  // process's parts (values not yet set) and says which part each holds, and only then
  // are the weights read (pretrained), each parameter copying its part of the stored
  // tensor, or drawn (random init), each parameter's whole value drawn the same way in
  // every process and only its part kept. So no process ever holds the whole model.
  // dist::load_tensor_parallel and dist::load_zero3 set it.
  std::function<ParameterSlices(CausalLm&)> split = {};
  // Built without values (SkipInitialisation) and nothing read: a model that only
  // describes itself, for an export whose values come from elsewhere (save's values).
  bool skeleton = false;
};

struct KvCache;

class CausalLm {
 public:
  // Reads config.json and builds the family it names (model/families.h: gpt2, or the
  // Llama family: llama, mistral, qwen2). Throws std::runtime_error naming the file for
  // a model_type no family reads as a causal language model.
  static CausalLm load(const CausalLmOptions& options);

  // The output layer's input and weight, for a loss that computes the logits itself
  // (linear_cross_entropy_sum): (B, T) ids -> hidden states (B, T, C) as they enter the
  // head (after its input hook), and the head weight (V or this rank's vocabulary rows, C).
  struct HeadInput {
    at::Tensor hidden;
    at::Tensor weight;
  };

  // What a family builds (model/families.cpp).
  struct Parts {
    std::shared_ptr<torch::nn::Module> module;
    int64_t vocab_size = 0;
    int64_t max_positions = 0;  // the longest sequence it can read; 0: no limit
    std::string max_positions_key;  // config.json's key for it ("n_positions")
    bool ties_embeddings = false;   // the head's weight is the token embedding
    std::string head_weight_name;   // the head weight's parameter name (tied: the embedding's)
    std::function<at::Tensor(const at::Tensor& ids, const at::Tensor& mask)> logits;
    std::function<HeadInput(const at::Tensor& ids, const at::Tensor& mask)> head_input;
    // (B, T_new) ids following those in the cache -> (B, V) logits of the last of them.
    std::function<at::Tensor(const at::Tensor& ids, KvCache& cache)> next_logits;
    std::function<void(const std::filesystem::path&, ExistingDirectory, const TensorValues&)> save;
  };
  CausalLm(std::string model_type, Parts parts) : model_type_(std::move(model_type)), parts_(std::move(parts)) {}

  torch::nn::Module& module() { return *parts_.module; }
  std::shared_ptr<torch::nn::Module> module_ptr() { return parts_.module; }
  const std::string& family() const { return model_type_; }  // config.json's model_type
  int64_t vocab_size() const { return parts_.vocab_size; }
  int64_t max_positions() const { return parts_.max_positions; }
  const std::string& max_positions_key() const { return parts_.max_positions_key; }
  // Whether the output layer reads the token embedding's weight (tie_word_embeddings),
  // so the embedding is used both before the blocks and after them.
  bool ties_embeddings() const { return parts_.ties_embeddings; }
  // The parameter name of the output layer's weight (tied: the token embedding's).
  const std::string& head_weight_name() const { return parts_.head_weight_name; }

  // (B, T) int64 token ids -> (B, T, V) logits. attention_mask (B, T), 1 for real
  // tokens, may be undefined for unpadded batches.
  at::Tensor logits(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}) const {
    return parts_.logits(input_ids, attention_mask);
  }

  HeadInput head_input(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}) const {
    return parts_.head_input(input_ids, attention_mask);
  }

  // Incremental decoding (model/generation.h): (B, T_new) ids of the tokens that follow
  // those in `cache` -> (B, V) next-token logits; appends their keys and values.
  at::Tensor next_logits(const at::Tensor& input_ids, KvCache& cache) const {
    return parts_.next_logits(input_ids, cache);
  }

  // Writes config.json and model.safetensors in the family's Hugging Face layout; with
  // `values`, each stored tensor's data is asked of it as it is written (the parameters
  // then only describe the file: a skeleton, CausalLmOptions::skeleton).
  void save(const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values = {}) const {
    parts_.save(dir, existing, values);
  }

 private:
  std::string model_type_;
  Parts parts_;
};

}  // namespace ftrain::model
