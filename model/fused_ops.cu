// The kernels of model/fused_ops.cpp. Norms take one block per row: the row is read
// (and the residual written) in a first pass, its statistics summed over the block with
// warp shuffles and shared memory, then the output written in a last pass that reads
// the row again from the cache. Parameter gradients are summed per column over blocks
// of rows into float32 partial sums that the caller adds up. Element-wise kernels use
// grid-stride loops. Arithmetic is float32 whatever the storage type.
#include "model/fused_ops_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ftrain::model::fused::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxRowThreads = 512;   // threads per row of a norm
constexpr int kColumnRows = 8;        // rows a block of the column reductions reads at once
constexpr int kElementThreads = 256;  // threads per block of the element-wise kernels

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

// The sum of v over the block, returned to every thread. blockDim.x is a multiple of 32,
// at most 1024; every thread of the block must call it.
__device__ float block_sum(float v) {
  __shared__ float partial[kWarp];
  __shared__ float total;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / kWarp) ? partial[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  const float sum = total;
  __syncthreads();  // the next call may overwrite partial and total
  return sum;
}

// ---------------------------------------------------------------------------------
// Residual sum and norm

// One block per row. The residual is read back by the thread that wrote it (same
// column loop), so the passes need no barrier between them.
template <typename In, typename Out, bool kRms>
__global__ void add_norm_forward_kernel(const In* x, const In* y, const float* weight, const float* bias, float eps,
                                        int64_t cols, In* residual, Out* normed, float* mean_out, float* rstd_out) {
  const int64_t row = blockIdx.x;
  const In* r = x + row * cols;
  if (y != nullptr) {
    const In* x_row = x + row * cols;
    const In* y_row = y + row * cols;
    In* sum_row = residual + row * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) store(sum_row + c, load(x_row + c) + load(y_row + c));
    r = sum_row;
  }
  const float inv_cols = 1.f / static_cast<float>(cols);
  float sum = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = load(r + c);
    sum += kRms ? v * v : v;
  }
  sum = block_sum(sum);
  float mean = 0.f, variance = sum * inv_cols;  // rms: the mean square
  if (!kRms) {
    // Two passes (mean, then squared deviations) as at::layer_norm, not E[x^2] - mean^2.
    mean = sum * inv_cols;
    float squares = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float d = load(r + c) - mean;
      squares += d * d;
    }
    variance = block_sum(squares) * inv_cols;
  }
  const float rstd = 1.f / sqrtf(variance + eps);
  if (threadIdx.x == 0) {
    rstd_out[row] = rstd;
    if (!kRms) mean_out[row] = mean;
  }
  Out* out = normed + row * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = weight[c] * ((load(r + c) - mean) * rstd);
    if (!kRms && bias != nullptr) v += bias[c];
    store(out + c, v);
  }
}

// d residual = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)) + grad_residual, with
// gh = grad_normed * weight and xhat the normalised row (rms: no mean(gh) term).
template <typename In, typename Out, bool kRms>
__global__ void add_norm_backward_kernel(const Out* grad_normed, const In* grad_residual, const In* residual,
                                         const float* weight, const float* mean, const float* rstd, int64_t cols,
                                         In* grad_input) {
  const int64_t row = blockIdx.x;
  const Out* g = grad_normed + row * cols;
  const In* r = residual + row * cols;
  const float mu = kRms ? 0.f : mean[row], inv = rstd[row];
  const float inv_cols = 1.f / static_cast<float>(cols);
  float sum_gh = 0.f, sum_gh_xhat = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float gh = load(g + c) * weight[c];
    sum_gh += gh;
    sum_gh_xhat += gh * ((load(r + c) - mu) * inv);
  }
  const float mean_gh_xhat = block_sum(sum_gh_xhat) * inv_cols;
  const float mean_gh = kRms ? 0.f : block_sum(sum_gh) * inv_cols;
  In* out = grad_input + row * cols;
  const In* gr = grad_residual != nullptr ? grad_residual + row * cols : nullptr;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float gh = load(g + c) * weight[c];
    const float xhat = (load(r + c) - mu) * inv;
    float d = inv * (gh - mean_gh - xhat * mean_gh_xhat);
    if (gr != nullptr) d += load(gr + c);
    store(out + c, d);
  }
}

