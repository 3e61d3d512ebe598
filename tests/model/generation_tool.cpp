// generation_tool: model/generation.h driven from test_generation.py, which checks the
// results against transformers and numpy.
//
//   generation_tool cached <model_dir> <in> <out> <prefix_length>
//       in: input_ids (B, T). out: full (B, T, V) from one forward; stepwise, the
//       prefix through a cached forward and then one token at a time; chunked, the prefix
//       and then chunks of three tokens; each (B, T, V).
//   generation_tool generate <model_dir> <in> <out> [key=value ...]
//       in: prompt_ids (B, T). out: new_ids (B, N).
//   generation_tool filter <in> <out> <key=value,key=value,...> ...
//       in: logits (N, V). out: probabilities_<i> (N, V) float64 for the i-th set of options.
//   generation_tool sample <in> <out> <calls> [key=value ...]
//       in: logits (B, V). out: tokens (calls, B), from calls to one sampler in a row.
//
// Keys: max_new_tokens, temperature, top_k, top_p, seed, eos (comma-separated ids).
#include "model/causal_lm.h"
#include "model/generation.h"
#include "model/gpt2.h"
#include "model/llama.h"
#include "model/safetensors.h"

#include <torch/torch.h>

#include <iostream>
#include <sstream>
#include <string>

namespace {

using namespace ftrain::model;
using torch::indexing::Slice;

GenerationOptions parse_options(const std::vector<std::string>& args) {
  GenerationOptions options;
  for (const std::string& arg : args) {
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) throw std::runtime_error("expected key=value, got '" + arg + "'");
    const std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
    if (key == "max_new_tokens") options.max_new_tokens = std::stoll(value);
    else if (key == "temperature") options.temperature = std::stod(value);
    else if (key == "top_k") options.top_k = std::stoll(value);
    else if (key == "top_p") options.top_p = std::stod(value);
    else if (key == "seed") options.seed = std::stoull(value);
    else if (key == "eos") {
      std::istringstream ids(value);
      for (std::string id; std::getline(ids, id, ',');) options.eos_ids.push_back(std::stoll(id));
    } else {
      throw std::runtime_error("unknown key '" + key + "'");
    }
  }
  return options;
}

GenerationOptions parse_options(int argc, char** argv, int first) { return parse_options(std::vector<std::string>(argv + first, argv + argc)); }

// "key=value,key=value" -> options
GenerationOptions parse_option_list(const std::string& list) {
  std::vector<std::string> args;
  std::istringstream items(list);
  for (std::string item; std::getline(items, item, ',');) args.push_back(item);
  return parse_options(args);
}

// The logits of the tokens that follow those in the cache.
torch::Tensor cached_forward(const std::shared_ptr<Gpt2Impl>& model, const torch::Tensor& input_ids, KvCache& cache) {
  return model->forward(input_ids, &cache);
}
torch::Tensor cached_forward(const std::shared_ptr<LlamaImpl>& model, const torch::Tensor& input_ids, KvCache& cache) {
  return model->forward(input_ids, /*attention_mask=*/{}, &cache);
}

// Full, stepwise and chunked logits of one model type.
template <class Model>
NamedTensors cached_logits(Model& model, const torch::Tensor& input_ids, int64_t prefix_length) {
  const int64_t T = input_ids.size(1);
  auto run = [&](int64_t chunk) {
    KvCache cache;
    std::vector<torch::Tensor> parts{cached_forward(model, input_ids.index({Slice(), Slice(0, prefix_length)}), cache)};
    for (int64_t start = prefix_length; start < T; start += chunk)
      parts.push_back(cached_forward(model, input_ids.index({Slice(), Slice(start, std::min(start + chunk, T))}), cache));
    if (cache.length() != T) throw std::runtime_error("the cache holds " + std::to_string(cache.length()) + " positions");
    return torch::cat(parts, /*dim=*/1);
  };
  return {{"full", model->forward(input_ids)}, {"stepwise", run(1)}, {"chunked", run(3)}};
}

NamedTensors cached(const std::string& model_dir, const torch::Tensor& input_ids, int64_t prefix_length) {
  CausalLm model = CausalLm::load({.path = model_dir});
  model.module().eval();
  torch::NoGradGuard no_grad;
  if (auto gpt2 = std::dynamic_pointer_cast<Gpt2Impl>(model.module_ptr())) return cached_logits(gpt2, input_ids, prefix_length);
  if (auto llama = std::dynamic_pointer_cast<LlamaImpl>(model.module_ptr()))
    return cached_logits(llama, input_ids, prefix_length);
  throw std::runtime_error("no cached forward for " + model.family());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "cached" && argc == 6) {
      const torch::Tensor input_ids = SafetensorsReader(argv[3]).tensor("input_ids");
      save_safetensors(argv[4], cached(argv[2], input_ids, std::stoll(argv[5])));
    } else if (mode == "generate" && argc >= 5) {
      CausalLm model = CausalLm::load({.path = argv[2]});
      const torch::Tensor prompt_ids = SafetensorsReader(argv[3]).tensor("prompt_ids");
      save_safetensors(argv[4], {{"new_ids", generate(model, prompt_ids, parse_options(argc, argv, 5))}});
    } else if (mode == "filter" && argc >= 5) {
      const torch::Tensor logits = SafetensorsReader(argv[2]).tensor("logits");
      NamedTensors results;
      for (int i = 4; i < argc; ++i)
        results.emplace_back("probabilities_" + std::to_string(i - 4), next_token_probabilities(logits, parse_option_list(argv[i])));
      save_safetensors(argv[3], results);
    } else if (mode == "sample" && argc >= 5) {
      const torch::Tensor logits = SafetensorsReader(argv[2]).tensor("logits");
      TokenSampler sampler(parse_options(argc, argv, 5));
      std::vector<torch::Tensor> draws;
      for (int64_t call = 0, calls = std::stoll(argv[4]); call < calls; ++call) draws.push_back(sampler.next(logits));
      save_safetensors(argv[3], {{"tokens", torch::stack(draws)}});
    } else {
      std::cerr << "usage: generation_tool cached <model_dir> <in> <out> <prefix_length>\n"
                   "       generation_tool generate <model_dir> <in> <out> [key=value ...]\n"
                   "       generation_tool filter <in> <out> <key=value,...> ...\n"
                   "       generation_tool sample <in> <out> <calls> [key=value ...]\n";
      return 2;
    }
  } catch (const std::exception& e) {
    std::cerr << "generation_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
