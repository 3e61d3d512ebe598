// SampleOrder: each epoch is a permutation of [0, N) for every N (checked exhaustively
// against a sorted range), the inverse is exact, seeds and epochs give different orders,
// and the order looks random by simple statistics.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "data/sample_order.h"

BOOST_AUTO_TEST_SUITE(test_sample_order)

using ftrain::data::SampleOrder;

namespace {

std::vector<int64_t> epoch_of(const SampleOrder& order, int64_t epoch) {
  std::vector<int64_t> samples(static_cast<std::size_t>(order.num_samples()));
  for (int64_t i = 0; i < order.num_samples(); ++i) samples[i] = order.permute(i, epoch);
  return samples;
}

bool is_permutation_of_range(std::vector<int64_t> values) {
  std::sort(values.begin(), values.end());
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (values[i] != static_cast<int64_t>(i)) return false;
  }
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_epoch_is_a_bijection_with_an_exact_inverse) {
  // 1 and 2 (degenerate), primes, powers of two and their neighbours.
  const std::vector<int64_t> sizes = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 97,
                                      127, 128, 129, 1000, 1023, 1024, 1025, 4099, 65536, 65537};
  for (const int64_t n : sizes) {
    for (const uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{987654321}}) {
      const SampleOrder order(n, seed);
      for (const int64_t epoch : {int64_t{0}, int64_t{1}, int64_t{17}}) {
        BOOST_TEST_CONTEXT("N " << n << " seed " << seed << " epoch " << epoch) {
          const std::vector<int64_t> samples = epoch_of(order, epoch);
          BOOST_TEST(is_permutation_of_range(samples));
          bool inverse_exact = true;
          for (int64_t i = 0; i < n; ++i) inverse_exact &= order.position_of(samples[i], epoch) == i;
          BOOST_TEST(inverse_exact);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(global_positions_run_through_epochs) {
  const int64_t n = 37;
  const SampleOrder order(n, 5);
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    std::vector<int64_t> visited;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t sample = order.at(epoch * n + i);
      BOOST_TEST(sample == order.permute(i, epoch));
      visited.push_back(sample);
    }
    BOOST_TEST(is_permutation_of_range(visited));  // each epoch visits every sample once
  }
  BOOST_CHECK_THROW(order.at(-1), std::out_of_range);
  BOOST_CHECK_THROW(order.permute(n, 0), std::out_of_range);
  BOOST_CHECK_THROW(SampleOrder(0, 1), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(deterministic_and_different_across_seeds_and_epochs) {
  const int64_t n = 1000;
  const SampleOrder a(n, 42), b(n, 42), c(n, 43);
  BOOST_TEST(epoch_of(a, 0) == epoch_of(b, 0));
  BOOST_TEST(epoch_of(a, 3) == epoch_of(b, 3));

  auto agreement = [](const std::vector<int64_t>& x, const std::vector<int64_t>& y) {
    int64_t same = 0;
    for (std::size_t i = 0; i < x.size(); ++i) same += x[i] == y[i];
    return same;
  };
  // Two independent random permutations agree on about one position; allow a margin.
  BOOST_TEST(agreement(epoch_of(a, 0), epoch_of(c, 0)) < 10);
  BOOST_TEST(agreement(epoch_of(a, 0), epoch_of(a, 1)) < 10);
  BOOST_TEST(agreement(epoch_of(a, 1), epoch_of(a, 2)) < 10);
  // Small N too, where a weak construction would repeat itself.
  const SampleOrder small_a(5, 1), small_b(5, 2);
  int differing = 0;
  for (int64_t epoch = 0; epoch < 20; ++epoch) differing += epoch_of(small_a, epoch) != epoch_of(small_b, epoch);
  BOOST_TEST(differing >= 15);
}

BOOST_AUTO_TEST_CASE(shuffle_off_is_the_identity) {
  const SampleOrder order(10, 99, /*shuffle=*/false);
  for (int64_t position = 0; position < 35; ++position) BOOST_TEST(order.at(position) == position % 10);
}

BOOST_AUTO_TEST_CASE(order_looks_random) {
  const int64_t n = 20000;
  const SampleOrder order(n, 2024);
  const std::vector<int64_t> samples = epoch_of(order, 0);
  int64_t fixed_points = 0;
  for (int64_t i = 0; i < n; ++i) fixed_points += samples[i] == i;
  BOOST_TEST(fixed_points < 10);  // expected 1 for a random permutation

  // Correlation of position and sample: about N(0, 1/N) for a random permutation.
  const double mean = (n - 1) / 2.0;
  double covariance = 0, variance = 0;
  for (int64_t i = 0; i < n; ++i) {
    covariance += (i - mean) * (samples[i] - mean);
    variance += (i - mean) * (i - mean);
  }
  BOOST_TEST(std::abs(covariance / variance) < 0.03);

  // Neighbouring positions should not map to neighbouring samples.
  int64_t adjacent = 0;
  for (int64_t i = 1; i < n; ++i) adjacent += std::abs(samples[i] - samples[i - 1]) == 1;
  BOOST_TEST(adjacent < 20);  // expected about 2

  // The first tenth of an epoch is spread over the whole range: chi-square over 10 bins.
  std::vector<int64_t> bins(10, 0);
  for (int64_t i = 0; i < n / 10; ++i) ++bins[samples[i] * 10 / n];
  double chi_square = 0;
  const double expected = n / 100.0;
  for (const int64_t count : bins) chi_square += (count - expected) * (count - expected) / expected;
  BOOST_TEST(chi_square < 30.0);  // 9 degrees of freedom; p < 0.001 beyond 27.9
}

BOOST_AUTO_TEST_CASE(huge_sample_counts_need_no_memory) {
  // 2^40 samples: an explicit permutation would need 8 TiB.
  const int64_t n = int64_t{1} << 40;
  const SampleOrder order(n, 7);
  for (const int64_t position : {int64_t{0}, int64_t{1}, n - 1, n, 5 * n + 12345}) {
    const int64_t sample = order.at(position);
    BOOST_TEST(sample >= 0);
    BOOST_TEST(sample < n);
    BOOST_TEST(order.position_of(sample, position / n) == position % n);
  }
  const SampleOrder largest(int64_t{1} << 62, 7);
  const int64_t sample = largest.at(123);
  BOOST_TEST(largest.position_of(sample, 0) == 123);
}

BOOST_AUTO_TEST_SUITE_END()  // test_sample_order
