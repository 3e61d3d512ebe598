#include "model/llama.h"

#include "model/dropout.h"
#include "model/fused_ops.h"
#include "model/logits.h"
#include "model/config_fields.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <numbers>
#include <set>
#include <stdexcept>

namespace ftrain::model {

// ---------------------------------------------------------------------------------
// Configuration

namespace {

const std::set<std::string> kModelTypes = {"llama", "mistral", "qwen2"};
const std::set<std::string> kRopeTypes = {"linear", "dynamic", "llama3"};
const std::set<std::string> kLayerTypes = {"full_attention", "sliding_attention"};


std::string show(double value) { return nlohmann::json(value).dump(); }

// Checks one rope scaling, naming its keys "<key>.<field>".
void check_rope_scaling(const RopeScaling& scaling, const std::string& key, int64_t head_size) {
  auto check = [&](bool ok, const std::string& field, const std::string& what) {
    if (!ok) throw std::runtime_error("key '" + key + "." + field + "' " + what);
  };
  check(kRopeTypes.count(scaling.rope_type) > 0, "rope_type",
        "is '" + scaling.rope_type + "'; supported: default, linear, dynamic, llama3");
  check(scaling.factor > 0.0 && std::isfinite(scaling.factor), "factor",
        "must be a positive number, got " + show(scaling.factor));
  check(scaling.rope_type != "dynamic" || head_size > 2, "rope_type",
        "is 'dynamic', which needs a head_dim above 2, got " + std::to_string(head_size));
  if (scaling.rope_type == "llama3") {
    check(scaling.low_freq_factor > 0.0 && std::isfinite(scaling.low_freq_factor), "low_freq_factor",
          "must be a positive number, got " + show(scaling.low_freq_factor));
    check(scaling.high_freq_factor > scaling.low_freq_factor && std::isfinite(scaling.high_freq_factor),
          "high_freq_factor",
          "must be greater than low_freq_factor " + show(scaling.low_freq_factor) + ", got " +
              show(scaling.high_freq_factor));
  }
  check(!scaling.original_max_position_embeddings || *scaling.original_max_position_embeddings > 0,
        "original_max_position_embeddings",
        "must be positive, got " + std::to_string(scaling.original_max_position_embeddings.value_or(0)));
}

// The rotary settings of one object: "rope_scaling" (transformers 4) or
// "rope_parameters" (transformers 5).
struct RopeSettings {
  std::optional<double> theta;
  std::optional<RopeScaling> scaling;
};

RopeSettings read_rope(const nlohmann::json& object, const std::string& key, const std::string& source,
                       int64_t max_position_embeddings) {
  if (!object.is_object()) config_error(source, key, "must be an object or null, got " + object.dump());
  ConfigFields fields(object, source, key + ".");
  std::string rope_type = "default", alias;
  const bool has_rope_type = fields.read("rope_type", rope_type);
  const bool has_alias = fields.read("type", alias);  // the older spelling
  if (has_rope_type && has_alias && rope_type != alias)
    config_error(source, key + ".type", "is '" + alias + "' but rope_type is '" + rope_type + "'");
  if (!has_rope_type && has_alias) rope_type = alias;
  const std::string type_key = key + (has_rope_type || !has_alias ? ".rope_type" : ".type");

  RopeSettings settings;
  double theta = 0.0;
  if (fields.read("rope_theta", theta)) settings.theta = theta;
  double partial_rotary_factor = 1.0;
  if (fields.read("partial_rotary_factor", partial_rotary_factor) && partial_rotary_factor != 1.0)
    config_error(source, key + ".partial_rotary_factor",
                 "is " + show(partial_rotary_factor) + "; only 1.0 (the whole head rotates) is supported");

  if (rope_type != "default") {
    if (!kRopeTypes.count(rope_type))
      config_error(source, type_key, "is '" + rope_type + "'; supported: default, linear, dynamic, llama3");
    RopeScaling scaling;
    scaling.rope_type = rope_type;
    fields.read("factor", scaling.factor, /*required=*/true);
    if (rope_type == "llama3") {
      fields.read("low_freq_factor", scaling.low_freq_factor, true);
      fields.read("high_freq_factor", scaling.high_freq_factor, true);
    }
    fields.read("original_max_position_embeddings", scaling.original_max_position_embeddings);
    // Hugging Face fills this in for llama3 when the file leaves it out.
    if (rope_type == "llama3" && !scaling.original_max_position_embeddings)
      scaling.original_max_position_embeddings = max_position_embeddings;
    settings.scaling = scaling;
  }
  const nlohmann::json rest = fields.unused();
  if (!rest.empty())
    config_error(source, key + "." + rest.begin().key(), "is not a setting of rope type '" + rope_type + "'");
  return settings;
}

bool same_scaling(const std::optional<RopeScaling>& a, const std::optional<RopeScaling>& b) {
  if (!a || !b) return !a && !b;
  return a->rope_type == b->rope_type && a->factor == b->factor && a->low_freq_factor == b->low_freq_factor &&
         a->high_freq_factor == b->high_freq_factor &&
         a->original_max_position_embeddings == b->original_max_position_embeddings;
}

nlohmann::json scaling_to_json(const RopeScaling& scaling) {
  nlohmann::json json = {{"rope_type", scaling.rope_type}, {"factor", scaling.factor}};
  if (scaling.rope_type == "llama3") {
    json["low_freq_factor"] = scaling.low_freq_factor;
    json["high_freq_factor"] = scaling.high_freq_factor;
  }
  if (scaling.original_max_position_embeddings)
    json["original_max_position_embeddings"] = *scaling.original_max_position_embeddings;
  return json;
}

std::string architecture_name(const std::string& model_type) {
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace

std::optional<int64_t> LlamaConfig::attention_window(int64_t layer_index) const {
  if (model_type == "mistral") return sliding_window;
  if (model_type != "qwen2" || !use_sliding_window || !sliding_window) return std::nullopt;
  const bool sliding = layer_types.empty() ? layer_index >= max_window_layers
                                           : layer_types.at(layer_index) == "sliding_attention";
  return sliding ? sliding_window : std::nullopt;
}

void LlamaConfig::validate() const {
  auto check = [](bool ok, const std::string& key, const std::string& what) {
    if (!ok) throw std::runtime_error("key '" + key + "' " + what);
  };
  auto positive = [&](int64_t value, const std::string& key) {
    check(value > 0, key, "must be positive, got " + std::to_string(value));
  };
  check(kModelTypes.count(model_type) > 0, "model_type", "is '" + model_type + "'; supported: llama, mistral, qwen2");
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  check(num_attention_heads % num_key_value_heads == 0, "num_key_value_heads",
        "must divide num_attention_heads: " + std::to_string(num_attention_heads) + " is not a multiple of " +
            std::to_string(num_key_value_heads));
  if (head_dim) {
    positive(*head_dim, "head_dim");
    check(*head_dim % 2 == 0, "head_dim", "must be even (rotary embeddings turn pairs), got " + std::to_string(*head_dim));
  } else {
    check(hidden_size % num_attention_heads == 0, "num_attention_heads",
          "must divide hidden_size when head_dim is not given: hidden_size " + std::to_string(hidden_size) +
              " is not a multiple of " + std::to_string(num_attention_heads));
    check(head_size() % 2 == 0, "num_attention_heads",
          "gives an odd head size hidden_size / num_attention_heads = " + std::to_string(head_size()) +
              " (rotary embeddings turn pairs)");
  }
  check(hidden_act == "silu", "hidden_act", "is '" + hidden_act + "'; supported: silu");
  positive(max_position_embeddings, "max_position_embeddings");
  check(initializer_range >= 0.0 && std::isfinite(initializer_range), "initializer_range",
        "must be a finite non-negative number, got " + show(initializer_range));
  check(rms_norm_eps > 0.0 && std::isfinite(rms_norm_eps), "rms_norm_eps",
        "must be a positive number, got " + show(rms_norm_eps));
  check(rope_theta > 0.0 && std::isfinite(rope_theta), "rope_theta", "must be a positive number, got " + show(rope_theta));
  if (rope_scaling) check_rope_scaling(*rope_scaling, "rope_scaling", head_size());
  check(attention_dropout >= 0.0 && attention_dropout < 1.0, "attention_dropout",
        "must be in [0, 1), got " + show(attention_dropout));
  check(!pad_token_id || (*pad_token_id >= -vocab_size && *pad_token_id < vocab_size), "pad_token_id",
        "must be a token id below vocab_size " + std::to_string(vocab_size) + " or null, got " +
            std::to_string(pad_token_id.value_or(0)));
  check(!sliding_window || *sliding_window > 0, "sliding_window",
        "must be positive or null, got " + std::to_string(sliding_window.value_or(0)));
  check(max_window_layers >= 0, "max_window_layers", "must not be negative, got " + std::to_string(max_window_layers));
  check(layer_types.empty() || static_cast<int64_t>(layer_types.size()) == num_hidden_layers, "layer_types",
        "has " + std::to_string(layer_types.size()) + " entries for num_hidden_layers " +
            std::to_string(num_hidden_layers));
  for (const std::string& type : layer_types)
    check(kLayerTypes.count(type) > 0, "layer_types", "has '" + type + "'; supported: full_attention, sliding_attention");
}

LlamaConfig LlamaConfig::from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) throw std::runtime_error(source + ": expected a JSON object");
  ConfigFields fields(json, source);
  const nlohmann::json& model_type = fields.require("model_type");
  if (!model_type.is_string() || !kModelTypes.count(model_type.get<std::string>()))
    config_error(source, "model_type",
                 "is " + model_type.dump() + "; this loader reads \"llama\", \"mistral\" and \"qwen2\" models");

