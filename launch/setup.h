// What a run trains, built on every rank: the task's model loaded, split and made the
// same on every rank that holds the same part, data parallelism applied to it, the
// optimizer over what data parallelism gives this rank, and the training data.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "data/streaming_loader.h"
#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "dist/tensor_parallel.h"
#include "launch/optim/adamw.h"
#include "launch/options.h"
#include "launch/task.h"

namespace ftrain::launch {

struct RunParts {
  std::unique_ptr<Task> task;
  dist::TensorParallelPlan plan;
  std::unique_ptr<dist::DataParallel> data_parallel;
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<data::StreamingLoader> loader;
};

// Collective. In order: run.dir prepared (a fresh run refuses a directory holding
// checkpoints); the model loaded (each rank reads its tensor-parallel part, or its ZeRO-3
// shards) and broadcast where it was read whole; tensor parallelism; data parallelism;
// the optimizer; activation checkpointing; the data, checked against the model's
// vocabulary. `loaded(description)` is called once the model is loaded, before the rest.
RunParts build_run(const Config& config, dist::Communicator& comm,
                   const std::function<void(const std::string& next)>& loaded);

// The intra-op CPU threads of each rank: run.threads when set; otherwise OMP_NUM_THREADS
// (its first level) as PyTorch and ftrain.sbatch read it; otherwise the node's cores over
// its `local_ranks`. A malformed OMP_NUM_THREADS is an error naming it.
int intra_op_threads(int run_threads, int local_ranks);

// The resolved configuration and a summary of the run (layout, model, batch), on
// standard output.
void print_banner(const Config& config, const dist::Communicator& comm, Task& task,
                  const dist::TensorParallelPlan& plan, const data::StreamingLoader& loader);

}  // namespace ftrain::launch
