#include "model/classifier.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>

#include "model/dropout.h"
#include "model/bert.h"
#include "model/bert_checkpoint.h"
#include "model/config_fields.h"
#include "model/gpt2.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/llama_checkpoint.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::model {
namespace {

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

// The body registered under its Hugging Face prefix and the head under its name, so
// named_parameters() reads as the task model's state dict does.
struct ClassifierModule : torch::nn::Module {
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear head{nullptr};
};

// The dropout Hugging Face puts before a classification head.
double head_dropout(const std::string& family, ClassifierKind kind, const json& config, double override_p) {
  if (override_p >= 0) return override_p;
  auto number = [&](const char* key) -> std::optional<double> {
    if (config.contains(key) && config[key].is_number()) return config[key].get<double>();
    return std::nullopt;
  };
  if (family == "bert") return number("classifier_dropout").value_or(number("hidden_dropout_prob").value_or(0.1));
  if (kind == ClassifierKind::sequence) return 0.0;  // decoders score the last token directly
  return number("classifier_dropout").value_or(number("hidden_dropout").value_or(0.1));
}

std::string architecture_name(const std::string& family, ClassifierKind kind) {
  const std::string suffix = kind == ClassifierKind::sequence ? "ForSequenceClassification" : "ForTokenClassification";
  if (family == "bert") return "Bert" + suffix;
  if (family == "gpt2") return "GPT2" + suffix;
  if (family == "llama") return "Llama" + suffix;
  if (family == "mistral") return "Mistral" + suffix;
  return "Qwen2" + suffix;
}

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

template <typename Model, typename Config>
Model built_uninitialised(const Config& config) {
  SkipInitialisation uninitialised;
  return Model(config);
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

}  // namespace

void ClassifierOptions::validate() const {
  if (label_names.size() < 2)
    throw std::runtime_error("classifier: needs at least 2 labels, got " + std::to_string(label_names.size()) +
                             " (the dataset's label_names attribute)");
  std::set<std::string> distinct(label_names.begin(), label_names.end());
  if (distinct.size() != label_names.size())
    throw std::runtime_error("classifier: label names repeat: " + join(label_names));
  if (dropout > 1) throw std::runtime_error("classifier: dropout " + std::to_string(dropout) + " exceeds 1 (model.dropout)");
}

bool Classifier::is_head_parameter(const std::string& name) const {
  for (const auto& prefix : head_prefixes_)
    if (starts_with(name, prefix)) return true;
  return false;
}

Classifier Classifier::load(const ClassifierOptions& options, ClassifierLoadReport* report_out) {
  options.validate();
  if (!fs::is_directory(options.path)) throw std::runtime_error(options.path.string() + ": model directory not found");
  const fs::path config_path = options.path / "config.json";
  const json raw_config = read_config_file(config_path);
  if (!raw_config.contains("model_type") || !raw_config["model_type"].is_string())
    throw std::runtime_error(config_path.string() + ": key 'model_type': missing or not a string");
  const std::string family = raw_config["model_type"].get<std::string>();
  if (family != "bert" && family != "gpt2" && family != "llama" && family != "mistral" && family != "qwen2")
    throw std::runtime_error(config_path.string() + ": model_type '" + family +
                             "' is not supported for classification (supported: bert, gpt2, llama, mistral, qwen2)");

  const ClassifierKind kind = options.kind;
  const int64_t num_labels = static_cast<int64_t>(options.label_names.size());
  ClassifierLoadReport report;
  ModelTensors stored;
  if (options.pretrained) stored = read_model_tensors(options.path);

  // Head tensors in the file go to the head; what the body's loader must not see
  // (a language-modelling head, a pooler the token classifier does not have) is dropped.
  const std::string head_name = family == "bert"                                      ? "classifier"
                                : family == "gpt2" && kind == ClassifierKind::token ? "classifier"
                                                                                      : "score";
  const bool head_bias = !(family != "bert" && kind == ClassifierKind::sequence);
  std::map<std::string, torch::Tensor> stored_head;
  NamedTensors body_tensors;
  for (auto& [name, value] : stored.tensors) {
    if (name == head_name + ".weight" || name == head_name + ".bias") {
      stored_head.emplace(name, value);
      continue;
    }
    if (family != "bert" && (name == "lm_head.weight" || starts_with(name, "classifier.") || starts_with(name, "score.")))
      continue;
    if (family == "bert" && kind == ClassifierKind::token &&
        (starts_with(name, "pooler.") || starts_with(name, "bert.pooler.")))
      continue;
    body_tensors.emplace_back(name, value);
  }

  auto module = std::make_shared<ClassifierModule>();
  Classifier classifier;
  classifier.family_ = family;
  classifier.kind_ = kind;
  classifier.num_labels_ = num_labels;
  classifier.head_prefixes_ = {head_name + "."};

  json saved_config;  // config.json of the export, before the task keys
  int64_t hidden_size = 0;
  double initializer_range = 0.02;
  std::function<NamedTensors()> body_state;            // Hugging Face names and layouts
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)> features;

