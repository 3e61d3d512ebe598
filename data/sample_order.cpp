#include "data/sample_order.h"

#include <bit>
#include <stdexcept>
#include <string>

namespace ftrain::data {

namespace {

// SplitMix64's finaliser: a fast bijective mixer whose output bits each depend on all
// input bits, which is all a Feistel round function needs.
uint64_t mix(uint64_t value) {
  value += 0x9e3779b97f4a7c15ULL;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  return value ^ (value >> 31);
}

}  // namespace

SampleOrder::SampleOrder(int64_t num_samples, uint64_t seed, bool shuffle)
    : num_samples_(num_samples), seed_(seed), shuffle_(shuffle) {
  if (num_samples < 1 || num_samples > (int64_t{1} << 62)) {
    throw std::invalid_argument("SampleOrder: number of samples must be in [1, 2^62], got " +
                                std::to_string(num_samples));
  }
  // A balanced Feistel network needs an even number of bits; the smallest even width
  // covering N gives a domain below 4N, so cycle walking takes under 4 steps on average.
  const int bits = std::bit_width(static_cast<uint64_t>(num_samples - 1));
  half_bits_ = bits <= 2 ? 1 : (bits + 1) / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
}

SampleOrder::RoundKeys SampleOrder::keys_for(int64_t epoch) const {
  RoundKeys keys{};
  const uint64_t epoch_key = mix(mix(seed_) ^ mix(static_cast<uint64_t>(epoch) * 0xd1b54a32d192ed03ULL));
  for (int round = 0; round < kRounds; ++round) keys[round] = mix(epoch_key + static_cast<uint64_t>(round));
  return keys;
}

uint64_t SampleOrder::encrypt(uint64_t value, const RoundKeys& keys) const {
  uint64_t left = value >> half_bits_;
  uint64_t right = value & half_mask_;
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t next_right = left ^ (mix(right ^ keys[round]) & half_mask_);
    left = right;
    right = next_right;
  }
  return (left << half_bits_) | right;
}

uint64_t SampleOrder::decrypt(uint64_t value, const RoundKeys& keys) const {
  uint64_t left = value >> half_bits_;
  uint64_t right = value & half_mask_;
  for (int round = kRounds - 1; round >= 0; --round) {
    const uint64_t previous_left = right ^ (mix(left ^ keys[round]) & half_mask_);
    right = left;
    left = previous_left;
  }
  return (left << half_bits_) | right;
}

int64_t SampleOrder::permute(int64_t index, int64_t epoch) const {
  if (index < 0 || index >= num_samples_) {
    throw std::out_of_range("SampleOrder::permute: index " + std::to_string(index) + " outside [0, " +
                            std::to_string(num_samples_) + ")");
  }
  if (!shuffle_) return index;
  const RoundKeys keys = keys_for(epoch);
  // Cycle walking: the network permutes a power-of-two domain; following the cycle of
  // `index` until it re-enters [0, N) restricts that permutation to a permutation of [0, N).
  uint64_t value = static_cast<uint64_t>(index);
  do {
    value = encrypt(value, keys);
  } while (value >= static_cast<uint64_t>(num_samples_));
  return static_cast<int64_t>(value);
}

int64_t SampleOrder::position_of(int64_t sample, int64_t epoch) const {
  if (sample < 0 || sample >= num_samples_) {
    throw std::out_of_range("SampleOrder::position_of: sample " + std::to_string(sample) + " outside [0, " +
                            std::to_string(num_samples_) + ")");
  }
  if (!shuffle_) return sample;
  const RoundKeys keys = keys_for(epoch);
  uint64_t value = static_cast<uint64_t>(sample);
  do {
    value = decrypt(value, keys);
  } while (value >= static_cast<uint64_t>(num_samples_));
  return static_cast<int64_t>(value);
}

int64_t SampleOrder::at(int64_t global_position) const {
  if (global_position < 0) {
    throw std::out_of_range("SampleOrder::at: position " + std::to_string(global_position) + " is negative");
  }
  return permute(global_position % num_samples_, global_position / num_samples_);
}

}  // namespace ftrain::data
