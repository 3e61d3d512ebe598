// The Llama family's config.json (Llama 2/3, Mistral, Qwen2): reading, checking and
// writing it, rotary scaling included (LlamaConfig in model/llama.h).
#include "model/llama_config.h"

#include "model/config_fields.h"

#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace ftrain::model {

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

  return fields.finish(std::move(config));
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

}  // namespace ftrain::model
