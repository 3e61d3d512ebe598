// A parameter's initial values as a function of (seed, name, element): each element's
// value depends on nothing else, so a process that holds a tensor-parallel part or a
// ZeRO-3 shard draws exactly its own elements, and every layout starts from the same
// model. Normal draws use a counter-based generator: the element's global flat index,
// hashed with a key from (seed, name) (splitmix64), gives two 32-bit uniforms, and
// Box-Muller turns them into one normal value. Computed in double on the host, so
// every machine draws alike.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ftrain::model {

// How one parameter starts: a constant, or normal(0, std) with, for an embedding, one
// row left at 0 (the padding token's).
struct ParameterInit {
  enum class Kind { constant, normal };
  Kind kind = Kind::constant;
  double value = 0;       // constant
  double std = 0;         // normal
  int64_t zero_row = -1;  // normal: this row (of a 2-D parameter) is 0; -1 none
};

// The key of parameter `name`'s draws under `seed`.
uint64_t parameter_key(uint64_t seed, const std::string& name);

// One normal(0, 1) value of the sequence `key` names, at `index`.
double counter_normal(uint64_t key, uint64_t index);

// The initial values of a parameter of global shape `shape` at the global flat
// (row-major) indices `flat_indices` (int64, any shape): float32 of that shape.
at::Tensor initial_values_at(const ParameterInit& init, uint64_t key, const std::vector<int64_t>& shape,
                             const at::Tensor& flat_indices);

// Writes the whole parameter's initial values into `value` (its global shape).
void fill_initial_values(const ParameterInit& init, uint64_t key, at::Tensor& value);

}  // namespace ftrain::model
