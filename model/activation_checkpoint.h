// Activation checkpointing of transformer blocks (Chen et al., 2016, "Training Deep
// Nets with Sublinear Memory Cost"): a checkpointed block keeps only its input during
// the forward pass and computes it a second time, with gradients, when the backward
// pass reaches it.
//
// Per block this trades one extra forward for the block's activations: what is kept
// for backward drops from every intermediate of the block (for GPT-2 about
// (B, T, 3C) + (B, nh, T, T) + (B, T, 4C) + ... per block) to its input (B, T, C).
//
// The recomputation sees what the original forward saw: the random number generators
// of the CPU and, for a CUDA input, of its device are set back to their state before
// the forward (so dropout draws the same masks) and the autocast state of the forward
// is restored; afterwards the generators continue from where the forward left them,
// so the random stream of the rest of the step is the same with or without
// checkpointing.
#pragma once

#include "model/block_runner.h"

namespace ftrain::model {

// A runner that checkpoints each block. `inner`, when given, runs inside the
// checkpoint: the checkpointed function is inner(i, x, block), called once under
// no-grad in the forward pass and again in the recomputation. So with ZeRO-3 the
// intended order is zero.block_runner(checkpoint_blocks()): ZeRO outside gathers the
// parameters before the forward and before the block's backward, which is where the
// recomputation runs.
//
// A block's reads (model/block_runner.h: T5's position bias and encoder output) are
// kept with its input; the recomputation runs on detached copies of both and hands
// their gradients back, so the backward never reaches past them into the graph that
// made them.
//
// A block is checkpointed only while gradients are being recorded and its input or one
// of its reads requires grad (the autograd function that recomputes it hangs off their
// graph); otherwise it runs as usual, so gradients are right in every case and
// evaluation under no-grad costs nothing extra.
BlockRunner checkpoint_blocks(BlockRunner inner = {});

}  // namespace ftrain::model
