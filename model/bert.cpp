#include "model/bert.h"

#include "model/dropout.h"
#include "model/config_fields.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>

namespace ftrain::model {

// ---------------------------------------------------------------------------------
// Embeddings

namespace {

torch::nn::LayerNorm make_layer_norm(const BertConfig& config) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps));
}

}  // namespace

BertEmbeddingsImpl::BertEmbeddingsImpl(const BertConfig& config) : dropout_(config.hidden_dropout_prob) {
  torch::nn::EmbeddingOptions words(config.vocab_size, config.hidden_size);
  if (config.pad_token_id) words.padding_idx(*config.pad_token_id);
  word_embeddings = register_module("word_embeddings", Embedding(words));
  position_embeddings = register_module(
      "position_embeddings", torch::nn::Embedding(config.max_position_embeddings, config.hidden_size));
  token_type_embeddings =
      register_module("token_type_embeddings", torch::nn::Embedding(config.type_vocab_size, config.hidden_size));
  layer_norm = register_module("LayerNorm", make_layer_norm(config));
}

torch::Tensor BertEmbeddingsImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids) {
  torch::Tensor positions = torch::arange(input_ids.size(1), input_ids.options());
  // (B, T, C) tokens + (B, T, C) token types + (T, C) positions
  torch::Tensor x = word_embeddings(input_ids) + token_type_embeddings(token_type_ids) + position_embeddings(positions);
  return hashed_dropout(layer_norm(x), dropout_, is_training());
}

// ---------------------------------------------------------------------------------
// Attention

BertSelfAttentionImpl::BertSelfAttentionImpl(const BertConfig& config)
    : head_dim_(config.head_dim()), dropout_(config.attention_probs_dropout_prob) {
  const int64_t C = config.hidden_size;
  query = register_module("query", Linear(C, C));
  key = register_module("key", Linear(C, C));
  value = register_module("value", Linear(C, C));
}

torch::Tensor BertSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attention_bias) {
  const torch::Tensor input = input_hook(x);  // every position, also when x holds some of them
  const int64_t B = input.size(0), T = input.size(1);
  const int64_t n_heads = query->weight.size(0) / head_dim_;
  // (B, T, C) -> (B, T, nh * hs) -> (B, nh, T, hs)
  auto heads = [&](Linear& projection) {
    return projection(input).view({B, T, n_heads, head_dim_}).transpose(1, 2);
  };
  torch::Tensor q = heads(query), k = heads(key), v = heads(value);
  // (B, nh, T, hs): every position attends to every non-padding position.
  std::optional<torch::Tensor> bias;
  if (attention_bias.defined()) bias = attention_bias;
  torch::Tensor y = dot_product_attention(q, k, v, bias, is_training() ? dropout_ : 0.0, /*is_causal=*/false,
                                          std::nullopt, heads_part(q));
  // (B, nh, T, hs) -> (B, T, nh * hs)
  return y.transpose(1, 2).reshape({B, T, n_heads * head_dim_});
}

BertAddNormImpl::BertAddNormImpl(const BertConfig& config, int64_t in_features)
    : dropout_(config.hidden_dropout_prob) {
  dense = register_module("dense", Linear(in_features, config.hidden_size));
  layer_norm = register_module("LayerNorm", make_layer_norm(config));
}

torch::Tensor BertAddNormImpl::forward(const torch::Tensor& sublayer, const torch::Tensor& residual) {
  // (B, T, in) -> (B, T, C)
  const torch::Tensor projected = dense(sublayer);
  return layer_norm(residual + hashed_dropout(projected, dropout_, is_training(), residual_part(projected)));
}

BertAttentionImpl::BertAttentionImpl(const BertConfig& config) {
  self = register_module("self", BertSelfAttention(config));
  output = register_module("output", BertAddNorm(config, config.hidden_size));
}

torch::Tensor BertAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attention_bias) {
  return output(self(x, attention_bias), x);
}

// ---------------------------------------------------------------------------------
// Feed-forward

BertIntermediateImpl::BertIntermediateImpl(const BertConfig& config) : activation_(config.hidden_act) {
  dense = register_module("dense", Linear(config.hidden_size, config.intermediate_size));
}

