#include "dist/layout.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <stdexcept>
#include <string>

namespace ftrain::dist {

Layout Layout::make(int world_size, int tp_size) {
  if (world_size < 1) {
    throw std::invalid_argument("Layout: world size must be at least 1 (got " +
                                std::to_string(world_size) + ")");
  }
  if (tp_size < 1) {
    throw std::invalid_argument("dist.tp must be at least 1 (got " + std::to_string(tp_size) +
                                ")");
  }
  if (world_size % tp_size != 0) {
    throw std::invalid_argument("dist.tp = " + std::to_string(tp_size) +
                                " does not divide the world size " + std::to_string(world_size) +
                                " (world = tp x dp); choose a dist.tp that divides the number "
                                "of ranks");
  }
  Layout layout;
  layout.world_size = world_size;
  layout.tp_size = tp_size;
  layout.dp_size = world_size / tp_size;
  return layout;
}

Layout Layout::by_node(const std::vector<int>& node_of_rank, int tp_size) {
  Layout layout = make(static_cast<int>(node_of_rank.size()), tp_size);
  // Each node's first rank decides where the node goes; stable_sort keeps rank order
  // inside a node.
  std::map<int, int> first_rank;
  for (int rank = 0; rank < layout.world_size; ++rank) first_rank.emplace(node_of_rank[rank], rank);
  layout.rank_at.resize(layout.world_size);
  std::iota(layout.rank_at.begin(), layout.rank_at.end(), 0);
  std::stable_sort(layout.rank_at.begin(), layout.rank_at.end(), [&](int a, int b) {
    return first_rank.at(node_of_rank[a]) < first_rank.at(node_of_rank[b]);
  });
  layout.position_of.resize(layout.world_size);
  for (int position = 0; position < layout.world_size; ++position)
    layout.position_of[layout.rank_at[position]] = position;
  layout.node_of_rank = node_of_rank;
  return layout;
}

int Layout::position(int rank, const char* what) const {
  if (rank < 0 || rank >= world_size) {
    throw std::out_of_range(std::string("Layout::") + what + ": rank " + std::to_string(rank) +
                            " is outside the world of " + std::to_string(world_size) + " ranks");
  }
  return position_of.empty() ? rank : position_of[rank];
}

int Layout::tp_rank(int rank) const { return position(rank, "tp_rank") % tp_size; }

int Layout::dp_rank(int rank) const { return position(rank, "dp_rank") / tp_size; }

int Layout::rank_of(int dp, int tp) const {
  if (dp < 0 || dp >= dp_size || tp < 0 || tp >= tp_size) {
    throw std::out_of_range("Layout::rank_of: (dp_rank " + std::to_string(dp) + ", tp_rank " +
                            std::to_string(tp) + ") is outside dp " + std::to_string(dp_size) +
                            " x tp " + std::to_string(tp_size));
  }
  const int at = dp * tp_size + tp;
  return rank_at.empty() ? at : rank_at[at];
}

std::vector<int> Layout::tp_group(int rank) const {
  const int dp = dp_rank(rank);
  std::vector<int> ranks;
  ranks.reserve(tp_size);
  for (int tp = 0; tp < tp_size; ++tp) ranks.push_back(rank_of(dp, tp));
  return ranks;
}

std::vector<int> Layout::dp_group(int rank) const {
  const int tp = tp_rank(rank);
  std::vector<int> ranks;
  ranks.reserve(dp_size);
  for (int dp = 0; dp < dp_size; ++dp) ranks.push_back(rank_of(dp, tp));
  return ranks;
}

int Layout::straddling_tp_groups() const {
  if (node_of_rank.empty()) return 0;
  int straddling = 0;
  for (int dp = 0; dp < dp_size; ++dp) {
    const std::vector<int> group = tp_group(rank_of(dp, 0));
    const int node = node_of_rank[group.front()];
    straddling += std::any_of(group.begin(), group.end(), [&](int r) { return node_of_rank[r] != node; });
  }
  return straddling;
}

}  // namespace ftrain::dist