  LlamaConfig config;
  config.model_type = model_type.get<std::string>();
  const bool llama = config.model_type == "llama", mistral = config.model_type == "mistral",
             qwen2 = config.model_type == "qwen2";
  // Hugging Face's defaults for the keys a file may leave out.
  std::optional<int64_t> kv_heads;  // unset or null: as many as the query heads
  if (mistral) {
    kv_heads = 8;
    config.max_position_embeddings = 4096 * 32;
    config.sliding_window = 4096;
  } else if (qwen2) {
    kv_heads = 32;
    config.max_position_embeddings = 32768;
    config.sliding_window = 4096;
  }

  fields.read("vocab_size", config.vocab_size, true);
  fields.read("hidden_size", config.hidden_size, true);
  fields.read("intermediate_size", config.intermediate_size, true);
  fields.read("num_hidden_layers", config.num_hidden_layers, true);
  fields.read("num_attention_heads", config.num_attention_heads, true);
  fields.read("num_key_value_heads", kv_heads);
  config.num_key_value_heads = kv_heads.value_or(config.num_attention_heads);
  fields.read("head_dim", config.head_dim);
  fields.read("hidden_act", config.hidden_act);
  fields.read("max_position_embeddings", config.max_position_embeddings);
  fields.read("initializer_range", config.initializer_range);
  fields.read("rms_norm_eps", config.rms_norm_eps);
  fields.read("tie_word_embeddings", config.tie_word_embeddings);
  fields.read("attention_dropout", config.attention_dropout);
  fields.read("pad_token_id", config.pad_token_id);
  if (llama) {
    fields.read("attention_bias", config.attention_bias);
    fields.read("mlp_bias", config.mlp_bias);
  }
  if (mistral || qwen2) fields.read("sliding_window", config.sliding_window);
  if (qwen2) {
    fields.read("use_sliding_window", config.use_sliding_window);
    fields.read("max_window_layers", config.max_window_layers);
    fields.read("layer_types", config.layer_types);
  }

