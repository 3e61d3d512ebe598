#include "launch/telemetry/profiler.h"

#include <chrono>

#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace ftrain::launch {

namespace fs = std::filesystem;
namespace kineto = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

void ProfilerOptions::validate() const {
  if (first_step < 0) throw std::invalid_argument("run.profile_from: must be >= 0 (0 = off), got " + std::to_string(first_step));
  if (steps < 1) throw std::invalid_argument("run.profile_steps: must be >= 1, got " + std::to_string(steps));
}

// Marks one step in the trace ("ftrain step 12"), so the window's steps can be told apart.
struct StepScope {
  explicit StepScope(int64_t step) : guard(at::RecordScope::USER_SCOPE) {
    if (guard.isActive()) guard.before("ftrain step " + std::to_string(step));
  }
  at::RecordFunction guard;
};

StepProfiler::StepProfiler(ProfilerOptions options) : options_(std::move(options)) { options_.validate(); }

StepProfiler::~StepProfiler() {
  if (!active_) return;
  scope_.reset();
  try {
    kineto::disableProfiler();
  } catch (...) {
  }
}

std::string StepProfiler::trace_path() const {
  // Named by the steps too: a resumed run's window leaves the earlier part's trace.
  char name[96];
  std::snprintf(name, sizeof(name), "rank_%05d_steps_%lld-%lld.json", options_.rank, static_cast<long long>(opened_at_),
                static_cast<long long>(opened_at_ + traced_steps_ - 1));
  return (fs::path(options_.directory) / name).string();
}

void StepProfiler::before_step(int64_t step) {
  const int64_t end = options_.first_step + options_.steps;  // one past the window
  if (options_.first_step == 0) return;
  if (!active_ && traced_steps_ == 0 && step >= options_.first_step && step < end) {
    // Without a GPU, Kineto logs a failed CUDA device count as an error; it is not one.
    if (!options_.cuda) setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (options_.cuda) activities.insert(ActivityType::CUDA);
    const ProfilerConfig config(ProfilerState::KINETO);
    // On CUDA the host runs ahead of the device: the window's wall time runs from a
    // drained device to a drained device, so it holds exactly the window's steps.
    if (options_.cuda) torch::cuda::synchronize();
    kineto::prepareProfiler(config, activities);
    kineto::enableProfiler(config, activities);
    opened_time_ = std::chrono::steady_clock::now();
    active_ = true;
    opened_at_ = step;
  }
  if (active_) scope_ = std::make_unique<StepScope>(step);
}

void StepProfiler::after_step(int64_t step, double step_seconds) {
  if (!active_) return;
  scope_.reset();
  ++traced_steps_;
  traced_seconds_ += step_seconds;
  if (step + 1 >= options_.first_step + options_.steps) close();
}

void StepProfiler::finish() {
  scope_.reset();
  if (active_) close();
}

void StepProfiler::close() {
  if (options_.cuda) {
    torch::cuda::synchronize();
    traced_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_time_).count();
  }
  std::unique_ptr<kineto::ProfilerResult> result = kineto::disableProfiler();
  active_ = false;
  fs::create_directories(options_.directory);
  result->save(trace_path());
  if (options_.rank != 0) return;

  // Time per name, over the window: device time of kernels and copies on CUDA; on the
  // CPU, operator time with nested operators counted inside their callers too.
  struct Total {
    double ns = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Total> totals;
  double all_ns = 0;
  const c10::DeviceType wanted = options_.cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  for (const kineto::KinetoEvent& event : result->events()) {
    if (event.deviceType() != wanted) continue;
    const std::string name = event.name();
    if (name.rfind("ftrain step", 0) == 0) continue;
    if (!options_.cuda && name.rfind("aten::", 0) != 0) continue;
    Total& total = totals[name];
    total.ns += static_cast<double>(event.durationNs());
    ++total.calls;
    all_ns += static_cast<double>(event.durationNs());
  }
  std::vector<std::pair<std::string, Total>> sorted(totals.begin(), totals.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });

  const double steps = static_cast<double>(std::max<int64_t>(traced_steps_, 1));
  char line[512];
  std::vector<std::string> report;
  std::snprintf(line, sizeof(line), "ftrain: profiled steps %lld-%lld; trace in %s", static_cast<long long>(opened_at_),
                static_cast<long long>(opened_at_ + traced_steps_ - 1), trace_path().c_str());
  report.emplace_back(line);
  const double wall_ms = 1e3 * traced_seconds_ / steps;
  if (options_.cuda) {
    std::snprintf(line, sizeof(line), "ftrain: per step: %.1f ms wall, %.1f ms of CUDA kernels and copies (%.0f%% busy, "
                  "kernels on one stream assumed)", wall_ms, 1e-6 * all_ns / steps,
                  wall_ms > 0 ? 100 * 1e-6 * all_ns / steps / wall_ms : 0.0);
  } else {
    std::snprintf(line, sizeof(line), "ftrain: per step: %.1f ms wall; operators below include the operators they call",
                  wall_ms);
  }
  report.emplace_back(line);
  std::snprintf(line, sizeof(line), "%10s %7s %6s  %s", "ms/step", "calls", "share", options_.cuda ? "kernel" : "operator");
  report.emplace_back(line);
  for (std::size_t i = 0; i < std::min<std::size_t>(sorted.size(), 25); ++i) {
    const auto& [name, total] = sorted[i];
    std::snprintf(line, sizeof(line), "%10.2f %7lld %5.1f%%  %.150s", 1e-6 * total.ns / steps,
                  static_cast<long long>(total.calls / traced_steps_), all_ns > 0 ? 100 * total.ns / all_ns : 0.0,
                  name.c_str());
    report.emplace_back(line);
  }
  for (const std::string& text : report) std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

}  // namespace ftrain::launch
