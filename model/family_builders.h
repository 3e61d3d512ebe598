// What each family's registry entry (model/families.h) is built from: the pieces every
// family's builders share, and the language model and classifier body of a decoder,
// written once over a family's traits. A family's entry lives beside its Hugging Face
// mapping (<family>_checkpoint.cpp), so adding a family adds its own files, one line to
// the registry in families.cpp (and one to dist/'s registry of splits), and its sources
// to CMakeLists.txt.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "model/classifier.h"
#include "model/families.h"
#include "model/generation.h"
#include "model/hf_checkpoint.h"
#include "model/linear.h"

namespace ftrain::model {

// (B, T, C) hidden states, (B, T) mask of real tokens -> (B, C) at each row's last real
// token. Rows are padded on the right; without a mask the last position is used.
at::Tensor last_token(const at::Tensor& hidden, const at::Tensor& attention_mask);

// config.json's number under `key`, when it has one.
std::optional<double> config_number(const nlohmann::json& config, const char* key);

// "<prefix>ForSequenceClassification", "...ForTokenClassification" or
// "...ForQuestionAnswering": the task model's architecture name.
std::string task_architecture(const std::string& prefix, ClassifierKind kind);

// The dropout before a decoder's token-classification head, as transformers reads it:
// classifier_dropout, else hidden_dropout, else 0.1.
double decoder_token_head_dropout(const nlohmann::json& config);

// A module built the way a request asks: uninitialised (its weights are read next,
// split), plain (read next, whole), or with the family's initialisation from a seed.
template <typename Model, typename Config, typename Init>
Model built(const Config& config, bool uninitialised, bool pretrained, uint64_t seed, Init init) {
  if (uninitialised) {
    SkipInitialisation skip;
    return Model(config);
  }
  return pretrained ? Model(config) : init(config, seed);
}

// The values of a model built without them, for a causal or sequence-to-sequence
// model: `handle` wraps `model`, and options.split (when `split`) cuts it first, so each
// parameter gets only the part this process holds. Random: each element's value depends
// on (seed, name, index) alone (model/parameter_init.h), so a process draws only its
// elements; a split without take_at draws the whole value and keeps its part, one
// parameter at a time. Pretrained: each parameter reads only its part of the files.
template <typename Model, typename Handle, typename Options, typename InitOf>
void fill_values(Model& model, Handle& handle, const Options& options, bool split, const InitOf& init_of) {
  if (split && !options.pretrained) {
    const ParameterSlices slices = options.split(handle);
    draw_parameters(
        *model, [&](const std::string& name) { return std::optional(init_of(name)); }, options.seed, &slices);
  } else if (options.pretrained && !options.skeleton) {
    const std::optional<ParameterSlices> slices = split ? std::optional(options.split(handle)) : std::nullopt;
    const ModelTensors stored = read_model_tensors(options.path);
    load_hf_state(model, stored.tensors, stored.source, slices ? &*slices : nullptr);
  }
}

// ---------------------------------------------------------------------------------
// Decoders: GPT-2 and the Llama family share the language model's shape. A family's
// `Traits` names what differs: the config and module types, the body, its token
// embedding, the Hugging Face class names and how each is loaded, initialised and saved
// (Gpt2Traits in gpt2_checkpoint.cpp is the example).

template <typename Traits>
CausalLm decoder_lm(const CausalLmOptions& options, const nlohmann::json& raw, const std::string& source) {
  using Model = typename Traits::Model;
  typename Traits::Config config = Traits::Config::from_json(raw, source);
  if (options.dropout >= 0) Traits::override_dropout(config, options.dropout);
  const bool split = options.split != nullptr && !options.skeleton;
  Model model = built<Model>(config, split || options.skeleton, options.pretrained, options.seed, Traits::init);

  CausalLm::Parts parts;
  parts.module = model.ptr();
  parts.vocab_size = config.vocab_size;
  parts.max_positions = Traits::max_positions(config);
  parts.ties_embeddings = config.tie_word_embeddings;
  {
    const at::Tensor& head = config.tie_word_embeddings ? Traits::embedding(model) : model->lm_head->weight;
    for (const auto& item : model->named_parameters())
      if (item.value().is_same(head)) parts.head_weight_name = item.key();
  }
  parts.max_positions_key = Traits::max_positions_key;
  parts.logits = [model](const at::Tensor& ids, const at::Tensor& mask) mutable {
    return Traits::forward(model, ids, mask);
  };
  parts.head_input = [model](const at::Tensor& ids, const at::Tensor& mask) mutable {
    const at::Tensor& weight = model->config().tie_word_embeddings ? Traits::embedding(model) : model->lm_head->weight;
    return CausalLm::HeadInput{model->head_input_hook(Traits::hidden_states(model, ids, mask)), weight};
  };
  parts.next_logits = [model](const at::Tensor& ids, KvCache& cache) mutable {
    // (B, T_new, C) -> (B, C) -> (B, V): only the last position predicts the next token.
    return model->logits(Traits::hidden_states(model, ids, at::Tensor(), &cache).select(1, -1));
  };
  parts.save = [model](const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values) mutable {
    Traits::save(model, dir, existing, values);
  };
  CausalLm lm(raw["model_type"].get<std::string>(), std::move(parts));
  fill_values(model, lm, options, split,
              [&](const std::string& name) { return Traits::parameter_init(config, name); });
  return lm;
}

template <typename Traits>
ClassifierBody decoder_classifier_body(const ClassifierBodyRequest& request) {
  using Model = typename Traits::Model;
  typename Traits::Config config = Traits::Config::from_json(request.config, request.source);
  if (request.dropout >= 0) Traits::override_dropout(config, request.dropout);
  ClassifierBody body;
  body.config = config.to_json();
  config.tie_word_embeddings = true;  // the body has no language-modelling head of its own
  Model model = built<Model>(config, request.uninitialised, request.pretrained, request.seed, Traits::init);

  body.name = Traits::body_name;
  if (request.kind == ClassifierKind::span) body.stored_name = Traits::span_body_name(config);
  body.module = Traits::body(model).ptr();
  body.vocab_size = config.vocab_size;
  body.hidden_size = Traits::hidden_size(config);
  body.initializer_range = config.initializer_range;
  body.head_name = Traits::head_name(request.kind);
  // Decoders score the last token directly: no bias, and no dropout unless overridden.
  // The answer-span head has a bias and, as in Hugging Face, no dropout before it.
  body.head_bias = request.kind != ClassifierKind::sequence;
  body.head_dropout = request.dropout >= 0                    ? request.dropout
                      : request.kind == ClassifierKind::token ? Traits::token_head_dropout(request.config)
                                                              : 0.0;
  body.architecture = task_architecture(Traits::architecture_prefix(config), request.kind);
  body.writes_pad_token_id = true;
  body.unused_tensor = [](const std::string& name) {
    return name == "lm_head.weight" || name.starts_with("classifier.") || name.starts_with("score.") ||
           name.starts_with("qa_outputs.");
  };
  body.load = [model](const NamedTensors& tensors, const std::string& source, const ParameterSlices* slices,
                      std::vector<std::string>&) mutable {
    load_hf_state(model, tensors, source, slices);
    return std::vector<std::string>{};
  };
  body.state = [model]() mutable { return to_hf_state(model); };
  // The task model names the body's parameters as the language model does
  // ("transformer.h.0...", "model.layers.0..."): a fresh body equals a fresh LM's.
  body.parameter_init = [config](const std::string& name) { return Traits::parameter_init(config, name); };
  const ClassifierKind kind = request.kind;
  body.features = [model, kind](const at::Tensor& ids, const at::Tensor& mask, const at::Tensor&) mutable {
    at::Tensor hidden = Traits::body_forward(model, ids, mask);  // (B, T, C)
    return kind == ClassifierKind::sequence ? last_token(hidden, mask) : hidden;
  };
  return body;
}

}  // namespace ftrain::model
