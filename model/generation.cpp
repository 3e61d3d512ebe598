#include "model/generation.h"

#include "model/causal_lm.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace ftrain::model {

// ---------------------------------------------------------------------------------
// The key/value cache

int64_t KvCache::prepare(const std::string& model, int64_t layers, int64_t batch) {
  if (keys.empty() && values.empty()) keys.resize(layers), values.resize(layers);
  if (static_cast<int64_t>(keys.size()) != layers || values.size() != keys.size())
    throw std::runtime_error(model + ": the KvCache holds " + std::to_string(keys.size()) + " layers, the model has " +
                             std::to_string(layers));
  const int64_t past = length();
  if (past > 0 && keys.front().size(0) != batch)
    throw std::runtime_error(model + ": the KvCache holds " + std::to_string(keys.front().size(0)) +
                             " sequences, input_ids " + std::to_string(batch));
  return past;
}

std::pair<at::Tensor, at::Tensor> KvCache::append(int64_t layer, const at::Tensor& new_keys,
                                                  const at::Tensor& new_values) {
  at::Tensor& k = keys.at(layer);
  at::Tensor& v = values.at(layer);
  k = k.defined() ? torch::cat({k, new_keys}, /*dim=*/2) : new_keys;
  v = v.defined() ? torch::cat({v, new_values}, /*dim=*/2) : new_values;
  return {k, v};
}

// ---------------------------------------------------------------------------------
// Options

