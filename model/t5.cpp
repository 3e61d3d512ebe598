#include "model/t5.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "model/dropout.h"

namespace ftrain::model {
namespace {

// Which bucket each relative distance (key position - query position) falls in: half
// the buckets for exact small distances, the rest logarithmically wider up to
// max_distance; bidirectional attention spends half of them on each sign.
torch::Tensor relative_bucket(const torch::Tensor& distance, bool bidirectional, int64_t buckets, int64_t max_distance) {
  torch::Tensor bucket = torch::zeros_like(distance);
  torch::Tensor magnitude;
  if (bidirectional) {
    buckets /= 2;
    bucket = bucket + distance.gt(0).to(torch::kLong) * buckets;
    magnitude = distance.abs();
  } else {
    magnitude = -torch::clamp_max(distance, 0);
  }
  const int64_t exact = buckets / 2;
  const torch::Tensor large =
      torch::clamp_max(exact + (torch::log(magnitude.to(torch::kFloat) / static_cast<double>(exact)) /
                                std::log(static_cast<double>(max_distance) / static_cast<double>(exact)) *
                                static_cast<double>(buckets - exact))
                                   .to(torch::kLong),
                       buckets - 1);
  return bucket + torch::where(magnitude.lt(exact), magnitude, large);
}

// (B, T) of 1/0 -> (B, 1, 1, T) additive: 0 where attended, the dtype's lowest elsewhere.
torch::Tensor additive_mask(const torch::Tensor& mask, torch::ScalarType dtype) {
  const double lowest = static_cast<double>(std::numeric_limits<float>::lowest());
  return torch::where(mask.ne(0), 0.0, lowest).to(dtype).unsqueeze(1).unsqueeze(1);
}

}  // namespace

void T5Cache::reorder(const torch::Tensor& rows) {
  for (auto* entries : {&self, &cross})
    for (auto& [keys, values] : *entries)
      if (keys.defined()) keys = keys.index_select(0, rows), values = values.index_select(0, rows);
}

// ---- attention ----

T5AttentionImpl::T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias, bool bidirectional)
    : heads_(config.num_heads),
      head_dim_(config.d_kv),
      buckets_(config.relative_attention_num_buckets),
      max_distance_(config.relative_attention_max_distance),
      bidirectional_(bidirectional),
      dropout_(config.dropout_rate) {
  const auto linear = [&](int64_t in, int64_t out) { return Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  q = register_module("q", linear(config.d_model, config.inner_dim()));
  k = register_module("k", linear(config.d_model, config.inner_dim()));
  v = register_module("v", linear(config.d_model, config.inner_dim()));
  o = register_module("o", linear(config.inner_dim(), config.d_model));
  if (has_relative_attention_bias)
    relative_attention_bias = register_module("relative_attention_bias", torch::nn::Embedding(buckets_, heads_));
}

torch::Tensor T5AttentionImpl::position_bias(int64_t query_length, int64_t key_length, int64_t offset,
                                             const c10::Device& device) {
  const auto options = torch::TensorOptions().dtype(torch::kLong).device(device);
  const torch::Tensor queries = torch::arange(offset, offset + query_length, options).unsqueeze(1);
  const torch::Tensor keys = torch::arange(key_length, options).unsqueeze(0);
  const torch::Tensor buckets = relative_bucket(keys - queries, bidirectional_, buckets_, max_distance_);
  return relative_attention_bias->forward(buckets).permute({2, 0, 1}).unsqueeze(0);  // (1, H, Tq, Tk)
}

torch::Tensor T5AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& bias,
                                       std::pair<torch::Tensor, torch::Tensor>* cached) {
  const int64_t B = x.size(0), T = x.size(1);
  const torch::Tensor& source = memory.defined() ? memory : x;
  const auto heads = [&](const torch::Tensor& t) { return t.view({B, t.size(1), -1, head_dim_}).transpose(1, 2); };
  const torch::Tensor input = input_hook(x);
  torch::Tensor keys, values;
  if (cached && memory.defined() && cached->first.defined()) {
    std::tie(keys, values) = *cached;  // the encoder's output does not change
  } else {
    const torch::Tensor from = memory.defined() ? memory_hook(source) : input;
    keys = heads(k(from)), values = heads(v(from));
    if (cached && !memory.defined() && cached->first.defined()) {
      keys = torch::cat({cached->first, keys}, 2);
      values = torch::cat({cached->second, values}, 2);
    }
    if (cached) *cached = {keys, values};
  }
  const torch::Tensor queries = heads(q(input));
  const torch::Tensor attended = dot_product_attention(queries, keys, values, bias, is_training() ? dropout_ : 0.0,
                                                       /*is_causal=*/false, 1.0, heads_part(queries));
  return o(attended.transpose(1, 2).reshape({B, T, -1}));
}