  // Rotary settings. As in transformers 5, a non-null rope_scaling takes the place of
  // rope_parameters, and rope_theta inside the chosen object takes precedence over the
  // top-level key.
  double top_theta = config.rope_theta;
  const bool has_top_theta = fields.read("rope_theta", top_theta);
  std::optional<RopeSettings> from_scaling, from_parameters;
  if (const nlohmann::json* value = fields.find("rope_scaling"); value && !value->is_null())
    from_scaling = read_rope(*value, "rope_scaling", source, config.max_position_embeddings);
  if (const nlohmann::json* value = fields.find("rope_parameters"); value && !value->is_null())
    from_parameters = read_rope(*value, "rope_parameters", source, config.max_position_embeddings);
  const RopeSettings chosen = from_scaling ? *from_scaling : from_parameters.value_or(RopeSettings{});
  config.rope_theta = chosen.theta.value_or(top_theta);
  config.rope_scaling = chosen.scaling;
  if (from_parameters) {
    const double parameters_theta = from_parameters->theta.value_or(top_theta);
    if (from_scaling && (parameters_theta != config.rope_theta || !same_scaling(from_parameters->scaling, config.rope_scaling)))
      config_error(source, "rope_parameters",
                   "disagrees with rope_scaling and rope_theta; the file describes two different rotary embeddings");
    if (has_top_theta && parameters_theta != top_theta)
      config_error(source, "rope_parameters.rope_theta",
                   "is " + show(parameters_theta) + " but rope_theta is " + show(top_theta));
  }
  if (config.rope_scaling) {
    try {
      check_rope_scaling(*config.rope_scaling, from_scaling ? "rope_scaling" : "rope_parameters", config.head_size());
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(source + ": " + e.what());
    }
  }
  double partial_rotary_factor = 1.0;
  if (fields.read("partial_rotary_factor", partial_rotary_factor) && partial_rotary_factor != 1.0)
    config_error(source, "partial_rotary_factor",
                 "is " + show(partial_rotary_factor) + "; only 1.0 (the whole head rotates) is supported");

