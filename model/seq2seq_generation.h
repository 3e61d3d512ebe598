// Generation from an encoder-decoder (T5): the encoder runs once, then the decoder adds
// one token per step through a T5Cache (self-attention keys and values so far, the
// cross-attention's computed once). Greedy search, or beam search as transformers'
// generate() runs it, so both give its tokens for the same model (docs/generation.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

#include "model/t5.h"

namespace ftrain::model {

struct Seq2SeqGenerationOptions {
  int64_t max_new_tokens = 64;
  int64_t num_beams = 1;        // 1: greedy
  double length_penalty = 1.0;  // a finished beam scores sum(log p) / length^length_penalty
  // When beam search stops (transformers' early_stopping): `heuristic` (False) once no
  // running beam can beat the finished ones at its current length, `on_full` (True) as
  // soon as num_beams beams have finished, `never` once none can at the longest length.
  enum class EarlyStopping { heuristic, on_full, never };
  EarlyStopping early_stopping = EarlyStopping::heuristic;

  // Given whether this process would decode one more step, whether every process that
  // generates alongside it does: set where each step communicates (ZeRO-3 gathers every
  // block from the data-parallel group), so that all take the same number of steps.
  // Steps taken after a process's own rows are done change none of its results. Empty:
  // the process decides alone.
  std::function<bool(bool this_one_continues)> continue_together;

  // Throws std::runtime_error "<key> <what is wrong>".
  void validate() const;
};

// Generates from input_ids (B, S) int64 with attention_mask (B, S) or undefined. Returns
// (B, 1 + N) int64 on the CPU: decoder_start_token_id, then N <= max_new_tokens tokens,
// as generate() returns them: rows that ended early are filled (greedy: pad_token_id;
// beam search: pad_token_id, or eos_token_id where pad is 0, as transformers fills).
// Runs without gradients in eval mode, the model's mode restored afterwards.
at::Tensor generate(T5& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                    const Seq2SeqGenerationOptions& options);

}  // namespace ftrain::model
