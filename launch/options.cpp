#include "launch/options.h"

#include "launch/eval/metrics.h"

#include <algorithm>
#include <boost/program_options.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace po = boost::program_options;

namespace ftrain::launch {
namespace {

constexpr unsigned kHelpWidth = 110;

// "<section.key>: <what is wrong>"; parse_config puts the file or "command line" before it.
[[noreturn]] void fail(const std::string& key, const std::string& what) {
  throw std::runtime_error(key + ": " + what);
}

template <typename E>
using Names = std::vector<std::pair<const char*, E>>;

const Names<ModelInit> kModelInits = {{"pretrained", ModelInit::pretrained}, {"random", ModelInit::random}};
const Names<HostMemory> kHostMemory = {{"reuse", HostMemory::reuse}, {"release", HostMemory::release}};
const Names<Precision> kPrecisions = {{"fp32", Precision::fp32}, {"bf16", Precision::bf16}, {"fp16", Precision::fp16}};
const Names<ReduceDtype> kReduceDtypes = {{"fp32", ReduceDtype::fp32}, {"bf16", ReduceDtype::bf16}};
const Names<Decay> kDecays = {{"cosine", Decay::cosine}, {"linear", Decay::linear}, {"constant", Decay::constant}};
using Packing = std::optional<data::Packing>;
const Names<Packing> kPackings = {{"auto", std::nullopt},
                                  {"none", data::Packing::kNone},
                                  {"concatenate", data::Packing::kConcatenate},
                                  {"documents", data::Packing::kDocuments}};

template <typename E>
std::string name_of(const Names<E>& names, E value) {
  for (const auto& [name, choice] : names)
    if (choice == value) return name;
  return "?";
}

template <typename E>
std::string listed(const Names<E>& names) {
  std::string out;
  for (const auto& [name, choice] : names) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

template <typename T>
std::string to_text(const T& value) {
  std::ostringstream out;
  if constexpr (std::is_same_v<T, bool>) {
    out << (value ? "true" : "false");
  } else {
    out << value;
  }
  return out.str();
}

// One section of options: registers `section.key` with Boost and remembers how to
// print the resolved value, so the INI written to the run directory lists everything.
class Section {
 public:
  Section(std::string name, std::string caption)
      : name_(std::move(name)), options_(caption, kHelpWidth, kHelpWidth / 2) {}

  template <typename T>
  Section& add(const std::string& key, T* field, const std::string& meaning) {
    options_.add_options()((name_ + "." + key).c_str(),
                           po::value<T>(field)->default_value(*field, to_text(*field)),
                           meaning.c_str());
    printers_.emplace_back(key, [field] { return to_text(*field); });
    return *this;
  }

  // A key whose value is one of `names`: Boost reads the text, which becomes the enum
  // here, once; anything else is an error listing the choices.
  template <typename E>
  Section& choice(const std::string& key, E* field, const Names<E>& names, const std::string& meaning) {
    const std::string full = name_ + "." + key;
    const std::string initial = name_of(names, *field);
    options_.add_options()(full.c_str(),
                           po::value<std::string>()->default_value(initial)->notifier([field, names, full](const std::string& text) {
                             for (const auto& [name, choice] : names)
                               if (text == name) {
                                 *field = choice;
                                 return;
                               }
                             fail(full, "must be one of " + listed(names) + ", got '" + text + "'");
                           }),
                           (listed(names) + ": " + meaning).c_str());
    printers_.emplace_back(key, [field, names] { return name_of(names, *field); });
    return *this;
  }

  const po::options_description& options() const { return options_; }

  void print_ini(std::ostream& out) const {
    out << "[" << name_ << "]\n";
    for (const auto& [key, print] : printers_) out << key << " = " << print() << "\n";
  }

 private:
  std::string name_;
  po::options_description options_;
  std::vector<std::pair<std::string, std::function<std::string()>>> printers_;
};

std::vector<Section> describe(Config& c) {
  std::vector<Section> sections;
  sections.emplace_back("run", "[run] where the run lives and how it starts");
  sections.back()
      .add("dir", &c.run.dir, "run directory: resolved config, metrics.jsonl, checkpoints (required)")
      .add("seed", &c.run.seed, "seed for model init and dropout")
      .add("resume", &c.run.resume, "none | auto (newest checkpoint in run.dir) | a checkpoint directory")
      .add("exit_after_steps", &c.run.exit_after_steps,
           "save and exit after this many steps in this process (0 = run to train.steps)")
      .add("threads", &c.run.threads,
           "intra-op CPU threads per rank (0 = OMP_NUM_THREADS if set, else cores / ranks on the node)")
      .add("tensorboard", &c.run.tensorboard,
           "rank 0 also writes the metrics of metrics.jsonl as TensorBoard event files to <run.dir>/tensorboard "
           "(tensorboard --logdir <run.dir>/tensorboard)")
      .add("step_timeout", &c.run.step_timeout,
           "seconds one step, checkpoint save or evaluation may take before the watchdog aborts the whole job, "
           "naming the rank and the operation (a dead or hung rank otherwise stalls every other); 0 = never")
      .add("profile_from", &c.run.profile_from,
           "trace steps from this one (1-based) with the PyTorch profiler: CPU operators and CUDA kernels, to "
           "<run.dir>/profile/rank_N_steps_A-B.json (Perfetto, chrome://tracing); rank 0 prints the kernels that took the "
           "most time; 0 = off")
      .add("profile_steps", &c.run.profile_steps, "steps traced from run.profile_from")
      .add("log_samples", &c.run.log_samples,
           "each data-parallel rank appends, per step, the dataset rows it trained on to "
           "<run.dir>/samples/dp_N.jsonl ({step, start, dp_rank, dp_size, rows}; start = the step this process began "
           "at), to check that a resumed or resharded run sees every sample once")
      .choice("host_memory", &c.run.host_memory, kHostMemory,
              "host memory a step frees: kept in the heap for the next step (the fastest steps on the CPU), or every "
              "block of 128 KiB or more given back to the system (the lowest resident peak: with ZeRO-3 and "
              "dist.prefetch = false, dist.overlap = false, train.activation_checkpointing = true, "
              "checkpoint.async = false, the least memory ftrain can train in)");

  sections.emplace_back("model", "[model] the starting weights");
  sections.back()
      .add("path", &c.model.path, "Hugging Face model directory: config.json and model.safetensors (required)")
      .choice("init", &c.model.init, kModelInits, "load the safetensors, or a fresh init from config.json")
      .add("dropout", &c.model.dropout, "override every dropout probability (< 0 keeps config.json's)");

  sections.emplace_back("data", "[data] tokenized HDF5 dataset written by ftrain-prep");
  sections.back()
      .add("path", &c.data.path, "HDF5 dataset file (required)")
      .add("split", &c.data.split, "split to train on")
      .add("micro_batch_size", &c.data.micro_batch_size, "sequences per rank per micro-step")
      .add("seed", &c.data.seed, "seed of the sample order")
      .add("shuffle", &c.data.shuffle, "shuffle the sample order each epoch")
      .add("prefetch", &c.data.prefetch, "micro-batches read ahead by a background thread")
      .add("dynamic_padding", &c.data.dynamic_padding,
           "classification batches: cut each micro-batch to its longest real row (a multiple of 8) "
           "instead of running the dataset's whole seq_len")
      .choice("packing", &c.data.packing, kPackings,
              "how the dataset's rows must hold their examples (ftrain-prep --packing): one each, documents "
              "concatenated without boundaries (continued pretraining), or whole documents with document masking; "
              "auto takes what the dataset holds");

  sections.emplace_back("train", "[train] the training loop");
  sections.back()
      .add("steps", &c.train.steps, "optimizer steps in total")
      .add("global_batch_size", &c.train.global_batch_size,
           "sequences per optimizer step over all data-parallel ranks; "
           "gradient accumulation = global_batch_size / (micro_batch_size * dp)")
      .add("grad_clip", &c.train.grad_clip, "clip the global gradient norm to this (0 = off)")
      .add("log_every", &c.train.log_every, "steps between progress lines on rank 0")
      .add("eval_every", &c.train.eval_every, "steps between validation runs (0 = only at the end)")
      .add("eval_samples", &c.train.eval_samples, "validation sequences per evaluation (0 = whole split)")
      .add("eval_split", &c.train.eval_split, "split used for validation")
      .add("eval_metric", &c.train.eval_metric,
           "validation metric that chooses the best checkpoint and early stopping: auto (loss for causal LM, "
           "accuracy for sequence classification, entity_f1 for token classification, f1 for question "
           "answering, loss for seq2seq) | loss | perplexity | accuracy | macro_f1 | entity_f1 | exact_match | f1 | "
           "rouge1 | rouge2 | rougeL | bleu")
      .add("max_answer_tokens", &c.train.max_answer_tokens,
           "question answering: the longest answer, in tokens, that evaluation predicts")
      .add("eval_num_beams", &c.train.eval_num_beams,
           "seq2seq: beam width of the generation that evaluation scores (1 = greedy)")
      .add("early_stopping_patience", &c.train.early_stopping_patience,
           "stop after this many validations in a row without improving eval_metric (0 = never)")
      .add("test_split", &c.train.test_split,
           "split evaluated once after training, with the best model, into <run.dir>/test_report.json "
           "(skipped when the dataset has no such split; empty = never)")
      .choice("precision", &c.train.precision, kPrecisions,
              "dtype of the forward pass's matrix products under autocast; weights, gradients and "
              "optimizer state stay fp32")
      .add("loss_scale", &c.train.loss_scale, "fp16: initial dynamic loss scale")
      .add("loss_scale_window", &c.train.loss_scale_window,
           "fp16: steps with finite gradients after which the loss scale doubles")
      .choice("reduce_dtype", &c.train.reduce_dtype, kReduceDtypes,
              "dtype the gradients travel and are summed in over the data-parallel ranks (bf16 halves "
              "the bytes on NCCL; MPI sums bf16 as fp32 and sends fp32); accumulation and the update stay fp32")
      .add("activation_checkpointing", &c.train.activation_checkpointing,
           "keep only each transformer block's input in the forward pass and recompute the block in the backward "
           "pass: activation memory of one block instead of all, for about one more forward pass of compute")
      .add("freeze_base_steps", &c.train.freeze_base_steps,
           "classification: train only the new head (the pretrained body frozen) for this many steps, "
           "then everything");

  sections.emplace_back("optim", "[optim] AdamW and its learning-rate schedule");
  sections.back()
      .add("lr", &c.optim.lr, "peak learning rate")
      .add("min_lr", &c.optim.min_lr, "learning rate at the end of the decay")
      .add("warmup_steps", &c.optim.warmup_steps, "linear warmup steps from 0 to lr")
      .choice("decay", &c.optim.decay, kDecays, "from lr to min_lr after warmup")
      .add("weight_decay", &c.optim.weight_decay, "decoupled weight decay on matrices and embeddings")
      .add("beta1", &c.optim.beta1, "AdamW beta1")
      .add("beta2", &c.optim.beta2, "AdamW beta2")
      .add("eps", &c.optim.eps, "AdamW epsilon");

  sections.emplace_back("checkpoint", "[checkpoint] saving and keeping checkpoints");
  sections.back()
      .add("every", &c.checkpoint.every, "steps between checkpoints (0 = only at the end)")
      .add("keep", &c.checkpoint.keep, "newest checkpoints kept on disk")
      .add("at_end", &c.checkpoint.at_end, "save a checkpoint after the last step")
      .add("export_hf", &c.checkpoint.export_hf,
           "write the final model as a Hugging Face directory to <run.dir>/final (the best one, with keep_best)")
      .add("keep_best", &c.checkpoint.keep_best,
           "save a checkpoint whenever validation improves train.eval_metric, keep it whatever checkpoint.keep "
           "says, and finish (test report, export) with its weights")
      .add("async", &c.checkpoint.async,
           "write checkpoints in the background: training waits only while each rank copies its part to host "
           "memory; false writes them before training goes on, and on CPU ranks straight from where the state "
           "lies, with no second copy of it");

  sections.emplace_back("dist", "[dist] ranks, groups and devices");
  sections.back()
      .add("tp", &c.dist.tp, "ranks per tensor-parallel group (GPT-2, Llama family and BERT bodies); data-parallel size = world size / tp")
      .add("sequence_parallel", &c.dist.sequence_parallel,
           "with tp > 1, each rank of a tensor-parallel group keeps only its part of the sequence between the "
           "attention and MLP layers (norms, dropout, residual adds), so activation memory there shrinks by tp; "
           "the sequence length of data.path must be a multiple of tp")
      .add("device", &c.dist.device, "cpu | cuda (one GPU per rank, by local rank)")
      .add("bucket_mb", &c.dist.bucket_mb, "gradient all-reduce bucket size in MiB")
      .add("overlap", &c.dist.overlap,
           "start gradient reductions during the backward pass: each bucket's all-reduce (ZeRO 0) or each "
           "transformer block's reduce-scatter (ZeRO 1-3) as soon as backward has produced it")
      .add("zero", &c.dist.zero,
           "ZeRO stage over data-parallel ranks: 0 replicated, 1 sharded optimizer state, 2 + sharded gradients, "
           "3 + sharded parameters (gathered per transformer block)")
      .add("prefetch", &c.dist.prefetch,
           "ZeRO-3: gather the next transformer block's parameters while the current one computes (forward and "
           "backward); false holds one gathered block instead of two, for the least memory");
  return sections;
}

// Every option with its final value, as INI text that parse_config_text reads back.
std::string resolved_ini(const std::vector<Section>& sections) {
  std::ostringstream ini;
  ini << "# resolved ftrain configuration\n";
  for (const auto& section : sections) {
    section.print_ini(ini);
    ini << "\n";
  }
  return ini.str();
}

void require_positive(const std::string& key, double value) {
  if (!(value > 0)) fail(key, "must be > 0, got " + to_text(value));
}

void require_non_negative(const std::string& key, double value) {
  if (value < 0) fail(key, "must be >= 0, got " + to_text(value));
}

}  // namespace

void RunOptions::validate() const {
  if (dir.empty()) fail("run.dir", "is required (the directory for config, metrics and checkpoints)");
  if (resume.empty()) fail("run.resume", "must be none, auto or a checkpoint directory");
  require_non_negative("run.exit_after_steps", static_cast<double>(exit_after_steps));
  require_non_negative("run.threads", threads);
  require_non_negative("run.step_timeout", step_timeout);
  require_non_negative("run.profile_from", static_cast<double>(profile_from));
  if (profile_steps < 1) fail("run.profile_steps", "must be >= 1, got " + std::to_string(profile_steps));
}

void ModelOptions::validate() const {
  if (path.empty()) fail("model.path", "is required (a Hugging Face model directory)");
  if (dropout >= 1) fail("model.dropout", "must be < 1, got " + to_text(dropout));
}

void TrainOptions::validate() const {
  require_positive("train.steps", static_cast<double>(steps));
  require_positive("train.global_batch_size", static_cast<double>(global_batch_size));
  require_non_negative("train.grad_clip", grad_clip);
  require_positive("train.log_every", static_cast<double>(log_every));
  require_non_negative("train.eval_every", static_cast<double>(eval_every));
  require_non_negative("train.eval_samples", static_cast<double>(eval_samples));
  require_positive("train.max_answer_tokens", static_cast<double>(max_answer_tokens));
  require_positive("train.eval_num_beams", static_cast<double>(eval_num_beams));
  require_non_negative("train.early_stopping_patience", static_cast<double>(early_stopping_patience));
  require_non_negative("train.freeze_base_steps", static_cast<double>(freeze_base_steps));
  require_positive("train.loss_scale", loss_scale);
  require_positive("train.loss_scale_window", static_cast<double>(loss_scale_window));
  if (freeze_base_steps >= steps)
    fail("train.freeze_base_steps", "must be below train.steps (" + std::to_string(steps) +
                                        ") so that the whole model is trained at the end");
  if (eval_metric != "auto") {
    try {
      (void)higher_is_better(eval_metric);
    } catch (const std::runtime_error& error) {
      fail("train.eval_metric", error.what());
    }
  }
}

void OptimOptions::validate() const {
  require_positive("optim.lr", lr);
  require_non_negative("optim.min_lr", min_lr);
  if (min_lr > lr) fail("optim.min_lr", "must not exceed optim.lr (" + to_text(lr) + ")");
  require_non_negative("optim.warmup_steps", static_cast<double>(warmup_steps));
  require_non_negative("optim.weight_decay", weight_decay);
  if (beta1 < 0 || beta1 >= 1) fail("optim.beta1", "must be in [0, 1)");
  if (beta2 < 0 || beta2 >= 1) fail("optim.beta2", "must be in [0, 1)");
  require_positive("optim.eps", eps);
}

void CheckpointOptions::validate() const {
  require_non_negative("checkpoint.every", static_cast<double>(every));
  require_positive("checkpoint.keep", static_cast<double>(keep));
}

void DistOptions::validate() const {
  dist::CommOptions::validate();
  if (zero < 0 || zero > 3) fail("dist.zero", "must be 0, 1, 2 or 3, got " + std::to_string(zero));
}

void Config::validate() const {
  run.validate();
  model.validate();
  data.validate();
  train.validate();
  optim.validate();
  checkpoint.validate();
  dist.validate();
  if (optim.warmup_steps > train.steps)
    fail("optim.warmup_steps", "(" + to_text(optim.warmup_steps) + ") exceeds train.steps (" +
                                   to_text(train.steps) + ")");
  if (train.global_batch_size % data.micro_batch_size != 0)
    fail("train.global_batch_size", "(" + to_text(train.global_batch_size) +
                                        ") must be a multiple of data.micro_batch_size (" +
                                        to_text(data.micro_batch_size) + ")");
}

std::string Config::origin(const std::string& key) const {
  return command_line_keys.count(key) > 0 || config_file.empty() ? "command line" : config_file;
}

namespace {

// "<section.key>: ..." from a check becomes "<where the key was set>: <section.key>: ...".
std::runtime_error located(const Config& config, const std::exception& e) {
  const std::string text = e.what();
  return std::runtime_error(config.origin(text.substr(0, text.find(':'))) + ": " + text);
}

void check_task_options(const Config& config, const data::DatasetInfo& dataset) {
  const bool causal_lm = dataset.task == data::format::kTaskCausalLm;
  const bool seq2seq = dataset.task == data::format::kTaskSeq2Seq;
  if ((causal_lm || seq2seq) && config.train.freeze_base_steps > 0)
    fail("train.freeze_base_steps", "a " + std::string(causal_lm ? "causal" : "sequence-to-sequence") +
                                        " language model has no new head to train alone; set it to 0 (" +
                                        config.data.path + " is a " + dataset.task + " dataset)");
  if (seq2seq && config.dist.tp > 1 && config.dist.sequence_parallel)
    fail("dist.sequence_parallel", "is not available for sequence-to-sequence models (T5); turn it off");
  const std::string& metric = config.train.eval_metric;
  if (metric == "auto") return;
  if (metric == "entity_f1" && dataset.task == data::format::kTaskTokenClassification) {
    try {
      check_entity_labels(dataset.label_names);
    } catch (const std::runtime_error& error) {
      fail("train.eval_metric", "entity_f1 needs BIO tags, but " + config.data.path + " has other labels: " +
                                    error.what());
    }
  }
  const std::vector<std::string> names = metric_names(dataset.task, dataset.label_names);
  if (std::find(names.begin(), names.end(), metric) == names.end()) {
    std::string known;
    for (const auto& name : names) known += (known.empty() ? "" : ", ") + name;
    fail("train.eval_metric", "'" + metric + "' is not measured for " + dataset.task + " (" + config.data.path +
                                  "); choose one of " + known);
  }
}

// Boost.Program_options builds its messages by replacing placeholders such as %value%
// with the offending text; text that itself holds one makes that replacement loop
// forever. Such text is refused before Boost sees it. The tokens are those
// libboost_program_options 1.74 substitutes. `lines` says whether to count lines (a
// file) or show the word (the command line).
void refuse_placeholders(const std::string& text, const std::string& origin, bool lines) {
  for (const char* token : {"%value%", "%canonical_option%", "%option%", "%prefix%", "%original_token%",
                            "%invalid_line%", "%valual_option%"}) {
    const size_t at = text.find(token);
    if (at == std::string::npos) continue;
    const auto before = text.begin() + static_cast<std::ptrdiff_t>(at);
    const std::string where =
        lines ? "line " + std::to_string(1 + std::count(text.begin(), before, '\n')) : "'" + text + "'";
    throw std::runtime_error(origin + ": " + where + ": holds '" + token +
                             "', which ftrain cannot take in a configuration (the option parser uses it in its "
                             "messages)");
  }
}

// Boost's parser errors in the one format: "<origin>: <section.key>: <what is wrong>".
std::runtime_error parse_error(const std::string& origin, const po::error& e) {
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  if (named == nullptr) return std::runtime_error(origin + ": " + e.what());
  std::string key = named->get_option_name();
  key.erase(0, key.find_first_not_of('-'));
  key = key.substr(0, key.find('='));
  std::string what;
  if (dynamic_cast<const po::unknown_option*>(&e) != nullptr) {
    what = "no such option (ftrain --help lists them)";
  } else if (dynamic_cast<const po::validation_error*>(&e) != nullptr) {
    // "the argument ('abc') for option '--x' is invalid[. Valid choices are ...]"
    const std::string text = e.what();
    const auto open = text.find("('");
    const auto close = text.find("')");
    const auto rest = text.find(" is invalid");
    what = open == std::string::npos || close == std::string::npos
               ? "invalid value"
               : "invalid value '" + text.substr(open + 2, close - open - 2) + "'";
    if (rest != std::string::npos) what += text.substr(rest + 11);
  } else if (dynamic_cast<const po::multiple_occurrences*>(&e) != nullptr) {
    what = "given more than once";
  } else {
    what = e.what();
  }
  return std::runtime_error(origin + ": " + key + ": " + what);
}

}  // namespace

void validate_for(const Config& config, const dist::Layout& layout, const data::DatasetInfo& dataset) {
  try {
    const int64_t per_step = config.data.micro_batch_size * layout.dp_size;
    if (config.train.global_batch_size % per_step != 0)
      fail("train.global_batch_size",
           "(" + to_text(config.train.global_batch_size) +
               ") must be a multiple of data.micro_batch_size x data-parallel size (" +
               to_text(config.data.micro_batch_size) + " x " + to_text(layout.dp_size) + ")");
    // Sequence parallelism splits every sequence evenly over the tensor-parallel group.
    if (config.dist.sequence_parallel && layout.tp_size > 1 && dataset.seq_len % layout.tp_size != 0)
      fail("dist.sequence_parallel",
           "the sequences of " + config.data.path + " are " + to_text(dataset.seq_len) +
               " tokens long, not a multiple of dist.tp = " + to_text(layout.tp_size) +
               "; prepare the data with a seq_len divisible by " + to_text(layout.tp_size) +
               ", or turn sequence parallelism off");
    if (config.data.packing && *config.data.packing != dataset.packing())
      fail("data.packing", "is " + name_of(kPackings, config.data.packing) + ", but " + config.data.path +
                               " holds rows packed as '" + name_of(kPackings, Packing(dataset.packing())) +
                               "'; prepare it with ftrain-prep --packing " + name_of(kPackings, config.data.packing) +
                               ", or set data.packing = auto");
    check_task_options(config, dataset);
  } catch (const std::exception& e) {
    throw located(config, e);
  }
}

bool parse_config(int argc, const char* const* argv, Config& config, std::string& help_out) {
  std::vector<Section> sections = describe(config);

  po::options_description general("General", kHelpWidth, kHelpWidth / 2);
  general.add_options()("help,h", "list every option with its default and meaning")(
      "config", po::value<std::string>(&config.config_file),
      "INI file; [section] key = value is the same as --section.key=value, and the command line wins")(
      "resume", po::value<std::string>()->implicit_value("auto"),
      "shorthand for --run.resume (bare --resume means auto: the newest valid checkpoint)");

  po::options_description all("ftrain options", kHelpWidth, kHelpWidth / 2);
  all.add(general);
  for (const auto& section : sections) all.add(section.options());

  po::variables_map values;
  try {
    // The command line is stored first so its values take precedence over the file's.
    // `--section.key=` sets an empty value, as `key =` does in the file; Boost refuses an
    // empty value after '=', but takes one given as the next word.
    std::vector<std::string> words;
    for (int i = 1; i < argc; ++i) {
      const std::string word = argv[i];
      refuse_placeholders(word, "command line", /*lines=*/false);
      if (word.size() > 3 && word.rfind("--", 0) == 0 && word.back() == '=' &&
          word.find('=') == word.size() - 1) {
        words.push_back(word.substr(0, word.size() - 1));
        words.emplace_back();
      } else {
        words.push_back(word);
      }
    }
    po::store(po::command_line_parser(words).options(all).run(), values);
  } catch (const po::error& e) {
    throw parse_error("command line", e);
  }
  for (const auto& [key, value] : values)
    if (!value.defaulted()) config.command_line_keys.insert(key);

  if (values.count("help")) {
    std::ostringstream out;
    out << "usage: mpirun -np N ftrain --config FILE.ini [--section.key=value ...]\n\n"
        << all;
    help_out = out.str();
    return false;
  }

  if (values.count("config")) {
    const std::string path = values["config"].as<std::string>();
    config.config_file = path;  // before the notifiers: their errors name it
    if (!std::filesystem::is_regular_file(path))
      throw std::runtime_error(path + ": config file not found (--config)");
    std::ifstream file(path);
    if (!file) throw std::runtime_error(path + ": cannot open config file");
    const std::string content((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    refuse_placeholders(content, path, /*lines=*/true);
    std::istringstream text(content);
    try {
      po::store(po::parse_config_file(text, all, /*allow_unregistered=*/false), values);
    } catch (const po::error& e) {
      throw parse_error(path, e);
    }
  }

  if (values.count("resume")) {
    // --resume is an alias; giving both with different values is ambiguous.
    const std::string resume = values["resume"].as<std::string>();
    if (!values["run.resume"].defaulted() && values["run.resume"].as<std::string>() != resume)
      throw std::runtime_error("command line: resume: conflicts with run.resume = " +
                               values["run.resume"].as<std::string>());
    values.at("run.resume").value() = resume;
  }

  try {
    po::notify(values);
    config.validate();
  } catch (const std::exception& e) {
    throw located(config, e);
  }
  config.resolved_ini = resolved_ini(sections);
  return true;
}

Config parse_config_text(const std::string& ini, const std::string& source) {
  Config config;
  std::vector<Section> sections = describe(config);
  po::options_description all("ftrain options", kHelpWidth, kHelpWidth / 2);
  for (const auto& section : sections) all.add(section.options());
  po::variables_map values;
  refuse_placeholders(ini, source, /*lines=*/true);
  std::istringstream text(ini);
  try {
    po::store(po::parse_config_file(text, all, /*allow_unregistered=*/false), values);
  } catch (const po::error& e) {
    throw parse_error(source, e);
  }
  try {
    po::notify(values);
    config.validate();
  } catch (const std::exception& e) {
    throw std::runtime_error(source + ": " + e.what());
  }
  config.resolved_ini = resolved_ini(sections);
  return config;
}

}  // namespace ftrain::launch
