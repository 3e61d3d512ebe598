// T5 (Raffel et al., 2020), the encoder-decoder of summarization and translation: an
// encoder of bidirectional self-attention blocks and a decoder of causal
// self-attention, cross-attention to the encoder's output and feed-forward blocks, each
// sublayer x + f(rmsnorm(x)). Attention has no 1/sqrt(d) scaling and no position
// embedding: a learned bias per head and relative-distance bucket (the first block of
// each stack owns it, every block adds it). Feed-forward: relu (T5) or a gated GELU
// (T5 v1.1, flan-t5). The head shares the token embedding (scaled by d_model^-0.5) or
// has its own weight (v1.1).
//
// Submodule and parameter names mirror Hugging Face's T5ForConditionalGeneration
// (shared, encoder.block.<i>.layer.0.SelfAttention.q, ..., decoder.block.<i>.layer.1.
// EncDecAttention.k, lm_head), so checkpoints load without renaming. Linear layers and
// the embedding are model/linear.h's, which dist/ can make tensor-parallel.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "model/linear.h"
#include "model/llama.h"
#include "model/parameter_init.h"
#include "model/t5_config.h"
#include "model/transformer_body.h"

namespace ftrain::model {

// T5's layer norm is RMS normalisation with a scale only: Llama's.
using T5LayerNorm = LlamaRmsNorm;

// What decoding one token at a time keeps per decoder block: the self-attention's keys
// and values of the positions so far, and the cross-attention's of the encoder output,
// computed once. Each (B, H, T, d_kv); empty until the first cached decode.
struct T5Cache {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> self, cross;
  int64_t length() const { return self.empty() || !self.front().first.defined() ? 0 : self.front().first.size(2); }
  // Keeps, for each row, the entries of row `rows[i]` (beam search's parents).
  void reorder(const torch::Tensor& rows);
};

// Attention of one block: self-attention (memory undefined) or cross-attention to the
// encoder's output. The first block of a stack holds relative_attention_bias.
class T5AttentionImpl : public torch::nn::Module {
 public:
  T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias, bool bidirectional);
  // x (B, Tq, C), memory (B, Tk, C) or undefined, bias (1 or B, H, Tq, Tk): added to the
  // scores (position bias and mask) -> (B, Tq, C). With `cached`, self-attention appends
  // x's keys and values to it and attends to all of them; cross-attention computes the
  // memory's once and reads them from it after.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& bias,
                        std::pair<torch::Tensor, torch::Tensor>* cached = nullptr);
  // The learned bias of every (query, key) distance: (1, H, Tq, Tk), query i at position
  // offset + i. Only for the layer that holds relative_attention_bias.
  torch::Tensor position_bias(int64_t query_length, int64_t key_length, int64_t offset, const c10::Device& device);

  Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};  // C -> H d_kv, and back
  torch::nn::Embedding relative_attention_bias{nullptr};  // (buckets, H), first block only
  InputHook input_hook;   // x on its way into q (and k, v in self-attention)
  InputHook memory_hook;  // the encoder's output on its way into k and v (cross-attention)
  PartHook heads_part;    // the heads this layer computes, of the model's (attention dropout)

 private:
  int64_t heads_, head_dim_, buckets_, max_distance_;
  bool bidirectional_;
  double dropout_;
};
TORCH_MODULE(T5Attention);

// DenseReluDense: wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) when gated.
class T5FeedForwardImpl : public torch::nn::Module {
 public:
  explicit T5FeedForwardImpl(const T5Config& config);
  torch::Tensor forward(const torch::Tensor& x);

  Linear wi{nullptr}, wi_0{nullptr}, wi_1{nullptr}, wo{nullptr};
  InputHook input_hook;  // x on its way into wi (or wi_0 and wi_1)
  PartHook hidden_part;  // the hidden units this layer computes, of the model's (dropout)

 private:
  std::string activation_;
  double dropout_;
};
TORCH_MODULE(T5FeedForward);

