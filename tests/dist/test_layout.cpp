// Layout arithmetic for every world size up to 16 and every tensor-parallel size.
#define BOOST_TEST_MODULE test_layout
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "dist/layout.h"

using ftrain::dist::Layout;

namespace {

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

bool names_key(const std::invalid_argument& error) {
  return std::string(error.what()).find("dist.tp") != std::string::npos;
}

// Every rank in exactly one group of the given kind, groups of the given size, and each
// rank's group the same from the point of view of each member.
void check_partition(const Layout& layout, bool tp) {
  std::vector<int> seen(layout.world_size, 0);
  std::set<std::vector<int>> groups;
  for (int rank = 0; rank < layout.world_size; ++rank) {
    const std::vector<int> group = tp ? layout.tp_group(rank) : layout.dp_group(rank);
    BOOST_TEST(int(group.size()) == (tp ? layout.tp_size : layout.dp_size));
    BOOST_TEST(std::count(group.begin(), group.end(), rank) == 1);
    for (int member : group) {
      BOOST_TEST((tp ? layout.tp_group(member) : layout.dp_group(member)) == group);
    }
    groups.insert(group);
  }
  for (const auto& group : groups)
    for (int member : group) seen.at(member) += 1;
  BOOST_TEST(int(groups.size()) == (tp ? layout.dp_size : layout.tp_size));
  for (int count : seen) BOOST_TEST(count == 1);
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_valid_layout_up_to_16_ranks) {
  for (int world = 1; world <= 16; ++world) {
    for (int tp : divisors(world)) {
      BOOST_TEST_CONTEXT("world " << world << ", tp " << tp) {
        const Layout layout = Layout::make(world, tp);
        BOOST_TEST(layout.world_size == world);
        BOOST_TEST(layout.tp_size == tp);
        BOOST_TEST(layout.dp_size * tp == world);

        for (int rank = 0; rank < world; ++rank) {
          const int tp_rank = layout.tp_rank(rank);
          const int dp_rank = layout.dp_rank(rank);
          BOOST_TEST(rank == dp_rank * tp + tp_rank);
          BOOST_TEST((0 <= tp_rank && tp_rank < tp));
          BOOST_TEST((0 <= dp_rank && dp_rank < layout.dp_size));
          BOOST_TEST(layout.rank_of(dp_rank, tp_rank) == rank);

          // tp groups are contiguous blocks; dp groups stride by tp.
          const std::vector<int> tp_group = layout.tp_group(rank);
          const std::vector<int> dp_group = layout.dp_group(rank);
          for (int i = 0; i < int(tp_group.size()); ++i) BOOST_TEST(tp_group[i] == dp_rank * tp + i);
          for (int i = 0; i < int(dp_group.size()); ++i) BOOST_TEST(dp_group[i] == i * tp + tp_rank);
          // A member's position in its group is its rank in that group.
          BOOST_TEST(tp_group.at(tp_rank) == rank);
          BOOST_TEST(dp_group.at(dp_rank) == rank);

          std::vector<int> both;
          std::set_intersection(tp_group.begin(), tp_group.end(), dp_group.begin(),
                                dp_group.end(), std::back_inserter(both));
          BOOST_TEST(both == std::vector<int>{rank});
        }
        check_partition(layout, /*tp=*/true);
        check_partition(layout, /*tp=*/false);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(tp_that_does_not_divide_the_world_names_dist_tp) {
  int invalid = 0;
  for (int world = 1; world <= 16; ++world) {
    for (int tp = 1; tp <= 17; ++tp) {
      if (world % tp == 0) continue;
      ++invalid;
      BOOST_TEST_CONTEXT("world " << world << ", tp " << tp) {
        BOOST_CHECK_EXCEPTION(Layout::make(world, tp), std::invalid_argument, names_key);
      }
    }
  }
  BOOST_TEST(invalid > 0);
}

BOOST_AUTO_TEST_CASE(tp_below_one_names_dist_tp) {
  BOOST_CHECK_EXCEPTION(Layout::make(4, 0), std::invalid_argument, names_key);
  BOOST_CHECK_EXCEPTION(Layout::make(4, -2), std::invalid_argument, names_key);
  BOOST_CHECK_THROW(Layout::make(0, 1), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(ranks_outside_the_world_are_refused) {
  const Layout layout = Layout::make(8, 2);
  BOOST_CHECK_THROW(layout.tp_rank(8), std::out_of_range);
  BOOST_CHECK_THROW(layout.dp_rank(-1), std::out_of_range);
  BOOST_CHECK_THROW(layout.tp_group(9), std::out_of_range);
  BOOST_CHECK_THROW(layout.rank_of(4, 0), std::out_of_range);
  BOOST_CHECK_THROW(layout.rank_of(0, 2), std::out_of_range);
}

// Block placement (srun's default, mpirun --map-by slot): the same groups as make().
BOOST_AUTO_TEST_CASE(by_node_with_block_placement_is_the_plain_layout) {
  for (int nodes : {1, 2, 4}) {
    for (int per_node : {1, 2, 4}) {
      std::vector<int> node_of_rank;
      for (int node = 0; node < nodes; ++node) node_of_rank.insert(node_of_rank.end(), per_node, node);
      const int world = nodes * per_node;
      for (int tp : divisors(world)) {
        BOOST_TEST_CONTEXT(nodes << " nodes of " << per_node << ", tp " << tp) {
          const Layout placed = Layout::by_node(node_of_rank, tp);
          const Layout plain = Layout::make(world, tp);
          for (int rank = 0; rank < world; ++rank) {
            BOOST_TEST(placed.tp_group(rank) == plain.tp_group(rank));
            BOOST_TEST(placed.dp_group(rank) == plain.dp_group(rank));
          }
          if (per_node % tp == 0) BOOST_TEST(placed.straddling_tp_groups() == 0);
        }
      }
    }
  }
}

// srun --distribution=cyclic on 2 nodes: ranks 0 2 on the first, 1 3 on the second.
// Rank arithmetic would pair 0 with 1 across the nodes; by_node pairs the node's own.
BOOST_AUTO_TEST_CASE(by_node_keeps_tp_groups_inside_nodes_under_cyclic_placement) {
  const Layout layout = Layout::by_node({7, 3, 7, 3}, 2);
  BOOST_TEST(layout.tp_group(0) == (std::vector<int>{0, 2}));
  BOOST_TEST(layout.tp_group(3) == (std::vector<int>{1, 3}));
  BOOST_TEST(layout.dp_group(0) == (std::vector<int>{0, 1}));
  BOOST_TEST(layout.dp_group(2) == (std::vector<int>{2, 3}));
  BOOST_TEST(layout.tp_rank(0) == 0);
  BOOST_TEST(layout.dp_rank(0) == 0);
  BOOST_TEST(layout.straddling_tp_groups() == 0);
  check_partition(layout, /*tp=*/true);
  check_partition(layout, /*tp=*/false);
  BOOST_TEST(Layout::make(4, 2).tp_group(0) == (std::vector<int>{0, 1}));
}

// Every placement of 12 ranks on 3 nodes of 4 (a fixed pseudo-random sample): the
// tensor-parallel groups never cross a node, rank 0 stays first, and the groups
// partition the world.
BOOST_AUTO_TEST_CASE(by_node_never_straddles_when_tp_divides_each_node) {
  unsigned state = 12345;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int> node_of_rank;
    for (int node = 0; node < 3; ++node) node_of_rank.insert(node_of_rank.end(), 4, node * 10);
    for (int i = 11; i > 0; --i) {
      state = state * 1103515245u + 12345u;
      std::swap(node_of_rank[i], node_of_rank[(state >> 16) % (i + 1)]);
    }
    for (int tp : {1, 2, 4}) {
      BOOST_TEST_CONTEXT("trial " << trial << ", tp " << tp) {
        const Layout layout = Layout::by_node(node_of_rank, tp);
        BOOST_TEST(layout.straddling_tp_groups() == 0);
        for (int rank = 0; rank < 12; ++rank)
          for (int member : layout.tp_group(rank)) BOOST_TEST(node_of_rank[member] == node_of_rank[rank]);
        BOOST_TEST(layout.rank_of(0, 0) == 0);
        check_partition(layout, /*tp=*/true);
        check_partition(layout, /*tp=*/false);
      }
    }
  }
}

// 3 ranks on one node and 1 on another cannot make two node-local pairs: the second
// pair crosses, and the layout says so.
BOOST_AUTO_TEST_CASE(by_node_counts_groups_it_cannot_keep_inside_a_node) {
  const Layout layout = Layout::by_node({0, 0, 1, 0}, 2);
  BOOST_TEST(layout.tp_group(0) == (std::vector<int>{0, 1}));
  BOOST_TEST(layout.tp_group(2) == (std::vector<int>{3, 2}));
  BOOST_TEST(layout.straddling_tp_groups() == 1);
  BOOST_CHECK_EXCEPTION(Layout::by_node({0, 0, 1}, 2), std::invalid_argument, names_key);
}
