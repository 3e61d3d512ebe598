// final/: the fine-tuned model in Hugging Face's format with its tokenizer files, a
// complete model directory `transformers` loads.
#pragma once

#include <cstdint>
#include <filesystem>

#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "dist/tensor_parallel.h"
#include "launch/options.h"

namespace ftrain::launch {

class Task;

// Writes `task`'s model, as trained with `data_parallel` over the layout `plan` split,
// to run.dir/final with the tokenizer files of model.path. Collective.
//
// A split or sharded model is streamed: rank 0 writes the file tensor by tensor and
// names each parameter it needs next; every rank joins that one parameter's gather
// (its ZeRO shards over the data-parallel group, its tensor-parallel parts over the
// tensor-parallel group). So no rank holds more than one whole tensor beyond its
// shards. A model whole on every rank is written by rank 0 as it is.
void export_final(const Config& config, Task& task, dist::DataParallel& data_parallel,
                  const dist::TensorParallelPlan& plan, dist::Communicator& comm, int64_t weights_step);

}  // namespace ftrain::launch
