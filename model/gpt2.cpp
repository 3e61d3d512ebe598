#include "model/gpt2.h"

#include "model/documents.h"
#include "model/dropout.h"
#include "model/fused_ops.h"
#include "model/logits.h"
#include "model/config_fields.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

namespace ftrain::model {

// ---------------------------------------------------------------------------------
// Attention

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const Gpt2Config& config, int64_t layer_index)
    : layer_index_(layer_index),
      head_dim_(config.head_dim()),
      scale_(1.0),
      attn_pdrop_(config.attn_pdrop),
      resid_pdrop_(config.resid_pdrop),
      upcast_(config.reorder_and_upcast_attn) {
  const int64_t C = config.n_embd;
  c_attn = register_module("c_attn", Linear(C, 3 * C));
  c_proj = register_module("c_proj", Linear(C, C));
  if (config.scale_attn_weights) scale_ /= std::sqrt(static_cast<double>(head_dim_));
  if (config.scale_attn_by_inverse_layer_idx) scale_ /= static_cast<double>(layer_index + 1);
}

namespace {

// bool (1, 1, T, T_cached + T): new position i, at T_cached + i, reads keys 0 .. T_cached + i.
torch::Tensor causal_mask_after(int64_t past, int64_t T, const torch::Device& device) {
  torch::Tensor key = torch::arange(past + T, torch::TensorOptions().dtype(torch::kLong).device(device));
  torch::Tensor query = torch::arange(past, past + T, key.options()).unsqueeze(1);  // (T, 1)
  return (key.unsqueeze(0) <= query).view({1, 1, T, past + T});
}

}  // namespace

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, KvCache* cache, const torch::Tensor& allowed) {
  const torch::Tensor input = input_hook(x);  // every position, also when x holds some of them
  const int64_t B = input.size(0), T = input.size(1);
  // (B, T, C) -> (B, T, 3 * nh * hs) -> 3 x (B, T, nh * hs)
  auto qkv = c_attn(input).chunk(3, /*dim=*/-1);
  const int64_t n_heads = qkv[0].size(-1) / head_dim_;
  // 3 x (B, T, nh * hs) -> 3 x (B, nh, T, hs)
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, n_heads, head_dim_}).transpose(1, 2); };
  torch::Tensor q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
  // With a cache: (B, nh, T_cached + T, hs), every position so far.
  if (cache) std::tie(k, v) = cache->append(layer_index_, k, v);
  const int64_t past = k.size(2) - T;
  const auto dtype = q.scalar_type();
  if (upcast_ && dtype != torch::kFloat) {
    q = q.to(torch::kFloat), k = k.to(torch::kFloat), v = v.to(torch::kFloat);
  }
  // (B, nh, T, hs): each position attends to itself and earlier positions only. Without
  // earlier positions that is the plain causal mask; a single new position reads them all.
  // Packed documents bring their own mask.
  std::optional<torch::Tensor> mask;
  if (allowed.defined()) mask = allowed;
  else if (past > 0 && T > 1) mask = causal_mask_after(past, T, x.device());
  torch::Tensor y = dot_product_attention(q, k, v, mask, is_training() ? attn_pdrop_ : 0.0,
                                          /*is_causal=*/past == 0 && !mask, scale_, heads_part(q));
  // (B, nh, T, hs) -> (B, T, nh * hs)
  y = y.to(dtype).transpose(1, 2).reshape({B, T, n_heads * head_dim_});
  const torch::Tensor out = c_proj(y);
  return hashed_dropout(out, resid_pdrop_, is_training(), residual_part(out));
}

// ---------------------------------------------------------------------------------
// MLP

MlpImpl::MlpImpl(const Gpt2Config& config)
    : tanh_gelu_(config.tanh_gelu()), resid_pdrop_(config.resid_pdrop) {
  c_fc = register_module("c_fc", Linear(config.n_embd, config.inner_dim()));
  c_proj = register_module("c_proj", Linear(config.inner_dim(), config.n_embd));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  // (B, T, C) -> (B, T, inner) -> (B, T, C)
  const torch::Tensor input = input_hook(x);
  torch::Tensor hidden;
  LinearImpl* fc = c_fc.styled();
  if (input.is_cuda() && fc && !fc->style().forward) {
    // The product without its bias, then bias and GELU in one pass (model/fused_ops.h).
    hidden = fused::bias_gelu(torch::nn::functional::linear(input, fc->weight), fc->bias, tanh_gelu_);
  } else {
    hidden = torch::gelu(c_fc(input), tanh_gelu_ ? "tanh" : "none");
  }
  const torch::Tensor out = c_proj(hidden);
  return hashed_dropout(out, resid_pdrop_, is_training(), residual_part(out));
}

// ---------------------------------------------------------------------------------
// Block

BlockImpl::BlockImpl(const Gpt2Config& config, int64_t layer_index) {
  auto layer_norm = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon));
  };
  ln_1 = register_module("ln_1", layer_norm());
  attn = register_module("attn", CausalSelfAttention(config, layer_index));
  ln_2 = register_module("ln_2", layer_norm());
  mlp = register_module("mlp", Mlp(config));
}

