// What ftrain-ckpt does with a run's checkpoints, apart from its command line: list them
// with their state, verify one against its checksums and its model, and export one as
// a Hugging Face directory like the run's final/ (docs/checkpoint-tool.md).
//
// Only launch/checkpoint/store.h reads checkpoint files; this code knows the directory names
// (step_XXXXXXXX, .tmp while written, .stale once set aside by a resume), the `latest`
// and `best` files, and the tensor names the trainer stores: "model/<param>",
// "optim/exp_avg/<param>" and "optim/exp_avg_sq/<param>", each in its global shape.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ftrain::launch {

enum class CheckpointState {
  valid,        // committed, and every checksum matches
  committed,    // committed, not read (a quick listing)
  corrupt,      // committed, but a file or tensor fails to read or verify
  uncommitted,  // being written, or left by a save that never finished (no marker, or .tmp)
  set_aside,    // .stale: newer than the checkpoint a resume went back to
};
// "valid", "committed", "corrupt", "uncommitted", "set_aside".
std::string to_string(CheckpointState state);

struct CheckpointEntry {
  std::filesystem::path path;
  int64_t step = 0;
  CheckpointState state = CheckpointState::uncommitted;
  std::string problem;                   // corrupt: what verification found
  std::uintmax_t bytes = 0;              // on disk, every file below the directory
  bool latest = false;                   // the one <checkpoints>/latest names
  std::optional<nlohmann::json> best;    // the `best` record (metric, value, step) when it is this one
};

struct CheckpointListing {
  std::filesystem::path directory;     // the checkpoints directory
  std::optional<std::string> latest;   // the name in `latest`, if there is such a file
  std::vector<CheckpointEntry> entries;  // by step, then name
  bool verified = false;               // committed ones were read through
};

// The checkpoints directory of a run directory (<dir>/checkpoints), or `dir` itself when
// it has none. Throws std::runtime_error naming `dir` when it is not a directory.
std::filesystem::path checkpoints_directory(const std::filesystem::path& run_or_checkpoints);

// Every step_XXXXXXXX directory (with .tmp and .stale ones) in the checkpoints directory
// of `run_or_checkpoints`. With `verify`, each committed one is read and its checksums
// checked (valid or corrupt); without, it is only `committed`.
CheckpointListing list_checkpoints(const std::filesystem::path& run_or_checkpoints, bool verify);

// The listing as a table for people and as JSON for programs.
std::string format_listing(const CheckpointListing& listing);
nlohmann::json listing_json(const CheckpointListing& listing);

// Where the model's config.json and tokenizer (model.path) and the dataset that gives
// the task and label names (data.path) are; empty keeps what the checkpoint's stored
// configuration says.
struct ModelSources {
  std::string model_path;
  std::string data_path;
};

struct VerifyReport {
  bool ok = false;
  std::string problem;         // names the file and tensor
  int64_t step = 0;
  std::uintmax_t disk_bytes = 0;
  // Matched against the model: every tensor the model needs, present with its shape.
  std::optional<int64_t> tensors;
  int64_t tensor_bytes = 0;
  std::string unmatched_reason;  // why the tensors were not matched (no model.path, say)
};

// Reads the whole checkpoint and checks every checksum, then, when the model it was
// saved from can be built (model.path and data.path of its configuration, or
// `sources`), loads every tensor that model needs in its global shape.
VerifyReport verify_checkpoint_fully(const std::filesystem::path& checkpoint, const ModelSources& sources);

struct ExportReport {
  int64_t step = 0;
  std::string family;  // gpt2, bert, ...
  std::string task;    // causal_lm, sequence_classification, token_classification
  std::vector<std::string> tokenizer_files;  // copied from model.path
};

// Writes the checkpoint's model to `out` as the trainer writes <run.dir>/final: config.json,
// model.safetensors, label names for classifiers, and the tokenizer files of model.path.
// The model is built unsplit on the CPU from the checkpoint's stored configuration and
// takes the "model/<param>" tensors. `out` appears complete or not at all (it is written
// beside it, then renamed); an existing non-empty `out` is replaced only with `force`.
// Throws std::runtime_error naming the checkpoint, file or key.
ExportReport export_checkpoint(const std::filesystem::path& checkpoint, const std::filesystem::path& out,
                               const ModelSources& sources, bool force);

}  // namespace ftrain::launch