// Block (32, kColumnRows): threadIdx.x picks the column (consecutive in a warp, so reads
// coalesce), threadIdx.y and blockIdx.y stride over the rows. Writes one partial sum per
// column and block of rows: (gridDim.y, cols).
template <typename In, typename Out, bool kRms>
__global__ void norm_param_grad_kernel(const Out* grad_normed, const In* residual, const float* mean,
                                       const float* rstd, int64_t rows, int64_t cols, float* weight_partial,
                                       float* bias_partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  float gw = 0.f, gb = 0.f;
  if (c < cols) {
    for (int64_t row = static_cast<int64_t>(blockIdx.y) * kColumnRows + threadIdx.y; row < rows;
         row += static_cast<int64_t>(gridDim.y) * kColumnRows) {
      const float g = load(grad_normed + row * cols + c);
      const float xhat = (load(residual + row * cols + c) - (kRms ? 0.f : mean[row])) * rstd[row];
      gw += g * xhat;
      gb += g;
    }
  }
  __shared__ float weight_sums[kColumnRows][kWarp + 1];
  __shared__ float bias_sums[kColumnRows][kWarp + 1];
  weight_sums[threadIdx.y][threadIdx.x] = gw;
  bias_sums[threadIdx.y][threadIdx.x] = gb;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  for (int i = 1; i < kColumnRows; ++i) {
    gw += weight_sums[i][threadIdx.x];
    gb += bias_sums[i][threadIdx.x];
  }
  weight_partial[blockIdx.y * cols + c] = gw;
  if (bias_partial != nullptr) bias_partial[blockIdx.y * cols + c] = gb;
}

// ---------------------------------------------------------------------------------
// Element-wise

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = load(gate + i);
    store(out + i, g * sigmoid(g) * load(up + i));
  }
}

// d/dg silu(g) = s * (1 + g * (1 - s)), s = sigmoid(g).
template <typename T>
__global__ void swiglu_backward_kernel(const T* grad_out, const T* gate, const T* up, T* grad_gate, T* grad_up,
                                       int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float go = load(grad_out + i), g = load(gate + i), u = load(up + i);
    const float s = sigmoid(g);
    store(grad_gate + i, go * u * s * (1.f + g * (1.f - s)));
    store(grad_up + i, go * g * s);
  }
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;    // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;       // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.3989422804014327f;     // 1 / sqrt(2 pi)

__device__ __forceinline__ float gelu(float z, bool tanh_approximation) {
  if (tanh_approximation) return 0.5f * z * (1.f + tanhf(kSqrt2OverPi * (z + kGeluCubic * z * z * z)));
  return 0.5f * z * (1.f + erff(z * kInvSqrt2));
}

__device__ __forceinline__ float gelu_derivative(float z, bool tanh_approximation) {
  if (tanh_approximation) {
    const float t = tanhf(kSqrt2OverPi * (z + kGeluCubic * z * z * z));
    return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kGeluCubic * z * z);
  }
  return 0.5f * (1.f + erff(z * kInvSqrt2)) + z * kInvSqrt2Pi * expf(-0.5f * z * z);
}

template <typename T>
__global__ void bias_gelu_forward_kernel(const T* x, const float* bias, int64_t cols, int64_t n, bool tanh_approximation,
                                         T* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float z = load(x + i);
    if (bias != nullptr) z += bias[i % cols];
    store(out + i, gelu(z, tanh_approximation));
  }
}

// Without the bias's gradient: element-wise.
template <typename T>
__global__ void gelu_backward_kernel(const T* grad_out, const T* x, const float* bias, int64_t cols, int64_t n,
                                     bool tanh_approximation, T* grad_x) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float z = load(x + i);
    if (bias != nullptr) z += bias[i % cols];
    store(grad_x + i, load(grad_out + i) * gelu_derivative(z, tanh_approximation));
  }
}

