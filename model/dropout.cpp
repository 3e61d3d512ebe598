#include "model/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

namespace ftrain::model {
namespace {

// A 32-bit integer hash with full avalanche (multiply-xorshift rounds), cheap enough to
// vectorise: SIMD units multiply 32-bit lanes.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// What decides the mask: element i is kept when
//   mix32(mix32(lo32(i) ^ a) ^ b ^ high) >> 8  <  threshold,   high = mix32(hi32(i)),
// with (a, b) from the seed and threshold = (1 - p) 2^24.
struct MaskKey {
  uint32_t a = 0, b = 0, threshold = 0;

  static MaskKey of(uint64_t seed, double p) {
    MaskKey key;
    key.a = mix32(static_cast<uint32_t>(seed) ^ 0x9e3779b9U);
    key.b = mix32(static_cast<uint32_t>(seed >> 32) ^ 0x85ebca6bU);
    key.threshold = static_cast<uint32_t>(std::llround((1.0 - p) * 16777216.0));
    return key;
  }
};

// out[j] = keep(first + j) ? in[j] * scale : 0 for j < n, where first + n does not cross
// a multiple of 2^32 (hi32 is the same for the whole range). Compiled for AVX2 too and
// chosen at run time, so the hash runs on 8 lanes where the processor has them.
template <typename T>
[[gnu::always_inline]] inline void apply_range(const T* __restrict in, T* __restrict out, uint64_t first, int64_t n,
                                               MaskKey key, float scale) {
  const uint32_t b = key.b ^ mix32(static_cast<uint32_t>(first >> 32));
  const auto low = static_cast<uint32_t>(first);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t h = mix32(mix32((low + static_cast<uint32_t>(j)) ^ key.a) ^ b);
    const float factor = (h >> 8) < key.threshold ? scale : 0.0f;  // branch-free, so the loop vectorises
    out[j] = static_cast<T>(static_cast<float>(in[j]) * factor);
  }
}

__attribute__((target_clones("avx2", "default"))) void apply_range_float(const float* __restrict in,
                                                                          float* __restrict out, uint64_t first,
                                                                          int64_t n, MaskKey key, float scale) {
  apply_range(in, out, first, n, key, scale);
}

// float32 takes the version compiled for AVX2 as well; other dtypes the plain one.
void apply(const float* in, float* out, uint64_t first, int64_t n, MaskKey key, float scale) {
  apply_range_float(in, out, first, n, key, scale);
}
template <typename T>
void apply(const T* in, T* out, uint64_t first, int64_t n, MaskKey key, float scale) {
  apply_range(in, out, first, n, key, scale);
}

// `x` masked and scaled by the mask of (seed, p); x contiguous on the CPU.
at::Tensor masked(const at::Tensor& x, double p, uint64_t seed) {
  at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  const MaskKey key = MaskKey::of(seed, p);
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "ftrain_dropout", [&] {
    const scalar_t* source = in.const_data_ptr<scalar_t>();
    scalar_t* target = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, in.numel(), 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        // Stay inside one 2^32 block so the loop's counter is 32-bit.
        const int64_t block_end = std::min<int64_t>(end, ((i >> 32) + 1) << 32);
        apply(source + i, target + i, static_cast<uint64_t>(i), block_end - i, key, scale);
        i = block_end;
      }
    });
  });
  return out;
}

uint64_t draw_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get<at::CPUGeneratorImpl>()->random64();
}

// The gradient of masking is the same masking: the backward pass computes the mask
// again from the seed instead of keeping it.
class HashDropout : public torch::autograd::Function<HashDropout> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double p, int64_t seed) {
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    return masked(x, p, static_cast<uint64_t>(seed));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const double p = ctx->saved_data["p"].toDouble();
    const auto seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    return {masked(grads[0], p, seed), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor hashed_dropout(const at::Tensor& x, double p, bool training) {
  if (!(p >= 0.0 && p < 1.0)) throw std::invalid_argument("hashed_dropout: p must be in [0, 1), got " + std::to_string(p));
  if (!training || p == 0.0) return x;
  if (!x.is_cpu() || !x.is_floating_point()) return torch::dropout(x, p, training);
  return HashDropout::apply(x, p, static_cast<int64_t>(draw_seed()));
}

at::Tensor dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& mask, double dropout_p, bool is_causal,
                                 std::optional<double> scale) {
  if (dropout_p == 0.0 || !q.is_cpu()) return at::scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, scale);
  const double factor = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).mul_(factor);  // (..., T_q, T_k)
  const auto minus_inf = -std::numeric_limits<double>::infinity();
  if (is_causal) {
    const int64_t rows = scores.size(-2), columns = scores.size(-1);
    scores.masked_fill_(torch::ones({rows, columns}, scores.options().dtype(torch::kBool)).triu_(1), minus_inf);
  }
  if (mask) {
    if (mask->scalar_type() == torch::kBool) scores.masked_fill_(mask->logical_not(), minus_inf);
    else scores.add_(*mask);
  }
  return at::matmul(hashed_dropout(torch::softmax(scores, -1), dropout_p, true), v);
}

at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed) {
  return masked(torch::ones(shape, torch::kFloat32), p, seed).mul_(1.0 - p).round_();
}

}  // namespace ftrain::model
