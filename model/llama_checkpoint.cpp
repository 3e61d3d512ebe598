#include "model/llama_checkpoint.h"

#include <torch/torch.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "data/durable_file.h"
#include "model/family_builders.h"

namespace ftrain::model {

namespace {

const std::string kPrefix = "model.";
const std::string kEmbedding = "model.embed_tokens.weight";

// Rotary frequency buffers that older Hugging Face versions save beside the weights;
// they follow from config.json.
bool is_rotary_buffer(const std::string& name) {
  static const std::regex pattern(R"(model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq)");
  return std::regex_match(name, pattern);
}

// "embed_tokens.weight" (LlamaModel) and "model.embed_tokens.weight"
// (LlamaForCausalLM) both name model.embed_tokens.weight; the head keeps its own name.
std::string canonical_name(const std::string& stored) {
  if (stored.rfind(kPrefix, 0) == 0 || stored.rfind("lm_head.", 0) == 0) return stored;
  return kPrefix + stored;
}

std::string join(const std::vector<std::string>& items) {
  constexpr size_t kShown = 12;
  std::ostringstream out;
  for (size_t i = 0; i < items.size() && i < kShown; ++i) out << (i ? ", " : "") << items[i];
  if (items.size() > kShown) out << " and " << items.size() - kShown << " more";
  return out.str();
}

std::string architecture(const LlamaConfig& c) {
  return "model_type=" + c.model_type + " num_hidden_layers=" + std::to_string(c.num_hidden_layers) +
         " hidden_size=" + std::to_string(c.hidden_size) + " intermediate_size=" + std::to_string(c.intermediate_size) +
         " num_attention_heads=" + std::to_string(c.num_attention_heads) +
         " num_key_value_heads=" + std::to_string(c.num_key_value_heads) + " head_dim=" + std::to_string(c.head_size()) +
         " vocab_size=" + std::to_string(c.vocab_size) +
         " tie_word_embeddings=" + (c.tie_word_embeddings ? "true" : "false");
}

std::string dtype_name(torch::ScalarType dtype) {
  return dtype == torch::kFloat      ? "float32"
         : dtype == torch::kBFloat16 ? "bfloat16"
         : dtype == torch::kHalf     ? "float16"
         : dtype == torch::kDouble   ? "float64"
                                     : c10::toString(dtype);
}

}  // namespace

NamedTensors to_hf_state(Llama& model) {
  NamedTensors out;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value().detach());
  return out;
}

void load_hf_state(Llama& model, const NamedTensors& tensors, const std::string& source, const ParameterSlices* slices) {
  const LlamaConfig& config = model->config();
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) parameters.emplace(item.key(), item.value());

  std::map<std::string, std::pair<std::string, torch::Tensor>> found;  // canonical -> (stored name, value)
  std::vector<std::string> unexpected, duplicated, misshaped, not_float;
  std::set<std::string> present_but_unusable;  // reported once, not also as missing
  torch::Tensor tied_head;
  for (const auto& [stored, value] : tensors) {
    const std::string name = canonical_name(stored);
    if (is_rotary_buffer(name)) continue;
    const bool tied_head_copy = name == "lm_head.weight" && config.tie_word_embeddings;
    auto parameter = parameters.find(tied_head_copy ? kEmbedding : name);
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
    if (tied_head_copy) {  // some writers store the tied head as well; it must equal the embedding
      tied_head = value;
      continue;
    }
    if (!found.emplace(name, std::pair{stored, value}).second)
      duplicated.push_back("'" + found.at(name).first + "' and '" + stored + "'");
  }
  std::vector<std::string> missing;
  for (const auto& [name, parameter] : parameters)
    if (!found.count(name) && !present_but_unusable.count(name)) missing.push_back("'" + name + "'");

  if (!missing.empty() || !unexpected.empty() || !duplicated.empty() || !misshaped.empty() || !not_float.empty()) {
    std::string message = source + ": tensors do not match the architecture of config.json (" + architecture(config) + "):";
    if (!missing.empty()) message += " missing " + join(missing) + ";";
    if (!unexpected.empty()) message += " unexpected " + join(unexpected) + ";";
    if (!duplicated.empty()) message += " stored twice " + join(duplicated) + ";";
    if (!misshaped.empty()) message += " wrong shape " + join(misshaped) + ";";
    if (!not_float.empty()) message += " not floating point " + join(not_float) + ";";
    message.pop_back();
    throw std::runtime_error(message);
  }

  torch::NoGradGuard no_grad;
  if (slices) {
    // The tied copy is checked against the stored table while both are whole.
    if (tied_head.defined() && !same_values(tied_head, found.at(kEmbedding).second))
      throw std::runtime_error(source + ": 'lm_head.weight' differs from '" + kEmbedding +
                               "' but config.json sets tie_word_embeddings=true; set it to false to load an untied head");
    release_mapped_pages(tied_head);
    for (const auto& [name, entry] : found) {
      slices->load(name, parameters.at(name), entry.second);
      release_mapped_pages(entry.second);
    }
    return;
  }
  for (const auto& [name, entry] : found) parameters.at(name).copy_(entry.second);
  const torch::Tensor& embedding = parameters.at(kEmbedding);
  if (tied_head.defined() && !torch::equal(tied_head.to(embedding.dtype()), embedding))
    throw std::runtime_error(source + ": 'lm_head.weight' differs from '" + kEmbedding +
                             "' but config.json sets tie_word_embeddings=true; set it to false to load an untied head");
}