// With a bias: the column layout of norm_param_grad_kernel, writing grad_x as it goes
// and the bias's partial sums (gridDim.y, cols) at the end.
template <typename T>
__global__ void bias_gelu_backward_kernel(const T* grad_out, const T* x, const float* bias, int64_t rows, int64_t cols,
                                          bool tanh_approximation, T* grad_x, float* bias_partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  float gb = 0.f;
  if (c < cols) {
    const float b = bias[c];
    for (int64_t row = static_cast<int64_t>(blockIdx.y) * kColumnRows + threadIdx.y; row < rows;
         row += static_cast<int64_t>(gridDim.y) * kColumnRows) {
      const int64_t i = row * cols + c;
      const float d = load(grad_out + i) * gelu_derivative(load(x + i) + b, tanh_approximation);
      store(grad_x + i, d);
      gb += d;
    }
  }
  __shared__ float sums[kColumnRows][kWarp + 1];
  sums[threadIdx.y][threadIdx.x] = gb;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  for (int i = 1; i < kColumnRows; ++i) gb += sums[i][threadIdx.x];
  bias_partial[blockIdx.y * cols + c] = gb;
}

// ---------------------------------------------------------------------------------
// Rotary embeddings

// One thread per pair (x[p], x[p + hs/2]) of one position of one head, over the pairs
// of q and then those of k.
template <typename T>
__global__ void rotary_kernel(RotaryOperand q, RotaryOperand k, int64_t batch, int64_t seq, int64_t head_size,
                              const float* cos, const float* sin, int64_t angle_batches, bool inverse) {
  const int64_t half = head_size / 2;
  const int64_t q_pairs = batch * q.heads * seq * half;
  const int64_t total = q_pairs + batch * k.heads * seq * half;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Field by field rather than through a reference to q or k, which would copy the
    // operands out of parameter space into local memory.
    const bool is_q = i < q_pairs;
    const int64_t heads = is_q ? q.heads : k.heads;
    int64_t rest = is_q ? i : i - q_pairs;
    const int64_t p = rest % half;
    rest /= half;
    const int64_t t = rest % seq;
    rest /= seq;
    const int64_t h = rest % heads;
    const int64_t b = rest / heads;
    const T* in = static_cast<const T*>(is_q ? q.in : k.in) +
                  b * (is_q ? q.in_strides[0] : k.in_strides[0]) + h * (is_q ? q.in_strides[1] : k.in_strides[1]) +
                  t * (is_q ? q.in_strides[2] : k.in_strides[2]);
    T* out = static_cast<T*>(is_q ? q.out : k.out) + b * (is_q ? q.out_strides[0] : k.out_strides[0]) +
             h * (is_q ? q.out_strides[1] : k.out_strides[1]) + t * (is_q ? q.out_strides[2] : k.out_strides[2]);
    const int64_t angle = ((angle_batches == 1 ? 0 : b) * seq + t) * head_size;
    const float c1 = cos[angle + p], c2 = cos[angle + p + half];
    const float s1 = sin[angle + p], s2 = sin[angle + p + half];
    const float x1 = load(in + p), x2 = load(in + p + half);
    if (!inverse) {
      // (x1, x2) * cos + (-x2, x1) * sin
      store(out + p, x1 * c1 - x2 * s1);
      store(out + p + half, x2 * c2 + x1 * s2);
    } else {
      // the transpose: (g1, g2) * cos + (g2, -g1) * (sin2, sin1)
      store(out + p, x1 * c1 + x2 * s2);
      store(out + p + half, x2 * c2 - x1 * s1);
    }
  }
}

// ---------------------------------------------------------------------------------
// Launching

template <typename T>
struct Tag {
  using type = T;
};

// Calls body(Tag<storage type>{}) for a runtime dtype.
template <typename Body>
void with_type(DType type, Body&& body) {
  switch (type) {
    case DType::float32: body(Tag<float>{}); return;
    case DType::bfloat16: body(Tag<__nv_bfloat16>{}); return;
    case DType::float16: body(Tag<__half>{}); return;
  }
  throw std::invalid_argument("ftrain::model::fused::cuda: unknown dtype");
}

