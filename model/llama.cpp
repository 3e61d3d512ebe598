#include "model/llama.h"

#include "model/documents.h"
#include "model/dropout.h"
#include "model/fused_ops.h"
#include "model/logits.h"
#include "model/config_fields.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <numbers>
#include <set>
#include <stdexcept>

namespace ftrain::model {

// ---------------------------------------------------------------------------------
// RMSNorm

LlamaRmsNormImpl::LlamaRmsNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor LlamaRmsNormImpl::forward(const torch::Tensor& x) {
  // On CUDA one kernel (model/fused_ops.h) computes the same in a single pass, and
  // writes the dtype the linear layers after it compute in.
  if (x.is_cuda()) return fused::add_rms_norm(x, {}, weight, eps_, fused::input_dtype_for_linear(x)).second;
  // Statistics in float32 whatever the input precision; the scale applies after casting back.
  torch::Tensor h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * h.to(x.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> LlamaRmsNormImpl::forward_added(const torch::Tensor& x,
                                                                       const torch::Tensor& y) {
  if (x.is_cuda()) return fused::add_rms_norm(x, y, weight, eps_, fused::input_dtype_for_linear(x));
  torch::Tensor sum = x + y;
  return {sum, forward(sum)};
}

// ---------------------------------------------------------------------------------
// Rotary position embeddings

namespace {

// theta^(-2i / hs) for the hs / 2 pairs, in float32 (the precision Hugging Face uses,
// so angles agree to the last bit at long positions).
torch::Tensor inverse_frequencies(double theta, int64_t head_size) {
  torch::Tensor exponents = torch::arange(0, head_size, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(head_size);
  return 1.0 / torch::pow(theta, exponents);
}

// Llama 3.1: wavelengths longer than original / low_freq_factor are stretched by
// factor, those shorter than original / high_freq_factor are kept, and those between
// blend the two in proportion to where they fall.
torch::Tensor llama3_frequencies(const torch::Tensor& inv_freq, const RopeScaling& scaling, double original) {
  const double low_freq_wavelength = original / scaling.low_freq_factor;
  const double high_freq_wavelength = original / scaling.high_freq_factor;
  torch::Tensor wavelength = 2.0 * std::numbers::pi / inv_freq;
  torch::Tensor stretched = torch::where(wavelength > low_freq_wavelength, inv_freq / scaling.factor, inv_freq);
  torch::Tensor smooth = (original / wavelength - scaling.low_freq_factor) /
                         (scaling.high_freq_factor - scaling.low_freq_factor);
  torch::Tensor blended = (1.0 - smooth) * stretched / scaling.factor + smooth * stretched;
  torch::Tensor between = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength);
  return torch::where(between, blended, stretched);
}

// (..., hs) -> (..., hs): the halves (x1, x2) become (-x2, x1), so that with the
// angles repeated over both halves, x * cos + rotate_half(x) * sin turns each pair
// (x[i], x[i + hs/2]) by its angle.
torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, /*dim=*/-1);
  return torch::cat({-halves[1], halves[0]}, /*dim=*/-1);
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryAngles& angles) {
  // angles (B or 1, T, hs) -> (B or 1, 1, T, hs), broadcast over heads
  return x * angles.cos.unsqueeze(1) + rotate_half(x) * angles.sin.unsqueeze(1);
}

// Queries (B, nh, T, hs) and keys (B, nkv, T, hs) turned by their positions' angles; on
// CUDA both in one kernel, in their own dtype.
std::pair<torch::Tensor, torch::Tensor> apply_rotary(const torch::Tensor& q, const torch::Tensor& k,
                                                     const RotaryAngles& angles) {
  if (q.is_cuda()) return fused::rotary(q, k, angles.cos, angles.sin);
  return {apply_rotary(q, angles), apply_rotary(k, angles)};
}

}  // namespace

// ---------------------------------------------------------------------------------
// Attention

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& config, int64_t layer_index)
    : layer_index_(layer_index), head_dim_(config.head_size()), attention_dropout_(config.attention_dropout) {
  const int64_t C = config.hidden_size;
  const int64_t q_width = config.num_attention_heads * head_dim_;
  const int64_t kv_width = config.num_key_value_heads * head_dim_;
  auto linear = [](int64_t in, int64_t out, bool bias) {
    return Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", linear(C, q_width, config.qkv_bias()));
  k_proj = register_module("k_proj", linear(C, kv_width, config.qkv_bias()));
  v_proj = register_module("v_proj", linear(C, kv_width, config.qkv_bias()));
  o_proj = register_module("o_proj", linear(q_width, C, config.o_bias()));
}

namespace {

// q (B, nh, Tq, hs), k and v (B, nkv, Tk, hs) -> (B, nh, Tq, hs); query head h reads
// key/value head h / (nh / nkv). `allowed` as for LlamaAttention; without it, query i
// reads keys 0 .. i when `causal`, else every key.
torch::Tensor attend(const torch::Tensor& q, torch::Tensor k, torch::Tensor v, const torch::Tensor& allowed,
                     bool causal, double dropout, const std::optional<SliceOf>& heads = std::nullopt) {
  const int64_t n_heads = q.size(1), n_kv_heads = k.size(1);
  if (n_heads % n_kv_heads != 0)
    throw std::runtime_error("LlamaAttention: q_proj gives " + std::to_string(n_heads) +
                             " heads, not a multiple of the " + std::to_string(n_kv_heads) + " of k_proj");
  if (!allowed.defined() && (dropout == 0.0 || (!q.is_cpu() && !heads)))
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, dropout, causal,
                                            /*scale=*/std::nullopt, /*enable_gqa=*/n_heads != n_kv_heads);
  // Fused kernels that take an arbitrary mask do not take fewer key/value heads, nor
  // does the written-out form with dropout on the CPU, so share them out explicitly:
  // (B, nkv, Tk, hs) -> (B, nh, Tk, hs).
  if (n_heads != n_kv_heads) {
    k = k.repeat_interleave(n_heads / n_kv_heads, /*dim=*/1);
    v = v.repeat_interleave(n_heads / n_kv_heads, /*dim=*/1);
  }
  if (!allowed.defined()) return dot_product_attention(q, k, v, /*mask=*/std::nullopt, dropout, causal, std::nullopt, heads);
  return dot_product_attention(q, k, v, allowed, dropout, /*is_causal=*/false, std::nullopt, heads);
}

}  // namespace

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const RotaryAngles& angles,
                                          const torch::Tensor& allowed, KvCache* cache) {
  const torch::Tensor input = input_hook(x);  // every position, also when x holds some of them
  const int64_t B = input.size(0), T = input.size(1);
  // (B, T, C) -> (B, T, n * hs) -> (B, n, T, hs), n = nh for queries, nkv for keys and values
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, -1, head_dim_}).transpose(1, 2); };
  auto [q, k] = apply_rotary(heads(q_proj(input)), heads(k_proj(input)), angles);
  torch::Tensor v = heads(v_proj(input));
  // With a cache: (B, nkv, T_cached + T, hs), every position so far, each key rotated by
  // its own position's angles.
  if (cache) std::tie(k, v) = cache->append(layer_index_, k, v);
  const int64_t past = k.size(2) - T;
  // (B, nh, T, hs). Without earlier positions "each sees itself and those before" is the
  // plain causal mask; with them, a single new position sees every key.
  torch::Tensor y =
      attend(q, k, v, allowed, /*causal=*/past == 0, is_training() ? attention_dropout_ : 0.0, heads_part(q));
  // (B, nh, T, hs) -> (B, T, nh * hs) -> (B, T, C)
  return o_proj(y.transpose(1, 2).reshape({B, T, q.size(1) * head_dim_}));
}

