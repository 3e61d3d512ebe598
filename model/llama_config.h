// The Llama family's architecture as its config.json describes it (Llama 2/3, Mistral,
// Qwen2), rotary scaling included. Free of LibTorch: the model (model/llama.h) is built
// from it, and config.json is read and written without it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::model {

// How rotary frequencies are stretched beyond the context length a model was trained on.
struct RopeScaling {
  // "linear": every frequency divided by factor (position interpolation).
  // "dynamic": NTK-aware, the base is raised once a sequence is longer than
  //   max_position_embeddings, by an amount that grows with its length.
  // "llama3": long wavelengths divided by factor, short ones kept, a smooth blend
  //   between (Llama 3.1).
  std::string rope_type = "linear";
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3: the training context length; unset means max_position_embeddings.
  // Carried unchanged for the other types, which do not use it.
  std::optional<int64_t> original_max_position_embeddings;
};

// The architecture, read from and written to a Hugging Face config.json of model_type
// "llama", "mistral" or "qwen2". Keys keep their Hugging Face names; a key missing
// from the file takes the default Hugging Face gives it for that model_type.
struct LlamaConfig {
  std::string model_type = "llama";  // llama | mistral | qwen2
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;  // SwiGLU width
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;     // < num_attention_heads: grouped-query attention
  std::optional<int64_t> head_dim;      // per-head width; unset means hidden / heads
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 2048;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;  // unset: plain rotary embeddings
  bool tie_word_embeddings = false;         // lm_head shares model.embed_tokens.weight
  bool attention_bias = false;              // llama: biases on q, k, v and o projections
  bool mlp_bias = false;                    // llama: biases on gate, up and down projections
  double attention_dropout = 0.0;
  std::optional<int64_t> pad_token_id;  // embedding row that receives no gradient, zero at init

  // Sliding-window attention: a position sees itself and the sliding_window - 1
  // positions before it. Mistral applies it to every layer when set. Qwen2 applies it
  // only when use_sliding_window is true, to the layers that layer_types marks
  // "sliding_attention" or, without layer_types, to layers >= max_window_layers.
  std::optional<int64_t> sliding_window;
  bool use_sliding_window = false;  // qwen2
  int64_t max_window_layers = 28;   // qwen2
  std::vector<std::string> layer_types;  // qwen2: empty, or one of full_attention |
                                         // sliding_attention per layer

  // Keys of config.json that do not describe the architecture (bos_token_id,
  // eos_token_id, use_cache, ...), carried so a saved config keeps them.
  // "architectures" and "dtype"/"torch_dtype" are not kept: save_llama writes them.
  nlohmann::json extra = nlohmann::json::object();

  // 0 until validate() has found a positive number of heads (without head_dim).
  int64_t head_size() const {
    return head_dim.value_or(num_attention_heads > 0 ? hidden_size / num_attention_heads : 0);
  }
  // Qwen2 always has query/key/value biases and never an output bias.
  bool qkv_bias() const { return model_type == "qwen2" || attention_bias; }
  bool o_bias() const { return model_type != "qwen2" && attention_bias; }
  // The window of layer `layer_index`, or nullopt for full causal attention.
  std::optional<int64_t> attention_window(int64_t layer_index) const;

  // Throws std::runtime_error "key '<name>': <what is wrong>" for the first bad value.
  void validate() const;

  // Reads a config.json object. `source` (usually the file) prefixes every error,
  // which also names the key: missing, of the wrong type, a model_type other than
  // llama/mistral/qwen2, an unknown rope type, or failing validate().
  //
  // Rotary settings come in two spellings: transformers 4 writes "rope_theta" and
  // "rope_scaling" ({"type" or "rope_type", "factor", ...} or null); transformers 5
  // writes "rope_parameters" ({"rope_type", "rope_theta", ...}). Both are read; when
  // a file has both they must agree.
  static LlamaConfig from_json(const nlohmann::json& json, const std::string& source);
  static LlamaConfig from_json_file(const std::filesystem::path& path);

  // The Hugging Face config.json object: model_type, architectures, every key above
  // that model_type has, then `extra`. Rotary settings are written in both spellings
  // so transformers 4 and 5 read the same model.
  nlohmann::json to_json() const;
};

}  // namespace ftrain::model
