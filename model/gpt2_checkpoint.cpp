#include "model/gpt2_checkpoint.h"

#include <torch/torch.h>

#include <cmath>
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

const std::string kPrefix = "transformer.";

// Hugging Face implements these layers as Conv1D, whose weight is (in, out).
bool is_conv1d_weight(const std::string& name) {
  static const std::regex pattern(R"(transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight)");
  return std::regex_match(name, pattern);
}

// Causal-mask buffers that older Hugging Face versions save beside the weights.
bool is_attention_mask_buffer(const std::string& name) {
  static const std::regex pattern(R"(transformer\.h\.\d+\.attn\.(bias|masked_bias))");
  return std::regex_match(name, pattern);
}

// "wte.weight" (GPT2Model) and "transformer.wte.weight" (GPT2LMHeadModel) both name
// transformer.wte.weight; the head keeps its own name.
std::string canonical_name(const std::string& stored) {
  if (stored.rfind(kPrefix, 0) == 0 || stored.rfind("lm_head.", 0) == 0) return stored;
  return kPrefix + stored;
}

std::vector<int64_t> hf_shape(const std::string& name, const torch::Tensor& parameter, const ParameterSlices* slices) {
  std::vector<int64_t> shape = slices ? slices->global_shape(name, parameter) : parameter.sizes().vec();
  if (is_conv1d_weight(name)) std::swap(shape[0], shape[1]);
  return shape;
}

std::string join(const std::vector<std::string>& items) {
  constexpr size_t kShown = 12;
  std::ostringstream out;
  for (size_t i = 0; i < items.size() && i < kShown; ++i) out << (i ? ", " : "") << items[i];
  if (items.size() > kShown) out << " and " << items.size() - kShown << " more";
  return out.str();
}

std::string architecture(const Gpt2Config& c) {
  return "n_layer=" + std::to_string(c.n_layer) + " n_embd=" + std::to_string(c.n_embd) +
         " n_inner=" + std::to_string(c.inner_dim()) + " vocab_size=" + std::to_string(c.vocab_size) +
         " n_positions=" + std::to_string(c.n_positions) +
         " tie_word_embeddings=" + (c.tie_word_embeddings ? "true" : "false");
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

NamedTensors to_hf_state(Gpt2& model) {
  NamedTensors out;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    torch::Tensor value = item.value().detach();
    out.emplace_back(item.key(), is_conv1d_weight(item.key()) ? value.t() : value);
  }
  return out;
}