// ---- feed-forward ----

T5FeedForwardImpl::T5FeedForwardImpl(const T5Config& config)
    : activation_(config.activation()), dropout_(config.dropout_rate) {
  const auto linear = [&](int64_t in, int64_t out) { return Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  if (config.gated()) {
    wi_0 = register_module("wi_0", linear(config.d_model, config.d_ff));
    wi_1 = register_module("wi_1", linear(config.d_model, config.d_ff));
  } else {
    wi = register_module("wi", linear(config.d_model, config.d_ff));
  }
  wo = register_module("wo", linear(config.d_ff, config.d_model));
}

torch::Tensor T5FeedForwardImpl::forward(const torch::Tensor& x) {
  const auto act = [&](const torch::Tensor& h) {
    if (activation_ == "relu") return torch::relu(h);
    if (activation_ == "silu") return torch::silu(h);
    return torch::gelu(h, activation_ == "gelu_tanh" ? "tanh" : "none");
  };
  const torch::Tensor input = input_hook(x);
  const torch::Tensor hidden = wi_0 ? act(wi_0(input)) * wi_1(input) : act(wi(input));
  return wo(hashed_dropout(hidden, dropout_, is_training(), hidden_part(hidden)));
}

// ---- sublayers, blocks and stacks ----

T5SublayerImpl::T5SublayerImpl(const T5Config& config, Kind kind, bool has_relative_attention_bias, bool bidirectional)
    : dropout_(config.dropout_rate) {
  if (kind == Kind::feed_forward) {
    feed_forward = register_module("DenseReluDense", T5FeedForward(config));
  } else {
    attention = register_module(kind == Kind::self_attention ? "SelfAttention" : "EncDecAttention",
                                T5Attention(config, has_relative_attention_bias, bidirectional));
  }
  layer_norm = register_module("layer_norm", T5LayerNorm(config.d_model, config.layer_norm_epsilon));
}

torch::Tensor T5SublayerImpl::forward(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& bias,
                                      std::pair<torch::Tensor, torch::Tensor>* cached) {
  const torch::Tensor normed = layer_norm(x);
  const torch::Tensor out = feed_forward ? feed_forward(normed) : attention->forward(normed, memory, bias, cached);
  return x + hashed_dropout(out, dropout_, is_training());
}

T5StackImpl::T5StackImpl(const T5Config& config, bool is_decoder)
    : is_decoder_(is_decoder), dropout_(config.dropout_rate) {
  using Kind = T5SublayerImpl::Kind;
  block = register_blocks("block");
  const int64_t blocks = is_decoder ? config.num_decoder_layers : config.num_layers;
  for (int64_t i = 0; i < blocks; ++i) {
    torch::nn::ModuleList layer;
    layer->push_back(T5Sublayer(config, Kind::self_attention, i == 0, !is_decoder));
    if (is_decoder) layer->push_back(T5Sublayer(config, Kind::cross_attention, false, true));
    layer->push_back(T5Sublayer(config, Kind::feed_forward, false, true));
    auto holder = std::make_shared<torch::nn::Module>();
    holder->register_module("layer", layer);
    block->push_back(holder);
  }
  final_layer_norm = register_module("final_layer_norm", T5LayerNorm(config.d_model, config.layer_norm_epsilon));
  if (blocks > 0) mark_read_by_every_block(0, "layer.0.SelfAttention.relative_attention_bias.weight");
}

T5SublayerImpl& T5StackImpl::sublayer(std::size_t block_index, std::size_t layer) const {
  return *block->ptr(block_index)->named_children()[0].value()->as<torch::nn::ModuleList>()->ptr(layer)->as<T5SublayerImpl>();
}

torch::Tensor T5StackImpl::forward(const torch::Tensor& embedded, const torch::Tensor& mask,
                                   const torch::Tensor& encoder_output, const torch::Tensor& encoder_mask, T5Cache* cache) {
  const int64_t T = embedded.size(1);
  const int64_t cached = cache ? cache->length() : 0;
  if (cache && cache->self.empty()) cache->self.resize(block->size()), cache->cross.resize(block->size());
  // The first block's bias serves every block, with the masks folded in.
  torch::Tensor self_bias = sublayer(0, 0).attention->position_bias(T, cached + T, cached, embedded.device());
  if (is_decoder_) {
    // Query i (position cached + i) sees the keys up to its own position.
    const torch::Tensor causal =
        torch::ones({T, cached + T}, torch::TensorOptions().dtype(torch::kBool).device(embedded.device())).tril(cached);
    self_bias = self_bias + torch::where(causal, 0.0, static_cast<double>(std::numeric_limits<float>::lowest()))
                                .to(self_bias.scalar_type());
  }
  if (mask.defined()) self_bias = self_bias + additive_mask(mask, self_bias.scalar_type());
  torch::Tensor cross_bias;
  if (is_decoder_ && encoder_mask.defined()) cross_bias = additive_mask(encoder_mask, self_bias.scalar_type());

  // Block b: self-attention, cross-attention (decoder), feed-forward. Cached forwards go
  // through the runner too, so that ZeRO-3 gathers each block for generation. The bias
  // (made from a parameter) and the encoder's output are the block's reads: gradients
  // flow back into them from every block.
  std::vector<torch::Tensor> reads{self_bias};
  if (is_decoder_) reads.push_back(encoder_output);
  const BindBlock bind = [this, reads, cross_bias, cache](std::size_t b) -> BlockForward {
    return BlockForward(reads, [this, b, cross_bias, cache](const torch::Tensor& x, const std::vector<torch::Tensor>& read) {
      torch::Tensor h = sublayer(b, 0).forward(x, {}, read[0], cache ? &cache->self[b] : nullptr);
      if (is_decoder_) h = sublayer(b, 1).forward(h, read[1], cross_bias, cache ? &cache->cross[b] : nullptr);
      return sublayer(b, is_decoder_ ? 2 : 1).forward(h);
    });
  };
  const torch::Tensor h = run_blocks(hashed_dropout(embedded, dropout_, is_training()), bind);
  return hashed_dropout(final_layer_norm(h), dropout_, is_training());
}

// ---- the model ----

T5Impl::T5Impl(const T5Config& config) : config_(config) {
  config_.validate();
  shared = register_module("shared", Embedding(config.vocab_size, config.d_model));
  encoder = register_module("encoder", T5Stack(config, false));
  decoder = register_module("decoder", T5Stack(config, true));
  if (!config.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(torch::nn::LinearOptions(config.d_model, config.vocab_size).bias(false)));
}

torch::Tensor T5Impl::encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return encoder(shared(input_ids), attention_mask);
}

