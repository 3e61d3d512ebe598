// GPT-2 (Radford et al., 2019): a decoder-only transformer with learned position
// embeddings and pre-LayerNorm blocks.
//
// Submodule and parameter names mirror Hugging Face's GPT2LMHeadModel
// (transformer.wte, transformer.h.<i>.attn.c_attn, ..., lm_head), so checkpoints and
// logs read the same in both. Linear layers have weight (out, in), as
// torch::nn::Linear; Hugging Face stores these as Conv1D with weight (in, out), and
// model/gpt2_checkpoint transposes on import and export. The linear layers, the token
// embedding and the input hooks are those of model/linear.h, which dist/ can make
// tensor-parallel.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "model/gpt2_config.h"
#include "model/block_runner.h"
#include "model/generation.h"
#include "model/linear.h"
#include "model/transformer_body.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::model {

// Multi-head causal self-attention: one fused projection to queries, keys and values,
// scaled dot-product attention over earlier positions, an output projection.
// The number of heads is taken from the width of c_attn's output, so a c_attn that
// holds only some of the heads (as a tensor-parallel shard would) computes those heads.
class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  CausalSelfAttentionImpl(const Gpt2Config& config, int64_t layer_index);
  // (B, T, C) -> (B, T, C). With a cache, x holds positions T_cached, T_cached + 1, ...:
  // they attend to the cached keys and values of the earlier positions and to their own,
  // which are appended to this layer's entry. Without a cache, `allowed` (bool
  // (B, 1, T, T), optional) replaces the causal mask: packed documents' attention.
  torch::Tensor forward(const torch::Tensor& x, KvCache* cache = nullptr, const torch::Tensor& allowed = {});

  InputHook input_hook;     // x on its way into c_attn
  Linear c_attn{nullptr};   // C -> 3C, [queries | keys | values]
  Linear c_proj{nullptr};   // C -> C
  PartHook heads_part;      // the heads this layer computes, of the model's (attention dropout)
  PartHook residual_part;   // the output's part of the residual stream (its dropout)

 private:
  int64_t layer_index_;
  int64_t head_dim_;
  double scale_;
  double attn_pdrop_;
  double resid_pdrop_;
  bool upcast_;
};
TORCH_MODULE(CausalSelfAttention);

// Position-wise feed-forward: C -> inner -> C with a GELU between.
class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const Gpt2Config& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)

  InputHook input_hook;    // x on its way into c_fc
  Linear c_fc{nullptr};    // C -> inner
  Linear c_proj{nullptr};  // inner -> C
  PartHook residual_part;  // the output's part of the residual stream (its dropout)

 private:
  bool tanh_gelu_;
  double resid_pdrop_;
};
TORCH_MODULE(Mlp);

// Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const Gpt2Config& config, int64_t layer_index);
  // (B, T, C) -> (B, T, C); the cache and `allowed` as for CausalSelfAttention.
  torch::Tensor forward(const torch::Tensor& x, KvCache* cache = nullptr, const torch::Tensor& allowed = {});

  torch::nn::LayerNorm ln_1{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

// Embeddings, the stack of blocks and the final LayerNorm (Hugging Face's GPT2Model,
// registered as `transformer`).
class Gpt2TransformerImpl : public TransformerBody {
 public:
  explicit Gpt2TransformerImpl(const Gpt2Config& config);
  // (B, T) int64 -> (B, T, C). With a cache, the tokens follow those already in it, at
  // positions T_cached, T_cached + 1, ..., and their keys and values are appended to it.
  // attention_mask, optional and without a cache: (B, T) document ids, 0 for padding
  // and 1, 2, ... for the documents of a packed row (model/documents.h), each read as if
  // alone in its row: its positions from 0, attending within itself.
  torch::Tensor forward(const torch::Tensor& input_ids, KvCache* cache = nullptr,
                        const torch::Tensor& attention_mask = {});

  const Gpt2Config& config() const { return config_; }

  Embedding wte{nullptr};             // (V, C) token embedding
  torch::nn::Embedding wpe{nullptr};  // (n_positions, C) position embedding
  torch::nn::ModuleList h{nullptr};   // n_layer Blocks (TransformerBody's blocks)
  torch::nn::LayerNorm ln_f{nullptr};

 private:
  Gpt2Config config_;
  int64_t n_positions_;
  double embd_pdrop_;
};
TORCH_MODULE(Gpt2Transformer);

// GPT-2 with its language-modelling head. With tied embeddings the head is
// transformer.wte.weight and no lm_head module exists, so named_parameters() lists
// every tensor once.
class Gpt2Impl : public torch::nn::Module {
 public:
  explicit Gpt2Impl(const Gpt2Config& config);  // validates config

  // (B, T) int64 token ids -> (B, T, V) next-token logits.
  //
  // Incremental decoding passes a cache (empty at the start): input_ids are then the
  // tokens that follow those already in it, their outputs equal those of the same
  // positions in one forward over the whole sequence, and their keys and values are
  // appended to it.
  // attention_mask as for Gpt2Transformer.
  torch::Tensor forward(const torch::Tensor& input_ids, KvCache* cache = nullptr,
                        const torch::Tensor& attention_mask = {});
  // (B, T) int64 token ids -> (B, T, C) hidden states after ln_f, for task heads; the
  // cache and attention_mask as for forward.
  torch::Tensor hidden_states(const torch::Tensor& input_ids, KvCache* cache = nullptr,
                              const torch::Tensor& attention_mask = {});
  // (B, T, C) hidden states -> (B, T, V) logits.
  torch::Tensor logits(const torch::Tensor& hidden_states);

  const Gpt2Config& config() const { return config_; }

  // As Gpt2Transformer's: the runner of transformer's blocks, and the blocks.
  void set_block_runner(BlockRunner runner) { transformer->set_block_runner(std::move(runner)); }
  std::vector<std::shared_ptr<torch::nn::Module>> blocks() { return transformer->blocks(); }

  Gpt2Transformer transformer{nullptr};
  Linear lm_head{nullptr};    // empty when tie_word_embeddings
  InputHook head_input_hook;  // hidden states on their way into the head

 private:
  Gpt2Config config_;
};
TORCH_MODULE(Gpt2);

}  // namespace ftrain::model