  // Split before reading (ClassifierOptions::split): the body is built uninitialised,
  // registered, and cut to this process's parts before its weights are read.
  const bool split = options.pretrained && options.split != nullptr;
  auto split_body = [&]() -> std::optional<ParameterSlices> {
    if (!split) return std::nullopt;
    classifier.module_ = module;
    return options.split(classifier);
  };

  if (family == "bert") {
    BertConfig config = BertConfig::from_json(raw_config, config_path.string());
    if (options.dropout >= 0) config.hidden_dropout_prob = config.attention_probs_dropout_prob = options.dropout;
    Bert bert = split ? built_uninitialised<Bert>(config)
                : options.pretrained ? Bert(config)
                                     : init_bert(config, options.seed);
    if (kind == ClassifierKind::token) bert->unregister_module("pooler");  // BertForTokenClassification has none
    module->register_module("bert", bert);
    if (options.pretrained) {
      const std::optional<ParameterSlices> slices = split_body();
      const std::optional<ParameterSlices> body = slices ? std::optional(slices->under("bert.")) : std::nullopt;
      BertLoadReport loaded = load_hf_state(bert, body_tensors, stored.source, options.seed, body ? &*body : nullptr);
      report.pooler_initialised = loaded.pooler_initialised && kind == ClassifierKind::sequence;
      if (report.pooler_initialised) {
        classifier.head_prefixes_.push_back("bert.pooler.");
        report.warnings.push_back(stored.source +
                                  ": no pooler weights; the pooler is new and is trained with the head");
      }
    }
    classifier.vocab_size_ = config.vocab_size;
    hidden_size = config.hidden_size;
    initializer_range = config.initializer_range;
    saved_config = config.to_json();
    body_state = [bert]() mutable {
      NamedTensors out;
      for (auto& [name, value] : to_hf_state(bert)) out.emplace_back("bert." + name, value);
      return out;
    };
    features = [bert, kind](const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& types) mutable {
      BertOutput out = bert->forward(ids, mask, types);
      return kind == ClassifierKind::sequence ? out.pooler_output : out.last_hidden_state;
    };
  } else if (family == "gpt2") {
    Gpt2Config config = Gpt2Config::from_json(raw_config, config_path.string());
    if (options.dropout >= 0) config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = options.dropout;
    saved_config = config.to_json();
    config.tie_word_embeddings = true;  // the body has no language-modelling head of its own
    Gpt2 gpt2 = split ? built_uninitialised<Gpt2>(config)
                : options.pretrained ? Gpt2(config)
                                     : init_gpt2(config, options.seed);
    module->register_module("transformer", gpt2->transformer);
    if (options.pretrained) {
      const std::optional<ParameterSlices> slices = split_body();
      load_hf_state(gpt2, body_tensors, stored.source, slices ? &*slices : nullptr);
    }
    classifier.vocab_size_ = config.vocab_size;
    hidden_size = config.n_embd;
    initializer_range = config.initializer_range;
    body_state = [gpt2]() mutable { return to_hf_state(gpt2); };
    features = [gpt2, kind](const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor&) mutable {
      torch::Tensor hidden = gpt2->transformer->forward(ids);  // (B, T, C); causal, so right padding is harmless
      return kind == ClassifierKind::sequence ? last_token(hidden, mask) : hidden;
    };
  } else {
    LlamaConfig config = LlamaConfig::from_json(raw_config, config_path.string());
    if (options.dropout >= 0) config.attention_dropout = options.dropout;
    saved_config = config.to_json();
    config.tie_word_embeddings = true;
    Llama llama = split ? built_uninitialised<Llama>(config)
                  : options.pretrained ? Llama(config)
                                       : init_llama(config, options.seed);
    module->register_module("model", llama->model);
    if (options.pretrained) {
      const std::optional<ParameterSlices> slices = split_body();
      load_hf_state(llama, body_tensors, stored.source, slices ? &*slices : nullptr);
    }
    classifier.vocab_size_ = config.vocab_size;
    hidden_size = config.hidden_size;
    initializer_range = config.initializer_range;
    body_state = [llama]() mutable { return to_hf_state(llama); };
    features = [llama, kind](const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor&) mutable {
      torch::Tensor hidden = llama->model->forward(ids, mask);  // (B, T, C)
      return kind == ClassifierKind::sequence ? last_token(hidden, mask) : hidden;
    };
  }

