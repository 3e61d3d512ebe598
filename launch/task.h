// What a run trains, decided by the dataset's `task` attribute: a causal language model
// (domain adaptation, instruction tuning with masked prompts), a classifier of
// sequences or tokens on top of a pretrained body, an extractive question answerer
// (a start and an end score at every position), or an encoder-decoder (summarization,
// translation) evaluated on the text it generates. A Task owns the model and knows its
// loss, its evaluation metrics and its export.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/streaming_loader.h"
#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "dist/streamed_vocab.h"
#include "dist/tensor_parallel.h"
#include "dist/zero.h"
#include "model/block_runner.h"
#include "model/hf_checkpoint.h"

namespace ftrain::launch {

struct Config;

enum class TaskKind { causal_lm, sequence_classification, token_classification, question_answering, seq2seq };

// One micro-batch on the model's device.
struct TaskBatch {
  at::Tensor input_ids;       // (B, T) int64
  at::Tensor attention_mask;  // (B, T) int64, or undefined for unpadded rows
  at::Tensor token_type_ids;  // (B, T) int64, or undefined
  at::Tensor targets;         // causal LM: (B, T-1) next tokens; classification: (B) or (B, T) labels, -100 = none;
                              // question answering: (B, 2) positions; seq2seq: (B, target_len) target tokens
  at::Tensor target_mask;     // causal LM: (B, T-1) float, 1 where the position is a target
  int64_t target_count = 0;   // targets in the batch, counted on the host
  std::vector<int64_t> host_labels;  // classification: the labels, for the metrics
  std::vector<int64_t> rows;         // the dataset row of each sequence; -1 = filler
};

// Sufficient statistics of an evaluation, summed over batches and ranks.
struct EvalTotals {
  double loss_sum = 0;
  int64_t count = 0;               // targets
  std::vector<int64_t> confusion;  // classification: num_labels^2, row = truth
  std::vector<int64_t> entities;   // token classification: true, predicted, correct
  std::string split;               // the split evaluated
  std::vector<double> spans;       // question answering: per row of the split (launch/eval/squad.h)
  std::vector<int64_t> generated;  // seq2seq: per row of the split, 1 when evaluated, then its generated tokens
};

class AdamW;

// The targets (tokens with loss_mask 1, labels other than -100) of a global batch: this
// rank's micro-batches summed over the data-parallel group. Collective. Throws
// std::runtime_error naming `data_path` when there are none, since the loss would
// divide by zero.
int64_t global_target_count(const std::vector<TaskBatch>& batches, dist::Group& dp, const std::string& data_path);

class Task {
 public:
  // Builds the model the dataset's task asks for from model.path. Throws
  // std::runtime_error naming the dataset or key for a task the model cannot do.
  Task(const Config& config, const data::DatasetInfo& dataset);
  // The same, split over comm.tp() as it is built when that group has more than one
  // rank (dist::load_tensor_parallel): a pretrained model is read in parts, each rank
  // reading only its slices of the files, so no rank holds the whole model. parallelize()
  // then returns the plan it was split by.
  // At dist.zero = 3 a causal LM is read (or, with model.init = random, drawn) straight
  // into ZeRO-3 shards on comm.device() (dist::load_zero3), and so is a pretrained
  // classifier: no rank holds the whole model or its whole tensor-parallel part;
  // take_sharding() hands the shards to the trainer.
  Task(const Config& config, const data::DatasetInfo& dataset, dist::Communicator& comm);
  // A model that only describes itself, for save_streamed() whose values come from
  // elsewhere (a checkpoint read tensor by tensor): built without values, its memory
  // never committed.
  struct WithoutValues {};
  Task(const Config& config, const data::DatasetInfo& dataset, WithoutValues);
  ~Task();
  Task(Task&&) noexcept;
  Task& operator=(Task&&) noexcept;

  TaskKind kind() const { return kind_; }
  const std::string& name() const;  // causal_lm | sequence_classification | token_classification | question_answering
  const std::string& family() const;      // model_type of the body
  int64_t vocab_size() const;
  torch::nn::Module& module();
  std::vector<std::string> load_warnings() const;

  // Whether a parameter belongs to the new head (what a frozen-body stage trains).
  // Always false for a causal LM.
  bool is_head_parameter(const std::string& name) const;
  // The frozen-body stage (train.freeze_base_steps): while frozen only the head trains;
  // the body gets no gradient (autograd stops at it) and `optimizer` leaves it alone.
  void set_body_frozen(bool frozen, AdamW& optimizer);

  // The validation metric that picks the best model when train.eval_metric is auto,
  // and all those metrics() reports.
  std::string default_metric() const;
  std::vector<std::string> metric_names() const;