  // Rewritten on save: the class name, and the dtype of the file being written.
  for (const char* key : {"architectures", "dtype", "torch_dtype"}) fields.find(key);
  config.extra = fields.unused();

  try {
    config.validate();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(source + ": " + e.what());
  }
  return config;
}

LlamaConfig LlamaConfig::from_json_file(const std::filesystem::path& path) {
  return from_json(read_config_file(path), path.string());
}

nlohmann::json LlamaConfig::to_json() const {
  nlohmann::json json = extra;
  json["model_type"] = model_type;
  json["architectures"] = {architecture_name(model_type)};
  json["vocab_size"] = vocab_size;
  json["hidden_size"] = hidden_size;
  json["intermediate_size"] = intermediate_size;
  json["num_hidden_layers"] = num_hidden_layers;
  json["num_attention_heads"] = num_attention_heads;
  json["num_key_value_heads"] = num_key_value_heads;
  if (head_dim) json["head_dim"] = *head_dim;
  json["hidden_act"] = hidden_act;
  json["max_position_embeddings"] = max_position_embeddings;
  json["initializer_range"] = initializer_range;
  json["rms_norm_eps"] = rms_norm_eps;
  json["tie_word_embeddings"] = tie_word_embeddings;
  json["attention_dropout"] = attention_dropout;
  json["pad_token_id"] = pad_token_id ? nlohmann::json(*pad_token_id) : nlohmann::json(nullptr);
  if (model_type == "llama") {
    json["attention_bias"] = attention_bias;
    json["mlp_bias"] = mlp_bias;
  }
  if (model_type != "llama")
    json["sliding_window"] = sliding_window ? nlohmann::json(*sliding_window) : nlohmann::json(nullptr);
  if (model_type == "qwen2") {
    json["use_sliding_window"] = use_sliding_window;
    json["max_window_layers"] = max_window_layers;
    if (!layer_types.empty()) json["layer_types"] = layer_types;
  }
  // transformers 4 reads rope_theta and rope_scaling, transformers 5 rope_parameters
  // (and rope_scaling in its place when not null); both describe the same rotation.
  json["rope_theta"] = rope_theta;
  json["rope_scaling"] = rope_scaling ? scaling_to_json(*rope_scaling) : nlohmann::json(nullptr);
  nlohmann::json parameters = rope_scaling ? scaling_to_json(*rope_scaling) : nlohmann::json{{"rope_type", "default"}};
  parameters["rope_theta"] = rope_theta;
  json["rope_parameters"] = parameters;
  return json;
}

// ---------------------------------------------------------------------------------
// RMSNorm

LlamaRmsNormImpl::LlamaRmsNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor LlamaRmsNormImpl::forward(const torch::Tensor& x) {
  // On CUDA one kernel (model/fused_ops.h) computes the same in a single pass, and
  // writes the dtype the linear layers after it compute in.
  if (x.is_cuda()) return fused::add_rms_norm(x, {}, weight, eps_, fused::input_dtype_for_linear(x)).second;
  // Statistics in float32 whatever the input precision; the scale applies after casting back.
  torch::Tensor h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * h.to(x.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> LlamaRmsNormImpl::forward_added(const torch::Tensor& x,
                                                                       const torch::Tensor& y) {
  if (x.is_cuda()) return fused::add_rms_norm(x, y, weight, eps_, fused::input_dtype_for_linear(x));
  torch::Tensor sum = x + y;
  return {sum, forward(sum)};
}

// ---------------------------------------------------------------------------------
// Rotary position embeddings

namespace {

// theta^(-2i / hs) for the hs / 2 pairs, in float32 (the precision Hugging Face uses,
// so angles agree to the last bit at long positions).
torch::Tensor inverse_frequencies(double theta, int64_t head_size) {
  torch::Tensor exponents = torch::arange(0, head_size, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(head_size);
  return 1.0 / torch::pow(theta, exponents);
}

// Llama 3.1: wavelengths longer than original / low_freq_factor are stretched by
// factor, those shorter than original / high_freq_factor are kept, and those between
// blend the two in proportion to where they fall.
torch::Tensor llama3_frequencies(const torch::Tensor& inv_freq, const RopeScaling& scaling, double original) {
  const double low_freq_wavelength = original / scaling.low_freq_factor;
  const double high_freq_wavelength = original / scaling.high_freq_factor;
  torch::Tensor wavelength = 2.0 * std::numbers::pi / inv_freq;
  torch::Tensor stretched = torch::where(wavelength > low_freq_wavelength, inv_freq / scaling.factor, inv_freq);
  torch::Tensor smooth = (original / wavelength - scaling.low_freq_factor) /
                         (scaling.high_freq_factor - scaling.low_freq_factor);
  torch::Tensor blended = (1.0 - smooth) * stretched / scaling.factor + smooth * stretched;
  torch::Tensor between = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength);
  return torch::where(between, blended, stretched);
}

// (..., hs) -> (..., hs): the halves (x1, x2) become (-x2, x1), so that with the
// angles repeated over both halves, x * cos + rotate_half(x) * sin turns each pair
// (x[i], x[i + hs/2]) by its angle.
torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, /*dim=*/-1);
  return torch::cat({-halves[1], halves[0]}, /*dim=*/-1);
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryAngles& angles) {
  // angles (B or 1, T, hs) -> (B or 1, 1, T, hs), broadcast over heads
  return x * angles.cos.unsqueeze(1) + rotate_half(x) * angles.sin.unsqueeze(1);
}

// Queries (B, nh, T, hs) and keys (B, nkv, T, hs) turned by their positions' angles; on
// CUDA both in one kernel, in their own dtype.
std::pair<torch::Tensor, torch::Tensor> apply_rotary(const torch::Tensor& q, const torch::Tensor& k,
                                                     const RotaryAngles& angles) {
  if (q.is_cuda()) return fused::rotary(q, k, angles.cos, angles.sin);
  return {apply_rotary(q, angles), apply_rotary(k, angles)};
}

}  // namespace

// ---------------------------------------------------------------------------------
// Attention

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& config, int64_t /*layer_index*/)
    : head_dim_(config.head_size()), attention_dropout_(config.attention_dropout) {
  const int64_t C = config.hidden_size;
  const int64_t q_width = config.num_attention_heads * head_dim_;
  const int64_t kv_width = config.num_key_value_heads * head_dim_;
  auto linear = [](int64_t in, int64_t out, bool bias) {
    return Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", linear(C, q_width, config.qkv_bias()));
  k_proj = register_module("k_proj", linear(C, kv_width, config.qkv_bias()));
  v_proj = register_module("v_proj", linear(C, kv_width, config.qkv_bias()));
  o_proj = register_module("o_proj", linear(q_width, C, config.o_bias()));
}

namespace {

// q (B, nh, Tq, hs), k and v (B, nkv, Tk, hs) -> (B, nh, Tq, hs); query head h reads
// key/value head h / (nh / nkv). `allowed` as for LlamaAttention; without it, query i
// reads keys 0 .. i when `causal`, else every key.
torch::Tensor attend(const torch::Tensor& q, torch::Tensor k, torch::Tensor v, const torch::Tensor& allowed,
                     bool causal, double dropout, const std::optional<SliceOf>& heads = std::nullopt) {
  const int64_t n_heads = q.size(1), n_kv_heads = k.size(1);
  if (n_heads % n_kv_heads != 0)
    throw std::runtime_error("LlamaAttention: q_proj gives " + std::to_string(n_heads) +
                             " heads, not a multiple of the " + std::to_string(n_kv_heads) + " of k_proj");
  if (!allowed.defined() && (dropout == 0.0 || (!q.is_cpu() && !heads)))
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, dropout, causal,
                                            /*scale=*/std::nullopt, /*enable_gqa=*/n_heads != n_kv_heads);
  // Fused kernels that take an arbitrary mask do not take fewer key/value heads, nor
  // does the written-out form with dropout on the CPU, so share them out explicitly:
  // (B, nkv, Tk, hs) -> (B, nh, Tk, hs).
  if (n_heads != n_kv_heads) {
    k = k.repeat_interleave(n_heads / n_kv_heads, /*dim=*/1);
    v = v.repeat_interleave(n_heads / n_kv_heads, /*dim=*/1);
  }
  if (!allowed.defined()) return dot_product_attention(q, k, v, /*mask=*/std::nullopt, dropout, causal, std::nullopt, heads);
  return dot_product_attention(q, k, v, allowed, dropout, /*is_causal=*/false, std::nullopt, heads);
}

}  // namespace

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const RotaryAngles& angles,
                                          const torch::Tensor& allowed) {
  const torch::Tensor input = input_hook(x);  // every position, also when x holds some of them
  const int64_t B = input.size(0), T = input.size(1);
  // (B, T, C) -> (B, T, n * hs) -> (B, n, T, hs), n = nh for queries, nkv for keys and values
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, -1, head_dim_}).transpose(1, 2); };
  auto [q, k] = apply_rotary(heads(q_proj(input)), heads(k_proj(input)), angles);
  torch::Tensor v = heads(v_proj(input));
  // (B, nh, T, hs)
  torch::Tensor y = attend(q, k, v, allowed, /*causal=*/true, is_training() ? attention_dropout_ : 0.0, heads_part(q));
  // (B, nh, T, hs) -> (B, T, nh * hs) -> (B, T, C)
  return o_proj(y.transpose(1, 2).reshape({B, T, q.size(1) * head_dim_}));
}

