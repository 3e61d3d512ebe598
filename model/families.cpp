#include "model/families.h"

#include <torch/torch.h>

#include <optional>
#include <stdexcept>

#include "model/bert_checkpoint.h"
#include "model/config_fields.h"
#include "model/family_builders.h"
#include "model/gpt2_checkpoint.h"
#include "model/llama_checkpoint.h"
#include "model/t5_checkpoint.h"

using nlohmann::json;

namespace ftrain::model {

at::Tensor last_token(const at::Tensor& hidden, const at::Tensor& attention_mask) {
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

std::optional<double> config_number(const json& config, const char* key) {
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

double decoder_token_head_dropout(const json& config) {
  return config_number(config, "classifier_dropout").value_or(config_number(config, "hidden_dropout").value_or(0.1));
}

namespace {

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

}  // namespace

// The registry: one line per family.
const std::vector<ModelFamily>& model_families() {
  static const std::vector<ModelFamily> families = {
      gpt2_family(),
      llama_family(),
      bert_family(),
      t5_family(),
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