// LibTorch's headers need C++20 and CUDA files are compiled as C++17, so this file sees
// no LibTorch: the caller passes the stream (c10's current one), and launch errors are
// thrown here as std::runtime_error rather than by C10_CUDA_KERNEL_LAUNCH_CHECK.
void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess)
    throw std::runtime_error(std::string("ftrain::model::fused::cuda::") + what + ": " + cudaGetErrorString(error));
}

// A multiple of 32 threads, enough for one column each up to kMaxRowThreads.
int row_threads(int64_t cols) {
  const int64_t warps = std::clamp<int64_t>((cols + kWarp - 1) / kWarp, 1, kMaxRowThreads / kWarp);
  return static_cast<int>(warps * kWarp);
}

// Blocks for a grid-stride loop over n elements.
unsigned element_blocks(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kElementThreads - 1) / kElementThreads, 1, int64_t{1} << 16));
}

}  // namespace

void add_norm_forward(bool rms, const void* x, const void* y, DType in_type, const float* weight, const float* bias,
                      float eps, int64_t rows, int64_t cols, void* residual, void* normed, DType out_type, float* mean,
                      float* rstd, void* cuda_stream) {
  if (rows == 0 || cols == 0) return;
  const int threads = row_threads(cols);
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(in_type, [&](auto in_tag) {
    using In = typename decltype(in_tag)::type;
    with_type(out_type, [&](auto out_tag) {
      using Out = typename decltype(out_tag)::type;
      const auto* x_in = static_cast<const In*>(x);
      const auto* y_in = static_cast<const In*>(y);
      auto* sum = static_cast<In*>(residual);
      auto* out = static_cast<Out*>(normed);
      if (rms)
        add_norm_forward_kernel<In, Out, true>
            <<<static_cast<unsigned>(rows), threads, 0, stream>>>(x_in, y_in, weight, bias, eps, cols, sum, out, mean, rstd);
      else
        add_norm_forward_kernel<In, Out, false>
            <<<static_cast<unsigned>(rows), threads, 0, stream>>>(x_in, y_in, weight, bias, eps, cols, sum, out, mean, rstd);
      check_launch("add_norm_forward");
    });
  });
}

void add_norm_backward(bool rms, const void* grad_normed, DType out_type, const void* grad_residual,
                       const void* residual, DType in_type, const float* weight, const float* mean, const float* rstd,
                       int64_t rows, int64_t cols, void* grad_input, void* cuda_stream) {
  if (rows == 0 || cols == 0) return;
  const int threads = row_threads(cols);
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(in_type, [&](auto in_tag) {
    using In = typename decltype(in_tag)::type;
    with_type(out_type, [&](auto out_tag) {
      using Out = typename decltype(out_tag)::type;
      const auto* g = static_cast<const Out*>(grad_normed);
      const auto* gr = static_cast<const In*>(grad_residual);
      const auto* r = static_cast<const In*>(residual);
      auto* out = static_cast<In*>(grad_input);
      if (rms)
        add_norm_backward_kernel<In, Out, true>
            <<<static_cast<unsigned>(rows), threads, 0, stream>>>(g, gr, r, weight, mean, rstd, cols, out);
      else
        add_norm_backward_kernel<In, Out, false>
            <<<static_cast<unsigned>(rows), threads, 0, stream>>>(g, gr, r, weight, mean, rstd, cols, out);
      check_launch("add_norm_backward");
    });
  });
}

int64_t column_blocks(int64_t rows, int64_t cols) {
  // About a thousand blocks in all (several per multiprocessor), and no block without rows.
  constexpr int64_t kTargetBlocks = 1024;
  const int64_t column_groups = std::max<int64_t>(1, (cols + kWarp - 1) / kWarp);
  const int64_t row_groups = std::max<int64_t>(1, (rows + kColumnRows - 1) / kColumnRows);
  return std::clamp<int64_t>((kTargetBlocks + column_groups - 1) / column_groups, 1, std::min<int64_t>(row_groups, 65535));
}