// ---------------------------------------------------------------------------------
// MLP

LlamaMlpImpl::LlamaMlpImpl(const LlamaConfig& config) {
  auto linear = [&](int64_t in, int64_t out) {
    return Linear(torch::nn::LinearOptions(in, out).bias(config.mlp_bias));
  };
  gate_proj = register_module("gate_proj", linear(config.hidden_size, config.intermediate_size));
  up_proj = register_module("up_proj", linear(config.hidden_size, config.intermediate_size));
  down_proj = register_module("down_proj", linear(config.intermediate_size, config.hidden_size));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  // (B, T, C) -> 2 x (B, T, intermediate) -> (B, T, C)
  const torch::Tensor input = input_hook(x);
  // silu(gate) * up: one kernel on CUDA
  return down_proj(fused::swiglu(gate_proj(input), up_proj(input)));
}

// ---------------------------------------------------------------------------------
// Block

LlamaBlockImpl::LlamaBlockImpl(const LlamaConfig& config, int64_t layer_index) {
  input_layernorm = register_module("input_layernorm", LlamaRmsNorm(config.hidden_size, config.rms_norm_eps));
  self_attn = register_module("self_attn", LlamaAttention(config, layer_index));
  post_attention_layernorm =
      register_module("post_attention_layernorm", LlamaRmsNorm(config.hidden_size, config.rms_norm_eps));
  mlp = register_module("mlp", LlamaMlp(config));
}

