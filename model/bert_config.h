// BERT's architecture as its config.json describes it. Free of LibTorch: the encoder
// (model/bert.h) is built from it, and config.json is read and written without it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::model {

// The architecture, read from and written to a Hugging Face config.json
// (model_type "bert"). Keys keep their Hugging Face names and defaults.
struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";  // gelu (erf) | gelu_new | gelu_pytorch_tanh (tanh) | relu
  double hidden_dropout_prob = 0.1;           // embeddings and each residual branch
  double attention_probs_dropout_prob = 0.1;  // attention probabilities
  int64_t max_position_embeddings = 512;      // longest sequence
  int64_t type_vocab_size = 2;                // number of segment (token type) ids
  double layer_norm_eps = 1e-12;
  double initializer_range = 0.02;
  // Row of word_embeddings that stays zero at initialisation and receives no gradient,
  // as in Hugging Face; unset (JSON null) means none.
  std::optional<int64_t> pad_token_id = 0;
  std::string position_embedding_type = "absolute";  // the only kind supported

  // Keys of config.json that do not describe the encoder (classifier_dropout, id2label,
  // use_cache, ...), carried so a saved config keeps them. "architectures" and
  // "dtype"/"torch_dtype" are not kept: save_bert writes them.
  nlohmann::json extra = nlohmann::json::object();

  // 0 until validate() has found a positive number of heads.
  int64_t head_dim() const { return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0; }

  // Throws std::runtime_error "key '<name>': <what is wrong>" for the first bad value.
  void validate() const;

  // Reads a config.json object. `source` (usually the file) prefixes every error,
  // which also names the key: missing, of the wrong type, model_type other than
  // "bert", a decoder or cross-attention BERT, or failing validate().
  static BertConfig from_json(const nlohmann::json& json, const std::string& source);
  static BertConfig from_json_file(const std::filesystem::path& path);

  // The Hugging Face config.json object (model_type, architectures, every key above,
  // then `extra`).
  nlohmann::json to_json() const;
};

}  // namespace ftrain::model
