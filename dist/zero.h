// ZeRO-style sharding of optimizer state (stage 1) and gradients (stage 2) over the
// data-parallel group.
//
// Every parameter becomes a view into one flat buffer, and its gradient a view into a
// second one, so a whole model is reduced and gathered with single collectives. The
// flat space is padded to a multiple of the data-parallel size and cut into equal
// contiguous shards; rank d owns shard d. The optimizer updates only the parts of
// parameters inside its shard (`local_slices`), then the updated shards are
// all-gathered so every rank again holds the full parameters.
//
//   stage 1: optimizer state sharded; gradients reduce-scattered into this rank's part
//            of the full gradient buffer
//   stage 2: the reduced gradients of the shard live in a shard-sized buffer of their
//            own (today the full buffer still receives backward's accumulation; freeing
//            it bucket by bucket during backward is the next step)
//
// Per step and rank, both send 2 x psi x (N-1)/N elements (psi = parameters, N = dp):
// a reduce-scatter of the gradients plus the all-gather of the updated parameters,
// the same volume as a plain data-parallel all-reduce.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dist/comm.h"

namespace ftrain::dist {

struct ZeroOptions {
  int stage = 0;  // dist.zero: 0 = replicated optimizer; 1 = sharded state; 2 = + sharded gradients
  void validate() const;
};

class ZeroSharding {
 public:
  // The part of one parameter that lies in this rank's shard, as flat views.
  struct Slice {
    std::string name;        // the parameter's name
    at::Tensor param;        // 1-D view into the parameter
    at::Tensor grad;         // 1-D view into the reduced gradient of the same elements
    int64_t param_offset;    // where the slice starts inside the flattened parameter
    int64_t param_numel;     // elements of the whole parameter
    bool is_matrix;          // the parameter has two or more dimensions
    size_t param_index;      // position in the constructor's parameter list
  };

  // Moves every parameter (and its gradient) into flat buffers; all parameters must
  // share dtype and device. Collective over `dp` only in the later calls.
  ZeroSharding(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp, int stage);

  const std::vector<Slice>& local_slices() const { return slices_; }
  int stage() const { return stage_; }

  // After backward: reduce-scatters the gradients so this rank's shard holds the sum
  // over ranks.
  void reduce_gradients();

  // Sum of squares of the reduced gradients over the whole model (collective).
  double gradient_square_sum();
  void scale_gradients(double factor);  // this rank's shard

  // After the optimizer updated the local slices: every rank gets every shard.
  void gather_parameters();

  void zero_grad();

  // Bytes this rank holds for parameters and for gradients (flat buffers, and the
  // shard's reduced gradients at stage 2).
  std::int64_t parameter_bytes() const { return flat_params_.nbytes(); }
  std::int64_t gradient_bytes() const {
    return flat_grads_.nbytes() + (shard_grads_.defined() ? shard_grads_.nbytes() : 0);
  }

  // Full flat tensor (every rank's shard concatenated) of per-slice state tensors
  // laid out like local_slices(), cut back into one tensor per parameter with its
  // global shape. Collective. Used to save sharded optimizer state in global form.
  std::vector<std::pair<std::string, at::Tensor>> gather_state(const std::vector<at::Tensor>& slice_states);

  // This rank's slices of a state given per parameter in global form (inverse of
  // gather_state).
  std::vector<at::Tensor> shard_state(const std::vector<at::Tensor>& full_states) const;

 private:
  Group& dp_;
  int stage_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<int64_t> offsets_;  // of each parameter in the flat space
  int64_t shard_numel_ = 0;
  at::Tensor flat_params_;  // (shard_numel * dp)
  at::Tensor flat_grads_;   // (shard_numel * dp)
  at::Tensor shard_grads_;  // stage 2: (shard_numel), the reduced gradients of this shard
  std::vector<Slice> slices_;
};

}  // namespace ftrain::dist
