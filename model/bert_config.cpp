// BERT's config.json: reading, checking and writing it (BertConfig in model/bert.h).
#include "model/bert_config.h"

#include "model/config_fields.h"

#include <cmath>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace ftrain::model {

namespace {

const std::set<std::string> kActivations = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"};


}  // namespace

void BertConfig::validate() const {
  auto check = [](bool ok, const std::string& key, const std::string& what) {
    if (!ok) throw std::runtime_error("key '" + key + "' " + what);
  };
  auto positive = [&](int64_t value, const char* key) {
    check(value > 0, key, "must be positive, got " + std::to_string(value));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(intermediate_size, "intermediate_size");
  positive(max_position_embeddings, "max_position_embeddings");
  positive(type_vocab_size, "type_vocab_size");
  check(hidden_size % num_attention_heads == 0, "num_attention_heads",
        "must divide hidden_size: hidden_size " + std::to_string(hidden_size) +
            " is not a multiple of num_attention_heads " + std::to_string(num_attention_heads));
  check(kActivations.count(hidden_act) > 0, "hidden_act",
        "is '" + hidden_act + "'; supported: gelu, gelu_new, gelu_pytorch_tanh, relu");
  for (auto [key, p] : {std::pair{"hidden_dropout_prob", hidden_dropout_prob},
                        std::pair{"attention_probs_dropout_prob", attention_probs_dropout_prob}})
    check(p >= 0.0 && p < 1.0, key, "must be in [0, 1), got " + std::to_string(p));
  check(layer_norm_eps > 0.0 && std::isfinite(layer_norm_eps), "layer_norm_eps",
        "must be a finite positive number, got " + std::to_string(layer_norm_eps));
  check(initializer_range >= 0.0 && std::isfinite(initializer_range), "initializer_range",
        "must be a finite non-negative number, got " + std::to_string(initializer_range));
  check(!pad_token_id || (*pad_token_id >= 0 && *pad_token_id < vocab_size), "pad_token_id",
        "must be null or a token id below vocab_size " + std::to_string(vocab_size) + ", got " +
            std::to_string(pad_token_id.value_or(0)));
  check(position_embedding_type == "absolute", "position_embedding_type",
        "is '" + position_embedding_type + "'; only \"absolute\" position embeddings are supported");
}

BertConfig BertConfig::from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) throw std::runtime_error(source + ": expected a JSON object");
  ConfigFields reader(json, source);
  auto flag = [&](const char* key) {
    bool value = false;
    reader.read(key, value);
    return value;
  };
  const nlohmann::json* model_type = reader.find("model_type");
  if (!model_type) config_error(source, "model_type", "is missing");
  if (*model_type != "bert")
    config_error(source, "model_type", "is " + model_type->dump() + "; this loader reads \"bert\" models only");

  BertConfig config;
  reader.read("vocab_size", config.vocab_size, true);
  reader.read("hidden_size", config.hidden_size, true);
  reader.read("num_hidden_layers", config.num_hidden_layers, true);
  reader.read("num_attention_heads", config.num_attention_heads, true);
  reader.read("intermediate_size", config.intermediate_size, true);
  reader.read("hidden_act", config.hidden_act);
  reader.read("hidden_dropout_prob", config.hidden_dropout_prob);
  reader.read("attention_probs_dropout_prob", config.attention_probs_dropout_prob);
  reader.read("max_position_embeddings", config.max_position_embeddings);
  reader.read("type_vocab_size", config.type_vocab_size);
  reader.read("layer_norm_eps", config.layer_norm_eps);
  reader.read("initializer_range", config.initializer_range);
  reader.read("pad_token_id", config.pad_token_id);
  reader.read("position_embedding_type", config.position_embedding_type);
  if (flag("is_decoder"))
    config_error(source, "is_decoder", "is true; only the bidirectional encoder is supported");
  if (flag("add_cross_attention"))
    config_error(source, "add_cross_attention", "is true; encoder-decoder BERT is not supported");
  return reader.finish(std::move(config));
}

BertConfig BertConfig::from_json_file(const std::filesystem::path& path) {
  return from_json(read_config_file(path), path.string());
}

nlohmann::json BertConfig::to_json() const {
  nlohmann::json json = extra;
  json["model_type"] = "bert";
  json["architectures"] = {"BertModel"};
  json["vocab_size"] = vocab_size;
  json["hidden_size"] = hidden_size;
  json["num_hidden_layers"] = num_hidden_layers;
  json["num_attention_heads"] = num_attention_heads;
  json["intermediate_size"] = intermediate_size;
  json["hidden_act"] = hidden_act;
  json["hidden_dropout_prob"] = hidden_dropout_prob;
  json["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
  json["max_position_embeddings"] = max_position_embeddings;
  json["type_vocab_size"] = type_vocab_size;
  json["layer_norm_eps"] = layer_norm_eps;
  json["initializer_range"] = initializer_range;
  json["pad_token_id"] = pad_token_id ? nlohmann::json(*pad_token_id) : nlohmann::json(nullptr);
  json["position_embedding_type"] = position_embedding_type;
  json["is_decoder"] = false;
  json["add_cross_attention"] = false;
  return json;
}

}  // namespace ftrain::model
