#include "model/seq2seq_generation.h"

#include "model/generation.h"

#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

namespace ftrain::model {
namespace {

constexpr double kExcluded = -1.0e9;  // the score that keeps a candidate out, as transformers uses

// Picks `index` (B, k) along dimension 1 of `t` (B, n, ...).
torch::Tensor gather_beams(const torch::Tensor& t, const torch::Tensor& index) {
  std::vector<int64_t> shape = index.sizes().vec();
  torch::Tensor expanded = index;
  for (int64_t d = 2; d < t.dim(); ++d) {
    expanded = expanded.unsqueeze(-1);
    shape.push_back(t.size(d));
  }
  return t.gather(1, expanded.expand(shape));
}

// Whether to decode another step: this process's answer, agreed with the others' when
// they generate together.
bool decode_again(bool this_one, const Seq2SeqGenerationOptions& options) {
  return options.continue_together ? options.continue_together(this_one) : this_one;
}

at::Tensor greedy(T5& model, const torch::Tensor& encoded, const torch::Tensor& mask, int64_t max_length,
                  const Seq2SeqGenerationOptions& options) {
  const T5Config& config = model->config();
  const int64_t B = encoded.size(0);
  torch::Tensor sequences = torch::full({B, 1}, config.decoder_start_token_id, torch::kLong);
  torch::Tensor unfinished = torch::ones({B}, torch::kLong);
  T5Cache cache;
  while (sequences.size(1) < max_length) {
    const torch::Tensor last = sequences.slice(1, sequences.size(1) - 1).to(encoded.device());
    const torch::Tensor logits = model->decode(last, encoded, mask, {}, &cache).select(1, -1).to(torch::kFloat);
    torch::Tensor next = logits.argmax(-1).to(torch::kCPU);
    next = next * unfinished + config.pad_token_id * (1 - unfinished);
    sequences = torch::cat({sequences, next.unsqueeze(1)}, 1);
    unfinished = unfinished * next.ne(config.eos_token_id).to(torch::kLong);
    if (!decode_again(unfinished.max().item<int64_t>() != 0, options)) break;
  }
  return sequences;
}

at::Tensor beam_search(T5& model, const torch::Tensor& encoded_once, const torch::Tensor& mask_once,
                       int64_t max_length, const Seq2SeqGenerationOptions& options) {
  using EarlyStopping = Seq2SeqGenerationOptions::EarlyStopping;
  const T5Config& config = model->config();
  const int64_t B = encoded_once.size(0), K = options.num_beams, keep = 2 * K;  // one end-of-sequence id
  const double penalty = options.length_penalty;
  const int64_t prompt = 1;  // the decoder starts from decoder_start_token_id
  // Every beam of a row reads the row's encoder output.
  const torch::Tensor encoded = encoded_once.repeat_interleave(K, 0);
  const torch::Tensor mask = mask_once.defined() ? mask_once.repeat_interleave(K, 0) : torch::Tensor();
  const int64_t fill = config.pad_token_id != 0 ? config.pad_token_id : config.eos_token_id;

  torch::Tensor running = torch::full({B, K, max_length}, fill, torch::kLong);
  running.select(2, 0).fill_(config.decoder_start_token_id);
  torch::Tensor sequences = running.clone();
  torch::Tensor running_scores = torch::zeros({B, K});
  running_scores.slice(1, 1).fill_(kExcluded);  // the beams start as one
  torch::Tensor beam_scores = torch::full({B, K}, kExcluded);
  torch::Tensor finished = torch::zeros({B, K}, torch::kBool);
  torch::Tensor improvable = torch::ones({B, 1}, torch::kBool);
  torch::Tensor running_parents = torch::full({B, K, max_length - prompt}, -1, torch::kLong);
  torch::Tensor parents = running_parents.clone();
  const torch::Tensor first_beams = torch::arange(keep).lt(K);  // candidates that may finish
  const torch::Tensor row_offset = (torch::arange(B) * K).unsqueeze(1);
  T5Cache cache;

  for (int64_t length = prompt;;) {
    const torch::Tensor last = running.select(2, length - 1).reshape({B * K, 1}).to(encoded.device());
    const torch::Tensor logits = model->decode(last, encoded, mask, {}, &cache).select(1, -1).to(torch::kFloat);
    const int64_t V = logits.size(-1);
    const torch::Tensor scores = (torch::log_softmax(logits, -1).to(torch::kCPU).view({B, K, V}) +
                                  running_scores.unsqueeze(2))
                                     .reshape({B, K * V});
    // The best `keep` continuations over every beam and token.
    auto [candidate_scores, candidate_index] = torch::topk(scores, keep);
    const torch::Tensor beam = candidate_index.div(V, "floor"), token = candidate_index.remainder(V);
    torch::Tensor candidates = gather_beams(running, beam);
    candidates.select(2, length).copy_(token);
    torch::Tensor candidate_parents = gather_beams(running_parents, beam);
    candidate_parents.select(2, length - prompt).copy_(beam + row_offset);
    const torch::Tensor stops = token.eq(config.eos_token_id).logical_or(torch::full_like(token, length + 1 >= max_length, torch::kBool));

    // The best continuations that go on.
    const torch::Tensor going_on = candidate_scores + stops.to(torch::kFloat) * kExcluded;
    const torch::Tensor next = std::get<1>(torch::topk(going_on, K));
    running = gather_beams(candidates, next);
    running_scores = gather_beams(going_on, next);
    running_parents = gather_beams(candidate_parents, next);

    // Those that end join the finished beams if they score better, length-penalised.
    const torch::Tensor just_finished = stops.logical_and(first_beams.unsqueeze(0));
    torch::Tensor ended = candidate_scores / std::pow(static_cast<double>(length + 1 - prompt), penalty);
    const torch::Tensor full = finished.all(1, true).logical_and(
        torch::full({B, 1}, options.early_stopping == EarlyStopping::on_full, torch::kBool));
    ended = ended + full.to(torch::kFloat) * kExcluded + improvable.logical_not().to(torch::kFloat) * kExcluded +
            just_finished.logical_not().to(torch::kFloat) * kExcluded;
    const torch::Tensor best = std::get<1>(torch::topk(torch::cat({beam_scores, ended}, 1), K));
    sequences = gather_beams(torch::cat({sequences, candidates}, 1), best);
    beam_scores = gather_beams(torch::cat({beam_scores, ended}, 1), best);
    parents = gather_beams(torch::cat({parents, candidate_parents}, 1), best);
    finished = gather_beams(torch::cat({finished, just_finished}, 1), best);

    cache.reorder(running_parents.select(2, length - prompt).reshape({B * K}).to(encoded.device()));
    ++length;
    // Can a running beam still beat the worst finished one?
    const int64_t hypothetical = options.early_stopping == EarlyStopping::never && penalty > 0.0 ? max_length - prompt
                                                                                                 : length - prompt;
    const torch::Tensor best_running = running_scores.slice(1, 0, 1) / std::pow(static_cast<double>(hypothetical), penalty);
    const torch::Tensor worst_finished =
        torch::where(finished, std::get<0>(beam_scores.min(1, true)).expand({B, K}), torch::full({B, K}, kExcluded));
    improvable = improvable.logical_and(best_running.gt(worst_finished).any(-1, true));
    const bool all_full = finished.all().item<bool>() && options.early_stopping == EarlyStopping::on_full;
    if (length >= max_length) break;  // every candidate stopped: the same step for every process
    const bool done = !improvable.any().item<bool>() || all_full || stops.all().item<bool>();
    if (!decode_again(!done, options)) break;
  }
  // The best finished beam of each row, cut to the longest one returned.
  const int64_t generated = parents.select(1, 0).ne(-1).sum(1).max().item<int64_t>();
  return sequences.select(1, 0).slice(1, 0, prompt + generated).contiguous();
}

}  // namespace

void Seq2SeqGenerationOptions::validate() const {
  if (max_new_tokens < 1) throw std::runtime_error("max_new_tokens must be at least 1, got " + std::to_string(max_new_tokens));
  if (num_beams < 1) throw std::runtime_error("num_beams must be at least 1, got " + std::to_string(num_beams));
  if (!std::isfinite(length_penalty)) throw std::runtime_error("length_penalty must be finite");
}

at::Tensor generate(T5& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                    const Seq2SeqGenerationOptions& options) {
  options.validate();
  torch::NoGradGuard no_grad;
  EvalModeGuard eval(*model);
  const torch::Tensor encoded = model->encode(input_ids, attention_mask);
  const int64_t max_length = 1 + options.max_new_tokens;
  if (options.num_beams == 1) return greedy(model, encoded, attention_mask, max_length, options);
  return beam_search(model, encoded, attention_mask, max_length, options);
}

}  // namespace ftrain::model
