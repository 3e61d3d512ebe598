#include "model/causal_lm.h"

#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "model/gpt2.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/llama_checkpoint.h"

namespace fs = std::filesystem;

namespace ftrain::model {
namespace {

std::string read_model_type(const fs::path& config_path) {
  std::ifstream in(config_path);
  if (!in) throw std::runtime_error(config_path.string() + ": cannot open (a Hugging Face config.json is required)");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(config_path.string() + ": not valid JSON: " + e.what());
  }
  if (!config.is_object() || !config.contains("model_type") || !config["model_type"].is_string())
    throw std::runtime_error(config_path.string() + ": key 'model_type': missing or not a string");
  return config["model_type"].get<std::string>();
}


// Split before reading (CausalLmOptions::split): built without initialisation, the
// weights read later by read_split.
bool splits(const CausalLmOptions& options) { return options.pretrained && options.split != nullptr; }

Gpt2 build_gpt2(const CausalLmOptions& options) {
  Gpt2Config config = Gpt2Config::from_json_file(options.path / "config.json");
  if (options.dropout >= 0) config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = options.dropout;
  if (splits(options)) {
    SkipInitialisation uninitialised;
    return Gpt2(config);
  }
  if (!options.pretrained) return init_gpt2(config, options.seed);
  Gpt2 loaded = load_gpt2(options.path);
  if (options.dropout < 0) return loaded;
  // Dropout rates are fixed when the modules are built, so an override builds the
  // model from the adjusted config and takes the loaded weights.
  Gpt2 adjusted(config);
  torch::NoGradGuard no_grad;
  auto source = loaded->named_parameters();
  for (auto& item : adjusted->named_parameters()) item.value().copy_(source[item.key()]);
  return adjusted;
}

Llama build_llama(const CausalLmOptions& options) {
  LlamaConfig config = LlamaConfig::from_json_file(options.path / "config.json");
  if (options.dropout >= 0) config.attention_dropout = options.dropout;
  if (splits(options)) {
    SkipInitialisation uninitialised;
    return Llama(config);
  }
  if (!options.pretrained) return init_llama(config, options.seed);
  Llama loaded = load_llama(options.path);
  if (options.dropout < 0) return loaded;
  Llama adjusted(config);
  torch::NoGradGuard no_grad;
  auto source = loaded->named_parameters();
  for (auto& item : adjusted->named_parameters()) item.value().copy_(source[item.key()]);
  return adjusted;
}

}  // namespace

CausalLm CausalLm::load(const CausalLmOptions& options) {
  if (!fs::is_directory(options.path))
    throw std::runtime_error(options.path.string() + ": model directory not found");
  const std::string type = read_model_type(options.path / "config.json");
  CausalLm model;
  model.family_ = type;
  if (type == "gpt2") {
    Gpt2 gpt2 = build_gpt2(options);
    model.module_ = gpt2.ptr();
    model.vocab_size_ = gpt2->config().vocab_size;
    model.logits_ = [gpt2](const at::Tensor& ids, const at::Tensor&) mutable { return gpt2->forward(ids); };
    model.head_input_ = [gpt2](const at::Tensor& ids, const at::Tensor&) mutable {
      const at::Tensor& weight = gpt2->config().tie_word_embeddings ? gpt2->transformer->wte->weight
                                                                    : gpt2->lm_head->weight;
      return HeadInput{gpt2->head_input_hook(gpt2->hidden_states(ids)), weight};
    };
    model.save_ = [gpt2](const fs::path& dir, ExistingDirectory existing) mutable { save_gpt2(gpt2, dir, existing); };
    if (splits(options)) {
      const ParameterSlices slices = options.split(model);
      const ModelTensors stored = read_model_tensors(options.path);
      load_hf_state(gpt2, stored.tensors, stored.source, &slices);
    }
    return model;
  }
  if (type == "llama" || type == "mistral" || type == "qwen2") {
    Llama llama = build_llama(options);
    model.module_ = llama.ptr();
    model.vocab_size_ = llama->config().vocab_size;
    model.logits_ = [llama](const at::Tensor& ids, const at::Tensor& mask) mutable {
      return llama->forward(ids, mask);
    };
    model.head_input_ = [llama](const at::Tensor& ids, const at::Tensor& mask) mutable {
      const at::Tensor& weight = llama->config().tie_word_embeddings ? llama->model->embed_tokens->weight
                                                                     : llama->lm_head->weight;
      return HeadInput{llama->head_input_hook(llama->hidden_states(ids, mask)), weight};
    };
    model.save_ = [llama](const fs::path& dir, ExistingDirectory existing) mutable {
      save_llama(llama, dir, existing);
    };
    if (splits(options)) {
      const ParameterSlices slices = options.split(model);
      const ModelTensors stored = read_model_tensors(options.path);
      load_hf_state(llama, stored.tensors, stored.source, &slices);
    }
    return model;
  }
  throw std::runtime_error((options.path / "config.json").string() + ": model_type '" + type +
                           "' is not supported for causal language modelling (supported: gpt2, llama, "
                           "mistral, qwen2)");
}

}  // namespace ftrain::model
