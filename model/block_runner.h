// The hook through which dist/ and activation checkpointing wrap each transformer block
// of a model without the model knowing about them.
//
// A model with a runner installed calls runner(i, x, block) for block i of its training
// forward instead of block(x); without one it calls the block directly, so its results
// are the same either way. The runner decides what happens around the block: ZeRO-3
// gathers the block's parameters and frees them afterwards, activation checkpointing
// drops the block's activations and recomputes them in the backward pass. Cached
// (generation) forwards do not go through the runner.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

namespace ftrain::model {

// Block i itself: (B, T, C) -> (B, T, C), with whatever else the block needs (rotary
// angles, masks) bound in. It may be called again after the model's forward returned
// (checkpointing recomputes the block during backward), so it holds what it needs by
// value, never by reference to the forward's locals.
//
// Tensors besides x that gradients flow back into (T5: the position bias made from a
// parameter, and in the decoder the encoder's output) are not bound in but named as
// `reads`: the block is then run(x, reads), and a recomputation runs it on detached
// copies of them whose gradients it hands back, instead of reaching into the graph that
// made them. A plain callable x -> y converts, with no reads.
struct BlockForward {
  using Run = std::function<at::Tensor(const at::Tensor& x, const std::vector<at::Tensor>& reads)>;
  Run run;
  std::vector<at::Tensor> reads;

  BlockForward() = default;
  BlockForward(std::vector<at::Tensor> read, Run body) : run(std::move(body)), reads(std::move(read)) {}
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, BlockForward> &&
                                                    std::is_invocable_r_v<at::Tensor, F, const at::Tensor&>>>
  /* implicit */ BlockForward(F body)
      : run([body = std::move(body)](const at::Tensor& x, const std::vector<at::Tensor>&) { return body(x); }) {}

  at::Tensor operator()(const at::Tensor& x) const { return run(x, reads); }
  // The same block reading `others` in place of its reads.
  BlockForward reading(std::vector<at::Tensor> others) const { return BlockForward(std::move(others), run); }
};

// Runs transformer block `index` on x; `block` computes the block itself.
using BlockRunner = std::function<at::Tensor(std::size_t index, const at::Tensor& x, const BlockForward& block)>;

}  // namespace ftrain::model
