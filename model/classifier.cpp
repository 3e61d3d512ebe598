#include "model/classifier.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>

#include "data/durable_file.h"
#include "model/config_fields.h"
#include "model/dropout.h"
#include "model/families.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::model {
namespace {

// The body registered under its Hugging Face prefix and the head under its name, so
// named_parameters() reads as the task model's state dict does.
struct ClassifierModule : torch::nn::Module {
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear head{nullptr};
};

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
    if (name.starts_with(prefix)) return true;
  return false;
}

Classifier Classifier::load(const ClassifierOptions& options, ClassifierLoadReport* report_out) {
  options.validate();
  if (!fs::is_directory(options.path)) throw std::runtime_error(options.path.string() + ": model directory not found");
  const fs::path config_path = options.path / "config.json";
  const json raw_config = read_config_file(config_path);
  const ModelFamily& family =
      model_family_with(raw_config, config_path.string(), &ModelFamily::classifier_body, "classification");

  const ClassifierKind kind = options.kind;
  const int64_t num_labels = static_cast<int64_t>(options.label_names.size());
  // Split before reading (ClassifierOptions::split): the body is built uninitialised,
  // registered with the head, and cut to this process's parts before its weights are
  // read or drawn.
  const bool split = options.split != nullptr && !options.skeleton;
  ClassifierBody body = family.classifier_body({.config = raw_config,
                                                .source = config_path.string(),
                                                .kind = kind,
                                                .uninitialised = split || options.skeleton || !options.pretrained,
                                                .pretrained = options.pretrained,
                                                .seed = options.seed,
                                                .dropout = options.dropout});
  const std::string& head_name = body.head_name;
  const bool head_bias = body.head_bias;

  ClassifierLoadReport report;
  ModelTensors stored;
  if (options.pretrained && !options.skeleton) stored = read_model_tensors(options.path);
  // Head tensors in the file go to the head; what the body's loader must not see
  // (a language-modelling head, a pooler the token classifier does not have) is dropped.
  std::map<std::string, torch::Tensor> stored_head;
  NamedTensors body_tensors;
  for (auto& [stored_name, value] : stored.tensors) {
    // A body stored under another prefix (body.stored_name) is read under its own.
    std::string name = stored_name;
    if (!body.stored_name.empty() && name.starts_with(body.stored_name + "."))
      name = body.name + name.substr(body.stored_name.size());
    if (name == head_name + ".weight" || name == head_name + ".bias") {
      stored_head.emplace(name, value);
      continue;
    }
    if (body.unused_tensor && body.unused_tensor(name)) continue;
    body_tensors.emplace_back(name, value);
  }

  auto module = std::make_shared<ClassifierModule>();
  Classifier classifier;
  classifier.family_ = raw_config["model_type"].get<std::string>();
  classifier.kind_ = kind;
  classifier.num_labels_ = num_labels;
  classifier.vocab_size_ = body.vocab_size;
  classifier.type_vocab_size_ = body.type_vocab_size;
  classifier.body_name_ = body.name;
  classifier.head_prefixes_ = {head_name + "."};
  module->register_module(body.name, body.module);
  // The head: C -> num_labels. Registered before the split, so that a split into ZeRO-3
  // shards holds its parameters as well.
  module->dropout = module->register_module("dropout", torch::nn::Dropout(body.head_dropout));
  module->head = module->register_module(
      head_name, torch::nn::Linear(torch::nn::LinearOptions(body.hidden_size, num_labels).bias(head_bias)));
  classifier.module_ = module;
  const std::optional<ParameterSlices> slices = split ? std::optional(options.split(classifier)) : std::nullopt;
  if (options.pretrained && !options.skeleton) {
    for (const std::string& prefix : body.load(body_tensors, stored.source, slices ? &*slices : nullptr, report.warnings)) {
      classifier.head_prefixes_.push_back(prefix);
      report.pooler_initialised = true;
    }
  } else if (!options.skeleton) {
    // A fresh body, each element drawn from (seed, name, index): a process holding a part
    // or a ZeRO-3 shard draws only its own elements of the one-process model.
    const std::string body_prefix = body.name + ".";
    draw_parameters(
        *module,
        [&](const std::string& name) -> std::optional<ParameterInit> {
          if (!name.starts_with(body_prefix)) return std::nullopt;  // the head, drawn below
          return body.parameter_init(name);
        },
        options.seed, slices ? &*slices : nullptr);
  }
  {
    torch::NoGradGuard no_grad;
    const auto weight = stored_head.find(head_name + ".weight");
    const auto bias = stored_head.find(head_name + ".bias");
    const bool fits = weight != stored_head.end() && weight->second.sizes() == module->head->weight.sizes() &&
                      (bias != stored_head.end()) == head_bias &&
                      (!head_bias || bias->second.sizes() == module->head->bias.sizes());
    at::Tensor weight_value, bias_value;  // whole, in any dtype
    if (fits) {
      weight_value = weight->second;
      if (head_bias) bias_value = bias->second;
    } else {
      report.head_initialised = true;
      // A generator of its own: the head is the same on every rank and whatever else was drawn.
      auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed ^ 0x5eedc1a551f1e5ULL);
      weight_value = at::empty(module->head->weight.sizes(), at::kFloat).normal_(0.0, body.initializer_range, generator);
      if (head_bias) bias_value = at::zeros(module->head->bias.sizes(), at::kFloat);
      if (weight != stored_head.end())
        report.warnings.push_back(stored.source + ": '" + head_name + ".weight' is " +
                                  c10::str(weight->second.sizes()) + " but this task has " +
                                  std::to_string(num_labels) + " labels; the head is new");
    }
    // Through the slices when split: the parameter may hold only a part, or no memory
    // at all (its values in ZeRO-3 shards).
    auto assign = [&](const std::string& name, at::Tensor& parameter, const at::Tensor& value) {
      if (slices) slices->load(name, parameter, value);
      else parameter.copy_(value);
    };
    if (!options.skeleton) {
      assign(head_name + ".weight", module->head->weight, weight_value);
      if (head_bias) assign(head_name + ".bias", module->head->bias, bias_value);
    }
  }

  auto head = module->head;
  auto dropout = module->dropout;
  auto features = body.features;
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
  json saved_config = body.config;  // config.json of the export, with the task's keys
  saved_config.erase("torch_dtype");
  saved_config["architectures"] = json::array({body.architecture});
  saved_config["id2label"] = id2label;
  saved_config["label2id"] = label2id;
  saved_config["dtype"] = "float32";
  if (kind == ClassifierKind::sequence) saved_config["problem_type"] = "single_label_classification";
  if (body.writes_pad_token_id && options.pad_token_id >= 0) saved_config["pad_token_id"] = options.pad_token_id;
  if (kind == ClassifierKind::span) {  // the head always has two outputs: no labels to name
    saved_config.erase("id2label");
    saved_config.erase("label2id");
  }
  auto body_state = body.state;
  const std::string body_name = body.name, stored_body_name = body.stored_name;
  classifier.save_ = [body_state, head, head_name, saved_config, body_name, stored_body_name](
                         const fs::path& dir, ExistingDirectory existing, const TensorValues& values) mutable {
    prepare_model_directory(dir, existing);
    NamedTensors state = body_state();
    if (!stored_body_name.empty()) {
      for (auto& [name, value] : state)
        if (name.starts_with(body_name + ".")) name = stored_body_name + name.substr(body_name.size());
    }
    state.emplace_back(head_name + ".weight", head->weight.detach());
    if (head->bias.defined()) state.emplace_back(head_name + ".bias", head->bias.detach());
    save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}}, values);
    data::write_file_atomically(dir / "config.json", saved_config.dump(2) + "\n");
  };

  classifier.module_ = module;
  if (report_out) *report_out = std::move(report);
  return classifier;
}

}  // namespace ftrain::model
