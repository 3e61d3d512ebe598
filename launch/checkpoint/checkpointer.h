// A run's checkpoints, on every rank: saving what the state registry holds (written in
// the background with checkpoint.async, committed once every rank has written), loading
// a checkpoint with every rank's agreement, choosing the one to resume from, and the
// best one by validation. Knows nothing of the model or the layout: the registry does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/comm.h"
#include "launch/checkpoint/registry.h"
#include "launch/checkpoint/store.h"
#include "launch/checkpoint/writer.h"

namespace ftrain::launch {

class Checkpointer {
 public:
  // Checkpoints live in `directory`; the newest `keep` (and the best) are kept.
  Checkpointer(const std::filesystem::path& directory, int64_t keep, bool async, dist::Group& world,
               const StateRegistry& registry);

  const CheckpointStore& store() const { return store_; }

  // Collective. Starts saving the registry's state as checkpoint `step` (finishing the
  // save in flight first); commit() commits it. In the background, rank 0 says how long
  // training was paused.
  void save(int64_t step);
  int64_t last_saved_step() const { return last_saved_step_; }
  bool pending() const { return writer_->pending(); }
  // Collective. Commits the save in flight once every rank has written its file; with
  // `wait`, waits for that. Returns the checkpoint committed now, if any.
  std::optional<std::filesystem::path> commit(bool wait);

  // Collective: every rank reads the tensors of `groups` (StateRegistry::read), then
  // all agree, then the groups' after_read run. Returns the metadata, or nothing with `problem` set (the same on every
  // rank, naming each rank that failed and why) when any rank could not read its part;
  // the state may then hold parts of the checkpoint, so load another or stop.
  std::optional<nlohmann::json> load(const std::filesystem::path& checkpoint, const std::vector<std::string>& groups,
                                     std::string& problem);

  // Collective. `resume` is "auto" (every committed checkpoint, newest first) or a
  // checkpoint's path. Loads the first candidate every rank can read, skipping (and
  // reporting) the others, restores every registered part's metadata (an error there
  // names the checkpoint), and returns it with its metadata; nothing when there is no
  // candidate. Throws, naming every candidate's problem, when none loads. Checkpoints
  // newer than the one loaded belong to an abandoned timeline and are set aside
  // (renamed *.stale), so a later resume does not jump back to them.
  struct Loaded {
    std::filesystem::path checkpoint;
    nlohmann::json meta;
  };
  std::optional<Loaded> resume(const std::string& resume);

  // Collective. Records checkpoint `step`, committed, as the best so far.
  void mark_best(int64_t step, const nlohmann::json& record);
  // Collective: the checkpoint recorded as best, the same on every rank.
  std::optional<std::filesystem::path> best();

 private:
  // Rank 0 lists the candidates and tells the others, so every rank tries the same
  // ones (listings could differ on a shared filesystem with stale caches).
  std::vector<std::filesystem::path> candidates(const std::string& resume);
  void set_aside_after(const std::filesystem::path& resumed);

  dist::Group& world_;
  const StateRegistry& registry_;
  CheckpointStore store_;
  std::unique_ptr<CheckpointWriter> writer_;
  bool async_;
  int64_t last_saved_step_ = -1;
};

}  // namespace ftrain::launch