  // The head: C -> num_labels.
  module->dropout = module->register_module(
      "dropout", torch::nn::Dropout(head_dropout(family, kind, raw_config, options.dropout)));
  module->head = module->register_module(
      head_name, torch::nn::Linear(torch::nn::LinearOptions(hidden_size, num_labels).bias(head_bias)));
  {
    torch::NoGradGuard no_grad;
    const auto weight = stored_head.find(head_name + ".weight");
    const auto bias = stored_head.find(head_name + ".bias");
    const bool fits = weight != stored_head.end() && weight->second.sizes() == module->head->weight.sizes() &&
                      (bias != stored_head.end()) == head_bias &&
                      (!head_bias || bias->second.sizes() == module->head->bias.sizes());
    if (fits) {
      module->head->weight.copy_(weight->second);
      if (head_bias) module->head->bias.copy_(bias->second);
    } else {
      report.head_initialised = true;
      // A generator of its own: the head is the same on every rank and whatever else was drawn.
      auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed ^ 0x5eedc1a551f1e5ULL);
      module->head->weight.normal_(0.0, initializer_range, generator);
      if (head_bias) module->head->bias.zero_();
      if (weight != stored_head.end())
        report.warnings.push_back(stored.source + ": '" + head_name + ".weight' is " +
                                  c10::str(weight->second.sizes()) + " but this task has " +
                                  std::to_string(num_labels) + " labels; the head is new");
    }
  }

  auto head = module->head;
  auto dropout = module->dropout;
  classifier.logits_ = [features, head, dropout](const at::Tensor& ids, const at::Tensor& mask,
                                                 const at::Tensor& types) mutable {
    // (B, C) or (B, T, C) -> (B, num_labels) or (B, T, num_labels)
    return head->forward(hashed_dropout(features(ids, mask, types), dropout->options.p(), dropout->is_training()));
  };

  json id2label = json::object(), label2id = json::object();
  for (int64_t i = 0; i < num_labels; ++i) {
    id2label[std::to_string(i)] = options.label_names[i];
    label2id[options.label_names[i]] = i;
  }
  saved_config.erase("torch_dtype");
  saved_config["architectures"] = json::array({architecture_name(family, kind)});
  saved_config["id2label"] = id2label;
  saved_config["label2id"] = label2id;
  saved_config["dtype"] = "float32";
  if (kind == ClassifierKind::sequence) saved_config["problem_type"] = "single_label_classification";
  if (family != "bert" && options.pad_token_id >= 0) saved_config["pad_token_id"] = options.pad_token_id;
  classifier.save_ = [body_state, head, head_name, saved_config](const fs::path& dir,
                                                                  ExistingDirectory existing) mutable {
    prepare_model_directory(dir, existing);
    NamedTensors state = body_state();
    state.emplace_back(head_name + ".weight", head->weight.detach());
    if (head->bias.defined()) state.emplace_back(head_name + ".bias", head->bias.detach());
    save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}});
    write_file_atomically(dir / "config.json", saved_config.dump(2) + "\n");
  };

  classifier.module_ = module;
  if (report_out) *report_out = std::move(report);
  return classifier;
}

}  // namespace ftrain::model
