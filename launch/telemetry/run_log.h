// What a run reports as it goes: metrics.jsonl (one record per step, per validation and
// per memory report), the same figures as TensorBoard scalars (run.tensorboard), and
// the log lines on rank 0's standard output. Every rank keeps one; only rank 0 writes.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "data/durable_file.h"
#include "dist/comm.h"
#include "launch/device_readback.h"
#include "launch/telemetry/memory.h"

namespace ftrain::launch {

class TensorBoardWriter;

// One step's figures, whose loss and gradient norm may still be on their way from the
// device.
struct StepRecord {
  int64_t step = 0;
  std::chrono::steady_clock::time_point start;
  DeviceReadback figures;  // loss, gradient norm
  double lr = 0, loss_scale = 1, comm_bytes = 0;
  bool stepped = true;
  int64_t tokens = 0, tokens_seen = 0;
  bool first = false;  // the first step of this run
};

class RunLog {
 public:
  struct Options {
    std::filesystem::path run_dir;
    bool tensorboard = false;  // run.tensorboard
    int64_t steps = 0;         // train.steps
    int64_t log_every = 1;     // train.log_every
  };
  // `comm`'s rank 0 opens metrics.jsonl for appending.
  RunLog(const Options& options, dist::Communicator& comm);
  ~RunLog();

  // Appends a record (rank 0; elsewhere nothing).
  void write(const nlohmann::json& record);
  // Drops the records of steps after `step` (a resumed run does them again), so that
  // metrics.jsonl keeps one record per step. Rank 0.
  void truncate_after(int64_t step);

  // The clock of step times starts now.
  void start();
  // Holds `record` until flush(), so the host need not wait for the device mid-step;
  // a record already held is flushed first.
  void hold(StepRecord record);
  // Writes the record held, if any: waits for its figures (for its step's work on the
  // device, not later steps'), throws on a non-finite loss (every rank), and logs. Its
  // step time runs from its start, or from the previous record's arrival if later, to
  // its own arrival: on a GPU that runs ahead of the host, the device's time per step.
  void flush();

  // What this rank holds of parameters, gradients and optimizer state by the
  // bookkeeping of its data parallelism (not measured), one record with every rank's.
  // Collective.
  void report_held(int64_t step, int64_t parameter_bytes, int64_t gradient_bytes, int64_t optimizer_bytes);
  // Every rank's measured peak memory in each phase so far (`phases` closed first), as
  // one record: the resident set, the device allocator's peak, and the bytes read.
  // Collective.
  void report_phases(int64_t step, PhaseMemory& phases);

 private:
  Options options_;
  dist::Communicator& comm_;
  data::AppendFile out_;  // rank 0
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::optional<StepRecord> held_;
  std::chrono::steady_clock::time_point run_start_, last_arrival_;
  double smoothed_step_seconds_ = 0;
};

// The device allocator's peak for PhaseMemory; none without a CUDA device.
PhaseMemory::DevicePeak device_peak(dist::Communicator& comm);

// Wall seconds since the kernel started this process, so start-up counts loading the
// shared libraries too; -1 when /proc does not say.
double seconds_since_process_start();

}  // namespace ftrain::launch
