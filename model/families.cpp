#include "model/families.h"

#include <torch/torch.h>

#include <optional>
#include <stdexcept>

#include "model/bert.h"
#include "model/bert_checkpoint.h"
#include "model/config_fields.h"
#include "model/generation.h"
#include "model/gpt2.h"
#include "model/gpt2_checkpoint.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/llama_checkpoint.h"
#include "model/seq2seq_generation.h"
#include "model/t5_checkpoint.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::model {
namespace {

// (B, T, C) hidden states, (B, T) mask of real tokens -> (B, C) at each row's last real
// token. Rows are padded on the right; without a mask the last position is used.
torch::Tensor last_token(const torch::Tensor& hidden, const torch::Tensor& attention_mask) {
  const int64_t batch = hidden.size(0);
  torch::Tensor last;
  if (attention_mask.defined()) {
    auto positions = torch::arange(hidden.size(1), torch::TensorOptions().dtype(torch::kLong).device(hidden.device()));
    last = (positions * (attention_mask != 0).to(torch::kLong)).argmax(1);  // (B)
  } else {
    last = torch::full({batch}, hidden.size(1) - 1, torch::TensorOptions().dtype(torch::kLong).device(hidden.device()));
  }
  return hidden.index({torch::arange(batch, last.options()), last});
}

std::optional<double> number(const json& config, const char* key) {
  if (config.contains(key) && config[key].is_number()) return config[key].get<double>();
  return std::nullopt;
}

std::string task_architecture(const std::string& prefix, ClassifierKind kind) {
  switch (kind) {
    case ClassifierKind::sequence: return prefix + "ForSequenceClassification";
    case ClassifierKind::token: return prefix + "ForTokenClassification";
    case ClassifierKind::span: return prefix + "ForQuestionAnswering";
  }
  return prefix;
}

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

// ---------------------------------------------------------------------------------
// Decoders: GPT-2 and the Llama family share the language model's shape. `Family`
// names what differs: the config and module types, the body, its token embedding, the
// Hugging Face class names and how each is loaded, initialised and saved.

struct Gpt2Traits {
  using Config = Gpt2Config;
  using Model = Gpt2;
  static constexpr const char* body_name = "transformer";
  static auto& body(Model& m) { return m->transformer; }
  static const at::Tensor& embedding(Model& m) { return m->transformer->wte->weight; }
  static int64_t hidden_size(const Config& c) { return c.n_embd; }
  static int64_t max_positions(const Config& c) { return c.n_positions; }
  static constexpr const char* max_positions_key = "n_positions";
  static void override_dropout(Config& c, double p) { c.resid_pdrop = c.embd_pdrop = c.attn_pdrop = p; }
  static Model init(const Config& c, uint64_t seed) { return init_gpt2(c, seed); }
  static ParameterInit parameter_init(const Config& c, const std::string& name) { return gpt2_parameter_init(c, name); }
  static void save(Model& m, const fs::path& dir, ExistingDirectory e, const TensorValues& v) { save_gpt2(m, dir, e, v); }
  static std::string architecture_prefix(const Config&) { return "GPT2"; }
  // GPT2ForTokenClassification's head is `classifier` with a bias; the sequence
  // classifier's is `score` without one.
  static std::string head_name(ClassifierKind kind) {
    return kind == ClassifierKind::span ? "qa_outputs" : kind == ClassifierKind::token ? "classifier" : "score";
  }
  static std::string span_body_name(const Config&) { return "transformer"; }
  static double token_head_dropout(const json& config) {
    return number(config, "classifier_dropout").value_or(number(config, "hidden_dropout").value_or(0.1));
  }
  // The language model reads a mask as packed documents (model/documents.h). A
  // classifier's body runs without one: it is causal, so right padding is harmless.
  static at::Tensor forward(Model& m, const at::Tensor& ids, const at::Tensor& mask) {
    return m->forward(ids, nullptr, mask);
  }
  static at::Tensor hidden_states(Model& m, const at::Tensor& ids, const at::Tensor& mask, KvCache* cache = nullptr) {
    return m->hidden_states(ids, cache, mask);
  }
  static at::Tensor body_forward(Model& m, const at::Tensor& ids, const at::Tensor&) {
    return m->transformer->forward(ids);
  }
};

struct LlamaTraits {
  using Config = LlamaConfig;
  using Model = Llama;
  static constexpr const char* body_name = "model";
  static auto& body(Model& m) { return m->model; }
  static const at::Tensor& embedding(Model& m) { return m->model->embed_tokens->weight; }
  static int64_t hidden_size(const Config& c) { return c.hidden_size; }
  static int64_t max_positions(const Config&) { return 0; }  // rotary: no table to outgrow
  static constexpr const char* max_positions_key = "";
  static void override_dropout(Config& c, double p) { c.attention_dropout = p; }
  static Model init(const Config& c, uint64_t seed) { return init_llama(c, seed); }
  static ParameterInit parameter_init(const Config& c, const std::string& name) { return llama_parameter_init(c, name); }
  static void save(Model& m, const fs::path& dir, ExistingDirectory e, const TensorValues& v) { save_llama(m, dir, e, v); }
  static std::string architecture_prefix(const Config& c) {
    if (c.model_type == "mistral") return "Mistral";
    if (c.model_type == "qwen2") return "Qwen2";
    return "Llama";
  }
  static std::string head_name(ClassifierKind kind) { return kind == ClassifierKind::span ? "qa_outputs" : "score"; }
  // LlamaForQuestionAnswering and Qwen2's keep the older name of the body; Mistral's does not.
  static std::string span_body_name(const Config& c) { return c.model_type == "mistral" ? "model" : "transformer"; }
  static double token_head_dropout(const json& config) { return Gpt2Traits::token_head_dropout(config); }
  static at::Tensor forward(Model& m, const at::Tensor& ids, const at::Tensor& mask) { return m->forward(ids, mask); }
  static at::Tensor hidden_states(Model& m, const at::Tensor& ids, const at::Tensor& mask, KvCache* cache = nullptr) {
    return m->hidden_states(ids, mask, cache);
  }
  static at::Tensor body_forward(Model& m, const at::Tensor& ids, const at::Tensor& mask) {
    return m->model->forward(ids, mask);
  }
};

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

template <typename Traits>
CausalLm decoder_lm(const CausalLmOptions& options, const json& raw, const std::string& source) {
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
  parts.save = [model](const fs::path& dir, ExistingDirectory existing, const TensorValues& values) mutable {
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
    torch::Tensor hidden = Traits::body_forward(model, ids, mask);  // (B, T, C)
    return kind == ClassifierKind::sequence ? last_token(hidden, mask) : hidden;
  };
  return body;
}

// ---------------------------------------------------------------------------------
// BERT: an encoder only, so classifiers alone.

ClassifierBody bert_classifier_body(const ClassifierBodyRequest& request) {
  BertConfig config = BertConfig::from_json(request.config, request.source);
  if (request.dropout >= 0) config.hidden_dropout_prob = config.attention_probs_dropout_prob = request.dropout;
  Bert bert = built<Bert>(config, request.uninitialised, request.pretrained, request.seed, init_bert);
  const ClassifierKind kind = request.kind;
  // BertForTokenClassification and BertForQuestionAnswering have no pooler.
  if (kind != ClassifierKind::sequence) bert->unregister_module("pooler");

  ClassifierBody body;
  body.name = "bert";
  body.module = bert.ptr();
  body.vocab_size = config.vocab_size;
  body.type_vocab_size = config.type_vocab_size;
  body.hidden_size = config.hidden_size;
  body.initializer_range = config.initializer_range;
  body.config = config.to_json();
  body.head_name = kind == ClassifierKind::span ? "qa_outputs" : "classifier";
  body.head_bias = true;
  body.head_dropout = request.dropout >= 0 ? request.dropout
                      : kind == ClassifierKind::span
                          ? 0.0  // BertForQuestionAnswering has no dropout before its head
                          : number(request.config, "classifier_dropout")
                                .value_or(number(request.config, "hidden_dropout_prob").value_or(0.1));
  body.architecture = task_architecture("Bert", kind);
  body.unused_tensor = [kind](const std::string& name) {
    return kind != ClassifierKind::sequence && (name.starts_with("pooler.") || name.starts_with("bert.pooler."));
  };
  const uint64_t seed = request.seed;
  body.load = [bert, kind, seed](const NamedTensors& tensors, const std::string& source, const ParameterSlices* slices,
                                 std::vector<std::string>& warnings) mutable {
    const std::optional<ParameterSlices> under = slices ? std::optional(slices->under("bert.")) : std::nullopt;
    const BertLoadReport loaded = load_hf_state(bert, tensors, source, seed, under ? &*under : nullptr);
    if (!loaded.pooler_initialised || kind != ClassifierKind::sequence) return std::vector<std::string>{};
    warnings.push_back(source + ": no pooler weights; the pooler is new and is trained with the head");
    return std::vector<std::string>{"bert.pooler."};
  };
  body.parameter_init = [config](const std::string& name) { return bert_parameter_init(config, name); };
  body.state = [bert]() mutable {
    NamedTensors out;
    for (auto& [name, value] : to_hf_state(bert)) out.emplace_back("bert." + name, value);
    return out;
  };
  body.features = [bert, kind](const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& types) mutable {
    BertOutput out = bert->forward(ids, mask, types);
    return kind == ClassifierKind::sequence ? out.pooler_output : out.last_hidden_state;
  };
  return body;
}

// ---------------------------------------------------------------------------------
// T5: an encoder-decoder only, so the sequence-to-sequence model alone.

Seq2SeqLm t5_seq2seq(const Seq2SeqLmOptions& options, const json& raw, const std::string& source) {
  T5Config config = T5Config::from_json(raw, source);
  if (options.dropout >= 0) config.dropout_rate = options.dropout;
  const bool split = options.split != nullptr && !options.skeleton;
  T5 model = built<T5>(config, split || options.skeleton, options.pretrained, options.seed, init_t5);
  Seq2SeqLm::Parts parts;
  parts.module = model.ptr();
  parts.vocab_size = config.vocab_size;
  parts.pad_token_id = config.pad_token_id;
  parts.logits = [model](const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& labels) mutable {
    return model->forward(ids, mask, model->shift_right(labels));
  };
  parts.head_input = [model](const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& labels) mutable {
    return model->head_input(model->shift_right(labels), model->encode(ids, mask), mask);
  };
  parts.head_weight_name = config.tie_word_embeddings ? "shared.weight" : "lm_head.weight";
  parts.ties_embeddings = config.tie_word_embeddings;
  parts.generate = [model](const at::Tensor& ids, const at::Tensor& mask, const Seq2SeqGenerationOptions& o) mutable {
    return generate(model, ids, mask, o);
  };
  parts.save = [model](const fs::path& dir, ExistingDirectory existing, const TensorValues& values) mutable {
    save_t5(model, dir, existing, values);
  };
  Seq2SeqLm s2s(raw["model_type"].get<std::string>(), std::move(parts));
  fill_values(model, s2s, options, split, [&](const std::string& name) { return t5_parameter_init(config, name); });
  return s2s;
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

}  // namespace

// The registry: one line per family.
const std::vector<ModelFamily>& model_families() {
  static const std::vector<ModelFamily> families = {
      {"gpt2", {"gpt2"}, decoder_lm<Gpt2Traits>, decoder_classifier_body<Gpt2Traits>},
      {"llama", {"llama", "mistral", "qwen2"}, decoder_lm<LlamaTraits>, decoder_classifier_body<LlamaTraits>},
      {"bert", {"bert"}, nullptr, bert_classifier_body},
      {"t5", {"t5", "mt5"}, nullptr, nullptr, t5_seq2seq},
  };
  return families;
}

std::string supported_model_types(const std::function<bool(const ModelFamily&)>& has) {
  std::vector<std::string> types;
  for (const ModelFamily& family : model_families())
    if (!has || has(family)) types.insert(types.end(), family.model_types.begin(), family.model_types.end());
  return joined(types);
}

void unsupported_model_type(const std::string& source, const std::string& model_type, const std::string& purpose,
                            const std::string& supported) {
  throw std::runtime_error(source + ": model_type '" + model_type + "' is not supported for " + purpose +
                           " (supported: " + supported + ")");
}

const ModelFamily* find_model_family(const json& config, const std::string& source) {
  if (!config.is_object() || !config.contains("model_type") || !config["model_type"].is_string())
    config_error(source, "model_type", "is missing or not a string");
  const std::string type = config["model_type"].get<std::string>();
  for (const ModelFamily& family : model_families())
    for (const std::string& known : family.model_types)
      if (known == type) return &family;
  return nullptr;
}

const ModelFamily& model_family(const json& config, const std::string& source) {
  const ModelFamily* family = find_model_family(config, source);
  if (!family) unsupported_model_type(source, config["model_type"].get<std::string>(), "any task", supported_model_types());
  return *family;
}

}  // namespace ftrain::model
