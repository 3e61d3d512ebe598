// Saving checkpoints beside training. A save blocks training only while each rank
// copies its pieces to host memory and lays out its file; the bytes are written on a
// background thread, and the checkpoint is committed (launch/checkpoint/store.h) once every
// rank has written and fsynced its file. The next save, and the end of the run, wait
// for the one before.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "launch/checkpoint/store.h"

namespace ftrain::launch {

class CheckpointWriter {
 public:
  // async false: start() also writes, and the save is committed at the next poll().
  CheckpointWriter(CheckpointStore& store, dist::Group& world, bool async);
  // Commits nothing and does not wait: a write in flight is left to finish on its own
  // (an uncommitted checkpoint does not exist, and the next save removes its directory).
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Collective. Finishes the save in flight (poll(true)), then starts saving `held` as
  // checkpoint `step`; `meta` is used on rank 0.
  void start(int64_t step, const std::vector<HeldTensor>& held, nlohmann::json meta);

  // Collective. Commits the save in flight if every rank has written its file (with
  // `wait`: after waiting for them). Returns the checkpoint this call committed. If any
  // rank's write failed, the staging directory is removed and every rank throws
  // std::runtime_error naming the failed ranks and their errors; the checkpoints
  // committed before are untouched.
  std::optional<std::filesystem::path> poll(bool wait);

  bool pending() const { return in_flight_ != nullptr; }

  // Of the last save started: seconds training was blocked, bytes this rank wrote.
  double last_blocking_seconds() const { return last_blocking_seconds_; }
  int64_t last_bytes() const { return last_bytes_; }

 private:
  struct InFlight;
  // Collective: returns if `ok` on every rank; otherwise rank 0 removes the staging
  // directory and every rank throws with the failed ranks' messages.
  void agree(bool ok, const std::string& error, const std::string& what, int64_t step);

  CheckpointStore& store_;
  dist::Group& world_;
  bool async_;
  std::unique_ptr<InFlight> in_flight_;
  double last_blocking_seconds_ = 0;
  int64_t last_bytes_ = 0;
};

}  // namespace ftrain::launch
