// The checkpoint state registry: every part of a run that has state to keep (model,
// optimizer, loader position, loss scaler, validation tracker, progress counters)
// registers it here once, under its own key; saving asks each part, loading gives each
// part back its own. Tensors come as HeldTensor (pieces.h): this rank's values against
// the tensor's global shape, and which of the ranks holding them writes, so the
// registry and the checkpoint store know nothing of ZeRO or tensor parallelism.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/checkpoint/pieces.h"

namespace ftrain::launch {

class StateRegistry {
 public:
  using Tensors = std::function<std::vector<HeldTensor>()>;
  using Save = std::function<nlohmann::json()>;
  using Load = std::function<void(const nlohmann::json&)>;

  // Tensors whose names start with `group` + "/" ("model", "optim"). `after_read`, if
  // given, runs on every rank once every rank has read the group (after_read()), e.g.
  // to all-gather what each rank read of sharded parameters; it may communicate.
  void add_tensors(const std::string& group, Tensors tensors, std::function<void()> after_read = {});
  // Metadata under `key`: save() gives it, load() takes it back on resume (when the
  // checkpoint has the key; none: saved for the record only).
  void add_meta(const std::string& key, Save save, Load load = {});

  // Every registered tensor, for CheckpointWriter::start.
  std::vector<HeldTensor> tensors() const;
  // Every key's metadata as one object, for CheckpointWriter::start.
  nlohmann::json meta() const;

  // Reads the tensors of `groups` from `checkpoint` into place, each rank only the
  // blocks it needs (CheckpointReader::read_into), and returns the checkpoint's
  // metadata. No communication. Throws std::runtime_error naming the file on damage.
  nlohmann::json read(const std::filesystem::path& checkpoint, const std::vector<std::string>& groups) const;
  // Collective: the after_read of each of `groups`, once every rank's read succeeded.
  void after_read(const std::vector<std::string>& groups) const;
  // Gives each key's part of `meta` to its load(), in registration order.
  void restore(const nlohmann::json& meta) const;

 private:
  struct TensorGroup {
    std::string group;
    Tensors tensors;
    std::function<void()> after_read;
  };
  struct MetaEntry {
    std::string key;
    Save save;
    Load load;
  };
  std::vector<TensorGroup> tensor_groups_;
  std::vector<MetaEntry> meta_;
};

}  // namespace ftrain::launch
