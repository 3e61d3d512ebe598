#include "model/t5_config.h"

#include <optional>
#include <set>
#include <stdexcept>

#include "model/config_fields.h"

namespace ftrain::model {
namespace {

const std::set<std::string> kActivations = {"relu", "gelu", "silu"};

[[noreturn]] void invalid(const std::string& key, const std::string& what) {
  throw std::runtime_error("key '" + key + "' " + what);
}

}  // namespace

bool T5Config::gated() const { return feed_forward_proj.starts_with("gated-"); }

std::string T5Config::activation() const {
  const std::string name = gated() ? feed_forward_proj.substr(6) : feed_forward_proj;
  // transformers maps gated-gelu to its tanh-approximated "gelu_new" (T5 v1.1's).
  return feed_forward_proj == "gated-gelu" ? "gelu_tanh" : name;
}

void T5Config::validate() const {
  for (const auto& [key, value] :
       {std::pair{"vocab_size", vocab_size}, {"d_model", d_model}, {"d_kv", d_kv}, {"d_ff", d_ff},
        {"num_layers", num_layers}, {"num_decoder_layers", num_decoder_layers}, {"num_heads", num_heads}}) {
    if (value < 1) invalid(key, "must be positive, got " + std::to_string(value));
  }
  if (relative_attention_num_buckets < 4)
    invalid("relative_attention_num_buckets", "must be at least 4, got " + std::to_string(relative_attention_num_buckets));
  if (relative_attention_max_distance <= relative_attention_num_buckets / 4)
    invalid("relative_attention_max_distance", "must exceed a quarter of relative_attention_num_buckets, got " +
                                                   std::to_string(relative_attention_max_distance));
  const std::string name = gated() ? feed_forward_proj.substr(6) : feed_forward_proj;
  if (!kActivations.count(name))
    invalid("feed_forward_proj", "is '" + feed_forward_proj +
                                     "'; supported: relu, gelu, silu and gated-relu, gated-gelu, gated-silu");
  if (!(dropout_rate >= 0 && dropout_rate < 1)) invalid("dropout_rate", "must be in [0, 1)");
  if (!(layer_norm_epsilon > 0)) invalid("layer_norm_epsilon", "must be positive");
  for (const auto& [key, value] : {std::pair{"pad_token_id", pad_token_id}, {"eos_token_id", eos_token_id},
                                   {"decoder_start_token_id", decoder_start_token_id}}) {
    if (value < 0 || value >= vocab_size)
      invalid(key, "is " + std::to_string(value) + ", outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  }
}

T5Config T5Config::from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) throw std::runtime_error(source + ": expected a JSON object");
  ConfigFields fields(json, source);
  T5Config config;
  const nlohmann::json& model_type = fields.require("model_type");
  if (!model_type.is_string() || (model_type != "t5" && model_type != "mt5"))
    config_error(source, "model_type", "is " + model_type.dump() + "; this loader reads \"t5\" and \"mt5\" models");
  config.model_type = model_type.get<std::string>();
  if (config.model_type == "mt5") {  // MT5Config's defaults: T5 v1.1's shape
    config.vocab_size = 250112;
    config.d_ff = 1024;
    config.feed_forward_proj = "gated-gelu";
    config.tie_word_embeddings = false;
  }
  fields.read("vocab_size", config.vocab_size);
  fields.read("d_model", config.d_model);
  fields.read("d_kv", config.d_kv);
  fields.read("d_ff", config.d_ff);
  fields.read("num_layers", config.num_layers);
  std::optional<int64_t> decoder_layers;
  fields.read("num_decoder_layers", decoder_layers);
  config.num_decoder_layers = decoder_layers.value_or(config.num_layers);
  fields.read("num_heads", config.num_heads);
  fields.read("relative_attention_num_buckets", config.relative_attention_num_buckets);
  fields.read("relative_attention_max_distance", config.relative_attention_max_distance);
  fields.read("dropout_rate", config.dropout_rate);
  fields.read("layer_norm_epsilon", config.layer_norm_epsilon);
  fields.read("initializer_factor", config.initializer_factor);
  fields.read("feed_forward_proj", config.feed_forward_proj);
  fields.read("tie_word_embeddings", config.tie_word_embeddings);
  config.scale_decoder_outputs = config.tie_word_embeddings;
  fields.read("scale_decoder_outputs", config.scale_decoder_outputs);
  fields.read("pad_token_id", config.pad_token_id);
  fields.read("eos_token_id", config.eos_token_id);
  fields.read("decoder_start_token_id", config.decoder_start_token_id);
  // What ftrain's T5 is not: refused by name rather than built otherwise.
  bool flag = true;
  if (fields.read("is_encoder_decoder", flag) && !flag)
    config_error(source, "is_encoder_decoder", "is false; ftrain builds T5 as an encoder-decoder only");
  flag = false;
  if (fields.read("is_decoder", flag) && flag)
    config_error(source, "is_decoder", "is true; ftrain builds T5 as an encoder-decoder only");
  // Keys transformers derives from feed_forward_proj: written again on save from it.
  for (const char* key : {"dense_act_fn", "is_gated_act"}) (void)fields.find(key);
  return fields.finish(config);
}

nlohmann::json T5Config::to_json() const {
  nlohmann::json json = extra;
  json["model_type"] = model_type;
  json["architectures"] = {model_type == "mt5" ? "MT5ForConditionalGeneration" : "T5ForConditionalGeneration"};
  json["vocab_size"] = vocab_size;
  json["d_model"] = d_model;
  json["d_kv"] = d_kv;
  json["d_ff"] = d_ff;
  json["num_layers"] = num_layers;
  json["num_decoder_layers"] = num_decoder_layers;
  json["num_heads"] = num_heads;
  json["relative_attention_num_buckets"] = relative_attention_num_buckets;
  json["relative_attention_max_distance"] = relative_attention_max_distance;
  json["dropout_rate"] = dropout_rate;
  json["layer_norm_epsilon"] = layer_norm_epsilon;
  json["initializer_factor"] = initializer_factor;
  json["feed_forward_proj"] = feed_forward_proj;
  json["tie_word_embeddings"] = tie_word_embeddings;
  json["scale_decoder_outputs"] = scale_decoder_outputs;
  json["is_encoder_decoder"] = true;
  json["pad_token_id"] = pad_token_id;
  json["eos_token_id"] = eos_token_id;
  json["decoder_start_token_id"] = decoder_start_token_id;
  json["dtype"] = "float32";
  return json;
}

}  // namespace ftrain::model