namespace {

std::string shown(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

void GenerationOptions::validate(const std::function<std::string(std::string_view key)>& name) const {
  auto check = [&](bool ok, std::string_view key, const std::string& what) {
    if (ok) return;
    throw std::runtime_error((name ? name(key) : "key '" + std::string(key) + "'") + " " + what);
  };
  check(max_new_tokens > 0, "max_new_tokens", "must be positive, got " + std::to_string(max_new_tokens));
  check(std::isfinite(temperature) && temperature >= 0.0, "temperature",
        "must be a finite number >= 0 (0: greedy), got " + shown(temperature));
  check(top_k >= 0, "top_k", "must be >= 0 (0: off), got " + std::to_string(top_k));
  check(top_p > 0.0 && top_p <= 1.0, "top_p", "must be in (0, 1] (1: off), got " + shown(top_p));
  for (int64_t id : eos_ids) check(id >= 0, "eos_ids", "must be token ids >= 0, got " + std::to_string(id));
}

// ---------------------------------------------------------------------------------
// The next-token distribution

at::Tensor next_token_probabilities(const at::Tensor& logits, const GenerationOptions& options) {
  options.validate();
  if (!logits.defined() || logits.dim() < 1 || logits.size(-1) < 1 || !logits.is_floating_point())
    throw std::runtime_error("next_token_probabilities: logits must be a floating tensor (..., V), V >= 1, got " +
                             (logits.defined() ? std::string(c10::toString(logits.scalar_type())) + " " +
                                                     c10::str(logits.sizes())
                                               : std::string("an undefined tensor")));
  torch::Tensor scores = logits.to(torch::kDouble);  // (..., V)
  const int64_t V = scores.size(-1);
  if (options.greedy()) {
    // argmax returns the first of equal maxima.
    return torch::zeros_like(scores).scatter_(-1, scores.argmax(-1, /*keepdim=*/true), 1.0);
  }

  torch::Tensor probabilities = torch::softmax(scores / options.temperature, -1);
  // (..., V) ranked from most to least likely; the stable sort keeps equal ones in id order.
  auto [ranked, order] = probabilities.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  torch::Tensor rank = torch::arange(V, order.options());
  if (options.top_k > 0 && options.top_k < V) {
    ranked = ranked.masked_fill(rank >= options.top_k, 0.0);
    ranked = ranked / ranked.sum(-1, /*keepdim=*/true);
  }
  if (options.top_p < 1.0) {
    // A token is kept while the tokens ranked above it hold less than top_p, which keeps
    // the fewest whose mass reaches top_p, and always the first.
    torch::Tensor mass_before = ranked.cumsum(-1) - ranked;
    ranked = ranked.masked_fill(mass_before >= options.top_p, 0.0);
    ranked = ranked / ranked.sum(-1, /*keepdim=*/true);
  }
  // Back from rank order to token order.
  return torch::zeros_like(ranked).scatter_(-1, order, ranked);
}

// ---------------------------------------------------------------------------------
// Sampling

namespace {

GenerationOptions validated(const GenerationOptions& options) {
  options.validate();
  return options;
}

}  // namespace

TokenSampler::TokenSampler(const GenerationOptions& options)
    : options_(validated(options)), generator_(at::make_generator<at::CPUGeneratorImpl>(options.seed)) {}

at::Tensor TokenSampler::next(const at::Tensor& logits) {
  if (!logits.defined() || logits.dim() != 2)
    throw std::runtime_error("TokenSampler: logits must be (B, V), got " +
                             (logits.defined() ? c10::str(logits.sizes()) : std::string("an undefined tensor")));
  torch::Tensor cpu_logits = logits.to(torch::kCPU);
  if (options_.greedy()) return cpu_logits.argmax(-1);
  torch::Tensor probabilities = next_token_probabilities(cpu_logits, options_);  // (B, V)
  return torch::multinomial(probabilities, /*num_samples=*/1, /*replacement=*/false, generator_).squeeze(-1);
}

// ---------------------------------------------------------------------------------
// The generation loop


at::Tensor generate(CausalLm& model, const at::Tensor& prompt_ids, const GenerationOptions& options) {
  options.validate();
  if (!prompt_ids.defined() || prompt_ids.dim() != 2 || prompt_ids.scalar_type() != torch::kLong ||
      prompt_ids.size(0) < 1 || prompt_ids.size(1) < 1)
    throw std::runtime_error("generate: prompt_ids must be a non-empty int64 tensor (B, T), got " +
                             (prompt_ids.defined() ? std::string(c10::toString(prompt_ids.scalar_type())) + " " +
                                                         c10::str(prompt_ids.sizes())
                                                   : std::string("an undefined tensor")));
  const int64_t vocab_size = model.vocab_size();
  if (prompt_ids.min().item<int64_t>() < 0 || prompt_ids.max().item<int64_t>() >= vocab_size)
    throw std::runtime_error("generate: prompt ids must be in [0, " + std::to_string(vocab_size) +
                             ") for this model's vocabulary");
  const int64_t B = prompt_ids.size(0), T = prompt_ids.size(1);
  // The last new token is sampled but never read back.
  const int64_t positions = T + options.max_new_tokens - 1;  // run through the model
  if (model.max_positions() > 0 && positions > model.max_positions())
    throw std::runtime_error("generate: the prompt and max_new_tokens need " + std::to_string(positions) +
                             " positions, this " + model.family() + " model's " + model.max_positions_key() + " is " +
                             std::to_string(model.max_positions()) + "; shorten the prompt or lower max_new_tokens");
  auto forward = [&model](const torch::Tensor& ids, KvCache& cache) { return model.next_logits(ids, cache); };

  torch::NoGradGuard no_grad;
  EvalModeGuard eval_mode(model.module());
  const auto parameters = model.module().parameters();
  const torch::Device device = parameters.empty() ? torch::Device(torch::kCPU) : parameters.front().device();

  KvCache cache;
  TokenSampler sampler(options);
  const torch::Tensor eos_ids = torch::tensor(options.eos_ids, torch::kLong);
  torch::Tensor finished = torch::zeros({B}, torch::kBool);
  std::vector<torch::Tensor> new_tokens;  // each (B) on the CPU

  torch::Tensor input = prompt_ids.to(device);  // the prompt, then the last new token
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    torch::Tensor next = sampler.next(forward(input, cache));  // (B)
    if (step > 0) next = torch::where(finished, new_tokens.back(), next);  // finished rows repeat their eos
    new_tokens.push_back(next);
    if (eos_ids.numel() > 0) finished = finished | torch::isin(next, eos_ids);
    if (finished.all().item<bool>()) break;
    input = next.view({B, 1}).to(device);
  }
  return torch::stack(new_tokens, /*dim=*/1);  // (B, N)
}

}  // namespace ftrain::model
