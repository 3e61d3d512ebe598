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

namespace ftrain::model {

// Block i itself: (B, T, C) -> (B, T, C), with whatever else the block needs (rotary
// angles, masks) bound in. It may be called again after the model's forward returned
// (checkpointing recomputes the block during backward), so it holds what it needs by
// value, never by reference to the forward's locals.
using BlockForward = std::function<at::Tensor(const at::Tensor& x)>;

// Runs transformer block `index` on x; `block` computes the block itself.
using BlockRunner = std::function<at::Tensor(std::size_t index, const at::Tensor& x, const BlockForward& block)>;

}  // namespace ftrain::model
