#pragma once
// The order in which training visits the rows of a split: a seeded permutation of
// [0, N) per epoch, evaluated one position at a time in O(1) memory, so that the order
// of a split of any size costs nothing to hold and any position can be computed
// directly (which is what lets the loader resume, or change its data-parallel layout,
// from a single integer).

#include <array>
#include <cstdint>

namespace ftrain::data {

class SampleOrder {
 public:
  // Throws std::invalid_argument unless 1 <= num_samples <= 2^62. shuffle=false gives the
  // identity order in every epoch.
  SampleOrder(int64_t num_samples, uint64_t seed, bool shuffle = true);

  // Sample (row) at a position of the endless order: epoch = position / N, and each
  // epoch is a different permutation of [0, N). position must be >= 0.
  int64_t at(int64_t global_position) const;

  // The permutation of one epoch, and its inverse: permute(position_of(s, e), e) == s.
  int64_t permute(int64_t index, int64_t epoch) const;
  int64_t position_of(int64_t sample, int64_t epoch) const;

  int64_t num_samples() const { return num_samples_; }
  uint64_t seed() const { return seed_; }
  bool shuffle() const { return shuffle_; }

 private:
  static constexpr int kRounds = 6;
  using RoundKeys = std::array<uint64_t, kRounds>;

  RoundKeys keys_for(int64_t epoch) const;
  uint64_t encrypt(uint64_t value, const RoundKeys& keys) const;
  uint64_t decrypt(uint64_t value, const RoundKeys& keys) const;

  int64_t num_samples_;
  uint64_t seed_;
  bool shuffle_;
  int half_bits_ = 1;  // the Feistel network permutes [0, 2^(2 * half_bits))
  uint64_t half_mask_ = 1;
};

}  // namespace ftrain::data