torch::Tensor BertIntermediateImpl::forward(const torch::Tensor& x) {
  // (B, T, C) -> (B, T, intermediate)
  torch::Tensor hidden = dense(x);
  if (activation_ == "relu") return torch::relu(hidden);
  return torch::gelu(hidden, activation_ == "gelu" ? "none" : "tanh");
}

// ---------------------------------------------------------------------------------
// Block and encoder

BertLayerImpl::BertLayerImpl(const BertConfig& config) {
  attention = register_module("attention", BertAttention(config));
  intermediate = register_module("intermediate", BertIntermediate(config));
  output = register_module("output", BertAddNorm(config, config.intermediate_size));
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& attention_bias) {
  torch::Tensor attended = attention(x, attention_bias);  // LN(x + attn(x))
  return output(intermediate(attended), attended);        // LN(y + ffn(y))
}

BertEncoderImpl::BertEncoderImpl(const BertConfig& config) {
  layer = register_blocks("layer");
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layer->push_back(BertLayer(config));
}

torch::Tensor BertEncoderImpl::forward(const torch::Tensor& x, const torch::Tensor& attention_bias) {
  torch::Tensor y = run_blocks(blocks_input(x), [&](std::size_t i) -> BlockForward {
    return [block = layer->ptr<BertLayerImpl>(i), attention_bias](const torch::Tensor& h) {
      return block->forward(h, attention_bias);
    };
  });
  return blocks_output(y);
}

BertPoolerImpl::BertPoolerImpl(const BertConfig& config) {
  dense = register_module("dense", torch::nn::Linear(config.hidden_size, config.hidden_size));
}

torch::Tensor BertPoolerImpl::forward(const torch::Tensor& hidden_states) {
  // (B, T, C) -> (B, C): the first token of each sequence.
  return torch::tanh(dense(hidden_states.select(1, 0)));
}

// ---------------------------------------------------------------------------------
// Model

namespace {

std::string describe(const torch::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  return std::string(c10::toString(t.scalar_type())) + " " + c10::str(t.sizes());
}

}  // namespace

BertImpl::BertImpl(const BertConfig& config) : config_(config) {
  try {
    config_.validate();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("Bert config: ") + e.what());
  }
  embeddings = register_module("embeddings", BertEmbeddings(config_));
  encoder = register_module("encoder", BertEncoder(config_));
  pooler = register_module("pooler", BertPooler(config_));
}

BertOutput BertImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                             const torch::Tensor& token_type_ids) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
    throw std::runtime_error("Bert: input_ids must be an int64 tensor of shape (B, T), got " + describe(input_ids));
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  if (T > config_.max_position_embeddings)
    throw std::runtime_error("Bert: sequence length " + std::to_string(T) + " exceeds max_position_embeddings " +
                             std::to_string(config_.max_position_embeddings));
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes())
    throw std::runtime_error("Bert: attention_mask must have the shape of input_ids " +
                             c10::str(input_ids.sizes()) + ", got " + describe(attention_mask));
  if (token_type_ids.defined() &&
      (token_type_ids.sizes() != input_ids.sizes() || token_type_ids.scalar_type() != torch::kLong))
    throw std::runtime_error("Bert: token_type_ids must be an int64 tensor of the shape of input_ids " +
                             c10::str(input_ids.sizes()) + ", got " + describe(token_type_ids));

  torch::Tensor types = token_type_ids.defined() ? token_type_ids : torch::zeros_like(input_ids);
  torch::Tensor x = embeddings(input_ids, types);  // (B, T, C)

  // (B, T) -> (B, 1, 1, T), added to every head's scores: 0 for tokens, the lowest
  // finite value for padding. Finite rather than -inf, so a sequence that is all
  // padding gets uniform attention instead of NaN.
  torch::Tensor attention_bias;
  if (attention_mask.defined()) {
    double lowest = 0.0;
    AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, x.scalar_type(), "Bert attention bias",
                                    [&] { lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest()); });
    attention_bias = torch::zeros({B, 1, 1, T}, x.options())
                         .masked_fill(attention_mask.eq(0).view({B, 1, 1, T}).to(x.device()), lowest);
  }
  torch::Tensor hidden = encoder(x, attention_bias);
  return {hidden, pooler(hidden)};
}

}  // namespace ftrain::model