// One sublayer, x + dropout(f(layer_norm(x))), holding SelfAttention, EncDecAttention
// or DenseReluDense under Hugging Face's name.
class T5SublayerImpl : public torch::nn::Module {
 public:
  enum class Kind { self_attention, cross_attention, feed_forward };
  T5SublayerImpl(const T5Config& config, Kind kind, bool has_relative_attention_bias, bool bidirectional);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory = {}, const torch::Tensor& bias = {},
                        std::pair<torch::Tensor, torch::Tensor>* cached = nullptr);

  T5Attention attention{nullptr};  // SelfAttention or EncDecAttention
  T5FeedForward feed_forward{nullptr};  // DenseReluDense
  T5LayerNorm layer_norm{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(T5Sublayer);

// A stack of blocks (encoder or decoder) and its final layer norm; the token embedding
// is the model's `shared`, passed in. The blocks run through the body's loop, so dist/
// reaches them as it reaches any family's (ZeRO-3 gathers them one by one), cached
// forwards (generation) included. The first block's relative bias serves every block:
// it is marked read_by_every_block, so it sits in no block's unit.
class T5StackImpl : public TransformerBody {
 public:
  T5StackImpl(const T5Config& config, bool is_decoder);
  // embedded (B, T, C); mask (B, T) 1/0 or undefined; the decoder also reads the
  // encoder's output (B, S, C) and its mask (B, S). -> (B, T, C). With a cache
  // (decoder), the positions continue those cached and their keys and values join them;
  // `mask` then covers every position, cached ones included.
  torch::Tensor forward(const torch::Tensor& embedded, const torch::Tensor& mask, const torch::Tensor& encoder_output = {},
                        const torch::Tensor& encoder_mask = {}, T5Cache* cache = nullptr);

  torch::nn::ModuleList block{nullptr};  // each a ModuleList `layer` of T5Sublayers
  T5LayerNorm final_layer_norm{nullptr};

 private:
  T5SublayerImpl& sublayer(std::size_t block_index, std::size_t layer) const;

  bool is_decoder_;
  double dropout_;
};
TORCH_MODULE(T5Stack);

class T5Impl : public torch::nn::Module {
 public:
  explicit T5Impl(const T5Config& config);  // validates config

  // The encoder's output for input_ids (B, S) with attention_mask (B, S) or undefined.
  torch::Tensor encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});
  // Next-token logits (B, T, V) of decoder_input_ids (B, T) given the encoder's output;
  // with a cache, decoder_input_ids continue the positions it holds.
  torch::Tensor decode(const torch::Tensor& decoder_input_ids, const torch::Tensor& encoder_output,
                       const torch::Tensor& attention_mask = {}, const torch::Tensor& decoder_attention_mask = {},
                       T5Cache* cache = nullptr);
  // What decode() hands the head: the decoder's output (B, T, C), scaled by d_model^-0.5
  // when the head is tied (scale_decoder_outputs).
  torch::Tensor head_input(const torch::Tensor& decoder_input_ids, const torch::Tensor& encoder_output,
                           const torch::Tensor& attention_mask = {}, const torch::Tensor& decoder_attention_mask = {},
                           T5Cache* cache = nullptr);
  // (..., C) -> (..., V): lm_head, or the embedding's rows when tied.
  torch::Tensor head(const torch::Tensor& hidden);
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& decoder_input_ids, const torch::Tensor& decoder_attention_mask = {});

  // The decoder's input for labels (B, T): decoder_start_token_id, then the labels
  // shifted right, -100 read as pad_token_id (as Hugging Face's _shift_right).
  torch::Tensor shift_right(const torch::Tensor& labels) const;

  const T5Config& config() const { return config_; }

  Embedding shared{nullptr};  // (V, C), the encoder's, the decoder's and (tied) the head's
  T5Stack encoder{nullptr}, decoder{nullptr};
  Linear lm_head{nullptr};  // untied only

 private:
  T5Config config_;
};
TORCH_MODULE(T5);

}  // namespace ftrain::model
