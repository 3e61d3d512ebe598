// Which part of each checkpointed tensor a rank writes. Every tensor is stored once,
// in its global shape, as rectangular pieces spread over the ranks' files; every
// element is written by exactly one rank, and no rank needs another's data.
//
// A rank holds, of one global tensor:
//   - its tensor-parallel part (dist::TensorParallelPlan: along one dimension, the
//     global indices `index`, -1 for padding), or the whole tensor;
//   - all of that part, or (ZeRO) a flat range of it.
// Ranks holding the same values (tensor-parallel copies, data-parallel replicas) share
// the writing: each writes one of `writers` consecutive flat chunks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ftrain::launch {

struct HeldTensor {
  std::string name;                   // "model/<param>", "optim/exp_avg/<param>", ...
  at::Tensor values;                  // contiguous; the part (part_shape), or a flat range of it
  std::vector<int64_t> global_shape;  // 1 or 2 dimensions
  std::vector<int64_t> part_shape;    // this rank's tensor-parallel part (= global_shape when whole)
  int64_t flat_offset = 0;            // values are the part's flat elements [flat_offset, + numel)
  int64_t split_dim = -1;             // the dimension tensor parallelism split; -1: whole
  at::Tensor index;                   // (part_shape[split_dim]) int64 global indices, -1 padding
  int writers = 1;                    // ranks holding these same values
  int writer = 0;                     // which of them this rank is

  // A tensor every one of `writers` ranks holds whole, unsplit.
  static HeldTensor whole(std::string name, const at::Tensor& values, int writers = 1, int writer = 0);
};

// One rectangular block of a global tensor: global coordinates and its host values.
struct Piece {
  std::vector<int64_t> offset;  // where the block starts in the global tensor
  std::vector<int64_t> shape;   // its extent; data has this shape
  at::Tensor data;              // contiguous CPU values, the tensor's dtype: a copy, or a view (see below)
};

// Whether pieces_to_write copies the blocks: always (a save in the background, which
// the next step must not change under it), or only where no contiguous host view of
// them exists (a save written before training goes on: on the CPU a rank's shard is
// then written from where it lies, and the save holds no second copy of the state).
enum class PieceCopies { always, where_needed };

// The blocks this rank writes of `held`, on the host. Empty blocks and padding are left
// out. Throws std::invalid_argument naming the tensor for shapes the format cannot take
// (0 or more than 2 dimensions, an index of the wrong length).
std::vector<Piece> pieces_to_write(const HeldTensor& held, PieceCopies copies = PieceCopies::always);

}  // namespace ftrain::launch
