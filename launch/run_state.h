// A training run's entries in the checkpoint registry (launch/checkpoint/registry.h):
// the model and optimizer tensors, the data position, and what wrote the checkpoint.
// The counters the training loop keeps itself (step, tokens, loss scale, validation)
// it registers itself.
#pragma once

#include <memory>

#include "data/streaming_loader.h"
#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "dist/layout.h"
#include "dist/tensor_parallel.h"
#include "launch/checkpoint/registry.h"
#include "launch/optim/adamw.h"
#include "launch/options.h"

namespace ftrain::launch {

class Task;

// What this rank holds of every parameter and AdamW moment (data parallelism's slices
// of its tensor-parallel part), described against the tensor's global shape, with
// which of the ranks holding the same values writes them, so each value is written
// once. The registry saves them and reads them back without knowing the layout; once
// read, data parallelism makes the parameters whole again where it keeps them whole.

// Registers "model" (model/<parameter>) and "optim" (optim/exp_avg/<parameter>,
// optim/exp_avg_sq/<parameter>; while `optimizer` is set: the moments of the slot for
// each slice, in local_slices() order). No communication.
void register_model_state(StateRegistry& registry, dist::DataParallel& data_parallel,
                          const dist::TensorParallelPlan& plan, const dist::Layout& layout, int rank,
                          const std::unique_ptr<AdamW>& optimizer);

// "optimizer_steps": AdamW's step count. Restored with each slot's own count of
// updates (its bias correction): body parameters were not updated during the first
// `freeze_base_steps` steps, the frozen-body stage.
void register_optimizer_steps(StateRegistry& registry, const std::unique_ptr<AdamW>& optimizer, const Task& task,
                              int64_t freeze_base_steps);

// "data": the loader's position, and the options whose change would change which
// sequences later steps see. Restoring it under other such options throws, naming the
// key: the data order would not continue.
void register_data_state(StateRegistry& registry, data::StreamingLoader& loader, const Config& config);

// "rng", "layout", "model", "config": what wrote the checkpoint, for the record.
void register_run_record(StateRegistry& registry, const Config& config, const dist::Communicator& comm,
                         const Task& task);

}  // namespace ftrain::launch
