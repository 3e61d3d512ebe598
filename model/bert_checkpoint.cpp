#include "model/bert_checkpoint.h"

#include <torch/torch.h>

#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "data/durable_file.h"
#include "model/family_builders.h"

namespace ftrain::model {

namespace {

const std::string kPrefix = "bert.";
const std::vector<std::string> kPoolerTensors = {"pooler.dense.weight", "pooler.dense.bias"};

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Heads of BertFor* task models, stored beside the `bert.` encoder.
bool is_task_head(const std::string& stored) { return starts_with(stored, "cls.") || starts_with(stored, "classifier."); }

// Index buffers (arange and zeros) that older Hugging Face versions save with the weights.
bool is_index_buffer(const std::string& name) {
  return name == "embeddings.position_ids" || name == "embeddings.token_type_ids";
}

// "bert.encoder.layer.0..." (BertFor*) and "encoder.layer.0..." (BertModel) name the
// same parameter; TensorFlow conversions call the LayerNorm parameters gamma and beta.
std::string canonical_name(const std::string& stored) {
  std::string name = starts_with(stored, kPrefix) ? stored.substr(kPrefix.size()) : stored;
  if (ends_with(name, ".LayerNorm.gamma")) name.replace(name.size() - 5, 5, "weight");
  else if (ends_with(name, ".LayerNorm.beta")) name.replace(name.size() - 4, 4, "bias");
  return name;
}

std::string join(const std::vector<std::string>& items) {
  constexpr size_t kShown = 12;
  std::ostringstream out;
  for (size_t i = 0; i < items.size() && i < kShown; ++i) out << (i ? ", " : "") << items[i];
  if (items.size() > kShown) out << " and " << items.size() - kShown << " more";
  return out.str();
}

std::string architecture(const BertConfig& c) {
  return "num_hidden_layers=" + std::to_string(c.num_hidden_layers) + " hidden_size=" + std::to_string(c.hidden_size) +
         " intermediate_size=" + std::to_string(c.intermediate_size) + " vocab_size=" + std::to_string(c.vocab_size) +
         " max_position_embeddings=" + std::to_string(c.max_position_embeddings) +
         " type_vocab_size=" + std::to_string(c.type_vocab_size);
}

// Hugging Face's BERT initialisation for every Linear, Embedding and LayerNorm in
// `root`, in module order so the draws are reproducible.
void initialise(torch::nn::Module& root, const BertConfig& config, at::Generator& generator) {
  torch::NoGradGuard no_grad;
  std::vector<std::shared_ptr<torch::nn::Module>> modules = root.modules(/*include_self=*/true);
  for (const auto& module : modules) {
    if (auto* linear = module->as<torch::nn::LinearImpl>()) {
      linear->weight.normal_(0.0, config.initializer_range, generator);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = module->as<torch::nn::EmbeddingImpl>()) {
      embedding->weight.normal_(0.0, config.initializer_range, generator);
      if (auto padding = embedding->options.padding_idx()) embedding->weight[*padding].zero_();
    } else if (auto* layer_norm = module->as<torch::nn::LayerNormImpl>()) {
      layer_norm->weight.fill_(1.0);
      layer_norm->bias.zero_();
    }
  }
}

}  // namespace

NamedTensors to_hf_state(Bert& model) {
  NamedTensors out;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value().detach());
  return out;
}