torch::Tensor LlamaAttentionImpl::forward_cached(const torch::Tensor& x, const RotaryAngles& angles,
                                                 const torch::Tensor& allowed, torch::Tensor& keys,
                                                 torch::Tensor& values) {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t past = keys.defined() ? keys.size(2) : 0;
  // (B, T, C) -> (B, n, T, hs), n = nh for queries, nkv for keys and values
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, -1, head_dim_}).transpose(1, 2); };
  const torch::Tensor input = input_hook(x);
  auto [q, k] = apply_rotary(heads(q_proj(input)), heads(k_proj(input)), angles);
  torch::Tensor v = heads(v_proj(input));
  // (B, nkv, T_cached + T, hs): every position so far, keys already rotated by their own angles
  keys = past > 0 ? torch::cat({keys, k}, /*dim=*/2) : k;
  values = past > 0 ? torch::cat({values, v}, /*dim=*/2) : v;
  // Without earlier positions "each sees itself and those before" is the plain causal
  // mask; with them, a single new position sees every key.
  torch::Tensor y = attend(q, keys, values, allowed, /*causal=*/past == 0, is_training() ? attention_dropout_ : 0.0);
  // (B, nh, T, hs) -> (B, T, nh * hs) -> (B, T, C)
  return o_proj(y.transpose(1, 2).reshape({B, T, q.size(1) * head_dim_}));
}

