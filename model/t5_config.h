#pragma once
// T5's config.json (Raffel et al., 2020; T5 v1.1, mT5 and flan-t5 share the layout):
// the fields ftrain's T5 reads, with Hugging Face's defaults, and the keys it refuses.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace ftrain::model {

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;  // width of each attention head
  int64_t d_ff = 2048;
  int64_t num_layers = 6;          // encoder blocks
  int64_t num_decoder_layers = 6;  // decoder blocks (config.json: null or absent = num_layers)
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double dropout_rate = 0.1;
  double layer_norm_epsilon = 1e-6;
  double initializer_factor = 1.0;
  // "relu" (T5), "gated-gelu" (T5 v1.1, flan-t5: tanh-approximated GELU), and the
  // other <act> / gated-<act> forms with act relu, gelu (exact) or silu.
  std::string feed_forward_proj = "relu";
  // The head shares the token embedding. T5 v1.1 files say false and store lm_head.
  bool tie_word_embeddings = true;
  // The decoder's output is multiplied by d_model^-0.5 before the head (T5 v1.0 does;
  // transformers 5 writes the key, older files leave it to tie_word_embeddings).
  bool scale_decoder_outputs = true;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;
  int64_t decoder_start_token_id = 0;
  std::string model_type = "t5";
  nlohmann::json extra = nlohmann::json::object();  // keys not read, kept on save

  bool gated() const;              // feed_forward_proj starts with "gated-"
  std::string activation() const;  // "relu", "gelu", "gelu_tanh" or "silu"
  int64_t inner_dim() const { return num_heads * d_kv; }

  // Throws std::runtime_error "key '<key>' ..." for a value ftrain cannot build.
  void validate() const;
  // Hugging Face's keys; unsupported ones (is_encoder_decoder false, another
  // feed_forward_proj, ...) throw std::runtime_error naming `source` and the key.
  static T5Config from_json(const nlohmann::json& json, const std::string& source);
  nlohmann::json to_json() const;
};

}  // namespace ftrain::model
