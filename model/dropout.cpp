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

// out[j] = keep(first + j) ? in[j] * scale : 0 for j < n, any range.
template <typename T>
void apply_run(const T* in, T* out, uint64_t first, int64_t n, MaskKey key, float scale) {
  for (int64_t j = 0; j < n;) {
    // Stay inside one 2^32 block so the loop's counter is 32-bit.
    const uint64_t block_end = ((first + j) >> 32 << 32) + (uint64_t{1} << 32);
    const int64_t run = std::min<int64_t>(n - j, static_cast<int64_t>(block_end - (first + j)));
    apply(in + j, out + j, first + j, run, key, scale);
    j += run;
  }
}

// x's shape as (outer, n, inner) around the part's dimension, after checking the part.
struct PartShape {
  int64_t outer = 1, n = 1, inner = 1;
};

PartShape part_shape(at::IntArrayRef shape, const SliceOf& part, const char* function) {
  const auto dims = static_cast<int64_t>(shape.size());
  if (part.dim < 0 || part.dim >= dims || part.offset < 0 || part.offset + shape[part.dim] > part.whole)
    throw std::invalid_argument(std::string(function) + ": entries [" + std::to_string(part.offset) + ", " +
                                std::to_string(part.offset + (part.dim >= 0 && part.dim < dims ? shape[part.dim] : 0)) +
                                ") along dimension " + std::to_string(part.dim) + " of " + std::to_string(part.whole) +
                                " do not fit a tensor of shape " + c10::str(shape));
  PartShape out;
  for (int64_t d = 0; d < part.dim; ++d) out.outer *= shape[d];
  out.n = shape[part.dim];
  for (int64_t d = part.dim + 1; d < dims; ++d) out.inner *= shape[d];
  return out;
}

// The global index of each element of the part, as a tensor of its shape on `device`:
// element (a, j, k) of (outer, n, inner) is element (a, offset + j, k) of the whole.
at::Tensor global_indices(at::IntArrayRef shape, const SliceOf& part, const c10::Device& device) {
  const PartShape s = part_shape(shape, part, "hashed_dropout");
  const auto options = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor rows = at::arange(s.outer, options).mul_(part.whole).view({s.outer, 1, 1}) +
                          at::arange(part.offset, part.offset + s.n, options).view({1, s.n, 1});
  return (rows * s.inner + at::arange(s.inner, options).view({1, 1, s.inner})).view(shape);
}

// The 32-bit hash of uint32 values held in int64 tensors. Products are taken on 16-bit
// halves of the constant so nothing leaves the int64 range.
at::Tensor mix32(at::Tensor x) {
  constexpr int64_t kLow32 = 0xffffffffLL;
  auto times = [](const at::Tensor& v, int64_t c) {
    const at::Tensor low = v * (c & 0xffff);
    const at::Tensor high = (v * (c >> 16)).bitwise_and_(0xffff).bitwise_left_shift_(16);
    return (low + high).bitwise_and_(kLow32);
  };
  x = x.bitwise_xor(x.bitwise_right_shift(16));
  x = times(x, 0x7feb352dLL);
  x = x.bitwise_xor(x.bitwise_right_shift(15));
  x = times(x, 0x846ca68bLL);
  return x.bitwise_xor(x.bitwise_right_shift(16));
}

// The keep mask of a part as booleans, from tensor operations: the hash of the kernel
// below, element by element, on any device.
at::Tensor keep_by_tensor_ops(at::IntArrayRef shape, const SliceOf& part, MaskKey key, const c10::Device& device) {
  const at::Tensor index = global_indices(shape, part, device);
  const at::Tensor low = index.bitwise_and(0xffffffffLL), high = index.bitwise_right_shift(32);
  const at::Tensor b = mix32(high).bitwise_xor_(static_cast<int64_t>(key.b));
  const at::Tensor h = mix32(mix32(low.bitwise_xor(static_cast<int64_t>(key.a))).bitwise_xor_(b));
  return h.bitwise_right_shift(8) < static_cast<int64_t>(key.threshold);
}