// ---------------------------------------------------------------------------------
// MLP

LlamaMlpImpl::LlamaMlpImpl(const LlamaConfig& config) {
  auto linear = [&](int64_t in, int64_t out) {
    return Linear(torch::nn::LinearOptions(in, out).bias(config.mlp_bias));
  };
  gate_proj = register_module("gate_proj", linear(config.hidden_size, config.intermediate_size));
  up_proj = register_module("up_proj", linear(config.hidden_size, config.intermediate_size));
  down_proj = register_module("down_proj", linear(config.intermediate_size, config.hidden_size));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  // (B, T, C) -> 2 x (B, T, intermediate) -> (B, T, C)
  const torch::Tensor input = input_hook(x);
  // silu(gate) * up: one kernel on CUDA
  return down_proj(fused::swiglu(gate_proj(input), up_proj(input)));
}

// ---------------------------------------------------------------------------------
// Block

LlamaBlockImpl::LlamaBlockImpl(const LlamaConfig& config, int64_t layer_index) {
  input_layernorm = register_module("input_layernorm", LlamaRmsNorm(config.hidden_size, config.rms_norm_eps));
  self_attn = register_module("self_attn", LlamaAttention(config, layer_index));
  post_attention_layernorm =
      register_module("post_attention_layernorm", LlamaRmsNorm(config.hidden_size, config.rms_norm_eps));
  mlp = register_module("mlp", LlamaMlp(config));
}

torch::Tensor LlamaBlockImpl::forward(const torch::Tensor& x, const RotaryAngles& angles, const torch::Tensor& allowed) {
  // h = x + attention(norm(x)), then h + mlp(norm(h)); the sum h and its norm are one step.
  auto [h, normed] = post_attention_layernorm->forward_added(x, self_attn->forward(input_layernorm(x), angles, allowed));
  return h + mlp(normed);
}

torch::Tensor LlamaBlockImpl::forward_cached(const torch::Tensor& x, const RotaryAngles& angles,
                                             const torch::Tensor& allowed, torch::Tensor& keys,
                                             torch::Tensor& values) {
  auto [h, normed] =
      post_attention_layernorm->forward_added(x, self_attn->forward_cached(input_layernorm(x), angles, allowed, keys, values));
  return h + mlp(normed);
}

// ---------------------------------------------------------------------------------
// Model

