#include "model/hf_checkpoint.h"

#include <torch/torch.h>

#include <stdexcept>
#include <vector>

namespace ftrain::model {

bool same_values(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == b.scalar_type()) return torch::equal(a, b);  // no copy of either
  return torch::equal(a.to(torch::kFloat), b.to(torch::kFloat));
}

ParameterSlices ParameterSlices::under(const std::string& prefix) const {
  ParameterSlices outer = *this;
  ParameterSlices inner{
      [outer, prefix](const std::string& name, const at::Tensor& local) { return outer.global_shape(prefix + name, local); },
      [outer, prefix](const std::string& name, const at::Tensor& whole) { return outer.part(prefix + name, whole); },
      {},
      {}};
  if (outer.take)
    inner.take = [outer, prefix](const std::string& name, const at::Tensor& part) { outer.take(prefix + name, part); };
  if (outer.take_at)
    inner.take_at = [outer, prefix](const std::string& name, const ValuesAt& values) {
      outer.take_at(prefix + name, values);
    };
  return inner;
}

void ParameterSlices::load(const std::string& name, at::Tensor& parameter, const at::Tensor& whole) const {
  if (take) take(name, part(name, whole));
  else parameter.copy_(part(name, whole));
}

void draw_parameters(torch::nn::Module& module,
                     const std::function<std::optional<ParameterInit>(const std::string& name)>& init_of,
                     uint64_t seed, const ParameterSlices* slices) {
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters()) {
    const std::string& name = item.key();
    const std::optional<ParameterInit> init = init_of(name);
    if (!init) continue;
    const uint64_t key = parameter_key(seed, name);
    if (!slices) {
      fill_initial_values(*init, key, item.value());
      continue;
    }
    const std::vector<int64_t> shape = slices->global_shape(name, item.value());
    if (slices->take_at) {
      slices->take_at(name, [&](const at::Tensor& indices) { return initial_values_at(*init, key, shape, indices); });
      continue;
    }
    at::Tensor whole = at::empty(shape, at::kFloat);
    fill_initial_values(*init, key, whole);
    slices->load(name, item.value(), whole);
  }
}

ModelTensors read_model_tensors(const std::filesystem::path& dir) {
  const std::filesystem::path single = dir / "model.safetensors";
  const std::filesystem::path index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(single)) return {load_safetensors(single), single.string()};
  if (std::filesystem::exists(index)) return {load_safetensors_index(index), index.string()};
  throw std::runtime_error(dir.string() + ": has neither model.safetensors nor model.safetensors.index.json "
                                          "(pytorch_model.bin is not read; re-save the model with "
                                          "save_pretrained(dir, safe_serialization=True))");
}

void prepare_model_directory(const std::filesystem::path& dir, ExistingDirectory existing) {
  if (std::filesystem::exists(dir)) {
    if (!std::filesystem::is_directory(dir)) throw std::runtime_error(dir.string() + ": exists and is not a directory");
    if (existing == ExistingDirectory::refuse && !std::filesystem::is_empty(dir))
      throw std::runtime_error(dir.string() + ": directory exists and is not empty; refusing to overwrite "
                                              "it (choose an empty or new directory, or ask for overwrite)");
  } else {
    std::filesystem::create_directories(dir);
  }
}

}  // namespace ftrain::model
