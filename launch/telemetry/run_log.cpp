#include "launch/telemetry/run_log.h"

#include <unistd.h>

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "data/durable_file.h"
#include "launch/telemetry/tensorboard.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double>(end - start).count();
}

std::string format_duration(double seconds) {
  const auto total = static_cast<long long>(std::max(0.0, seconds));
  char text[32];
  std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", total / 3600, (total / 60) % 60, total % 60);
  return text;
}

}  // namespace

double seconds_since_process_start() {
  // Field 22 of /proc/self/stat: clock ticks from boot to the process's start.
  std::ifstream stat("/proc/self/stat"), uptime("/proc/uptime");
  std::string line;
  double now = 0;
  if (!std::getline(stat, line) || !(uptime >> now)) return -1;
  std::istringstream fields(line.substr(line.rfind(')') + 2));  // after the command name
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  return now - std::stod(field) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

PhaseMemory::DevicePeak device_peak(dist::Communicator& comm) {
  if (!comm.device().is_cuda()) return {};
  return {[&comm] { return comm.peak_device_bytes(); }, [&comm] { comm.reset_peak_device_bytes(); }};
}

RunLog::RunLog(const Options& options, dist::Communicator& comm) : options_(options), comm_(comm) {
  if (comm_.rank() == 0 && options_.tensorboard)
    tensorboard_ = std::make_unique<TensorBoardWriter>(options_.run_dir / "tensorboard");
  start();
}

RunLog::~RunLog() = default;

void RunLog::write(const json& record) {
  if (comm_.rank() != 0) return;
  // Opened at the first record, after a resume's truncate_after() replaced the file.
  if (!out_.is_open()) out_ = data::AppendFile(options_.run_dir / "metrics.jsonl");
  out_.write(record.dump() + "\n");
  if (tensorboard_) tensorboard_->add_record(record);
}

void RunLog::truncate_after(int64_t step) {
  if (comm_.rank() != 0) return;
  if (out_.is_open()) throw std::logic_error("RunLog::truncate_after: metrics.jsonl is open already");
  const fs::path path = options_.run_dir / "metrics.jsonl";
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    const json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_object() && record.value("step", int64_t{0}) > step) continue;
    kept += line + "\n";
  }
  data::write_file_atomically(path, kept);
}

void RunLog::start() { run_start_ = last_arrival_ = Clock::now(); }

void RunLog::hold(StepRecord record) {
  flush();
  held_ = std::move(record);
}

void RunLog::flush() {
  if (!held_) return;
  StepRecord record = std::move(*held_);
  held_.reset();
  const double* figures = record.figures.values();
  const double loss = figures[0], grad_norm = figures[1];
  const auto now = Clock::now();
  const double step_seconds = seconds_between(std::max(record.start, last_arrival_), now);
  last_arrival_ = now;
  if (!std::isfinite(loss))
    throw std::runtime_error("loss is " + std::to_string(loss) + " at step " + std::to_string(record.step) +
                             " (lower optim.lr or check the data)");
  smoothed_step_seconds_ = record.first ? step_seconds : 0.9 * smoothed_step_seconds_ + 0.1 * step_seconds;
  const double tokens_per_s = record.tokens / step_seconds;
  if (comm_.rank() != 0) return;
  json line = {{"step", record.step},
               {"loss", loss},
               {"lr", record.lr},
               {"grad_norm", grad_norm},
               {"tokens_per_s", tokens_per_s},
               {"tokens_seen", record.tokens_seen},
               {"step_time_s", step_seconds},
               {"comm_bytes", record.comm_bytes},
               {"loss_scale", record.loss_scale},
               {"skipped", !record.stepped},
               {"elapsed_s", seconds_between(run_start_, now)}};
  if (comm_.device().is_cuda()) line["peak_device_bytes"] = comm_.peak_device_bytes();
  write(line);
  if (record.step % options_.log_every == 0 || record.first || record.step == options_.steps) {
    std::printf("step %6lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | eta %s%s\n",
                static_cast<long long>(record.step), static_cast<long long>(options_.steps), loss, record.lr,
                grad_norm, tokens_per_s,
                format_duration(smoothed_step_seconds_ * static_cast<double>(options_.steps - record.step)).c_str(),
                record.stepped ? "" : " | skipped: gradients overflowed the fp16 loss scale");
    std::fflush(stdout);
  }
}

void RunLog::report_held(int64_t step, int64_t parameter_bytes, int64_t gradient_bytes, int64_t optimizer_bytes) {
  const int ranks = comm_.world_size();
  at::Tensor mine = torch::tensor({parameter_bytes, gradient_bytes, optimizer_bytes}, torch::kInt64);
  at::Tensor all = torch::zeros({ranks * 3}, torch::kInt64);
  comm_.world().all_gather(all, mine);
  if (comm_.rank() != 0) return;
  const int64_t* held = all.data_ptr<int64_t>();
  json per_rank = json::array();
  for (int r = 0; r < ranks; ++r)
    per_rank.push_back({{"rank", r}, {"parameter_bytes", held[3 * r]}, {"gradient_bytes", held[3 * r + 1]},
                        {"optimizer_bytes", held[3 * r + 2]}});
  write({{"step", step}, {"memory", per_rank}});
  std::printf("ftrain: rank 0 holds %.1f MiB of parameters, %.1f MiB of gradients, %.1f MiB of optimizer state\n",
              parameter_bytes / 1048576.0, gradient_bytes / 1048576.0, optimizer_bytes / 1048576.0);
}

void RunLog::report_phases(int64_t step, PhaseMemory& phases) {
  phases.close();
  json mine = json::array();
  for (const PhasePeak& peak : phases.peaks())
    mine.push_back({{"rank", comm_.rank()}, {"phase", peak.phase}, {"host_start_bytes", peak.host_start_bytes},
                    {"host_peak_bytes", peak.host_peak_bytes}, {"device_peak_bytes", peak.device_peak_bytes},
                    {"entries", peak.entries}, {"read_bytes", peak.read_bytes},
                    {"per_phase", phases.per_phase()}});
  const std::vector<std::string> all = comm_.world().gather(mine.dump(), 0);
  if (comm_.rank() != 0) return;
  json per_rank = json::array();
  for (const std::string& text : all)
    for (const json& peak : json::parse(text)) per_rank.push_back(peak);
  write({{"step", step}, {"memory_phases", per_rank}});
  std::string line;
  for (const PhasePeak& peak : phases.peaks()) {
    char text[96];
    std::snprintf(text, sizeof(text), "%s%s %.0f", line.empty() ? "" : ", ", peak.phase.c_str(),
                  static_cast<double>(peak.host_peak_bytes) / 1048576.0);
    line += text;
  }
  std::printf("ftrain: rank 0's peak resident MiB by phase: %s%s\n", line.c_str(),
              phases.per_phase() ? "" : " (since the process started: /proc/self/clear_refs refused a reset)");
  std::fflush(stdout);
}

}  // namespace ftrain::launch
