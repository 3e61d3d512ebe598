// A window of training steps traced with the PyTorch (Kineto) profiler: every operator
// on the CPU and, on CUDA, every kernel and copy. Each rank writes the window's trace
// to <run.dir>/profile/rank_NNNNN_steps_A-B.json (open it in Perfetto or chrome://tracing), and
// rank 0 prints where the time went: the CUDA kernels that took the most device time,
// and how much of each step's wall time the GPU was busy (on the CPU: the operators,
// nested ones inside their callers).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace ftrain::launch {

struct ProfilerOptions {
  int64_t first_step = 0;  // 1-based step the window opens at; 0 = never
  int64_t steps = 3;       // steps in the window
  std::string directory;   // where the traces go
  int rank = 0;            // the world rank, which names this rank's trace
  bool cuda = false;       // trace the CUDA kernels too
  void validate() const;
};

class StepProfiler {
 public:
  explicit StepProfiler(ProfilerOptions options);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  // Around each step, with its 1-based number: the window opens before the first step
  // inside it (a resumed run may start past its first) and closes (trace written)
  // after its last.
  void before_step(int64_t step);
  void after_step(int64_t step, double step_seconds);
  // Closes the window if training ended inside it.
  void finish();

  std::string trace_path() const;

 private:
  void close();

  ProfilerOptions options_;
  bool active_ = false;
  int64_t opened_at_ = 0;  // the first step traced
  int64_t traced_steps_ = 0;
  double traced_seconds_ = 0;
  std::chrono::steady_clock::time_point opened_time_;
  std::unique_ptr<struct StepScope> scope_;
};

}  // namespace ftrain::launch