namespace {

// bool (B or 1, 1, T, T): query q may read key k when k is not after q, lies within the
// window, and is a token rather than padding. A padded query still reads itself, so
// no row of the softmax is empty and padding never turns into NaN.
torch::Tensor attention_mask_for(int64_t T, const torch::Tensor& is_token, std::optional<int64_t> window,
                                 const torch::Device& device) {
  torch::Tensor index = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(device));
  torch::Tensor query = index.unsqueeze(1), key = index.unsqueeze(0);  // (T, 1), (1, T)
  torch::Tensor allowed = key <= query;                                // (T, T)
  if (window) allowed = allowed & (key > query - *window);
  allowed = allowed.view({1, 1, T, T});
  if (is_token.defined()) {
    const int64_t B = is_token.size(0);
    allowed = allowed & (is_token.view({B, 1, 1, T}) | (key == query).view({1, 1, T, T}));
  }
  return allowed;
}

void check_input_ids(const torch::Tensor& input_ids) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
    throw std::runtime_error("Llama: input_ids must be an int64 tensor of shape (B, T), got " +
                             (input_ids.defined() ? std::string(c10::toString(input_ids.scalar_type())) + " " +
                                                        c10::str(input_ids.sizes())
                                                  : std::string("an undefined tensor")));
}

// bool (1, 1, T, past + T): new query i, at position past + i, may read key k when k is
// not after it and lies within the window.
torch::Tensor cached_attention_mask_for(int64_t past, int64_t T, std::optional<int64_t> window,
                                        const torch::Device& device) {
  torch::Tensor key = torch::arange(past + T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0);
  torch::Tensor query = torch::arange(past, past + T, key.options()).unsqueeze(1);  // (T, 1)
  torch::Tensor allowed = key <= query;                                             // (T, past + T)
  if (window) allowed = allowed & (key > query - *window);
  return allowed.view({1, 1, T, past + T});
}

}  // namespace

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& config) : config_(config) {
  auto embedding_options = torch::nn::EmbeddingOptions(config.vocab_size, config.hidden_size);
  if (config.pad_token_id) embedding_options.padding_idx(*config.pad_token_id);
  embed_tokens = register_module("embed_tokens", Embedding(embedding_options));
  layers = register_blocks("layers");
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(LlamaBlock(config, i));
  norm = register_module("norm", LlamaRmsNorm(config.hidden_size, config.rms_norm_eps));

  inv_freq_ = inverse_frequencies(config.rope_theta, config.head_size());
  if (config.rope_scaling && config.rope_scaling->rope_type == "linear") {
    inv_freq_ = inv_freq_ / config.rope_scaling->factor;
  } else if (config.rope_scaling && config.rope_scaling->rope_type == "llama3") {
    const int64_t original =
        config.rope_scaling->original_max_position_embeddings.value_or(config.max_position_embeddings);
    inv_freq_ = llama3_frequencies(inv_freq_, *config.rope_scaling, static_cast<double>(original));
  }
}

RotaryAngles LlamaModelImpl::rotary_angles(const torch::Tensor& positions, torch::ScalarType dtype) const {
  torch::Tensor inv_freq = inv_freq_;
  if (config_.rope_scaling && config_.rope_scaling->rope_type == "dynamic") {
    // NTK-aware scaling: a sequence longer than max_position_embeddings raises the base
    // so the lowest frequency still turns less than once over it. Computed from this
    // batch alone; transformers instead keeps the largest base it has seen until a
    // sequence within max_position_embeddings resets it.
    const double length = static_cast<double>(positions.max().item<int64_t>() + 1);
    const double trained = static_cast<double>(config_.max_position_embeddings);
    if (length > trained) {
      const double factor = config_.rope_scaling->factor;
      const double hs = static_cast<double>(config_.head_size());
      const double base =
          config_.rope_theta * std::pow(factor * length / trained - (factor - 1.0), hs / (hs - 2.0));
      inv_freq = inverse_frequencies(base, config_.head_size());
    }
  }
  // (B or 1, T) -> (B or 1, T, hs / 2) -> (B or 1, T, hs), the angles repeated for both halves
  torch::Tensor angles = positions.unsqueeze(-1).to(torch::kFloat) * inv_freq.to(positions.device());
  angles = torch::cat({angles, angles}, /*dim=*/-1);
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  check_input_ids(input_ids);
  const int64_t T = input_ids.size(1);
  const torch::Device device = input_ids.device();

  torch::Tensor is_token, positions;
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != input_ids.sizes())
      throw std::runtime_error("Llama: attention_mask must have the shape of input_ids " +
                               c10::str(input_ids.sizes()) + ", got " + c10::str(attention_mask.sizes()));
    is_token = (attention_mask != 0).to(device);  // (B, T) bool
    // Real tokens are numbered 0, 1, ... in each row whatever padding precedes them.
    positions = (is_token.to(torch::kLong).cumsum(/*dim=*/1) - 1).clamp_min(0);  // (B, T)
  } else {
    positions = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0);  // (1, T)
  }

  torch::Tensor x = blocks_input(embed_tokens(input_ids));  // (B, T) -> (B, T, C)
  const RotaryAngles angles = rotary_angles(positions, x.scalar_type());

  // One mask per distinct window; none at all for plain causal attention without padding.
  std::map<int64_t, torch::Tensor> masks;  // window (0: none) -> mask
  x = run_blocks(x, [&](std::size_t i) -> BlockForward {
    std::optional<int64_t> window = config_.attention_window(static_cast<int64_t>(i));
    if (window && *window >= T) window.reset();  // the window covers the whole sequence
    const int64_t key = window.value_or(0);
    if (!masks.count(key))
      masks[key] = (window || is_token.defined()) ? attention_mask_for(T, is_token, window, device) : torch::Tensor();
    return [block = layers->ptr<LlamaBlockImpl>(i), angles, allowed = masks[key]](const torch::Tensor& y) {
      return block->forward(y, angles, allowed);
    };
  });
  return blocks_output(norm(x));
}

