// Llama (Touvron et al., 2023) and the decoders that share its design: Mistral and
// Qwen2. Pre-RMSNorm blocks, rotary position embeddings on queries and keys,
// grouped-query attention and a SwiGLU feed-forward. The three differ only in config
// keys: Qwen2 puts biases on the query, key and value projections; Mistral and Qwen2
// may restrict attention to a sliding window of recent positions.
//
// Submodule and parameter names mirror Hugging Face's LlamaForCausalLM (model.
// embed_tokens, model.layers.<i>.self_attn.q_proj, ..., lm_head), which Mistral and
// Qwen2 share, so checkpoints load without renaming and logs read the same in both.
// The linear layers, the token embedding and the input hooks are those of
// model/linear.h, which dist/ can make tensor-parallel.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/llama_config.h"
#include "model/block_runner.h"
#include "model/generation.h"
#include "model/linear.h"
#include "model/transformer_body.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ftrain::model {

// Root-mean-square normalisation: x / rms(x) * weight, computed in float32.
class LlamaRmsNormImpl : public torch::nn::Module {
 public:
  LlamaRmsNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., C) -> (..., C)
  // (x + y, its norm): a residual sum and the norm that reads it, one pass on CUDA.
  std::pair<torch::Tensor, torch::Tensor> forward_added(const torch::Tensor& x, const torch::Tensor& y);

  torch::Tensor weight;  // (C), ones at init

 private:
  double eps_;
};
TORCH_MODULE(LlamaRmsNorm);

// The cos and sin of every rotary angle for a batch of positions, each
// (B or 1, T, head_dim): the angles of the frequency pairs, repeated for both halves.
struct RotaryAngles {
  torch::Tensor cos;
  torch::Tensor sin;
};

// Self-attention with rotary queries and keys and fewer key/value heads than query
// heads (each key/value head serves num_attention_heads / num_key_value_heads
// query heads). The numbers of heads are taken from the widths of q_proj and k_proj,
// so projections that hold only some of the heads (as tensor-parallel shards would)
// compute those heads.
class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(const LlamaConfig& config, int64_t layer_index);
  // x (B, T, C) -> (B, T, C), angles (B or 1, T, hs) of x's positions, allowed:
  // undefined for plain causal attention, else a bool (B or 1, 1, T, T_cached + T) mask
  // of the keys each query may see. With a cache, x holds positions T_cached,
  // T_cached + 1, ...: they attend to the cached keys and values of the earlier
  // positions and to their own, which are appended to this layer's entry.
  torch::Tensor forward(const torch::Tensor& x, const RotaryAngles& angles, const torch::Tensor& allowed,
                        KvCache* cache = nullptr);

  InputHook input_hook;    // x on its way into q_proj, k_proj and v_proj
  Linear q_proj{nullptr};  // C -> nh * hs
  Linear k_proj{nullptr};  // C -> nkv * hs
  Linear v_proj{nullptr};  // C -> nkv * hs
  Linear o_proj{nullptr};  // nh * hs -> C
  PartHook heads_part;     // the query heads this layer computes, of the model's (attention dropout)

 private:
  int64_t layer_index_;
  int64_t head_dim_;
  double attention_dropout_;
};
TORCH_MODULE(LlamaAttention);

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)

  InputHook input_hook;       // x on its way into gate_proj and up_proj
  Linear gate_proj{nullptr};  // C -> intermediate
  Linear up_proj{nullptr};    // C -> intermediate
  Linear down_proj{nullptr};  // intermediate -> C
};
TORCH_MODULE(LlamaMlp);

// Pre-RMSNorm residual block: x + attn(norm(x)), then + mlp(norm(x)).
class LlamaBlockImpl : public torch::nn::Module {
 public:
  LlamaBlockImpl(const LlamaConfig& config, int64_t layer_index);
  // (B, T, C) -> (B, T, C); `allowed` and the cache as for LlamaAttention.
  torch::Tensor forward(const torch::Tensor& x, const RotaryAngles& angles, const torch::Tensor& allowed,
                        KvCache* cache = nullptr);

  LlamaRmsNorm input_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaRmsNorm post_attention_layernorm{nullptr};
  LlamaMlp mlp{nullptr};
};
TORCH_MODULE(LlamaBlock);

// Token embedding, the stack of blocks and the final RMSNorm (Hugging Face's
// LlamaModel, registered as `model`).
class LlamaModelImpl : public TransformerBody {
 public:
  explicit LlamaModelImpl(const LlamaConfig& config);
  // (B, T) int64 -> (B, T, C). attention_mask and the cache as for LlamaImpl::forward.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        KvCache* cache = nullptr);

  const LlamaConfig& config() const { return config_; }

  Embedding embed_tokens{nullptr};             // (V, C)
  torch::nn::ModuleList layers{nullptr};       // num_hidden_layers LlamaBlocks (TransformerBody's blocks)
  LlamaRmsNorm norm{nullptr};

 private:
  RotaryAngles rotary_angles(const torch::Tensor& positions, torch::ScalarType dtype) const;

  LlamaConfig config_;
  torch::Tensor inv_freq_;  // (hs / 2) float32 on the CPU; moved to the input's device per call
};
TORCH_MODULE(LlamaModel);

// The decoder with its language-modelling head. With tied embeddings the head is
// model.embed_tokens.weight and no lm_head module exists, so named_parameters()
// lists every tensor once.
class LlamaImpl : public torch::nn::Module {
 public:
  explicit LlamaImpl(const LlamaConfig& config);  // validates config

  // (B, T) int64 token ids -> (B, T, V) next-token logits.
  //
  // attention_mask, optional, (B, T) of 1 for tokens and 0 for padding (any integer,
  // bool or floating type), for batches of rows padded on the left or the right.
  // No position attends to padding, and positions count real tokens only (the first
  // token of a row is position 0), so each row's real positions get the logits the
  // row alone would get. Outputs at padded positions are finite but meaningless.
  // Integer values 1, 2, ... name the documents of a packed row (model/documents.h):
  // each is read as if alone, its positions from 0, attending within itself.
  //
  // Incremental decoding passes a cache (empty at the start) and no attention_mask:
  // input_ids are then the tokens that follow those already in it, at positions
  // T_cached, T_cached + 1, ..., their outputs equal those of the same positions in one
  // forward over the whole sequence, and their keys and values are appended to it.
  // With "dynamic" rope scaling the angles depend on the sequence length, so keys cached
  // before a sequence outgrew max_position_embeddings keep the angles of their step
  // (as in transformers).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        KvCache* cache = nullptr);
  // (B, T) int64 token ids -> (B, T, C) hidden states after the final norm; the
  // attention_mask and the cache as for forward.
  torch::Tensor hidden_states(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                              KvCache* cache = nullptr);
  // (B, T, C) hidden states -> (B, T, V) logits.
  torch::Tensor logits(const torch::Tensor& hidden_states);

  const LlamaConfig& config() const { return config_; }

  // As LlamaModel's: the runner of model's blocks, and the blocks.
  void set_block_runner(BlockRunner runner) { model->set_block_runner(std::move(runner)); }
  std::vector<std::shared_ptr<torch::nn::Module>> blocks() { return model->blocks(); }

  LlamaModel model{nullptr};
  Linear lm_head{nullptr};    // empty when tie_word_embeddings
  InputHook head_input_hook;  // hidden states on their way into the head

 private:
  LlamaConfig config_;
};
TORCH_MODULE(Llama);

}  // namespace ftrain::model