// `x` masked and scaled by the mask of (seed, p), or by the part `part` of the whole
// tensor's mask.
at::Tensor masked(const at::Tensor& x, double p, uint64_t seed, const std::optional<SliceOf>& part) {
  const MaskKey key = MaskKey::of(seed, p);
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  if (!x.is_cpu()) {
    const SliceOf where = part.value_or(SliceOf{.dim = 0, .offset = 0, .whole = x.size(0)});  // the whole tensor
    return x * keep_by_tensor_ops(x.sizes(), where, key, x.device()).to(x.scalar_type()) * scale;
  }
  at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "ftrain_dropout", [&] {
    const scalar_t* source = in.const_data_ptr<scalar_t>();
    scalar_t* target = out.mutable_data_ptr<scalar_t>();
    if (!part) {
      at::parallel_for(0, in.numel(), 32768, [&](int64_t begin, int64_t end) {
        apply_run(source + begin, target + begin, static_cast<uint64_t>(begin), end - begin, key, scale);
      });
      return;
    }
    // Row (a, j) of (outer, n, inner) is a run of inner elements whose global indices
    // start at ((a whole + offset + j) inner).
    const PartShape s = part_shape(in.sizes(), *part, "hashed_dropout");
    at::parallel_for(0, s.outer * s.n, std::max<int64_t>(1, 32768 / std::max<int64_t>(s.inner, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t row = begin; row < end; ++row) {
                         const int64_t a = row / s.n, j = row % s.n;
                         const auto first = static_cast<uint64_t>((a * part->whole + part->offset + j) * s.inner);
                         apply_run(source + row * s.inner, target + row * s.inner, first, s.inner, key, scale);
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
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double p, int64_t seed,
                            const std::optional<SliceOf>& part) {
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    if (part) ctx->saved_data["part"] = std::vector<int64_t>{part->dim, part->offset, part->whole};
    return masked(x, p, static_cast<uint64_t>(seed), part);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const double p = ctx->saved_data["p"].toDouble();
    const auto seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    std::optional<SliceOf> part;
    if (ctx->saved_data.count("part")) {
      const std::vector<int64_t> where = ctx->saved_data["part"].toIntVector();
      part = SliceOf{.dim = where[0], .offset = where[1], .whole = where[2]};
    }
    return {masked(grads[0], p, seed, part), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor hashed_dropout(const at::Tensor& x, double p, bool training) {
  return hashed_dropout(x, p, training, std::nullopt);
}

at::Tensor hashed_dropout(const at::Tensor& x, double p, bool training, const std::optional<SliceOf>& part) {
  if (!(p >= 0.0 && p < 1.0)) throw std::invalid_argument("hashed_dropout: p must be in [0, 1), got " + std::to_string(p));
  if (part) part_shape(x.sizes(), *part, "hashed_dropout");
  if (!training || p == 0.0) return x;
  if (!x.is_floating_point() || (!x.is_cpu() && !part)) return torch::dropout(x, p, training);
  return HashDropout::apply(x, p, static_cast<int64_t>(draw_seed()), part);
}

at::Tensor dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& mask, double dropout_p, bool is_causal,
                                 std::optional<double> scale, const std::optional<SliceOf>& heads) {
  if (dropout_p == 0.0 || (!q.is_cpu() && !heads))
    return at::scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, scale);
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
  // (..., nh, T_q, T_k): the heads are the part's dimension of the probabilities as of q.
  return at::matmul(hashed_dropout(torch::softmax(scores, -1), dropout_p, true, heads), v);
}

at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed) {
  return masked(torch::ones(shape, torch::kFloat32), p, seed, std::nullopt).mul_(1.0 - p).round_();
}

at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed, const SliceOf& part,
                                    bool tensor_ops) {
  if (tensor_ops) return keep_by_tensor_ops(shape, part, MaskKey::of(seed, p), c10::kCPU).to(torch::kFloat32);
  return masked(torch::ones(shape, torch::kFloat32), p, seed, part).mul_(1.0 - p).round_();
}

}  // namespace ftrain::model
