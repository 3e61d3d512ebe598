// Checkpoints of a run: a registry of named tensors plus JSON metadata, committed
// atomically. Layout on disk:
//   <run.dir>/checkpoints/step_00000010/state.h5   named tensors, each with its crc32
//   <run.dir>/checkpoints/step_00000010/COMMITTED  written last; without it the
//                                                  checkpoint does not exist
//   <run.dir>/checkpoints/latest                   name of the newest committed one
//   <run.dir>/checkpoints/best                     JSON: the best one by validation
// A checkpoint is written into step_XXXXXXXX.tmp, fsynced, renamed, then marked.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ftrain::launch {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

inline constexpr int kCheckpointFormatVersion = 1;

class CheckpointStore {
 public:
  CheckpointStore(std::filesystem::path directory, int64_t keep);

  // Writes tensors (CPU copies are taken as needed) and metadata as checkpoint `step`,
  // commits it, points `latest` at it and removes the oldest beyond `keep`.
  // Returns the committed directory.
  std::filesystem::path save(int64_t step, const NamedTensors& tensors, const nlohmann::json& meta);

  // Newest committed checkpoint whose marker and file verify; corrupt ones are
  // reported on stderr and skipped.
  std::optional<std::filesystem::path> latest_valid() const;

  // Committed checkpoints, oldest first.
  std::vector<std::filesystem::path> committed() const;

  // Records a committed checkpoint as the best so far (atomically; `record` says by
  // which metric and value) and keeps it from removal by `keep`.
  void mark_best(const std::filesystem::path& checkpoint, nlohmann::json record);
  // The checkpoint recorded as best, if it is still committed.
  std::optional<std::filesystem::path> best() const;

  const std::filesystem::path& directory() const { return directory_; }

 private:
  void remove_beyond_keep();  // all but the newest keep_ and the best

  std::filesystem::path directory_;
  int64_t keep_;
};

// Reads a committed checkpoint: its metadata, and each requested tensor copied in
// place into the given tensor (shape and dtype must match). Checksums are verified.
// Throws std::runtime_error naming the file and tensor on any mismatch.
nlohmann::json load_checkpoint(const std::filesystem::path& checkpoint, const NamedTensors& into);

// Reads one tensor by name (for state whose size is only known at load, e.g. RNG).
at::Tensor read_checkpoint_tensor(const std::filesystem::path& checkpoint, const std::string& name);

// Whether `checkpoint` is committed and all its tensors match their checksums.
bool verify_checkpoint(const std::filesystem::path& checkpoint, std::string* problem = nullptr);

}  // namespace ftrain::launch