Llama load_llama(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error(dir.string() + ": not a directory (expected a Hugging Face model directory)");
  Llama model(LlamaConfig::from_json_file(dir / "config.json"));

  const ModelTensors stored = read_model_tensors(dir);
  load_hf_state(model, stored.tensors, stored.source);
  return model;
}

ParameterInit llama_parameter_init(const LlamaConfig& config, const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  ParameterInit init;
  if (ends_with("norm.weight")) {  // input_layernorm, post_attention_layernorm, the final norm
    init.value = 1.0;
    return init;
  }
  if (ends_with(".bias")) return init;
  init.kind = ParameterInit::Kind::normal;
  init.std = config.initializer_range;
  if (ends_with("embed_tokens.weight") && config.pad_token_id)
    init.zero_row = *config.pad_token_id < 0 ? *config.pad_token_id + config.vocab_size : *config.pad_token_id;
  return init;
}

void init_llama_parameter(const LlamaConfig& config, uint64_t seed, const std::string& name, at::Tensor& value) {
  fill_initial_values(llama_parameter_init(config, name), parameter_key(seed, name), value);
}

Llama init_llama(const LlamaConfig& config, uint64_t seed) {
  return init_each_parameter<Llama>(config, seed, init_llama_parameter);
}

void save_llama(Llama& model, const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values) {
  prepare_model_directory(dir, existing);

  NamedTensors state = to_hf_state(model);
  save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}}, values);

  nlohmann::json config = model->config().to_json();
  config.erase("torch_dtype");
  config["dtype"] = dtype_name(state.front().second.scalar_type());
  data::write_file_atomically(dir / "config.json", config.dump(2) + "\n");
}

// ---------------------------------------------------------------------------------
// The family's entry in the registry (model/families.h): how ftrain builds it.

namespace {

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
  static void save(Model& m, const std::filesystem::path& dir, ExistingDirectory e, const TensorValues& v) {
    save_llama(m, dir, e, v);
  }
  static std::string architecture_prefix(const Config& c) {
    if (c.model_type == "mistral") return "Mistral";
    if (c.model_type == "qwen2") return "Qwen2";
    return "Llama";
  }
  static std::string head_name(ClassifierKind kind) { return kind == ClassifierKind::span ? "qa_outputs" : "score"; }
  // LlamaForQuestionAnswering and Qwen2's keep the older name of the body; Mistral's does not.
  static std::string span_body_name(const Config& c) { return c.model_type == "mistral" ? "model" : "transformer"; }
  static double token_head_dropout(const nlohmann::json& config) { return decoder_token_head_dropout(config); }
  static at::Tensor forward(Model& m, const at::Tensor& ids, const at::Tensor& mask) { return m->forward(ids, mask); }
  static at::Tensor hidden_states(Model& m, const at::Tensor& ids, const at::Tensor& mask, KvCache* cache = nullptr) {
    return m->hidden_states(ids, mask, cache);
  }
  static at::Tensor body_forward(Model& m, const at::Tensor& ids, const at::Tensor& mask) {
    return m->model->forward(ids, mask);
  }
};

}  // namespace

ModelFamily llama_family() {
  return {"llama", {"llama", "mistral", "qwen2"}, decoder_lm<LlamaTraits>, decoder_classifier_body<LlamaTraits>};
}

}  // namespace ftrain::model
