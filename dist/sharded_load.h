// Reading a pretrained causal language model straight into ZeRO-3 shards (Rajbhandari
// et al., 2020): no rank ever holds the whole model, or the whole tensor-parallel part
// of it, on the host or on the device.
//
//   1. The model is built without values (model::SkipInitialisation: the weights'
//      memory is allocated and never written, so never committed).
//   2. With more than one tensor-parallel rank it is split first, as
//      load_tensor_parallel splits it.
//   3. Its parameters move into a ZeroSharding over the data-parallel group, built
//      Unfilled: the never-written storage is dropped, and only this rank's shards
//      exist, on the training device.
//   4. The safetensors files are read memory-mapped; each parameter's tensor-parallel
//      part of its stored tensor is handed to ZeroSharding::fill_shard, which copies the
//      rank's flat range out of it. A contiguous stored tensor is read only there; a
//      transposed one (GPT-2's Conv1D weights) is copied whole first, one tensor at a
//      time. Each tensor's mapped pages are given back once it is read.
//
// A randomly initialised model (options.pretrained false) takes the same path, each
// rank computing only the elements of its shard (ParameterSlices::take_at): an
// element's value depends on (seed, name, its index in the whole tensor) alone
// (model/parameter_init.h), so every layout starts from the same model and no
// broadcast follows.
//
// A classifier, pretrained or random, takes the same path: body and head are registered, split and
// sharded before anything is read; the body's tensors, the stored head (or a new one,
// drawn whole: labels x hidden) and a missing BERT pooler (drawn whole: hidden x
// hidden) go to the shards. A randomly initialised classifier's body is drawn element
// by element into the shards like a language model's.
#pragma once

#include <c10/core/Device.h>

#include <memory>

#include "dist/comm.h"
#include "dist/tensor_parallel.h"
#include "dist/zero.h"
#include "model/causal_lm.h"
#include "model/classifier.h"
#include "model/seq2seq_lm.h"

namespace ftrain::dist {

struct ShardedCausalLm {
  model::CausalLm model;                // its parameters are views of `zero`'s buffers
  std::unique_ptr<ZeroSharding> zero;   // stage 3, every shard filled
};

// Loads options.path (or draws a fresh model from its config.json) as above, into fp32
// shards on `device`. `plan` receives the tensor-parallel split (tp_size 1 when there is none).
// Throws std::runtime_error naming the file when the stored tensors do not match the
// model, std::invalid_argument when comm.tp() cannot split it.
ShardedCausalLm load_zero3(model::CausalLmOptions options, Communicator& comm, c10::Device device,
                           TensorParallelPlan& plan);

struct ShardedClassifier {
  model::Classifier model;              // its parameters are views of `zero`'s buffers
  std::unique_ptr<ZeroSharding> zero;   // stage 3, every shard filled
};

// The same for a classifier, pretrained or randomly initialised.
ShardedClassifier load_zero3(model::ClassifierOptions options, Communicator& comm, c10::Device device,
                             TensorParallelPlan& plan, model::ClassifierLoadReport* report = nullptr);

struct ShardedSeq2SeqLm {
  model::Seq2SeqLm model;               // its parameters are views of `zero`'s buffers
  std::unique_ptr<ZeroSharding> zero;   // stage 3, every shard filled
};

// The same for an encoder-decoder (T5): each encoder and decoder block a unit, the
// shared embedding and an untied head streamed by rows (dist/streamed_vocab.h), the root
// everything else.
ShardedSeq2SeqLm load_zero3(model::Seq2SeqLmOptions options, Communicator& comm, c10::Device device,
                            TensorParallelPlan& plan);

}  // namespace ftrain::dist
