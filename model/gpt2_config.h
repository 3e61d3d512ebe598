// GPT-2's architecture as its config.json describes it. Free of LibTorch: the model
// (model/gpt2.h) is built from it, and config.json is read and written without it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::model {

// The architecture, read from and written to a Hugging Face config.json. Keys keep
// their Hugging Face names and defaults.
struct Gpt2Config {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;  // longest sequence the position embedding covers
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  std::optional<int64_t> n_inner;  // MLP width; unset means 4 * n_embd
  std::string activation_function = "gelu_new";  // gelu_new | gelu_pytorch_tanh | gelu
  double resid_pdrop = 0.1;
  double embd_pdrop = 0.1;
  double attn_pdrop = 0.1;
  double layer_norm_epsilon = 1e-5;
  double initializer_range = 0.02;
  bool tie_word_embeddings = true;  // lm_head shares transformer.wte.weight
  bool scale_attn_weights = true;   // scores / sqrt(head_dim)
  bool scale_attn_by_inverse_layer_idx = false;  // scores / (layer index + 1) as well
  bool reorder_and_upcast_attn = false;          // attention in float32 under low precision

  // Keys of config.json that do not describe the architecture (bos_token_id,
  // eos_token_id, task_specific_params, ...), carried so a saved config keeps them.
  // "architectures" and "dtype"/"torch_dtype" are not kept: save_gpt2 writes them.
  nlohmann::json extra = nlohmann::json::object();

  int64_t inner_dim() const { return n_inner.value_or(4 * n_embd); }
  // 0 until validate() has found a positive number of heads.
  int64_t head_dim() const { return n_head > 0 ? n_embd / n_head : 0; }
  // Whether activation_function is GELU's tanh approximation (gelu_new, gelu_pytorch_tanh).
  bool tanh_gelu() const;

  // Throws std::runtime_error "key '<name>': <what is wrong>" for the first bad value.
  void validate() const;

  // Reads a config.json object. `source` (usually the file) prefixes every error,
  // which also names the key: missing, of the wrong type, model_type other than
  // "gpt2", or failing validate().
  static Gpt2Config from_json(const nlohmann::json& json, const std::string& source);
  static Gpt2Config from_json_file(const std::filesystem::path& path);

  // The Hugging Face config.json object (model_type, architectures, every key above,
  // then `extra`).
  nlohmann::json to_json() const;
};

}  // namespace ftrain::model