torch::Tensor T5Impl::head_input(const torch::Tensor& decoder_input_ids, const torch::Tensor& encoder_output,
                                 const torch::Tensor& attention_mask, const torch::Tensor& decoder_attention_mask,
                                 T5Cache* cache) {
  torch::Tensor h = decoder(shared(decoder_input_ids), decoder_attention_mask, encoder_output, attention_mask, cache);
  if (config_.scale_decoder_outputs) h = h * std::pow(static_cast<double>(config_.d_model), -0.5);
  return h;
}

torch::Tensor T5Impl::head(const torch::Tensor& hidden) { return lm_head ? lm_head(hidden) : shared->logits(hidden); }

torch::Tensor T5Impl::decode(const torch::Tensor& decoder_input_ids, const torch::Tensor& encoder_output,
                             const torch::Tensor& attention_mask, const torch::Tensor& decoder_attention_mask,
                             T5Cache* cache) {
  return head(head_input(decoder_input_ids, encoder_output, attention_mask, decoder_attention_mask, cache));
}

torch::Tensor T5Impl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                              const torch::Tensor& decoder_input_ids, const torch::Tensor& decoder_attention_mask) {
  return decode(decoder_input_ids, encode(input_ids, attention_mask), attention_mask, decoder_attention_mask);
}

torch::Tensor T5Impl::shift_right(const torch::Tensor& labels) const {
  torch::Tensor shifted = torch::full_like(labels, config_.decoder_start_token_id);
  shifted.slice(1, 1).copy_(labels.slice(1, 0, labels.size(1) - 1));
  return shifted.masked_fill(shifted.eq(-100), config_.pad_token_id);
}

}  // namespace ftrain::model
