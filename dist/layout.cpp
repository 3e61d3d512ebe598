#include "dist/layout.h"

#include <stdexcept>
#include <string>

namespace ftrain::dist {

namespace {

void check_rank(const Layout& layout, int rank, const char* what) {
  if (rank < 0 || rank >= layout.world_size) {
    throw std::out_of_range(std::string("Layout::") + what + ": rank " + std::to_string(rank) +
                            " is outside the world of " + std::to_string(layout.world_size) +
                            " ranks");
  }
}

}  // namespace

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
  return Layout{world_size, tp_size, world_size / tp_size};
}

int Layout::tp_rank(int rank) const {
  check_rank(*this, rank, "tp_rank");
  return rank % tp_size;
}

int Layout::dp_rank(int rank) const {
  check_rank(*this, rank, "dp_rank");
  return rank / tp_size;
}

int Layout::rank_of(int dp, int tp) const {
  if (dp < 0 || dp >= dp_size || tp < 0 || tp >= tp_size) {
    throw std::out_of_range("Layout::rank_of: (dp_rank " + std::to_string(dp) + ", tp_rank " +
                            std::to_string(tp) + ") is outside dp " + std::to_string(dp_size) +
                            " x tp " + std::to_string(tp_size));
  }
  return dp * tp_size + tp;
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

}  // namespace ftrain::dist