namespace {

// LayerNorm of x; on CUDA one kernel (model/fused_ops.h) that writes the dtype the
// linear layers after it compute in.
torch::Tensor norm(torch::nn::LayerNorm& ln, const torch::Tensor& x) {
  if (!x.is_cuda()) return ln(x);
  return fused::add_layer_norm(x, {}, ln->weight, ln->bias, ln->options.eps(), fused::input_dtype_for_linear(x)).second;
}

// (x + y, LayerNorm of it): a residual sum and the norm that reads it, one pass on CUDA.
std::pair<torch::Tensor, torch::Tensor> add_norm(torch::nn::LayerNorm& ln, const torch::Tensor& x,
                                                 const torch::Tensor& y) {
  if (!x.is_cuda()) {
    torch::Tensor sum = x + y;
    return {sum, ln(sum)};
  }
  return fused::add_layer_norm(x, y, ln->weight, ln->bias, ln->options.eps(), fused::input_dtype_for_linear(x));
}

}  // namespace

torch::Tensor BlockImpl::forward(const torch::Tensor& x, KvCache* cache, const torch::Tensor& allowed) {
  // y = x + attn(ln_1(x)), then y + mlp(ln_2(y)); the sum y and its norm are one step.
  auto [y, normed] = add_norm(ln_2, x, attn(norm(ln_1, x), cache, allowed));
  return y + mlp(normed);
}

// ---------------------------------------------------------------------------------
// Model

Gpt2TransformerImpl::Gpt2TransformerImpl(const Gpt2Config& config)
    : config_(config), n_positions_(config.n_positions), embd_pdrop_(config.embd_pdrop) {
  wte = register_module("wte", Embedding(config.vocab_size, config.n_embd));
  wpe = register_module("wpe", torch::nn::Embedding(config.n_positions, config.n_embd));
  h = register_blocks("h");
  for (int64_t i = 0; i < config.n_layer; ++i) h->push_back(Block(config, i));
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.n_embd})
                                                          .eps(config.layer_norm_epsilon)));
}

namespace {

void check_input_ids(const torch::Tensor& input_ids) {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
    throw std::runtime_error("Gpt2: input_ids must be an int64 tensor of shape (B, T), got " +
                             (input_ids.defined() ? std::string(c10::toString(input_ids.scalar_type())) + " " +
                                                        c10::str(input_ids.sizes())
                                                  : std::string("an undefined tensor")));
}

}  // namespace

torch::Tensor Gpt2TransformerImpl::forward(const torch::Tensor& input_ids, KvCache* cache,
                                           const torch::Tensor& attention_mask) {
  check_input_ids(input_ids);
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t past = cache ? cache->prepare("Gpt2", static_cast<int64_t>(h->size()), B) : 0;
  if (past + T > n_positions_)
    throw std::runtime_error("Gpt2: sequence length " + std::to_string(past + T) + " exceeds n_positions " +
                             std::to_string(n_positions_) +
                             (past > 0 ? " (" + std::to_string(past) + " cached + " + std::to_string(T) + " new tokens)"
                                       : std::string()));
  // (T) positions past .. past + T - 1, or (B, T) each document's own from 0.
  torch::Tensor positions = torch::arange(past, past + T, input_ids.options());
  torch::Tensor allowed;  // (B, 1, T, T) for packed documents; else the causal mask
  if (attention_mask.defined()) {
    if (cache) throw std::runtime_error("Gpt2: a cached forward takes rows without padding, and no attention_mask");
    const torch::Tensor documents = document_ids(attention_mask, input_ids, "Gpt2");
    positions = positions_within_documents(documents);
    allowed = document_attention_mask(documents);
  }
  // (B, T) -> (B, T, C) tokens + positions
  torch::Tensor x = blocks_input(hashed_dropout(wte(input_ids) + wpe(positions), embd_pdrop_, is_training()));
  x = run_blocks(x, [this, cache, allowed](std::size_t i) -> BlockForward {
    return [block = h->ptr<BlockImpl>(i), cache, allowed](const torch::Tensor& y) {
      return block->forward(y, cache, allowed);
    };
  }, /*through_runner=*/cache == nullptr);
  return blocks_output(norm(ln_f, x));
}

Gpt2Impl::Gpt2Impl(const Gpt2Config& config) : config_(config) {
  try {
    config_.validate();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("Gpt2 config: ") + e.what());
  }
  transformer = register_module("transformer", Gpt2Transformer(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(torch::nn::LinearOptions(config_.n_embd, config_.vocab_size).bias(false)));
}

torch::Tensor Gpt2Impl::hidden_states(const torch::Tensor& input_ids, KvCache* cache,
                                      const torch::Tensor& attention_mask) {
  return transformer(input_ids, cache, attention_mask);
}

torch::Tensor Gpt2Impl::logits(const torch::Tensor& hidden_states) {
  // (B, T, C) @ (V, C)^T -> (B, T, V)
  const torch::Tensor& head = config_.tie_word_embeddings ? transformer->wte->weight : lm_head->weight;
  return vocab_logits(head_input_hook(hidden_states), head);
}

torch::Tensor Gpt2Impl::forward(const torch::Tensor& input_ids, KvCache* cache, const torch::Tensor& attention_mask) {
  return logits(hidden_states(input_ids, cache, attention_mask));
}

}  // namespace ftrain::model
