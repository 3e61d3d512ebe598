// Text generation from a causal language model: the key/value cache that lets each new
// token be computed from the positions before it without recomputing them, the
// next-token distribution after temperature, top-k and top-p, a seeded sampler, and the
// loop that appends one token at a time (docs/generation.md).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ftrain::model {

class CausalLm;

// Puts a module in eval mode for the lifetime of the guard, then back in its former
// mode (generation runs without dropout, whatever mode the model was in).
class EvalModeGuard {
 public:
  explicit EvalModeGuard(torch::nn::Module& module) : module_(module), was_training_(module.is_training()) {
    module_.eval();
  }
  ~EvalModeGuard() { module_.train(was_training_); }
  EvalModeGuard(const EvalModeGuard&) = delete;
  EvalModeGuard& operator=(const EvalModeGuard&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

// The keys and values every attention layer has computed for the positions read so
// far, so that later tokens attend to them without running those positions again.
// One entry per layer, each (B, n_kv_heads, T_cached, head_dim); empty until the first
// cached forward. A cache belongs to one batch of sequences and one model.
struct KvCache {
  std::vector<at::Tensor> keys;
  std::vector<at::Tensor> values;

  // T_cached: the positions read so far, which is also the position of the next token.
  int64_t length() const { return keys.empty() || !keys.front().defined() ? 0 : keys.front().size(2); }
  void clear() { keys.clear(), values.clear(); }

  // Before a forward of `batch` sequences through a model of `layers` layers: sizes an
  // empty cache, and throws "<model>: the KvCache holds ..." for one that belongs to
  // another model or batch. Returns T_cached.
  int64_t prepare(const std::string& model, int64_t layers, int64_t batch);
  // Appends layer `layer`'s keys and values of the new positions, (B, nkv, T_new, hs)
  // each, and returns those of every position so far, (B, nkv, T_cached + T_new, hs).
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values);
};

// How the next token is chosen. Keys as in Hugging Face's GenerationConfig.
struct GenerationOptions {
  int64_t max_new_tokens = 64;  // tokens appended at most
  double temperature = 1.0;     // logits / temperature before sampling; 0 = greedy (argmax)
  int64_t top_k = 0;            // sample among the k most likely tokens only; 0 = all
  double top_p = 1.0;           // ... and among the fewest most likely whose mass reaches top_p
  uint64_t seed = 1234;         // the sampler's seed: equal seeds give equal continuations
  std::vector<int64_t> eos_ids;  // a sequence ends after emitting any of these; empty: never

  // Throws std::runtime_error "<name of the key> <what is wrong>" for the first bad value.
  // `name` turns a key ("max_new_tokens") into the name the user wrote it under; by
  // default "key 'max_new_tokens'".
  void validate(const std::function<std::string(std::string_view key)>& name = {}) const;
  bool greedy() const { return temperature == 0.0; }
};

// (..., V) logits -> (..., V) float64 probabilities of the next token, rows summing to 1:
//   greedy (temperature 0): all mass on the first largest logit;
//   else softmax(logits / temperature), then only the top_k largest probabilities kept
//   (when top_k > 0), then only the fewest largest whose sum reaches top_p (at least
//   one), the kept ones renormalised. Equal probabilities are ranked by token id.
at::Tensor next_token_probabilities(const at::Tensor& logits, const GenerationOptions& options);

// Draws next tokens from next_token_probabilities with its own seeded generator on the
// CPU, so equal seeds and logits give equal draws whichever device computed the logits.
class TokenSampler {
 public:
  explicit TokenSampler(const GenerationOptions& options);  // validates options

  // (B, V) logits -> (B) int64 token ids, on the CPU.
  at::Tensor next(const at::Tensor& logits);

 private:
  GenerationOptions options_;
  at::Generator generator_;
};

// Continues each row of prompt_ids ((B, T) int64, T >= 1, rows of equal length and no
// padding) by up to max_new_tokens tokens, reading the prompt once and then one token
// per step through a KvCache. Returns the new tokens (B, N) on the CPU, N <= max_new_tokens:
// generation stops early once every row has emitted one of eos_ids, and a row that
// finished before the others is filled with the eos id it emitted.
// Runs without gradients and in eval mode (the model's mode is restored afterwards).
// Throws std::runtime_error for a GPT-2 whose n_positions cannot hold T + max_new_tokens.
at::Tensor generate(CausalLm& model, const at::Tensor& prompt_ids, const GenerationOptions& options);

}  // namespace ftrain::model
