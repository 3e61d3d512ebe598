// Two row-wise passes over a chunk of logits, as llm.c's fused classifier: statistics
// (online maximum and sum of exponentials), then the logits' gradient written over the
// logits. Each reads the chunk once; arithmetic is float32 whatever the storage type.
#include "model/fused_cross_entropy_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <stdexcept>
#include <string>

namespace ftrain::model::cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }

// (max, sum of exp(x - max)) of two parts -> of their union.
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  const float top = fmaxf(m, m2);
  if (top == -INFINITY) return;  // both parts empty
  s = s * __expf(m - top) + s2 * __expf(m2 - top);
  m = top;
}

template <typename T>
__global__ void row_stats_kernel(const T* logits, int64_t cols, int64_t valid, const int64_t* targets, int64_t start,
                                 float* row_max, float* row_sum, float* target_logit) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * cols;
  float m = -INFINITY, s = 0.f;
  for (int64_t c = threadIdx.x; c < valid; c += blockDim.x) {
    const float v = load(x + c);
    if (v > m) {
      s = s * __expf(m - v) + 1.f;
      m = v;
    } else {
      s += __expf(v - m);
    }
  }
  // Warp, then block.
  for (int offset = 16; offset > 0; offset /= 2)
    combine(m, s, __shfl_xor_sync(0xffffffff, m, offset), __shfl_xor_sync(0xffffffff, s, offset));
  __shared__ float warp_m[kThreads / 32], warp_s[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_m[warp] = m, warp_s[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    m = lane < warps ? warp_m[lane] : -INFINITY;
    s = lane < warps ? warp_s[lane] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2)
      combine(m, s, __shfl_xor_sync(0xffffffff, m, offset), __shfl_xor_sync(0xffffffff, s, offset));
    if (lane == 0) {
      row_max[row] = m;
      row_sum[row] = s;
      const int64_t local = targets[row] - start;
      target_logit[row] = (local >= 0 && local < valid) ? load(x + local) : 0.f;
    }
  }
}

template <typename T>
__global__ void logit_grad_kernel(T* logits, int64_t cols, int64_t valid, const int64_t* targets, int64_t start,
                                  const float* row_max, const float* row_sum, const float* row_scale) {
  const int64_t row = blockIdx.x;
  T* x = logits + row * cols;
  const float m = row_max[row], scale = row_scale[row] / row_sum[row], shift = row_scale[row];
  const int64_t target = targets[row] - start;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float g = 0.f;
    if (c < valid) {
      g = __expf(load(x + c) - m) * scale;
      if (c == target) g -= shift;
    }
    store(x + c, g);
  }
}

void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
}

}  // namespace

void cross_entropy_row_stats(const void* logits, LogitType type, int64_t rows, int64_t cols, int64_t valid,
                             const int64_t* targets, int64_t start, float* row_max, float* row_sum,
                             float* target_logit, void* stream) {
  if (rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case LogitType::float32:
      row_stats_kernel<<<rows, kThreads, 0, s>>>(static_cast<const float*>(logits), cols, valid, targets, start,
                                                  row_max, row_sum, target_logit);
      break;
    case LogitType::bfloat16:
      row_stats_kernel<<<rows, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(logits), cols, valid, targets,
                                                  start, row_max, row_sum, target_logit);
      break;
    case LogitType::float16:
      row_stats_kernel<<<rows, kThreads, 0, s>>>(static_cast<const __half*>(logits), cols, valid, targets, start,
                                                  row_max, row_sum, target_logit);
      break;
  }
  check_launch("cross_entropy_row_stats");
}

void cross_entropy_logit_grad(void* logits, LogitType type, int64_t rows, int64_t cols, int64_t valid,
                              const int64_t* targets, int64_t start, const float* row_max, const float* row_sum,
                              const float* row_scale, void* stream) {
  if (rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case LogitType::float32:
      logit_grad_kernel<<<rows, kThreads, 0, s>>>(static_cast<float*>(logits), cols, valid, targets, start, row_max,
                                                   row_sum, row_scale);
      break;
    case LogitType::bfloat16:
      logit_grad_kernel<<<rows, kThreads, 0, s>>>(static_cast<__nv_bfloat16*>(logits), cols, valid, targets, start,
                                                   row_max, row_sum, row_scale);
      break;
    case LogitType::float16:
      logit_grad_kernel<<<rows, kThreads, 0, s>>>(static_cast<__half*>(logits), cols, valid, targets, start, row_max,
                                                   row_sum, row_scale);
      break;
  }
  check_launch("cross_entropy_logit_grad");
}

}  // namespace ftrain::model::cuda
