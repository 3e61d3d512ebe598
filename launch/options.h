// The options of one ftrain run: one struct per INI section, each field named as its
// key, with defaults and a validate() that throws "<section.key>: <what is wrong>".
// Choices (train.precision, optim.decay, ...) are enums, parsed once. options.cpp is the
// only place that maps Boost.Program_options (INI sections and --section.key=value
// flags) onto them, and every error it reports reads
// "<file or command line>: <section.key>: <what is wrong>".
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "data/dataset_format.h"
#include "data/streaming_loader.h"
#include "dist/comm.h"
#include "dist/layout.h"
#include "launch/optim/options.h"

namespace ftrain::launch {

// run.host_memory: what becomes of host memory a step frees.
enum class HostMemory {
  reuse,    // kept in the heap, where the next step reuses it: the fastest steps on the CPU
  release,  // blocks of 128 KiB or more given back to the system: the lowest resident peak
};

// [run]: where the run lives and how it starts.
struct RunOptions {
  std::string dir;              // run directory: config, metrics, checkpoints
  uint64_t seed = 1234;         // model init, dropout and data order
  std::string resume = "none";  // none | auto | <checkpoint directory>
  int64_t exit_after_steps = 0; // stop (with a checkpoint) after this many steps in this process; 0 = never
  int threads = 0;              // intra-op threads per rank; 0 = cores / ranks on the node
  double step_timeout = 1800;   // seconds a step (or save, or evaluation) may take before the job aborts; 0 = never
  bool tensorboard = true;      // rank 0 also writes its metrics as TensorBoard event files to <dir>/tensorboard
  int64_t profile_from = 0;     // first step traced by the PyTorch profiler (1-based); 0 = off
  int64_t profile_steps = 3;    // steps traced from profile_from
  bool log_samples = false;     // each data-parallel rank appends its steps' dataset rows to <dir>/samples/
  HostMemory host_memory = HostMemory::reuse;  // where freed host memory goes (launch/main.cpp)
  void validate() const;
};

// model.init
enum class ModelInit {
  pretrained,  // load the weights
  random,      // fresh init from config.json
};

// train.precision: the autocast dtype of the forward pass's matrix products.
enum class Precision { fp32, bf16, fp16 };

// train.reduce_dtype: the dtype gradients travel and are summed in between data-parallel ranks.
enum class ReduceDtype { fp32, bf16 };

// [model]: the starting point.
struct ModelOptions {
  std::string path;              // Hugging Face model directory (config.json [+ safetensors])
  ModelInit init = ModelInit::pretrained;
  double dropout = -1;           // override every dropout probability; < 0 keeps config.json's
  void validate() const;
};

// [train]: the loop.
struct TrainOptions {
  int64_t steps = 100;              // optimizer steps in total
  int64_t global_batch_size = 8;    // sequences per optimizer step, summed over data-parallel ranks
  double grad_clip = 1.0;           // max global gradient norm; 0 = off
  int64_t log_every = 1;            // progress line period (metrics.jsonl gets every step)
  int64_t eval_every = 0;           // validation period in steps; 0 = only at the end
  int64_t eval_samples = 64;        // validation sequences per evaluation (0 = whole split)
  std::string eval_split = "validation";
  std::string eval_metric = "auto";     // see launch/eval/metrics.h higher_is_better; auto = by task
  int64_t max_answer_tokens = 30;       // question answering: the longest answer span evaluation predicts
  int64_t eval_num_beams = 1;           // seq2seq: beams of the generation evaluation scores (1 = greedy)
  int64_t early_stopping_patience = 0;  // validations without improvement before stopping; 0 = never
  std::string test_split = "test";      // evaluated once at the end; empty = never
  int64_t freeze_base_steps = 0;        // classification: head-only steps before full fine-tuning
  Precision precision = Precision::fp32;
  double loss_scale = 65536;            // fp16: initial dynamic loss scale
  int64_t loss_scale_window = 1000;     // fp16: finite steps in a row before the scale doubles
  ReduceDtype reduce_dtype = ReduceDtype::fp32;
  bool activation_checkpointing = false;  // recompute each block's activations in the backward pass
  void validate() const;
};

// [checkpoint]
struct CheckpointOptions {
  int64_t every = 0;   // steps between checkpoints; 0 = only at the end
  int64_t keep = 3;    // newest checkpoints kept
  bool at_end = true;  // save after the last step
  bool export_hf = true;  // write the final model as a Hugging Face directory in <run.dir>/final
  bool keep_best = true;  // checkpoint each validation improvement and finish with the best weights
  bool async = true;      // write checkpoints on a background thread while training goes on
  void validate() const;
};

// [dist]: the communicator's options (dist/comm.h) and the ZeRO stage (dist/zero.h).
struct DistOptions : dist::CommOptions {
  int zero = 0;  // 0 replicated; 1 sharded optimizer state; 2 + sharded gradients; 3 + sharded parameters
  bool prefetch = true;  // ZeRO-3: gather the next block while the current one computes
  void validate() const;
};

struct Config {
  RunOptions run;
  ModelOptions model;
  data::LoaderOptions data;  // [data], data/streaming_loader.h
  TrainOptions train;
  OptimOptions optim;  // [optim], launch/optim/options.h
  CheckpointOptions checkpoint;  // [checkpoint]
  DistOptions dist;

  std::string config_file;   // the INI file it came from, if any
  std::string resolved_ini;  // every option with its final value, as INI text
  std::set<std::string> command_line_keys;  // "section.key" given on the command line

  void validate() const;
  // Where `key`'s value was set: the config file, or "command line" (also for defaults
  // when there is no file).
  std::string origin(const std::string& key) const;
};

// Parses argv (and the --config INI file). Returns false when --help was asked for
// (help text already printed to `help_out`). Throws std::runtime_error naming the key
// or file for any unknown key, malformed value or inconsistent combination.
bool parse_config(int argc, const char* const* argv, Config& config, std::string& help_out);

// Builds a Config from INI text alone, such as the resolved configuration every
// checkpoint stores, with parse_config's keys, checks and errors; `source` names the
// text in them (a checkpoint directory, say).
Config parse_config_text(const std::string& ini, const std::string& source);

// The checks that need the process layout or the dataset as well as the options: the
// global batch against micro-batches times data-parallel ranks, sequence parallelism
// against the sequence length, and the task's options (train.eval_metric,
// train.freeze_base_steps) against the dataset's task and labels. Throws as
// parse_config does: "<file or command line>: <section.key>: <what is wrong>".
void validate_for(const Config& config, const dist::Layout& layout, const data::DatasetInfo& dataset);

}  // namespace ftrain::launch
