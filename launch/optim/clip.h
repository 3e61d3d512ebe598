// Gradient clipping by the global norm: the norm of the whole model's gradient, each
// value counted once however the model is split, and every gradient scaled so that the
// norm is at most the limit.
#pragma once

#include <ATen/core/Tensor.h>

#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "dist/tensor_parallel.h"

namespace ftrain::launch {

// The global gradient norm, from the gradients `data_parallel` holds: its shards summed
// over the data-parallel group when it shards them, and over the tensor-parallel group
// with the parameters every tensor-parallel rank holds whole weighted by 1/tp (`plan`).
// With limit > 0, scales the gradients by limit / (norm + 1e-6) where the norm is
// finite and above the limit. Returns the norm before clipping: a float64 scalar on
// the device, and the factor is computed there, so the host does not wait.
// Collective over both groups.
at::Tensor clip_gradient_norm(dist::DataParallel& data_parallel, const dist::TensorParallelPlan& plan,
                              dist::Communicator& comm, double limit);

}  // namespace ftrain::launch