torch::Tensor LlamaBlockImpl::forward(const torch::Tensor& x, const RotaryAngles& angles, const torch::Tensor& allowed,
                                      KvCache* cache) {
  // h = x + attention(norm(x)), then h + mlp(norm(h)); the sum h and its norm are one step.
  auto [h, normed] =
      post_attention_layernorm->forward_added(x, self_attn->forward(input_layernorm(x), angles, allowed, cache));
  return h + mlp(normed);
}

// ---------------------------------------------------------------------------------
// Model

namespace {

// bool (1, 1, T, T_cached + T): query q, at position T_cached + q, may read key k when k
// is not after it and lies within the window. Rows with padding or several documents
// take document_attention_mask instead (model/documents.h).
torch::Tensor attention_mask_for(int64_t past, int64_t T, std::optional<int64_t> window, const torch::Device& device) {
  torch::Tensor key = torch::arange(past + T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0);
  torch::Tensor query = torch::arange(past, past + T, key.options()).unsqueeze(1);  // (T, 1)
  torch::Tensor allowed = key <= query;                                             // (T, T_cached + T)
  if (window) allowed = allowed & (key > query - *window);
  return allowed.view({1, 1, T, past + T});
}

void check_input_ids(const torch::Tensor& input_ids) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
    throw std::runtime_error("Llama: input_ids must be an int64 tensor of shape (B, T), got " +
                             (input_ids.defined() ? std::string(c10::toString(input_ids.scalar_type())) + " " +
                                                        c10::str(input_ids.sizes())
                                                  : std::string("an undefined tensor")));
}

}  // namespace

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& config) : config_(config) {
  auto embedding_options = torch::nn::EmbeddingOptions(config.vocab_size, config.hidden_size);
  if (config.pad_token_id) embedding_options.padding_idx(*config.pad_token_id);
  embed_tokens = register_module("embed_tokens", Embedding(embedding_options));
  layers = register_blocks("layers");
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(LlamaBlock(config, i));
  norm = register_module("norm", LlamaRmsNorm(config.hidden_size, config.rms_norm_eps));

  inv_freq_ = inverse_frequencies(config.rope_theta, config.head_size());
  if (config.rope_scaling && config.rope_scaling->rope_type == "linear") {
    inv_freq_ = inv_freq_ / config.rope_scaling->factor;
  } else if (config.rope_scaling && config.rope_scaling->rope_type == "llama3") {
    const int64_t original =
        config.rope_scaling->original_max_position_embeddings.value_or(config.max_position_embeddings);
    inv_freq_ = llama3_frequencies(inv_freq_, *config.rope_scaling, static_cast<double>(original));
  }
}