void norm_param_grad(bool rms, const void* grad_normed, DType out_type, const void* residual, DType in_type,
                     const float* mean, const float* rstd, int64_t rows, int64_t cols, int64_t blocks,
                     float* weight_partial, float* bias_partial, void* cuda_stream) {
  if (cols == 0) return;
  const dim3 grid(static_cast<unsigned>((cols + kWarp - 1) / kWarp), static_cast<unsigned>(blocks));
  const dim3 block(kWarp, kColumnRows);
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(in_type, [&](auto in_tag) {
    using In = typename decltype(in_tag)::type;
    with_type(out_type, [&](auto out_tag) {
      using Out = typename decltype(out_tag)::type;
      const auto* g = static_cast<const Out*>(grad_normed);
      const auto* r = static_cast<const In*>(residual);
      if (rms)
        norm_param_grad_kernel<In, Out, true>
            <<<grid, block, 0, stream>>>(g, r, mean, rstd, rows, cols, weight_partial, nullptr);
      else
        norm_param_grad_kernel<In, Out, false>
            <<<grid, block, 0, stream>>>(g, r, mean, rstd, rows, cols, weight_partial, bias_partial);
      check_launch("norm_param_grad");
    });
  });
}

void swiglu_forward(const void* gate, const void* up, void* out, DType type, int64_t n, void* cuda_stream) {
  if (n == 0) return;
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    swiglu_forward_kernel<T><<<element_blocks(n), kElementThreads, 0, stream>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out), n);
    check_launch("swiglu_forward");
  });
}

void swiglu_backward(const void* grad_out, const void* gate, const void* up, void* grad_gate, void* grad_up,
                     DType type, int64_t n, void* cuda_stream) {
  if (n == 0) return;
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    swiglu_backward_kernel<T><<<element_blocks(n), kElementThreads, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(gate), static_cast<const T*>(up),
        static_cast<T*>(grad_gate), static_cast<T*>(grad_up), n);
    check_launch("swiglu_backward");
  });
}

void bias_gelu_forward(const void* x, const float* bias, DType type, int64_t rows, int64_t cols, bool tanh_approximation,
                       void* out, void* cuda_stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bias_gelu_forward_kernel<T><<<element_blocks(n), kElementThreads, 0, stream>>>(
        static_cast<const T*>(x), bias, cols, n, tanh_approximation, static_cast<T*>(out));
    check_launch("bias_gelu_forward");
  });
}

void bias_gelu_backward(const void* grad_out, const void* x, const float* bias, DType type, int64_t rows, int64_t cols,
                        bool tanh_approximation, void* grad_x, int64_t blocks, float* bias_partial, void* cuda_stream) {
  if (cols == 0) return;
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (bias_partial == nullptr) {
      const int64_t n = rows * cols;
      if (n == 0) return;
      gelu_backward_kernel<T><<<element_blocks(n), kElementThreads, 0, stream>>>(
          static_cast<const T*>(grad_out), static_cast<const T*>(x), bias, cols, n, tanh_approximation,
          static_cast<T*>(grad_x));
    } else {
      const dim3 grid(static_cast<unsigned>((cols + kWarp - 1) / kWarp), static_cast<unsigned>(blocks));
      bias_gelu_backward_kernel<T><<<grid, dim3(kWarp, kColumnRows), 0, stream>>>(
          static_cast<const T*>(grad_out), static_cast<const T*>(x), bias, rows, cols, tanh_approximation,
          static_cast<T*>(grad_x), bias_partial);
    }
    check_launch("bias_gelu_backward");
  });
}

void rotary(const RotaryOperand& q, const RotaryOperand& k, DType type, int64_t batch, int64_t seq, int64_t head_size,
            const float* cos, const float* sin, int64_t angle_batches, bool inverse, void* cuda_stream) {
  const int64_t pairs = batch * (q.heads + k.heads) * seq * (head_size / 2);
  if (pairs == 0) return;
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  with_type(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rotary_kernel<T><<<element_blocks(pairs), kElementThreads, 0, stream>>>(q, k, batch, seq, head_size, cos, sin,
                                                                            angle_batches, inverse);
    check_launch("rotary");
  });
}

}  // namespace ftrain::model::fused::cuda
