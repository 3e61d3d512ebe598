#include "model/parameter_init.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <numbers>
#include <stdexcept>

namespace ftrain::model {
namespace {

uint64_t mix(uint64_t z) {  // splitmix64's finaliser
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// values[k] = init at element begin + k, for the elements of a contiguous range.
template <typename IndexAt>
void draw(const ParameterInit& init, uint64_t key, int64_t columns, int64_t count, float* values, IndexAt index_at) {
  at::parallel_for(0, count, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t index = index_at(k);
      if (init.kind == ParameterInit::Kind::constant) {
        values[k] = static_cast<float>(init.value);
      } else if (init.zero_row >= 0 && columns > 0 && index / columns == init.zero_row) {
        values[k] = 0.0f;
      } else {
        values[k] = static_cast<float>(init.std * counter_normal(key, static_cast<uint64_t>(index)));
      }
    }
  });
}

int64_t columns_of(const std::vector<int64_t>& shape) { return shape.size() == 2 ? shape[1] : 0; }

}  // namespace

uint64_t parameter_key(uint64_t seed, const std::string& name) {
  // FNV-1a over the name, mixed with the seed.
  uint64_t hash = 1469598103934665603ULL;
  for (const unsigned char c : name) hash = (hash ^ c) * 1099511628211ULL;
  return mix(hash ^ mix(seed));
}

double counter_normal(uint64_t key, uint64_t index) {
  const uint64_t bits = mix(key ^ mix(index));
  const double u1 = (static_cast<double>(bits >> 32) + 0.5) / 4294967296.0;         // (0, 1)
  const double u2 = static_cast<double>(bits & 0xFFFFFFFFULL) / 4294967296.0;        // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

at::Tensor initial_values_at(const ParameterInit& init, uint64_t key, const std::vector<int64_t>& shape,
                             const at::Tensor& flat_indices) {
  if (flat_indices.scalar_type() != at::kLong || !flat_indices.device().is_cpu())
    throw std::invalid_argument("initial_values_at: indices must be int64 on the CPU");
  const at::Tensor indices = flat_indices.contiguous();
  at::Tensor values = at::empty(indices.sizes(), at::kFloat);
  const int64_t* index = indices.data_ptr<int64_t>();
  draw(init, key, columns_of(shape), indices.numel(), values.data_ptr<float>(), [index](int64_t k) { return index[k]; });
  return values;
}

void fill_initial_values(const ParameterInit& init, uint64_t key, at::Tensor& value) {
  torch::NoGradGuard no_grad;
  at::Tensor values = at::empty(value.sizes(), at::kFloat);
  draw(init, key, columns_of(value.sizes().vec()), values.numel(), values.data_ptr<float>(),
       [](int64_t k) { return k; });
  value.copy_(values);
}

}  // namespace ftrain::model
