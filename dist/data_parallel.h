// Data parallelism behind one interface, so the training loop never asks which kind
// runs. Two implementations:
//   replicated: every rank holds the whole model (its tensor-parallel part), its
//               gradients and its optimizer state; gradients are all-reduced in
//               buckets (dist/grad_reducer.h), during the last backward with overlap.
//   sharded:    ZeRO stages 1-3 (dist/zero.h): optimizer state, then gradients, then
//               parameters split over the data-parallel group.
//
// A step, whatever the kind:
//   model.set_block_runner(data_parallel.block_runner(inner));  // once
//   for each micro-batch: before_forward(); loss = ...; before_backward(last);
//                         loss.backward(); after_backward();
//   finish_gradients(); gradients() for the norm, scale_gradients() to clip;
//   the optimizer updates local_slices(); after_step();
// and an evaluation: per batch before_forward() and a forward under no-grad; then
// after_evaluation().
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dist/comm.h"
#include "dist/zero.h"
#include "model/block_runner.h"

namespace ftrain::dist {

// What this rank's optimizer updates, and what its checkpoint saves, of one parameter:
// the whole parameter (replicated), or a flat range of it (sharded).
struct LocalSlice {
  std::string name;          // the parameter's name
  at::Tensor param;          // the parameter, or a 1-D view of the range
  at::Tensor grad;           // its reduced gradient; undefined: param.grad() at use
  int64_t flat_offset = 0;   // where `param` starts in the flattened parameter
  std::vector<int64_t> shape;  // the whole parameter's (its tensor-parallel part's)
  bool is_matrix = false;    // the parameter has two or more dimensions
};

class DataParallel {
 public:
  virtual ~DataParallel() = default;

  // This rank's part of every parameter. Fixed for the object's life.
  virtual const std::vector<LocalSlice>& local_slices() const = 0;
  // Whether the slices are this rank's own ranges, each value held by one rank of the
  // data-parallel group (sharded), rather than copies every rank holds (replicated).
  virtual bool shards_state() const = 0;
  // Whether the parameters keep their memory between uses. False at ZeRO-3, where a
  // block's weights exist only while it runs, so nothing may cache them.
  virtual bool parameters_resident() const { return true; }

  // The runner to install in the model, running `inner` (e.g. activation
  // checkpointing) inside whatever the kind does around each block.
  virtual model::BlockRunner block_runner(model::BlockRunner inner) { return inner; }
  // Before every forward pass, evaluation batches included (ZeRO-3 frees the embeddings
  // once the first block runs).
  virtual void before_forward() {}
  // `completes_step`: this backward is the step's last micro-batch.
  virtual void before_backward(bool completes_step) { (void)completes_step; }
  virtual void after_backward() {}
  // After the last micro-batch: this rank's slices hold their gradients summed over
  // the data-parallel group.
  virtual void finish_gradients() = 0;
  // The reduced gradients this rank holds (after finish_gradients), with their
  // parameters' names: the whole gradients, or the slices' (see shards_state()).
  virtual std::vector<std::pair<std::string, at::Tensor>> gradients() = 0;
  virtual void scale_gradients(double factor) = 0;
  virtual void scale_gradients(const at::Tensor& factor) = 0;  // a scalar, no host wait
  // After the optimizer updated local_slices(): every rank's parameters whole where the
  // kind keeps them whole, and the gradients zeroed for the next step.
  virtual void after_step() = 0;
  // After an evaluation: frees what before_forward() gathered.
  virtual void after_evaluation() {}
  // After a checkpoint was read into local_slices(): the parameters whole again.
  // Collective.
  virtual void after_load() {}
  // ZeRO-3's vocabulary matrix `name`, sharded by rows (dist/streamed_vocab.h computes
  // the embedding and the head's loss from it), or nullptr where the model reads the
  // parameter itself.
  virtual const ZeroSharding::RowShards* vocabulary_rows(const std::string& name) const {
    (void)name;
    return nullptr;
  }
  // Training is over: frees the memory of the gradients where the kind holds them apart
  // from the parameters (sharded: an export may have it). Nothing may read or
  // accumulate gradients afterwards. No communication.
  virtual void release_gradients() {}
  // Parameter `name`'s whole value (its tensor-parallel part), on every rank.
  // Collective where parameters are sharded; one tensor's memory.
  virtual at::Tensor whole_parameter(const std::string& name) = 0;

  // Bytes this rank has held for parameters and for gradients at most so far, as
  // counted by the implementation's bookkeeping (not measured).
  struct HeldBytes {
    int64_t parameters = 0;
    int64_t gradients = 0;
  };
  virtual HeldBytes peak_held_bytes() const = 0;
};

struct DataParallelOptions {
  int zero = 0;                  // dist.zero: 0 replicated, 1-3 the ZeRO stage
  bool overlap = true;           // dist.overlap
  bool prefetch = true;          // dist.prefetch, ZeRO-3 only
  std::size_t bucket_bytes = 0;  // dist.bucket_mb, replicated only
  std::optional<c10::ScalarType> reduce_dtype;  // train.reduce_dtype; none: the gradients'
};

// Applies data parallelism over `dp` to the model whose parameters (this rank's
// tensor-parallel parts) are `named_params`. Sharded: block_param_names[i] names the
// parameters of transformer block i, each block a unit, input_param_names those only
// the embeddings use, a unit of their own at ZeRO-3, and vocabulary_param_names the
// matrices ZeRO-3 streams by rows (dist/zero.h); `loaded` is a ZeroSharding the model
// was read straight into, if any. No communication.
std::unique_ptr<DataParallel> make_data_parallel(std::vector<std::pair<std::string, at::Tensor>> named_params,
                                                 Group& dp, const DataParallelOptions& options,
                                                 std::vector<std::vector<std::string>> block_param_names,
                                                 std::vector<std::string> input_param_names = {},
                                                 std::vector<std::string> vocabulary_param_names = {},
                                                 std::unique_ptr<ZeroSharding> loaded = nullptr);

}  // namespace ftrain::dist
