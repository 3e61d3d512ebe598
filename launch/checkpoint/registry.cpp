#include "launch/checkpoint/registry.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

#include "launch/checkpoint/store.h"

namespace ftrain::launch {

void StateRegistry::add_tensors(const std::string& group, Tensors tensors, std::function<void()> after_read) {
  tensor_groups_.push_back(TensorGroup{group, std::move(tensors), std::move(after_read)});
}

void StateRegistry::add_meta(const std::string& key, Save save, Load load) {
  for (const MetaEntry& entry : meta_)
    if (entry.key == key) throw std::logic_error("checkpoint state '" + key + "' registered twice");
  meta_.push_back(MetaEntry{key, std::move(save), std::move(load)});
}

std::vector<HeldTensor> StateRegistry::tensors() const {
  std::vector<HeldTensor> out;
  for (const TensorGroup& group : tensor_groups_)
    for (HeldTensor& held : group.tensors()) {
      if (held.name.rfind(group.group + "/", 0) != 0)
        throw std::logic_error("checkpoint tensor '" + held.name + "' is outside its group '" + group.group + "'");
      out.push_back(std::move(held));
    }
  return out;
}

nlohmann::json StateRegistry::meta() const {
  nlohmann::json out = nlohmann::json::object();
  for (const MetaEntry& entry : meta_) out[entry.key] = entry.save();
  return out;
}

nlohmann::json StateRegistry::read(const std::filesystem::path& checkpoint, const std::vector<std::string>& groups) const {
  CheckpointReader reader(checkpoint);
  torch::NoGradGuard no_grad;
  for (const TensorGroup& group : tensor_groups_)
    if (std::find(groups.begin(), groups.end(), group.group) != groups.end())
      for (const HeldTensor& held : group.tensors()) reader.read_into(held);
  return reader.meta();
}

void StateRegistry::after_read(const std::vector<std::string>& groups) const {
  for (const TensorGroup& group : tensor_groups_)
    if (group.after_read && std::find(groups.begin(), groups.end(), group.group) != groups.end()) group.after_read();
}

void StateRegistry::restore(const nlohmann::json& meta) const {
  for (const MetaEntry& entry : meta_)
    if (entry.load && meta.contains(entry.key)) entry.load(meta.at(entry.key));
}

}  // namespace ftrain::launch