  // Classification, token classification, question answering and seq2seq batches are
  // cut to their longest real row (the last position with attention or a label; for
  // seq2seq the source by attention and the target by its last label), rounded up to a
  // multiple of 8 (and of tp with sequence parallelism), unless data.dynamic_padding is
  // off: the positions cut are padding, which no real token attends to and no loss counts.
  TaskBatch prepare(const data::Batch& batch, const c10::Device& device) const;
  // Sum of the loss over the batch's targets (divide by the global target count).
  at::Tensor loss_sum(const TaskBatch& batch);
  // Forward pass in the current mode, adding loss and metric counts to `totals`.
  void evaluate(const TaskBatch& batch, EvalTotals& totals);
  // Zero totals for evaluating `split` (question answering reads the split's answers).
  EvalTotals empty_totals(const std::string& split);
  // The metrics of summed totals: loss, and perplexity, accuracy, macro_f1,
  // entity_precision/recall/f1, exact_match and f1, or ROUGE and BLEU as the task has
  // them. With `predictions`, the same pass also fills it with what was predicted:
  // question answering's answer text by question id, seq2seq's [{prediction,
  // reference}]; it stays null for the other tasks.
  nlohmann::json metrics(const EvalTotals& totals, nlohmann::json* predictions = nullptr) const;

  // The transformer blocks of the body, in order, each as the names of its parameters
  // (as module().named_parameters() names them).
  std::vector<std::vector<std::string>> block_parameter_names();
  // How ZeRO-3 cuts the model besides its blocks: the parameters only the embeddings
  // use, and the vocabulary matrices it streams by rows (dist/streamed_vocab.h). Call
  // after parallelize().
  dist::ZeroUnitNames zero3_unit_names();
  // Where data parallelism holds a vocabulary matrix by rows (ZeRO-3), the token
  // embedding and the language-modelling loss compute from those rows
  // (dist/streamed_vocab.h). `data_parallel` must outlive the task's use.
  void stream_vocabulary(const dist::DataParallel& data_parallel);
  // Runs every block of the model's bodies through `runner` (ZeRO-3's gathering,
  // activation checkpointing), numbered over the bodies in order.
  void set_block_runner(const model::BlockRunner& runner);

  // Splits the model over comm.tp() (dist::apply_tensor_parallel), unless it was split
  // as it was built: a causal LM's loss then reads vocabulary-parallel logits; a
  // classifier's body (BERT, GPT-2 or the Llama family) is split under its whole head.
  // Throws std::runtime_error naming dist.tp for sizes the model cannot be split by.
  // Call before the optimizer is made.
  dist::TensorParallelPlan parallelize(dist::Communicator& comm);
  const dist::TensorParallelPlan& plan() const { return plan_; }

  // The ZeRO-3 shards the model was read into, once (null when it was read whole).
  std::unique_ptr<dist::ZeroSharding> take_sharding();

  // Writes the model, whole in this process, as a Hugging Face directory (with label
  // names for classifiers). A split model is written by save_streamed().
  void save(const std::filesystem::path& dir, model::ExistingDirectory existing) const;
  // The model written tensor by tensor: a skeleton of the unsplit model (built without
  // values, so its memory is never committed) describes the files, and each stored
  // tensor's data is the parameter's whole value that `whole_value` returns, asked for
  // one parameter at a time in file order. With a whole_value that gathers a sharded
  // parameter, no process ever holds more than one whole tensor.
  void save_streamed(const std::filesystem::path& dir, model::ExistingDirectory existing,
                     const std::function<at::Tensor(const std::string& parameter)>& whole_value) const;

 private:
  Task(const Config& config, const data::DatasetInfo& dataset, dist::Communicator* comm, bool skeleton = false);

  // Question answering's batch (labels (B, 2)) and loss.
  TaskBatch prepare_spans(const data::Batch& batch, TaskBatch& out, const c10::Device& device) const;
  static at::Tensor span_loss_sum(const at::Tensor& logits, const at::Tensor& targets);
  // Sequence to sequence: the batch (labels (B, target_len)), evaluation by generation,
  // and the texts of the evaluated rows (prediction, reference).
  TaskBatch prepare_targets(const data::Batch& batch, TaskBatch& out, const c10::Device& device) const;
  void evaluate_generation(const TaskBatch& batch, EvalTotals& totals);
  std::vector<std::array<std::string, 2>> generated_texts(const EvalTotals& totals) const;

  struct Model;
  TaskKind kind_;
  std::vector<std::string> label_names_;
  std::unique_ptr<Model> model_;
  dist::TensorParallelPlan split(dist::Communicator& comm);
  // std::invalid_argument of a split -> std::runtime_error naming dist.tp and the model.
  template <typename Split>
  void naming_dist_tp(dist::Communicator& comm, Split split);

  std::string model_path_;
  bool dynamic_padding_ = true;  // data.dynamic_padding
  bool packed_documents_ = false;  // the dataset's attention_mask holds document ids (format_version 2)
  dist::TensorParallelPlan plan_;
  dist::Group* tp_ = nullptr;  // a split causal LM's group, for the vocabulary-parallel loss
  const dist::ZeroSharding::RowShards* head_rows_ = nullptr;  // a streamed head (ZeRO-3)
  std::unique_ptr<dist::ZeroSharding> sharding_;  // read into ZeRO-3 shards, until taken
};

}  // namespace ftrain::launch
