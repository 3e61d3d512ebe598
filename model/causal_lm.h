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

#include "model/hf_checkpoint.h"

namespace ftrain::model {

class CausalLm;

struct CausalLmOptions {
  std::filesystem::path path;   // Hugging Face model directory
  bool pretrained = true;       // load the safetensors; false: fresh init from config.json
  uint64_t seed = 1234;         // init seed when not pretrained
  double dropout = -1;          // override every dropout probability; < 0 keeps config.json's
  // With pretrained: the model is built without initialising its linear layers and
  // embeddings (SkipInitialisation), handed to `split`, which cuts its parameters to
  // this process's parts (values not yet set) and says which part each holds, and only
  // then are the weights read, each parameter copying its part of the stored tensor.
  // So no process ever holds the whole model. dist::load_tensor_parallel sets it.
  std::function<ParameterSlices(CausalLm&)> split;
};

class CausalLm {
 public:
  // Reads config.json and builds the family it names: gpt2, or the Llama family
  // (llama, mistral, qwen2). Throws std::runtime_error naming the file for an unsupported model_type.
  static CausalLm load(const CausalLmOptions& options);

  torch::nn::Module& module() { return *module_; }
  std::shared_ptr<torch::nn::Module> module_ptr() { return module_; }
  const std::string& family() const { return family_; }
  int64_t vocab_size() const { return vocab_size_; }

  // (B, T) int64 token ids -> (B, T, V) logits. attention_mask (B, T), 1 for real
  // tokens, may be undefined for unpadded batches.
  at::Tensor logits(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}) const {
    return logits_(input_ids, attention_mask);
  }

  // The output layer's input and weight, for a loss that computes the logits itself
  // (linear_cross_entropy_sum): (B, T) ids -> hidden states (B, T, C) as they enter the
  // head (after its input hook), and the head weight (V or this rank's vocabulary rows, C).
  struct HeadInput {
    at::Tensor hidden;
    at::Tensor weight;
  };
  HeadInput head_input(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}) const {
    return head_input_(input_ids, attention_mask);
  }

  // Writes config.json and model.safetensors in the family's Hugging Face layout.
  void save(const std::filesystem::path& dir, ExistingDirectory existing) const { save_(dir, existing); }

 private:
  std::shared_ptr<torch::nn::Module> module_;
  std::string family_;
  int64_t vocab_size_ = 0;
  std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> logits_;
  std::function<HeadInput(const at::Tensor&, const at::Tensor&)> head_input_;
  std::function<void(const std::filesystem::path&, ExistingDirectory)> save_;
};

}  // namespace ftrain::model
