// The arrangement of ranks into tensor-parallel and data-parallel groups.
// Pure arithmetic: no MPI, no tensors, so it is tested on its own.
#pragma once

#include <vector>

namespace ftrain::dist {

// world_size = tp_size * dp_size. Tensor-parallel groups are blocks of contiguous
// ranks (they share a node's fast links when tp_size divides the GPUs per node):
//   rank = dp_rank * tp_size + tp_rank
// e.g. world 8, tp 2: tp groups {0,1} {2,3} {4,5} {6,7}; dp groups {0,2,4,6} {1,3,5,7}.
struct Layout {
  int world_size = 1;
  int tp_size = 1;
  int dp_size = 1;

  // Throws std::invalid_argument naming `dist.tp` when tp < 1 or tp does not divide
  // world_size.
  static Layout make(int world_size, int tp_size);

  int tp_rank(int rank) const;
  int dp_rank(int rank) const;
  int rank_of(int dp_rank, int tp_rank) const;

  // World ranks in the group, ordered by their rank inside it.
  std::vector<int> tp_group(int rank) const;
  std::vector<int> dp_group(int rank) const;
};

}  // namespace ftrain::dist
