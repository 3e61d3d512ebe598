// The model families ftrain builds from a Hugging Face directory, in one registry keyed
// by config.json's model_type. Everything that depends on the family (which module to
// build, how its weights are read and written, what its task heads are called) is
// looked up here; nothing else in ftrain asks which family a model is.
//
// A family is three files: its math (<family>.cpp), its config.json
// (<family>_config.cpp) and its Hugging Face mapping (<family>_checkpoint.cpp), which
// ends with the family's entry, <family>_family(), built from model/family_builders.h.
// The registry in families.cpp holds one line per family; dist/tensor_parallel.cpp
// keeps the matching registry of how each family is split (dist/splits/<family>.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "model/classifier.h"
#include "model/hf_checkpoint.h"
#include "model/seq2seq_lm.h"

namespace ftrain::model {

// What a family is asked to build for a classifier: its body, from config.json.
struct ClassifierBodyRequest {
  const nlohmann::json& config;  // config.json
  std::string source;            // config.json's path, for errors
  ClassifierKind kind = ClassifierKind::sequence;
  bool uninitialised = false;    // built without initialisation: the weights are read or drawn next
  bool pretrained = true;        // the weights are read next (else: drawn by parameter_init)
  uint64_t seed = 1234;
  double dropout = -1;           // override of every dropout probability; < 0 keeps config.json's
};

// A classifier's body as its family builds it, and the Hugging Face names around it.
struct ClassifierBody {
  std::string name;  // the body's name in the task model ("bert", "transformer", "model")
  // The body's prefix in the task model's files when it differs from `name`: Llama's
  // and Qwen2's question-answering models call it "transformer".
  std::string stored_name;
  std::shared_ptr<torch::nn::Module> module;
  int64_t vocab_size = 0;
  int64_t type_vocab_size = 0;  // token types (segments) it embeds; 0: it ignores them
  int64_t hidden_size = 0;
  double initializer_range = 0.02;
  nlohmann::json config;  // config.json of the export, before the task's keys

  // The head: its name, whether it has a bias, the dropout before it, and the task
  // model's architecture name ("BertForSequenceClassification", ...).
  std::string head_name;
  bool head_bias = true;
  double head_dropout = 0.0;
  std::string architecture;
  bool writes_pad_token_id = false;  // decoders' exports find a row's last token by it

  // A stored tensor that belongs to neither the body nor the head (a language-modelling
  // head, a pooler the token classifier lacks) and is skipped.
  std::function<bool(const std::string& name)> unused_tensor;
  // Reads the body's stored tensors (Hugging Face names; with slices, only this
  // process's parts). Returns the prefixes of parameters it had to initialise, which
  // then train with the head, and adds a warning for each to `warnings`.
  std::function<std::vector<std::string>(const NamedTensors& tensors, const std::string& source,
                                          const ParameterSlices* slices, std::vector<std::string>& warnings)>
      load;
  // How a body parameter starts in a fresh model (model.init = random), by its name in
  // the task model: the family's initialisation, drawn element by element.
  std::function<ParameterInit(const std::string& name)> parameter_init;
  // The body's tensors under their names in the task model, in Hugging Face layout.
  std::function<NamedTensors()> state;
  // input_ids, attention_mask, token_type_ids -> (B, C) per sequence or (B, T, C) per
  // token (token classification, answer spans).
  std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)> features;
};

struct ModelFamily {
  std::string name;                      // "gpt2", "llama", "bert"
  std::vector<std::string> model_types;  // the config.json model_type values it reads
  // The causal language model; empty for encoder-only families. `config` is config.json.
  std::function<CausalLm(const CausalLmOptions& options, const nlohmann::json& config, const std::string& source)>
      causal_lm;
  // The body of a sequence or token classifier; empty for encoder-decoders.
  std::function<ClassifierBody(const ClassifierBodyRequest& request)> classifier_body;
  // The encoder-decoder; empty for the others.
  std::function<Seq2SeqLm(const Seq2SeqLmOptions& options, const nlohmann::json& config, const std::string& source)>
      seq2seq = {};
};

// Every family, in registry order.
const std::vector<ModelFamily>& model_families();

// The family of `config` (a parsed config.json read from `source`). Throws
// std::runtime_error "<source>: key 'model_type': ..." when the key is missing, or
// names the value and lists the supported model types when no family reads it.
const ModelFamily& model_family(const nlohmann::json& config, const std::string& source);
// The same, or nullptr when no family reads the model_type.
const ModelFamily* find_model_family(const nlohmann::json& config, const std::string& source);

// The same for a family that must provide `what` (a member above, such as
// &ModelFamily::causal_lm), with "for <purpose>" in the error.
template <typename Member>
const ModelFamily& model_family_with(const nlohmann::json& config, const std::string& source, Member what,
                                     const std::string& purpose);

// "gpt2, llama, mistral, ..." for the families that provide `has` (all when empty).
std::string supported_model_types(const std::function<bool(const ModelFamily&)>& has = {});

[[noreturn]] void unsupported_model_type(const std::string& source, const std::string& model_type,
                                         const std::string& purpose, const std::string& supported);

template <typename Member>
const ModelFamily& model_family_with(const nlohmann::json& config, const std::string& source, Member what,
                                     const std::string& purpose) {
  const ModelFamily* family = find_model_family(config, source);
  if (!family || !(family->*what)) {
    unsupported_model_type(source, config["model_type"].get<std::string>(), purpose,
                           supported_model_types([what](const ModelFamily& f) { return static_cast<bool>(f.*what); }));
  }
  return *family;
}

}  // namespace ftrain::model
