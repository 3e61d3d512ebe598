#include "model/t5_checkpoint.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <stdexcept>
#include <vector>

#include "data/durable_file.h"
#include "model/config_fields.h"
#include "model/family_builders.h"
#include "model/seq2seq_generation.h"

namespace ftrain::model {

NamedTensors to_hf_state(T5& model) {
  NamedTensors state;
  for (const auto& item : model->named_parameters()) state.emplace_back(item.key(), item.value().detach());
  return state;
}

void load_hf_state(T5& model, const NamedTensors& tensors, const std::string& source, const ParameterSlices* slices) {
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& item : model->named_parameters()) parameters.emplace(item.key(), item.value());
  std::map<std::string, torch::Tensor> found;
  std::vector<std::string> unexpected, misshaped, duplicated, copies;
  for (const auto& [name, value] : tensors) {
    const bool embedding_copy = name == "encoder.embed_tokens.weight" || name == "decoder.embed_tokens.weight" ||
                                (name == "lm_head.weight" && !model->lm_head);
    // Hugging Face keeps a relative bias in the first cross-attention of old files and ignores it.
    if (name == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight") continue;
    if (embedding_copy) {
      copies.push_back(name);
      continue;
    }
    const auto parameter = parameters.find(name);
    if (parameter == parameters.end()) {
      unexpected.push_back("'" + name + "'");
      continue;
    }
    const std::vector<int64_t> expected =
        slices ? slices->global_shape(name, parameter->second) : parameter->second.sizes().vec();
    if (value.sizes() != c10::IntArrayRef(expected)) {
      misshaped.push_back("'" + name + "' is " + c10::str(value.sizes()) + ", expected " +
                          c10::str(c10::IntArrayRef(expected)));
      continue;
    }
    if (!found.emplace(name, value).second) duplicated.push_back("'" + name + "'");
  }
  std::vector<std::string> missing;
  for (const auto& [name, parameter] : parameters)
    if (!found.count(name)) missing.push_back("'" + name + "'");
  // A copy of the embedding under another name must hold the same values.
  const auto shared = found.find("shared.weight");
  for (const auto& name : copies) {
    for (const auto& [stored, value] : tensors) {
      if (stored != name || shared == found.end()) continue;
      if (value.sizes() != shared->second.sizes() || !same_values(value, shared->second))
        misshaped.push_back("'" + name + "' differs from 'shared.weight' (a tied T5 shares them)");
    }
  }
  if (!missing.empty() || !unexpected.empty() || !misshaped.empty() || !duplicated.empty()) {
    std::string message = source + ": tensors do not match the T5 of config.json:";
    const auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      message += std::string(" ") + what;
      for (size_t i = 0; i < names.size(); ++i) message += (i ? ", " : " ") + names[i];
      message += ";";
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("wrong shape", misshaped);
    list("stored twice", duplicated);
    message.pop_back();
    throw std::runtime_error(message);
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, value] : found) {
    if (slices) {
      slices->load(name, parameters.at(name), value);
      release_mapped_pages(value);
    } else {
      parameters.at(name).copy_(value);
    }
  }
}

ParameterInit t5_parameter_init(const T5Config& config, const std::string& name) {
  const double f = config.initializer_factor;
  const auto normal = [](double std) { return ParameterInit{.kind = ParameterInit::Kind::normal, .std = std}; };
  const auto ends = [&](const char* suffix) { return name.ends_with(suffix); };
  const auto d = [](int64_t v) { return static_cast<double>(v); };
  if (ends("layer_norm.weight")) return ParameterInit{.kind = ParameterInit::Kind::constant, .value = 1.0};
  if (name == "shared.weight" || name == "lm_head.weight") return normal(f);
  if (ends(".q.weight")) return normal(f * std::pow(d(config.d_model) * d(config.d_kv), -0.5));
  if (ends(".k.weight") || ends(".v.weight") || ends("relative_attention_bias.weight"))
    return normal(f * std::pow(d(config.d_model), -0.5));
  if (ends(".o.weight")) return normal(f * std::pow(d(config.inner_dim()), -0.5));
  if (ends(".wi.weight") || ends(".wi_0.weight") || ends(".wi_1.weight")) return normal(f * std::pow(d(config.d_model), -0.5));
  if (ends(".wo.weight")) return normal(f * std::pow(d(config.d_ff), -0.5));
  throw std::logic_error("t5_parameter_init: no rule for parameter '" + name + "'");
}

T5 init_t5(const T5Config& config, uint64_t seed) {
  return init_each_parameter<T5>(config, seed, [](const T5Config& c, uint64_t s, const std::string& name, at::Tensor& value) {
    fill_initial_values(t5_parameter_init(c, name), parameter_key(s, name), value);
  });
}

T5 load_t5(const std::filesystem::path& dir) {
  const std::filesystem::path config_path = dir / "config.json";
  const T5Config config = T5Config::from_json(read_config_file(config_path), config_path.string());
  T5 model(config);
  const ModelTensors stored = read_model_tensors(dir);
  load_hf_state(model, stored.tensors, stored.source);
  return model;
}

void save_t5(T5& model, const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values) {
  prepare_model_directory(dir, existing);
  save_safetensors(dir / "model.safetensors", to_hf_state(model), {{"format", "pt"}}, values);
  data::write_file_atomically(dir / "config.json", model->config().to_json().dump(2) + "\n");
}

// ---------------------------------------------------------------------------------
// The family's entry in the registry (model/families.h): how ftrain builds it.

namespace {

Seq2SeqLm t5_seq2seq(const Seq2SeqLmOptions& options, const nlohmann::json& raw, const std::string& source) {
  T5Config config = T5Config::from_json(raw, source);
  if (options.dropout >= 0) config.dropout_rate = options.dropout;
  const bool split = options.split != nullptr && !options.skeleton;
  T5 model = built<T5>(config, split || options.skeleton, options.pretrained, options.seed, init_t5);
  Seq2SeqLm::Parts parts;
  parts.module = model.ptr();
  parts.vocab_size = config.vocab_size;
  parts.pad_token_id = config.pad_token_id;
  parts.logits = [model](const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& labels) mutable {
    return model->forward(ids, mask, model->shift_right(labels));
  };
  parts.head_input = [model](const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& labels) mutable {
    return model->head_input(model->shift_right(labels), model->encode(ids, mask), mask);
  };
  parts.head_weight_name = config.tie_word_embeddings ? "shared.weight" : "lm_head.weight";
  parts.ties_embeddings = config.tie_word_embeddings;
  parts.generate = [model](const at::Tensor& ids, const at::Tensor& mask, const Seq2SeqGenerationOptions& o) mutable {
    return generate(model, ids, mask, o);
  };
  parts.save = [model](const std::filesystem::path& dir, ExistingDirectory existing, const TensorValues& values) mutable {
    save_t5(model, dir, existing, values);
  };
  Seq2SeqLm s2s(raw["model_type"].get<std::string>(), std::move(parts));
  fill_values(model, s2s, options, split, [&](const std::string& name) { return t5_parameter_init(config, name); });
  return s2s;
}

}  // namespace

ModelFamily t5_family() { return {"t5", {"t5", "mt5"}, nullptr, nullptr, t5_seq2seq}; }

}  // namespace ftrain::model