void load_hf_state(Gpt2& model, const NamedTensors& tensors, const std::string& source, const ParameterSlices* slices) {
  const Gpt2Config& config = model->config();
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) parameters.emplace(item.key(), item.value());

  std::map<std::string, std::pair<std::string, torch::Tensor>> found;  // canonical -> (stored name, value)
  std::vector<std::string> unexpected, duplicated, misshaped, not_float;
  std::set<std::string> present_but_unusable;  // reported once, not also as missing
  torch::Tensor tied_head;
  for (const auto& [stored, value] : tensors) {
    const std::string name = canonical_name(stored);
    if (is_attention_mask_buffer(name)) continue;
    const bool tied_head_copy = name == "lm_head.weight" && config.tie_word_embeddings;
    auto parameter = parameters.find(tied_head_copy ? kPrefix + "wte.weight" : name);
    if (parameter == parameters.end()) {
      unexpected.push_back("'" + stored + "'");
      continue;
    }
    const std::vector<int64_t> expected = hf_shape(parameter->first, parameter->second, slices);
    if (value.sizes().vec() != expected) {
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
    if (tied_head_copy) {  // some writers store the tied head twice; it must equal wte
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
    std::string message = source + ": tensors do not match the GPT-2 architecture of config.json (" +
                          architecture(config) + "):";
    if (!missing.empty()) message += " missing " + join(missing) + ";";
    if (!unexpected.empty()) message += " unexpected " + join(unexpected) + ";";
    if (!duplicated.empty()) message += " stored twice " + join(duplicated) + ";";
    if (!misshaped.empty()) message += " wrong shape " + join(misshaped) + ";";
    if (!not_float.empty()) message += " not floating point " + join(not_float) + ";";
    message.pop_back();
    throw std::runtime_error(message);
  }

  torch::NoGradGuard no_grad;
  const std::string wte = kPrefix + "wte.weight";
  if (slices) {
    // The tied copy is checked against the stored table while both are whole.
    if (tied_head.defined() && !same_values(tied_head, found.at(wte).second))
      throw std::runtime_error(source + ": 'lm_head.weight' differs from 'transformer.wte.weight' but "
                                        "config.json sets tie_word_embeddings=true; set it to false to load "
                                        "an untied head");
    release_mapped_pages(tied_head);
    for (const auto& [name, entry] : found) {
      const torch::Tensor& value = entry.second;
      slices->load(name, parameters.at(name), is_conv1d_weight(name) ? value.t() : value);
      release_mapped_pages(value);
    }
    return;
  }
  for (const auto& [name, entry] : found) {
    const torch::Tensor& value = entry.second;
    parameters.at(name).copy_(is_conv1d_weight(name) ? value.t() : value);
  }
  if (tied_head.defined() && !torch::equal(tied_head.to(parameters.at(wte).dtype()), parameters.at(wte)))
    throw std::runtime_error(source + ": 'lm_head.weight' differs from 'transformer.wte.weight' but "
                                      "config.json sets tie_word_embeddings=true; set it to false to load "
                                      "an untied head");
}

Gpt2 load_gpt2(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error(dir.string() + ": not a directory (expected a Hugging Face model directory)");
  Gpt2 model(Gpt2Config::from_json_file(dir / "config.json"));

  const ModelTensors stored = read_model_tensors(dir);
  load_hf_state(model, stored.tensors, stored.source);
  return model;
}

ParameterInit gpt2_parameter_init(const Gpt2Config& config, const std::string& name) {
  ParameterInit init;
  // LayerNorms (ln_1, ln_2, ln_f): scale 1, shift 0.
  if (name.find(".ln_") != std::string::npos) {
    init.value = ends_with(name, ".weight") ? 1.0 : 0.0;
    return init;
  }
  if (ends_with(name, ".bias")) return init;
  // Weights and embeddings; the residual projections scaled down by the depth.
  const bool residual = ends_with(name, "c_proj.weight");
  init.kind = ParameterInit::Kind::normal;
  init.std = residual ? config.initializer_range / std::sqrt(2.0 * static_cast<double>(config.n_layer))
                      : config.initializer_range;
  return init;
}

void init_gpt2_parameter(const Gpt2Config& config, uint64_t seed, const std::string& name, at::Tensor& value) {
  fill_initial_values(gpt2_parameter_init(config, name), parameter_key(seed, name), value);
}

Gpt2 init_gpt2(const Gpt2Config& config, uint64_t seed) {
  return init_each_parameter<Gpt2>(config, seed, init_gpt2_parameter);
}

void save_gpt2(Gpt2& model, const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values) {
  prepare_model_directory(dir, existing);

  NamedTensors state = to_hf_state(model);
  save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}}, values);

  nlohmann::json config = model->config().to_json();
  config.erase("torch_dtype");
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
  static void save(Model& m, const std::filesystem::path& dir, ExistingDirectory e, const TensorValues& v) {
    save_gpt2(m, dir, e, v);
  }
  static std::string architecture_prefix(const Config&) { return "GPT2"; }
  // GPT2ForTokenClassification's head is `classifier` with a bias; the sequence
  // classifier's is `score` without one.
  static std::string head_name(ClassifierKind kind) {
    return kind == ClassifierKind::span ? "qa_outputs" : kind == ClassifierKind::token ? "classifier" : "score";
  }
  static std::string span_body_name(const Config&) { return "transformer"; }
  static double token_head_dropout(const nlohmann::json& config) { return decoder_token_head_dropout(config); }
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

}  // namespace

ModelFamily gpt2_family() {
  return {"gpt2", {"gpt2"}, decoder_lm<Gpt2Traits>, decoder_classifier_body<Gpt2Traits>};
}

}  // namespace ftrain::model
