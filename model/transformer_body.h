// The body every model family shares: embeddings (the family's own), then a stack of
// transformer blocks run by one loop, then whatever the family puts after them.
//
// The loop is where dist/ and activation checkpointing reach the blocks from outside
// (model/block_runner.h): with a runner installed, block i runs as runner(i, x, block),
// otherwise as block(x), with the same result. GPT-2's transformer, the Llama family's
// model, BERT's encoder and T5's two stacks derive from TransformerBody, so code that wraps the blocks
// finds any family's body as a TransformerBody and never asks which family it is.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model/block_runner.h"
#include "model/linear.h"

namespace ftrain::model {

class TransformerBody : public torch::nn::Module {
 public:
  // The forward runs block i as runner(i, x, block) from now on; an empty runner
  // restores the plain loop. The decoders' cached forwards (generation) skip it; T5's
  // stacks run theirs through it, so that ZeRO-3 gathers each block as it decodes.
  void set_block_runner(BlockRunner runner) { block_runner_ = std::move(runner); }

  // The blocks in order (h.0, h.1, ... or layers.0, ...).
  std::vector<std::shared_ptr<torch::nn::Module>> blocks() const {
    return std::vector<std::shared_ptr<torch::nn::Module>>(blocks_->begin(), blocks_->end());
  }
  std::size_t num_blocks() const { return blocks_->size(); }

  InputHook blocks_input;   // the embeddings on their way into the first block
  InputHook blocks_output;  // the body's output on its way out

  // Whether parameter `name` (as block `index` names it) is one that a block holds but
  // every block reads: T5's relative position bias, held by the first block and turned
  // into a bias before the loop. It belongs to no block's unit (block_parameter_names).
  bool read_by_every_block(std::size_t index, const std::string& name) const {
    return read_by_every_block_.count({index, name}) != 0;
  }

 protected:
  // Registers the (empty) list of blocks under `name`, Hugging Face's name for it.
  torch::nn::ModuleList register_blocks(const std::string& name) {
    blocks_ = register_module(name, torch::nn::ModuleList());
    return blocks_;
  }

  void mark_read_by_every_block(std::size_t index, std::string name) {
    read_by_every_block_.emplace(index, std::move(name));
  }

  // Block i with whatever else it needs (rotary angles, masks) bound in by value: the
  // runner may call it again after the forward returned (checkpointing recomputes it).
  using BindBlock = std::function<BlockForward(std::size_t index)>;

  // x through every block in order: the one loop of every family's forward. A cached
  // forward (generation) passes through_runner = false and runs each block directly.
  at::Tensor run_blocks(at::Tensor x, const BindBlock& bind, bool through_runner = true) const {
    for (std::size_t i = 0; i < blocks_->size(); ++i) {
      const BlockForward block = bind(i);
      x = block_runner_ && through_runner ? block_runner_(i, x, block) : block(x);
    }
    return x;
  }

 private:
  torch::nn::ModuleList blocks_{nullptr};
  BlockRunner block_runner_;
  std::set<std::pair<std::size_t, std::string>> read_by_every_block_;
};

// The transformer bodies inside `root`, wherever its family put them (a classifier's
// under its body, a language model's as its transformer or model).
inline std::vector<TransformerBody*> transformer_bodies(torch::nn::Module& root) {
  std::vector<TransformerBody*> bodies;
  for (const auto& module : root.modules())
    if (auto* body = dynamic_cast<TransformerBody*>(module.get())) bodies.push_back(body);
  return bodies;
}

// The names of each block's parameters as root.named_parameters() gives them, block by
// block, over every body in order (an encoder's blocks, then a decoder's): the units that
// ZeRO gathers and reduces together. Parameters read by every block are left out.
inline std::vector<std::vector<std::string>> block_parameter_names(torch::nn::Module& root) {
  std::map<const void*, std::string> name_of;
  for (const auto& item : root.named_parameters()) name_of[item.value().unsafeGetTensorImpl()] = item.key();
  std::vector<std::vector<std::string>> names;
  for (TransformerBody* body : transformer_bodies(root)) {
    const std::vector<std::shared_ptr<torch::nn::Module>> blocks = body->blocks();
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      names.emplace_back();
      for (const auto& item : blocks[i]->named_parameters())
        if (!body->read_by_every_block(i, item.key())) names.back().push_back(name_of.at(item.value().unsafeGetTensorImpl()));
    }
  }
  return names;
}

// The parameters registered before the first block, named as root.named_parameters()
// names them: in paper order, the embeddings, which run before the blocks (ZeRO-3's
// input unit, dist/zero.h). Empty for a model without blocks. Whether something after
// the blocks reads them too (a tied head) is for the caller to know.
inline std::vector<std::string> input_parameter_names(torch::nn::Module& root) {
  const std::vector<std::vector<std::string>> blocks = block_parameter_names(root);
  if (blocks.empty() || blocks.front().empty()) return {};
  std::vector<std::string> names;
  for (const auto& item : root.named_parameters()) {
    if (item.key() == blocks.front().front()) break;
    names.push_back(item.key());
  }
  return names;
}

// The token embedding of a model with blocks: its one model::Embedding, with its
// weight's name in `root`. Empty when there are no blocks or not exactly one such layer.
struct TokenEmbedding {
  std::string weight_name;
  EmbeddingImpl* layer = nullptr;
};
inline std::optional<TokenEmbedding> token_embedding(torch::nn::Module& root) {
  if (block_parameter_names(root).empty()) return std::nullopt;
  std::optional<TokenEmbedding> found;
  for (const auto& item : root.named_modules()) {
    auto* layer = dynamic_cast<EmbeddingImpl*>(item.value().get());
    if (!layer) continue;
    if (found) return std::nullopt;
    found = TokenEmbedding{item.key().empty() ? "weight" : item.key() + ".weight", layer};
  }
  return found;
}

}  // namespace ftrain::model