BertLoadReport load_hf_state(Bert& model, const NamedTensors& tensors, const std::string& source, uint64_t init_seed,
                             const ParameterSlices* slices) {
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) parameters.emplace(item.key(), item.value());

  BertLoadReport report;
  std::map<std::string, std::pair<std::string, torch::Tensor>> found;  // canonical -> (stored name, value)
  std::vector<std::string> unexpected, duplicated, misshaped, not_float;
  std::set<std::string> present_but_unusable;  // reported once, not also as missing
  for (const auto& [stored, value] : tensors) {
    if (is_task_head(stored)) {
      report.ignored_heads.push_back(stored);
      continue;
    }
    const std::string name = canonical_name(stored);
    if (is_index_buffer(name)) continue;
    auto parameter = parameters.find(name);
    if (parameter == parameters.end()) {
      unexpected.push_back("'" + stored + "'");
      continue;
    }
    const std::vector<int64_t> expected =
        slices ? slices->global_shape(parameter->first, parameter->second) : parameter->second.sizes().vec();
    if (value.sizes() != c10::IntArrayRef(expected)) {
      present_but_unusable.insert(name);
      misshaped.push_back("'" + stored + "' is " + c10::str(value.sizes()) + ", expected " +
                          c10::str(c10::IntArrayRef(expected)));
      continue;
    }
    if (!at::isFloatingType(value.scalar_type())) {
      present_but_unusable.insert(name);
      not_float.push_back("'" + stored + "' (" + c10::toString(value.scalar_type()) + ")");
      continue;
    }
    if (!found.emplace(name, std::pair{stored, value}).second)
      duplicated.push_back("'" + found.at(name).first + "' and '" + stored + "'");
  }

  // A pooler absent as a whole is drawn afresh; half a pooler is a broken file.
  bool pooler_absent = true;
  for (const std::string& name : kPoolerTensors)
    pooler_absent = pooler_absent && !found.count(name) && !present_but_unusable.count(name);
  std::vector<std::string> missing;
  for (const auto& [name, parameter] : parameters) {
    const bool pooler = starts_with(name, "pooler.");
    if (!found.count(name) && !present_but_unusable.count(name) && !(pooler && pooler_absent))
      missing.push_back("'" + name + "'");
  }

  if (!missing.empty() || !unexpected.empty() || !duplicated.empty() || !misshaped.empty() || !not_float.empty()) {
    std::string message = source + ": tensors do not match the BERT architecture of config.json (" +
                          architecture(model->config()) + "):";
    if (!missing.empty()) message += " missing " + join(missing) + ";";
    if (!unexpected.empty()) message += " unexpected " + join(unexpected) + ";";
    if (!duplicated.empty()) message += " stored twice " + join(duplicated) + ";";
    if (!misshaped.empty()) message += " wrong shape " + join(misshaped) + ";";
    if (!not_float.empty()) message += " not floating point " + join(not_float) + ";";
    message.pop_back();
    throw std::runtime_error(message);
  }

  torch::NoGradGuard no_grad;
  for (const auto& [name, entry] : found) {
    if (!slices) {
      parameters.at(name).copy_(entry.second);
      continue;
    }
    slices->load(name, parameters.at(name), entry.second);
    release_mapped_pages(entry.second);
  }

  // A model without a pooler (token classification, question answering) has nothing
  // to draw: the module's pooler is not among its parameters.
  if (pooler_absent && parameters.count(kPoolerTensors.front()) > 0) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(init_seed);
    if (!slices) {
      initialise(*model->pooler, model->config(), generator);
    } else {
      // The parameters may hold a part or no memory (ZeRO-3 shards): draw a whole pooler
      // (hidden x hidden) and hand each tensor to the slices.
      BertPooler drawn(model->config());
      initialise(*drawn, model->config(), generator);
      auto pooler_parameters = model->pooler->named_parameters();
      for (const auto& item : drawn->named_parameters())
        slices->load("pooler." + item.key(), pooler_parameters[item.key()], item.value());
    }
    report.pooler_initialised = true;
    report.warnings.push_back(source + ": no pooler.dense.weight or pooler.dense.bias; the pooler is randomly "
                                       "initialised (normal(0, initializer_range), seed " +
                              std::to_string(init_seed) + "), so pooler_output means nothing until trained");
  }
  if (!report.ignored_heads.empty()) {
    std::vector<std::string> quoted;
    for (const std::string& name : report.ignored_heads) quoted.push_back("'" + name + "'");
    report.warnings.push_back(source + ": task-head tensors not loaded (the encoder is read without its heads): " +
                              join(quoted));
  }
  return report;
}

Bert load_bert(const std::filesystem::path& dir, BertLoadReport* report, uint64_t init_seed) {
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error(dir.string() + ": not a directory (expected a Hugging Face model directory)");
  Bert model(BertConfig::from_json_file(dir / "config.json"));

  const ModelTensors stored = read_model_tensors(dir);
  BertLoadReport found = load_hf_state(model, stored.tensors, stored.source, init_seed);
  if (report) *report = std::move(found);
  else
    for (const std::string& warning : found.warnings) std::cerr << "load_bert: warning: " + warning + "\n";
  return model;
}

Bert init_bert(const BertConfig& config, uint64_t seed) {
  Bert model(config);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  initialise(*model, config, generator);
  return model;
}

ParameterInit bert_parameter_init(const BertConfig& config, const std::string& name) {
  ParameterInit init;
  if (name.ends_with("LayerNorm.weight")) {
    init.value = 1.0;
    return init;
  }
  if (name.ends_with(".bias")) return init;
  init.kind = ParameterInit::Kind::normal;
  init.std = config.initializer_range;
  if (name.ends_with("word_embeddings.weight") && config.pad_token_id) init.zero_row = *config.pad_token_id;
  return init;
}

void save_bert(Bert& model, const std::filesystem::path& dir, ExistingDirectory existing) {
  prepare_model_directory(dir, existing);

  NamedTensors state = to_hf_state(model);
  save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}});

  nlohmann::json config = model->config().to_json();
  const auto dtype = state.front().second.scalar_type();
  config["dtype"] = dtype == torch::kFloat ? "float32"
                  : dtype == torch::kBFloat16 ? "bfloat16"
                  : dtype == torch::kHalf ? "float16"
                  : dtype == torch::kDouble ? "float64"
                                            : c10::toString(dtype);
  data::write_file_atomically(dir / "config.json", config.dump(2) + "\n");
}

// ---------------------------------------------------------------------------------
// The family's entry in the registry (model/families.h): how ftrain builds it.

namespace {

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
                          : config_number(request.config, "classifier_dropout")
                                .value_or(config_number(request.config, "hidden_dropout_prob").value_or(0.1));
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

}  // namespace

ModelFamily bert_family() { return {"bert", {"bert"}, nullptr, bert_classifier_body}; }

}  // namespace ftrain::model
