// An encoder-decoder language model as the training loop sees it (T5, for summarization
// and translation): teacher-forced logits for a loss, generation for evaluation, and a
// Hugging Face export. Built by the family registry (model/families.h) from model.path.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "model/hf_checkpoint.h"
#include "model/seq2seq_generation.h"

namespace ftrain::model {

class Seq2SeqLm;

struct Seq2SeqLmOptions {
  std::filesystem::path path;  // Hugging Face model directory
  bool pretrained = true;      // load the safetensors; false: fresh init from config.json
  uint64_t seed = 1234;        // init seed when not pretrained
  double dropout = -1;         // override dropout_rate; < 0 keeps config.json's
  // Built without values and without reading the weights: the parameters only describe
  // the model, for a streamed save (save() with values).
  bool skeleton = false;
  // As CausalLmOptions::split: the model is built without initialising its values,
  // split (its parameters cut to this process's parts, or handed to ZeRO-3 shards), and
  // only then read or drawn, each parameter taking only its part. dist::load_zero3 sets it.
  std::function<ParameterSlices(Seq2SeqLm&)> split = {};
};

class Seq2SeqLm {
 public:
  // What a family provides.
  struct Parts {
    std::shared_ptr<torch::nn::Module> module;
    int64_t vocab_size = 0;
    int64_t pad_token_id = 0;
    // input_ids (B, S), attention_mask (B, S) or undefined, labels (B, T) with -100 ->
    // (B, T, V): each position's next-token logits, the decoder reading the labels
    // shifted right.
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)> logits;
    // The same inputs -> (B, T, C): what the head reads to give those logits, for a loss
    // that computes the head itself (ZeRO-3 streams its rows: dist/streamed_vocab.h).
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)> head_input;
    std::string head_weight_name;  // the head's (V, C) weight, the embedding's when tied
    bool ties_embeddings = false;
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const Seq2SeqGenerationOptions&)> generate;
    std::function<void(const std::filesystem::path&, ExistingDirectory, const TensorValues&)> save;
  };

  Seq2SeqLm(std::string family, Parts parts) : family_(std::move(family)), parts_(std::move(parts)) {}

  // Reads config.json and builds the family it names. Throws std::runtime_error naming
  // the file for a model_type no family reads as an encoder-decoder.
  static Seq2SeqLm load(const Seq2SeqLmOptions& options);

  torch::nn::Module& module() { return *parts_.module; }
  const std::string& family() const { return family_; }
  int64_t vocab_size() const { return parts_.vocab_size; }
  int64_t pad_token_id() const { return parts_.pad_token_id; }
  const std::string& head_weight_name() const { return parts_.head_weight_name; }
  bool ties_embeddings() const { return parts_.ties_embeddings; }

  at::Tensor logits(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& labels) const {
    return parts_.logits(input_ids, attention_mask, labels);
  }
  at::Tensor head_input(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& labels) const {
    return parts_.head_input(input_ids, attention_mask, labels);
  }
  // (B, 1 + N) on the CPU, as model/seq2seq_generation.h's generate().
  at::Tensor generate(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                      const Seq2SeqGenerationOptions& options) const {
    return parts_.generate(input_ids, attention_mask, options);
  }
  // Writes config.json and model.safetensors; with `values`, each stored tensor's data is
  // asked of it as it is written (a skeleton's parameters only describe the file).
  void save(const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values = {}) const {
    parts_.save(dir, existing, values);
  }

 private:
  std::string family_;
  Parts parts_;
};

}  // namespace ftrain::model
