// CUDA kernels of model/fused_cross_entropy.cpp, on raw device pointers so that only
// this header's callers, not the kernels, see LibTorch. Row-major (rows, cols) logits,
// of which the first `valid` columns are real vocabulary rows held here (the rest is
// alignment or tensor-parallel padding); column c is vocabulary id start + c.
#pragma once

#include <cstdint>

namespace ftrain::model::cuda {

enum class LogitType { float32, bfloat16, float16 };

// Per row, over the valid columns: the maximum logit, the sum of exp(logit - maximum),
// and the target's logit when this shard holds the target (0 otherwise). One pass.
void cross_entropy_row_stats(const void* logits, LogitType type, int64_t rows, int64_t cols, int64_t valid,
                             const int64_t* targets, int64_t start, float* row_max, float* row_sum,
                             float* target_logit, void* stream);

// In place: logits[r][c] <- row_scale[r] * (exp(logit - row_max[r]) / row_sum[r] - [c is the target]),
// 0 in padding columns. row_max and row_sum are the whole vocabulary's.
void cross_entropy_logit_grad(void* logits, LogitType type, int64_t rows, int64_t cols, int64_t valid,
                              const int64_t* targets, int64_t start, const float* row_max, const float* row_sum,
                              const float* row_scale, void* stream);

}  // namespace ftrain::model::cuda
