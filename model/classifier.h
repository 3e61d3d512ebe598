// A pretrained transformer with a classification head, as the training loop sees it:
// one label per sequence (sentiment, topic) or one per token (named entities).
//
// The body is any supported family, read from a Hugging Face directory; the head is a
// linear layer on top of it, laid out as Hugging Face's task models lay it out so an
// exported classifier loads in `transformers` unchanged:
//
//   family        sequence classification             token classification
//   bert          bert.* (with pooler) + classifier   bert.* (no pooler) + classifier
//                 on tanh(dense(h[CLS]))               on every position
//   gpt2          transformer.* + score (no bias)     transformer.* + classifier
//                 on the last real token               on every position
//   llama family  model.* + score (no bias)           model.* + score
//                 on the last real token               on every position
//
// and for answer spans (question answering) every family scores every position with a
// two-output head `qa_outputs` (bias, no dropout): bert.* (no pooler), transformer.*
// (GPT-2, and Llama and Qwen2, whose QA models keep that name), model.* (Mistral).
//
// A head stored in the directory with the right number of labels is loaded; otherwise
// the head is new and initialised normal(0, initializer_range), bias 0, from the seed.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/hf_checkpoint.h"

namespace ftrain::model {

// sequence: one label per row; token: one per position; span: an answer's start and end
// (extractive question answering), scored at every position.
enum class ClassifierKind { sequence, token, span };

class Classifier;

struct ClassifierOptions {
  std::filesystem::path path;          // Hugging Face model directory
  ClassifierKind kind = ClassifierKind::sequence;
  std::vector<std::string> label_names;  // label i is label_names[i]; its size is the number of labels
  bool pretrained = true;              // load the body's safetensors; false: fresh init from config.json
  uint64_t seed = 1234;                // initialisation of everything not loaded
  double dropout = -1;                 // override every dropout probability; < 0 keeps config.json's
  // Padding token written to the exported config.json for decoders, whose Hugging Face
  // classifiers find a row's last real token by it; < 0 keeps config.json's.
  int64_t pad_token_id = -1;
  // The body is built without initialising its linear layers and embeddings, the
  // classifier (body and head registered, the head not yet set) is handed to `split`,
  // which cuts the body's parameters to this process's parts and says which part each
  // holds, and only then are the body and the head read (or drawn: model.init = random,
  // or a new head), each parameter copying its part or handing it to the slices' `take`
  // or `take_at` (see CausalLmOptions::split).
  std::function<ParameterSlices(Classifier&)> split;
  // Built without values and without reading the weights: the parameters only describe
  // the model, for a streamed save (save() with values).
  bool skeleton = false;

  // Throws std::runtime_error naming the option.
  void validate() const;
};

// What load() did besides loading a complete pretrained body.
struct ClassifierLoadReport {
  bool head_initialised = false;     // the head is new (none stored, or stored for another label count)
  bool pooler_initialised = false;   // bert: the checkpoint had no pooler, so it is new as well
  std::vector<std::string> warnings; // one line each, for the log
};

class Classifier {
 public:
  // Reads config.json and builds the family it names (model/families.h: bert, gpt2,
  // llama, mistral, qwen2). Throws std::runtime_error naming the file for an unsupported model_type or
  // tensors that do not fit.
  static Classifier load(const ClassifierOptions& options, ClassifierLoadReport* report = nullptr);

  torch::nn::Module& module() { return *module_; }
  std::shared_ptr<torch::nn::Module> module_ptr() { return module_; }
  const std::string& family() const { return family_; }  // config.json's model_type
  // The body's name in module() ("bert", "transformer", "model"); the head is beside it.
  const std::string& body_name() const { return body_name_; }
  ClassifierKind kind() const { return kind_; }
  int64_t num_labels() const { return num_labels_; }
  int64_t vocab_size() const { return vocab_size_; }
  // The token types (segments) the body embeds, 0 when it ignores them (decoders).
  int64_t type_vocab_size() const { return type_vocab_size_; }

  // input_ids (B, T) int64; attention_mask (B, T), 1 for tokens and 0 for right
  // padding, or undefined for none; token_type_ids (B, T) int64 or undefined (bert
  // only; decoders ignore it). Returns (B, num_labels) for sequence classification,
  // (B, T, num_labels) for token classification, (B, T, 2) start and end logits for
  // answer spans.
  at::Tensor logits(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                    const at::Tensor& token_type_ids = {}) const {
    return logits_(input_ids, attention_mask, token_type_ids);
  }

  // The head's parameters, and the pooler's when it had to be initialised: what a
  // frozen-body stage trains.
  bool is_head_parameter(const std::string& name) const;

  // Writes config.json (architectures, id2label, label2id, num_labels, pad_token_id
  // for decoders) and model.safetensors in the Hugging Face layout above. With
  // `values`, each stored tensor's data is asked of it as it is written (a skeleton's
  // parameters then only describe the file; see CausalLm::save).
  void save(const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values = {}) const {
    save_(dir, existing, values);
  }

 private:
  std::shared_ptr<torch::nn::Module> module_;
  std::string family_;
  std::string body_name_;
  ClassifierKind kind_ = ClassifierKind::sequence;
  int64_t num_labels_ = 0;
  int64_t vocab_size_ = 0;
  int64_t type_vocab_size_ = 0;
  std::vector<std::string> head_prefixes_;
  std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)> logits_;
  std::function<void(const std::filesystem::path&, ExistingDirectory, const TensorValues&)> save_;
};

}  // namespace ftrain::model
