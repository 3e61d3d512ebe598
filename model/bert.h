// BERT (Devlin et al., 2018) and the encoders that share its layout (MiniLM,
// sentence-transformers models such as all-MiniLM-L6-v2): a bidirectional transformer
// with learned position and token-type embeddings and post-LayerNorm blocks.
//
// Submodule and parameter names mirror Hugging Face's BertModel (embeddings.*,
// encoder.layer.<i>.attention.self.query, ..., pooler.dense), so checkpoints and logs
// read the same in both. Members keep those names except the LayerNorms, which are
// registered as "LayerNorm" and held as `layer_norm`. The module is the encoder alone;
// task heads (classifier, masked-LM head) belong to whoever trains it.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "model/bert_config.h"
#include "model/block_runner.h"
#include "model/linear.h"
#include "model/transformer_body.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::model {

// Word, position and token-type embeddings summed, then LayerNorm and dropout.
class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const BertConfig& config);
  // (B, T) int64 token ids, (B, T) int64 token types -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids);

  Embedding word_embeddings{nullptr};                   // (V, C)
  torch::nn::Embedding position_embeddings{nullptr};    // (max_position_embeddings, C)
  torch::nn::Embedding token_type_embeddings{nullptr};  // (type_vocab_size, C)
  torch::nn::LayerNorm layer_norm{nullptr};             // "LayerNorm"

 private:
  double dropout_;
};
TORCH_MODULE(BertEmbeddings);

// Bidirectional multi-head self-attention without its output projection: separate
// query, key and value projections and scaled dot-product attention over every
// position that is not padding. The number of heads is taken from the width of
// query's output, so projections that hold only some of the heads (as a
// tensor-parallel shard would) compute those heads.
class BertSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit BertSelfAttentionImpl(const BertConfig& config);
  // (B, T, C), additive mask (B, 1, 1, T) or undefined -> (B, T, nh * hs)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attention_bias);

  Linear query{nullptr};  // C -> nh * hs
  Linear key{nullptr};    // C -> nh * hs
  Linear value{nullptr};  // C -> nh * hs
  InputHook input_hook;   // x on its way into query, key and value
  PartHook heads_part;    // the heads this layer computes, of the model's (attention dropout)

 private:
  int64_t head_dim_;
  double dropout_;
};
TORCH_MODULE(BertSelfAttention);

// The paper's "Add & Norm" after a sublayer: a projection back to the model width,
// dropout, the residual added, then LayerNorm (post-LN). Hugging Face's BertSelfOutput
// (attention.output) and BertOutput (output) are both this.
class BertAddNormImpl : public torch::nn::Module {
 public:
  BertAddNormImpl(const BertConfig& config, int64_t in_features);
  // sublayer (B, T, in_features), residual (B, T, C) -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& sublayer, const torch::Tensor& residual);

  Linear dense{nullptr};                     // in_features -> C
  torch::nn::LayerNorm layer_norm{nullptr};  // "LayerNorm"
  PartHook residual_part;                    // dense's output's part of the residual stream (its dropout)

 private:
  double dropout_;
};
TORCH_MODULE(BertAddNorm);

// Self-attention and its Add & Norm.
class BertAttentionImpl : public torch::nn::Module {
 public:
  explicit BertAttentionImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attention_bias);  // (B, T, C) -> (B, T, C)

  BertSelfAttention self{nullptr};
  BertAddNorm output{nullptr};
};
TORCH_MODULE(BertAttention);

// The first half of the feed-forward sublayer: C -> intermediate_size and the
// activation. The second half is the layer's `output` Add & Norm.
class BertIntermediateImpl : public torch::nn::Module {
 public:
  explicit BertIntermediateImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, intermediate)

  Linear dense{nullptr};  // C -> intermediate

 private:
  std::string activation_;
};
TORCH_MODULE(BertIntermediate);

// Post-LayerNorm encoder block: x = LN(x + attn(x)), then x = LN(x + ffn(x)).
class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attention_bias);  // (B, T, C) -> (B, T, C)

  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertAddNorm output{nullptr};  // intermediate -> C, + x, LayerNorm
};
TORCH_MODULE(BertLayer);

// The stack of layers; every layer sees the same padding mask.
class BertEncoderImpl : public TransformerBody {
 public:
  explicit BertEncoderImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attention_bias);  // (B, T, C) -> (B, T, C)

  torch::nn::ModuleList layer{nullptr};  // num_hidden_layers BertLayers (TransformerBody's blocks)
};
TORCH_MODULE(BertEncoder);

// tanh(dense(h[:, 0])): the first ([CLS]) token's hidden state as a sequence summary.
class BertPoolerImpl : public torch::nn::Module {
 public:
  explicit BertPoolerImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // (B, T, C) -> (B, C)

  torch::nn::Linear dense{nullptr};  // C -> C
};
TORCH_MODULE(BertPooler);

struct BertOutput {
  torch::Tensor last_hidden_state;  // (B, T, C)
  torch::Tensor pooler_output;      // (B, C)
};

// The encoder with its pooler (Hugging Face's BertModel).
class BertImpl : public torch::nn::Module {
 public:
  explicit BertImpl(const BertConfig& config);  // validates config

  // input_ids (B, T) int64. attention_mask (B, T), nonzero for tokens and zero for
  // padding, any dtype; undefined means no padding. token_type_ids (B, T) int64;
  // undefined means all zero. Padding is never attended to; its own outputs are
  // computed but meaningless.
  BertOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                     const torch::Tensor& token_type_ids = {});

  const BertConfig& config() const { return config_; }

  // As BertEncoder's: the runner of the encoder's layers, and the layers.
  void set_block_runner(BlockRunner runner) { encoder->set_block_runner(std::move(runner)); }
  std::vector<std::shared_ptr<torch::nn::Module>> blocks() { return encoder->blocks(); }

  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  BertPooler pooler{nullptr};

 private:
  BertConfig config_;
};
TORCH_MODULE(Bert);

}  // namespace ftrain::model
