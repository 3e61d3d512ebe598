// The arrangement of ranks into tensor-parallel and data-parallel groups.
// Pure arithmetic: no MPI, no tensors, so it is tested on its own.
#pragma once

#include <vector>

namespace ftrain::dist {

// world_size = tp_size * dp_size. The ranks are put in an order, and each tp_size
// consecutive ranks of it form a tensor-parallel group:
//   position = dp_rank * tp_size + tp_rank
// make(): the order is the ranks' own, e.g. world 8, tp 2: tp groups {0,1} {2,3} {4,5}
// {6,7}; dp groups {0,2,4,6} {1,3,5,7}.
// by_node(): the ranks of each node first, so that tensor-parallel groups (the most
// communication) stay inside a node however the launcher placed the ranks; data
// parallelism crosses the nodes.
struct Layout {
  int world_size = 1;
  int tp_size = 1;
  int dp_size = 1;

  // Throws std::invalid_argument naming `dist.tp` when tp < 1 or tp does not divide
  // world_size.
  static Layout make(int world_size, int tp_size);
  // node_of_rank[r]: any number naming rank r's node, equal for ranks on one node. The
  // order: nodes by their lowest rank, inside a node by rank; so rank 0 keeps position
  // 0. Where a node's rank count is not a multiple of tp_size, some tensor-parallel
  // groups cross nodes (straddling_tp_groups() says how many).
  static Layout by_node(const std::vector<int>& node_of_rank, int tp_size);

  int tp_rank(int rank) const;
  int dp_rank(int rank) const;
  int rank_of(int dp_rank, int tp_rank) const;

  // World ranks in the group, ordered by their rank inside it.
  std::vector<int> tp_group(int rank) const;
  std::vector<int> dp_group(int rank) const;

  // Tensor-parallel groups whose ranks are on more than one node (by_node only; 0 for
  // make()).
  int straddling_tp_groups() const;

  // rank_at[position] = the world rank there, position_of its inverse; both empty when
  // the order is the ranks' own.
  std::vector<int> rank_at;
  std::vector<int> position_of;
  std::vector<int> node_of_rank;  // as given to by_node(); empty for make()

 private:
  int position(int rank, const char* what) const;
};

}  // namespace ftrain::dist