RotaryAngles LlamaModelImpl::rotary_angles(const torch::Tensor& positions, torch::ScalarType dtype) const {
  torch::Tensor inv_freq = inv_freq_;
  if (config_.rope_scaling && config_.rope_scaling->rope_type == "dynamic") {
    // NTK-aware scaling: a sequence longer than max_position_embeddings raises the base
    // so the lowest frequency still turns less than once over it. Computed from this
    // batch alone; transformers instead keeps the largest base it has seen until a
    // sequence within max_position_embeddings resets it.
    const double length = static_cast<double>(positions.max().item<int64_t>() + 1);
    const double trained = static_cast<double>(config_.max_position_embeddings);
    if (length > trained) {
      const double factor = config_.rope_scaling->factor;
      const double hs = static_cast<double>(config_.head_size());
      const double base =
          config_.rope_theta * std::pow(factor * length / trained - (factor - 1.0), hs / (hs - 2.0));
      inv_freq = inverse_frequencies(base, config_.head_size());
    }
  }
  // (B or 1, T) -> (B or 1, T, hs / 2) -> (B or 1, T, hs), the angles repeated for both halves
  torch::Tensor angles = positions.unsqueeze(-1).to(torch::kFloat) * inv_freq.to(positions.device());
  angles = torch::cat({angles, angles}, /*dim=*/-1);
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                      KvCache* cache) {
  check_input_ids(input_ids);
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const torch::Device device = input_ids.device();
  const int64_t past = cache ? cache->prepare("Llama", static_cast<int64_t>(layers->size()), B) : 0;

  torch::Tensor documents, positions;
  if (attention_mask.defined()) {
    if (cache) throw std::runtime_error("Llama: a cached forward takes rows without padding, and no attention_mask");
    // Padding (0) and documents (1, 2, ...): each document's tokens are numbered 0, 1, ...
    // whatever precedes them in the row.
    documents = document_ids(attention_mask, input_ids, "Llama");
    positions = positions_within_documents(documents);  // (B, T)
  } else {
    // (1, T): positions T_cached .. T_cached + T - 1
    positions = torch::arange(past, past + T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0);
  }

  torch::Tensor x = blocks_input(embed_tokens(input_ids));  // (B, T) -> (B, T, C)
  const RotaryAngles angles = rotary_angles(positions, x.scalar_type());

  // One mask per distinct window; none where "each position sees itself and every one
  // before it" is the rule (plain causal attention, or one new position after cached ones).
  std::map<int64_t, torch::Tensor> masks;  // window (0: none) -> mask
  x = run_blocks(x, [&](std::size_t i) -> BlockForward {
    std::optional<int64_t> window = config_.attention_window(static_cast<int64_t>(i));
    if (window && *window >= past + T) window.reset();  // the window covers the whole sequence
    const int64_t key = window.value_or(0);
    if (!masks.count(key))
      masks[key] = documents.defined()               ? document_attention_mask(documents, window)
                   : (window || (past > 0 && T > 1)) ? attention_mask_for(past, T, window, device)
                                                     : torch::Tensor();
    return [block = layers->ptr<LlamaBlockImpl>(i), angles, allowed = masks[key], cache](const torch::Tensor& y) {
      return block->forward(y, angles, allowed, cache);
    };
  }, /*through_runner=*/cache == nullptr);
  return blocks_output(norm(x));
}

LlamaImpl::LlamaImpl(const LlamaConfig& config) : config_(config) {
  try {
    config_.validate();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("Llama config: ") + e.what());
  }
  model = register_module("model", LlamaModel(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module(
        "lm_head", Linear(torch::nn::LinearOptions(config_.hidden_size, config_.vocab_size).bias(false)));
}

torch::Tensor LlamaImpl::hidden_states(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                      KvCache* cache) {
  return model->forward(input_ids, attention_mask, cache);
}

torch::Tensor LlamaImpl::logits(const torch::Tensor& hidden_states) {
  // (B, T, C) @ (V, C)^T -> (B, T, V)
  const torch::Tensor& head = config_.tie_word_embeddings ? model->embed_tokens->weight : lm_head->weight;
  return vocab_logits(head_input_hook(hidden_states), head);
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, KvCache* cache) {
  return logits(hidden_states(input_ids, attention_mask, cache));
}

}  // namespace ftrain::model
