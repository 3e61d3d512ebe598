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
// Configuration

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
  // Rewritten on save: the class name, and the dtype of the file being written.
  for (const char* key : {"architectures", "dtype", "torch_dtype"}) reader.find(key);
  config.extra = reader.unused();

  try {
    config.validate();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(source + ": " + e.what());
  }
  return config;
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
