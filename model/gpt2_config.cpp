// GPT-2's config.json: reading, checking and writing it (Gpt2Config in model/gpt2.h).
#include "model/gpt2_config.h"

#include "model/config_fields.h"

#include <cmath>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace ftrain::model {

namespace {

const std::set<std::string> kTanhGelus = {"gelu_new", "gelu_pytorch_tanh"};
const std::set<std::string> kExactGelus = {"gelu"};


}  // namespace

void Gpt2Config::validate() const {
  auto check = [](bool ok, const std::string& key, const std::string& what) {
    if (!ok) throw std::runtime_error("key '" + key + "' " + what);
  };
  check(vocab_size > 0, "vocab_size", "must be positive, got " + std::to_string(vocab_size));
  check(n_positions > 0, "n_positions", "must be positive, got " + std::to_string(n_positions));
  check(n_embd > 0, "n_embd", "must be positive, got " + std::to_string(n_embd));
  check(n_layer > 0, "n_layer", "must be positive, got " + std::to_string(n_layer));
  check(n_head > 0, "n_head", "must be positive, got " + std::to_string(n_head));
  check(n_embd % n_head == 0, "n_head",
        "must divide n_embd: n_embd " + std::to_string(n_embd) + " is not a multiple of n_head " +
            std::to_string(n_head));
  check(!n_inner || *n_inner > 0, "n_inner",
        "must be positive or null, got " + std::to_string(n_inner.value_or(0)));
  check(kTanhGelus.count(activation_function) || kExactGelus.count(activation_function),
        "activation_function",
        "is '" + activation_function + "'; supported: gelu_new, gelu_pytorch_tanh, gelu");
  for (auto [key, p] : {std::pair{"resid_pdrop", resid_pdrop}, std::pair{"embd_pdrop", embd_pdrop},
                        std::pair{"attn_pdrop", attn_pdrop}})
    check(p >= 0.0 && p < 1.0, key, "must be in [0, 1), got " + std::to_string(p));
  check(layer_norm_epsilon > 0.0, "layer_norm_epsilon",
        "must be positive, got " + std::to_string(layer_norm_epsilon));
  check(initializer_range >= 0.0 && std::isfinite(initializer_range), "initializer_range",
        "must be a finite non-negative number, got " + std::to_string(initializer_range));
}

bool Gpt2Config::tanh_gelu() const { return kTanhGelus.count(activation_function) > 0; }

Gpt2Config Gpt2Config::from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) throw std::runtime_error(source + ": expected a JSON object");
  ConfigFields reader(json, source);
  const nlohmann::json& model_type = reader.require("model_type");
  if (model_type != "gpt2")
    config_error(source, "model_type", "is " + model_type.dump() + "; this loader reads \"gpt2\" models only");

  Gpt2Config config;
  reader.read("vocab_size", config.vocab_size, true);
  reader.read("n_positions", config.n_positions, true);
  reader.read("n_embd", config.n_embd, true);
  reader.read("n_layer", config.n_layer, true);
  reader.read("n_head", config.n_head, true);
  reader.read("n_inner", config.n_inner);
  reader.read("activation_function", config.activation_function);
  reader.read("resid_pdrop", config.resid_pdrop);
  reader.read("embd_pdrop", config.embd_pdrop);
  reader.read("attn_pdrop", config.attn_pdrop);
  reader.read("layer_norm_epsilon", config.layer_norm_epsilon);
  reader.read("initializer_range", config.initializer_range);
  reader.read("tie_word_embeddings", config.tie_word_embeddings);
  reader.read("scale_attn_weights", config.scale_attn_weights);
  reader.read("scale_attn_by_inverse_layer_idx", config.scale_attn_by_inverse_layer_idx);
  reader.read("reorder_and_upcast_attn", config.reorder_and_upcast_attn);
  bool cross_attention = false;
  reader.read("add_cross_attention", cross_attention);
  if (cross_attention) config_error(source, "add_cross_attention", "is true; encoder-decoder GPT-2 is not supported");
  return reader.finish(std::move(config));
}

Gpt2Config Gpt2Config::from_json_file(const std::filesystem::path& path) {
  return from_json(read_config_file(path), path.string());
}

nlohmann::json Gpt2Config::to_json() const {
  nlohmann::json json = extra;
  json["model_type"] = "gpt2";
  json["architectures"] = {"GPT2LMHeadModel"};
  json["vocab_size"] = vocab_size;
  json["n_positions"] = n_positions;
  json["n_embd"] = n_embd;
  json["n_layer"] = n_layer;
  json["n_head"] = n_head;
  json["n_inner"] = n_inner ? nlohmann::json(*n_inner) : nlohmann::json(nullptr);
  json["activation_function"] = activation_function;
  json["resid_pdrop"] = resid_pdrop;
  json["embd_pdrop"] = embd_pdrop;
  json["attn_pdrop"] = attn_pdrop;
  json["layer_norm_epsilon"] = layer_norm_epsilon;
  json["initializer_range"] = initializer_range;
  json["tie_word_embeddings"] = tie_word_embeddings;
  json["scale_attn_weights"] = scale_attn_weights;
  json["scale_attn_by_inverse_layer_idx"] = scale_attn_by_inverse_layer_idx;
  json["reorder_and_upcast_attn"] = reorder_and_upcast_attn;
  json["add_cross_attention"] = false;
  return json;
}

}  // namespace ftrain::model