torch::Tensor LlamaModelImpl::forward_cached(const torch::Tensor& input_ids, KvCache& cache) {
  check_input_ids(input_ids);
  const int64_t n_layers = static_cast<int64_t>(layers->size());
  if (cache.keys.empty()) cache.keys.resize(n_layers), cache.values.resize(n_layers);
  if (static_cast<int64_t>(cache.keys.size()) != n_layers || cache.values.size() != cache.keys.size())
    throw std::runtime_error("Llama: the KvCache holds " + std::to_string(cache.keys.size()) +
                             " layers, the model has " + std::to_string(n_layers));
  const int64_t past = cache.length(), B = input_ids.size(0), T = input_ids.size(1);
  if (past > 0 && cache.keys.front().size(0) != B)
    throw std::runtime_error("Llama: the KvCache holds " + std::to_string(cache.keys.front().size(0)) +
                             " sequences, input_ids " + std::to_string(B));
  const torch::Device device = input_ids.device();

  // (1, T): positions past .. past + T - 1
  torch::Tensor positions =
      torch::arange(past, past + T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0);
  torch::Tensor x = embed_tokens(input_ids);  // (B, T) -> (B, T, C)
  const RotaryAngles angles = rotary_angles(positions, x.scalar_type());

  // A mask only where "each new position sees every earlier one and itself" is not the
  // rule: several new positions after cached ones, or a window shorter than the sequence.
  std::map<int64_t, torch::Tensor> masks;  // window (0: none) -> mask
  for (int64_t i = 0; i < n_layers; ++i) {
    std::optional<int64_t> window = config_.attention_window(i);
    if (window && *window >= past + T) window.reset();  // the window covers the whole sequence
    const int64_t key = window.value_or(0);
    if (!masks.count(key))
      masks[key] = (window || (past > 0 && T > 1)) ? cached_attention_mask_for(past, T, window, device) : torch::Tensor();
    x = layers[i]->as<LlamaBlockImpl>()->forward_cached(x, angles, masks[key], cache.keys[i], cache.values[i]);
  }
  return norm(x);
}

LlamaImpl::LlamaImpl(const LlamaConfig& config) : config_(config) {
  try {
    config_.validate();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("Llama config: ") + e.what());
  }
  model = register_module("model", LlamaModel(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module(
        "lm_head", Linear(torch::nn::LinearOptions(config_.hidden_size, config_.vocab_size).bias(false)));
}

torch::Tensor LlamaImpl::hidden_states(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return model->forward(input_ids, attention_mask);
}

torch::Tensor LlamaImpl::logits(const torch::Tensor& hidden_states) {
  // (B, T, C) @ (V, C)^T -> (B, T, V)
  const torch::Tensor& head = config_.tie_word_embeddings ? model->embed_tokens->weight : lm_head->weight;
  return vocab_logits(head_input_hook(hidden_states), head);
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return logits(hidden_states(input_ids, attention_mask));
}

torch::Tensor LlamaImpl::hidden_states_cached(const torch::Tensor& input_ids, KvCache& cache) {
  return model->forward_cached(input_ids, cache);
}

torch::Tensor LlamaImpl::forward_cached(const torch::Tensor& input_ids, KvCache& cache) {
  return logits(hidden_states_cached(input_ids, cache));
}

}  // namespace ftrain::model
