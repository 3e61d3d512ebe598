#include "launch/task.h"

#include <torch/torch.h>

#include <map>
#include <numeric>
#include <optional>
#include <stdexcept>

#include "launch/eval/metrics.h"
#include "launch/eval/squad.h"
#include "launch/eval/text_metrics.h"
#include "data/tokenizer.h"
#include "data/token_dataset.h"
#include "model/seq2seq_lm.h"
#include "launch/optim/adamw.h"
#include "dist/sharded_load.h"
#include "launch/options.h"
#include "model/causal_lm.h"
#include "model/fused_cross_entropy.h"
#include "model/classifier.h"
#include "model/transformer_body.h"

namespace ftrain::launch {
namespace {

// A host tensor on `device`. To a GPU it goes through pinned memory without the host
// waiting: the copy is queued behind the work already on the stream, and the host goes
// on preparing and queueing. The pinned buffer is the host allocator's, kept until the
// copy is done.
torch::Tensor to_device(const torch::Tensor& host, const c10::Device& device) {
  if (!device.is_cuda()) return host.to(device);
  return host.contiguous().pin_memory().to(device, /*non_blocking=*/true);
}

torch::Tensor host_tensor(const std::vector<uint8_t>& values, int64_t rows, int64_t columns) {
  return torch::from_blob(const_cast<uint8_t*>(values.data()), {rows, columns}, torch::kUInt8);
}

TaskKind kind_of(const std::string& task, const std::string& dataset_path) {
  if (task == data::format::kTaskCausalLm) return TaskKind::causal_lm;
  if (task == data::format::kTaskSequenceClassification) return TaskKind::sequence_classification;
  if (task == data::format::kTaskTokenClassification) return TaskKind::token_classification;
  if (task == data::format::kTaskQuestionAnswering) return TaskKind::question_answering;
  if (task == data::format::kTaskSeq2Seq) return TaskKind::seq2seq;
  throw std::runtime_error(dataset_path + ": task '" + task +
                           "' is not one ftrain trains (causal_lm, sequence_classification, token_classification, "
                           "question_answering, seq2seq)");
}

}  // namespace

struct Task::Model {
  std::optional<model::CausalLm> lm;
  bool skeleton = false;  // built WithoutValues: the model only describes itself
  model::CausalLmOptions lm_options;  // to build an unsplit copy for exports
  model::ClassifierOptions classifier_options;
  std::optional<model::Classifier> classifier;
  std::vector<std::string> warnings;
  bool entity_metrics = false;  // the tags are BIO-style, so entities can be scored
  std::string name;
  // Question answering: each evaluated split's answers, read once; the longest answer.
  std::string data_path;
  std::map<std::string, std::shared_ptr<const AnswerSpans>> answer_spans;
  int64_t max_answer_tokens = 30;
  // Sequence to sequence: the encoder-decoder, the target length, the beams evaluation
  // generates with, and the dataset's tokenizer (read at the first evaluation) for text.
  std::optional<model::Seq2SeqLm> s2s;
  model::Seq2SeqLmOptions s2s_options;  // to build a skeleton for streamed exports
  int64_t target_len = 0;
  int64_t eval_num_beams = 1;
  std::function<bool(bool)> continue_together;  // ZeRO-3: every data-parallel rank decodes as many steps
  std::string tokenizer_path;
  std::shared_ptr<const data::Tokenizer> tokenizer;
};

Task::Task(const Config& config, const data::DatasetInfo& dataset) : Task(config, dataset, nullptr) {}

Task::Task(const Config& config, const data::DatasetInfo& dataset, dist::Communicator& comm)
    : Task(config, dataset, &comm) {}

Task::Task(const Config& config, const data::DatasetInfo& dataset, WithoutValues)
    : Task(config, dataset, nullptr, /*skeleton=*/true) {}

Task::Task(const Config& config, const data::DatasetInfo& dataset, dist::Communicator* comm, bool skeleton)
    : kind_(kind_of(dataset.task, config.data.path)), label_names_(dataset.label_names),
      model_(std::make_unique<Model>()), model_path_(config.model.path),
      dynamic_padding_(config.data.dynamic_padding),
      packed_documents_(dataset.format_version >= data::format::kVersionPackedDocuments) {
  model_->name = dataset.task;
  const bool pretrained = config.model.init == ModelInit::pretrained;
  // Split over the tensor-parallel group as it is built, so each rank reads its part.
  dist::Communicator* split_over = comm && comm->tp().size() > 1 ? comm : nullptr;
  if (kind_ == TaskKind::causal_lm) {
    model_->lm_options = model::CausalLmOptions{config.model.path, pretrained, config.run.seed, config.model.dropout, {}};
    if (skeleton) {
      model::CausalLmOptions options = model_->lm_options;
      options.skeleton = true;
      model_->lm = model::CausalLm::load(options);
      model_->skeleton = true;
      return;
    }
    if (comm && config.dist.zero == 3) {
      // Each rank reads (or draws, for a random init) only its ZeRO-3 shard.
      naming_dist_tp(*comm, [&] {
        dist::ShardedCausalLm sharded = dist::load_zero3(model_->lm_options, *comm, comm->device(), plan_);
        model_->lm = std::move(sharded.model);
        sharding_ = std::move(sharded.zero);
        if (plan_.tp_size > 1) tp_ = &comm->tp();
      });
      return;
    }
    if (!split_over) {
      model_->lm = model::CausalLm::load(model_->lm_options);
      return;
    }
    naming_dist_tp(*split_over, [&] {
      model_->lm = dist::load_tensor_parallel(model_->lm_options, *split_over, plan_);
      tp_ = &split_over->tp();  // the loss reads vocabulary-parallel logits
    });
    return;
  }
  model_->data_path = config.data.path;
  model_->max_answer_tokens = config.train.max_answer_tokens;
  if (kind_ == TaskKind::seq2seq) {
    model_->s2s_options = {config.model.path, pretrained, config.run.seed, config.model.dropout, skeleton, {}};
    if (comm && config.dist.zero == 3 && !skeleton) {
      // Each rank reads (or draws) only its ZeRO-3 shard: each encoder and decoder block
      // a unit, the rest the root.
      naming_dist_tp(*comm, [&] {
        dist::ShardedSeq2SeqLm sharded = dist::load_zero3(model_->s2s_options, *comm, comm->device(), plan_);
        model_->s2s = std::move(sharded.model);
        sharding_ = std::move(sharded.zero);
      });
    } else {
      // Whole on every rank as it is read; tensor parallelism splits it afterwards.
      model_->s2s = model::Seq2SeqLm::load(model_->s2s_options);
    }
    model_->target_len = dataset.target_len;
    model_->eval_num_beams = config.train.eval_num_beams;
    if (comm && config.dist.zero == 3 && comm->dp().size() > 1) {
      // Each decoding step gathers every block from the data-parallel group.
      dist::Group* dp = &comm->dp();
      model_->continue_together = [dp](bool mine) {
        return dp->all_reduce(static_cast<std::int64_t>(mine), dist::ReduceOp::Max) != 0;
      };
    }
    model_->tokenizer_path = dataset.tokenizer;
    model_->skeleton = skeleton;
    return;
  }
  if (kind_ == TaskKind::question_answering) label_names_ = {"start", "end"};  // the head's two scores
  if (label_names_.size() < 2)
    throw std::runtime_error(config.data.path + ": a " + dataset.task +
                             " dataset needs the root attribute label_names with at least 2 names");
  model::ClassifierOptions options;
  options.path = config.model.path;
  options.kind = kind_ == TaskKind::sequence_classification ? model::ClassifierKind::sequence
                 : kind_ == TaskKind::token_classification  ? model::ClassifierKind::token
                                                            : model::ClassifierKind::span;
  options.label_names = label_names_;
  options.pretrained = pretrained;
  options.seed = config.run.seed;
  options.dropout = config.model.dropout;
  options.pad_token_id = dataset.pad_id;
  model::ClassifierLoadReport report;
  model_->classifier_options = options;
  if (skeleton) {
    options.skeleton = true;
    model_->classifier = model::Classifier::load(options);
    model_->skeleton = true;
  } else if (comm && config.dist.zero == 3) {
    // Each rank reads (or draws, for a random init) only its ZeRO-3 shard of the body;
    // the head, num_labels x hidden, is drawn whole and handed to the shards.
    naming_dist_tp(*comm, [&] {
      dist::ShardedClassifier sharded = dist::load_zero3(options, *comm, comm->device(), plan_, &report);
      model_->classifier = std::move(sharded.model);
      sharding_ = std::move(sharded.zero);
    });
  } else if (!split_over) {
    model_->classifier = model::Classifier::load(options, &report);
  } else {
    naming_dist_tp(*split_over, [&] {
      model_->classifier = dist::load_tensor_parallel(options, *split_over, plan_, &report);
    });
  }
  model_->warnings = report.warnings;
  // The options against the dataset were checked before (validate_for in launch/options.h).
  model_->entity_metrics = kind_ == TaskKind::token_classification && has_entity_labels(label_names_);
}

Task::~Task() = default;
Task::Task(Task&&) noexcept = default;
Task& Task::operator=(Task&&) noexcept = default;

const std::string& Task::name() const { return model_->name; }
const std::string& Task::family() const {
  return model_->lm ? model_->lm->family() : model_->s2s ? model_->s2s->family() : model_->classifier->family();
}
int64_t Task::vocab_size() const {
  return model_->lm ? model_->lm->vocab_size() : model_->s2s ? model_->s2s->vocab_size() : model_->classifier->vocab_size();
}
torch::nn::Module& Task::module() {
  return model_->lm ? model_->lm->module() : model_->s2s ? model_->s2s->module() : model_->classifier->module();
}
std::vector<std::string> Task::load_warnings() const { return model_->warnings; }

bool Task::is_head_parameter(const std::string& name) const {
  return model_->classifier && model_->classifier->is_head_parameter(name);
}

void Task::set_body_frozen(bool frozen, AdamW& optimizer) {
  for (auto& item : module().named_parameters())
    if (!is_head_parameter(item.key())) item.value().requires_grad_(!frozen);
  if (frozen)
    optimizer.set_frozen([this](const std::string& name) { return !is_head_parameter(name); });
  else
    optimizer.set_frozen({});
}

std::string Task::default_metric() const { return launch::default_metric(name(), label_names_); }
std::vector<std::string> Task::metric_names() const { return launch::metric_names(name(), label_names_); }

TaskBatch Task::prepare(const data::Batch& full, const c10::Device& device) const {
  // Padded tasks run only the columns their rows use; sequence parallelism splits the
  // sequence over the tensor-parallel group, so it must divide the width.
  const std::optional<data::Batch> cut =
      kind_ != TaskKind::causal_lm && dynamic_padding_
          ? data::cut_padding(full, kind_ == TaskKind::token_classification,
                              plan_.sequence_parallel ? std::lcm<int64_t>(8, plan_.tp_size) : 8)
          : std::nullopt;
  const data::Batch& batch = cut ? *cut : full;
  const int64_t rows = batch.batch_size, width = batch.seq_len;
  TaskBatch out;
  auto ids = torch::from_blob(const_cast<int32_t*>(batch.input_ids.data()), {rows, width}, torch::kInt32);
  out.input_ids = to_device(ids.to(torch::kInt64), device);
  if (!batch.attention_mask.empty())
    out.attention_mask = to_device(host_tensor(batch.attention_mask, rows, width).to(torch::kInt64), device);
  if (!batch.token_type_ids.empty())
    out.token_type_ids = to_device(host_tensor(batch.token_type_ids, rows, width).to(torch::kInt64), device);

  // Checked here, on the host: on a GPU an id past an embedding table would be a
  // device-side assert, on the CPU an index error naming no row; the causal loss also
  // reads the ids as targets unchecked.
  auto check_within = [&](const auto& values, int64_t size, const std::string& what, const std::string& table) {
    for (std::size_t i = 0; i < values.size(); ++i)
      if (static_cast<int64_t>(values[i]) < 0 || static_cast<int64_t>(values[i]) >= size)
        throw std::runtime_error("dataset row " + std::to_string(batch.sample_ids[i / width]) + " has " + what + " " +
                                 std::to_string(static_cast<int64_t>(values[i])) + ", outside " + table + " [0, " +
                                 std::to_string(size) + ")");
  };
  check_within(batch.input_ids, vocab_size(), "token id", "the model's vocabulary");
  const int64_t token_types = model_->classifier ? model_->classifier->type_vocab_size() : 0;
  if (token_types > 0) check_within(batch.token_type_ids, token_types, "token type id", "the model's type_vocab_size");

  if (kind_ == TaskKind::causal_lm) {
    out.targets = out.input_ids.slice(1, 1);
    // loss_mask marks positions whose token is a prediction target; the first token of
    // a row is never predicted, and padding never is.
    torch::Tensor mask = batch.loss_mask.empty() ? torch::ones({rows, width - 1}, torch::kFloat32)
                                                 : host_tensor(batch.loss_mask, rows, width).slice(1, 1).to(torch::kFloat32);
    if (!batch.attention_mask.empty()) {
      if (!packed_documents_) {
        bool token_after_padding = false;
        for (int64_t r = 0; r < rows; ++r) {
          bool padded = false;
          for (int64_t t = 0; t < width; ++t) {
            const uint8_t value = batch.attention_mask[static_cast<std::size_t>(r * width + t)];
            if (value > 1)
              throw std::runtime_error("dataset row " + std::to_string(batch.sample_ids[r]) + " has attention_mask " +
                                       std::to_string(value) +
                                       ": format_version 1 holds 0 or 1 (packed documents' ids need version 2)");
            if (value == 0) padded = true;
            else if (padded) token_after_padding = true;
          }
        }
        // Rows padded on the right only (as ftrain-prep writes them): causal attention
        // never reads their padding, so the model runs without the mask, on CUDA with its
        // fused causal kernel; the targets below still leave the padding out.
        if (!token_after_padding) out.attention_mask = torch::Tensor();
      }
      // Document ids (model/documents.h): 0 pads, and a packed row's documents are 1, 2,
      // ... A token is predicted only from a position of its own document, so neither
      // padding nor a document's first token is a target.
      const torch::Tensor documents = host_tensor(batch.attention_mask, rows, width).to(torch::kInt64);
      const torch::Tensor target = documents.slice(1, 1), source = documents.slice(1, 0, width - 1);
      mask = mask * (target.gt(0) & target.eq(source)).to(torch::kFloat32);
    }
    out.target_count = static_cast<int64_t>(mask.sum().item<double>());  // a host tensor: no device sync
    out.target_mask = to_device(mask, device);
    return out;
  }

  out.rows = batch.sample_ids;
  if (kind_ == TaskKind::question_answering) return prepare_spans(batch, out, device);
  if (kind_ == TaskKind::seq2seq) return prepare_targets(batch, out, device);
  const bool per_row = kind_ == TaskKind::sequence_classification;
  const auto expected = static_cast<std::size_t>(per_row ? rows : rows * width);
  if (batch.labels.size() != expected)
    throw std::runtime_error(std::string("a ") + name() + " batch needs " + (per_row ? "a label per row" : "a tag per position") +
                             "; the dataset's labels have another shape");
  out.host_labels = batch.labels;
  const auto num_labels = static_cast<int64_t>(label_names_.size());
  for (std::size_t i = 0; i < batch.labels.size(); ++i) {
    const int64_t label = batch.labels[i];
    if (label == data::format::kIgnoreLabel) continue;
    if (label < 0 || label >= num_labels)
      throw std::runtime_error("dataset row " + std::to_string(batch.sample_ids[per_row ? i : i / width]) +
                               " has label " + std::to_string(label) + ", outside [0, " +
                               std::to_string(num_labels) + ") of label_names");
    ++out.target_count;
  }
  auto labels = torch::from_blob(const_cast<int64_t*>(batch.labels.data()),
                                 per_row ? c10::IntArrayRef{rows} : c10::IntArrayRef{rows, width}, torch::kInt64);
  out.targets = device.is_cuda() ? to_device(labels.to(torch::kInt64), device)
                                : labels.to(device, torch::kInt64, /*non_blocking=*/false, /*copy=*/true);  // the batch is temporary
  return out;
}

TaskBatch Task::prepare_spans(const data::Batch& batch, TaskBatch& out, const c10::Device& device) const {
  const int64_t rows = batch.batch_size, width = batch.seq_len;
  if (batch.labels.size() != static_cast<std::size_t>(2 * rows))
    throw std::runtime_error("a question_answering batch needs a start and an end position per row; "
                             "the dataset's labels have another shape");
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t start = batch.labels[static_cast<std::size_t>(2 * row)];
    const int64_t end = batch.labels[static_cast<std::size_t>(2 * row + 1)];
    if (start == data::format::kIgnoreLabel && end == data::format::kIgnoreLabel) continue;
    // Dynamic padding keeps every attended position, where the labels are.
    if (start < 0 || end < 0 || start >= width || end >= width)
      throw std::runtime_error("dataset row " + std::to_string(batch.sample_ids[static_cast<std::size_t>(row)]) +
                               " has answer positions [" + std::to_string(start) + ", " + std::to_string(end) +
                               "], outside its " + std::to_string(width) + " attended positions");
    ++out.target_count;
  }
  auto labels = torch::from_blob(const_cast<int64_t*>(batch.labels.data()), {rows, 2}, torch::kInt64);
  out.targets = device.is_cuda() ? to_device(labels, device) : labels.to(device, torch::kInt64, false, /*copy=*/true);
  return out;
}

TaskBatch Task::prepare_targets(const data::Batch& batch, TaskBatch& out, const c10::Device& device) const {
  const int64_t rows = batch.batch_size, width = model_->target_len;
  if (batch.labels.size() != static_cast<std::size_t>(rows * width))
    throw std::runtime_error("a seq2seq batch needs " + std::to_string(width) +
                             " target positions per row (target_len); the dataset's labels have another shape");
  for (std::size_t i = 0; i < batch.labels.size(); ++i) {
    const int64_t label = batch.labels[i];
    if (label == data::format::kIgnoreLabel) continue;
    if (label < 0 || label >= vocab_size())
      throw std::runtime_error("dataset row " + std::to_string(batch.sample_ids[i / static_cast<std::size_t>(width)]) +
                               " has target token " + std::to_string(label) + ", outside the model's vocabulary [0, " +
                               std::to_string(vocab_size()) + ")");
    ++out.target_count;
  }
  torch::Tensor labels = torch::from_blob(const_cast<int64_t*>(batch.labels.data()), {rows, width}, torch::kInt64);
  if (dynamic_padding_) {
    // The decoder is causal and -100 has no loss: the columns after every row's last
    // target change nothing, so they are cut (rounded up to a multiple of 8).
    int64_t needed = 1;
    for (int64_t row = 0; row < rows; ++row)
      for (int64_t t = width - 1; t >= needed; --t)
        if (batch.labels[static_cast<std::size_t>(row * width + t)] != data::format::kIgnoreLabel) {
          needed = t + 1;
          break;
        }
    labels = labels.slice(1, 0, std::min(width, (needed + 7) / 8 * 8));
  }
  out.targets = device.is_cuda() ? to_device(labels.contiguous(), device)
                                 : labels.to(device, torch::kInt64, false, /*copy=*/true).contiguous();
  return out;
}

namespace {

// Sum of cross-entropy over targets. Logits in fp32 whatever the compute dtype.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(
          data::format::kIgnoreLabel));
}

}  // namespace

// Question answering: per row, the mean of the start and the end position's
// cross-entropy over the row's positions, as Hugging Face's QA models compute it.
at::Tensor Task::span_loss_sum(const at::Tensor& logits, const at::Tensor& targets) {
  return (cross_entropy_sum(logits.select(2, 0), targets.select(1, 0)) +
          cross_entropy_sum(logits.select(2, 1), targets.select(1, 1))) / 2;
}

std::unique_ptr<dist::ZeroSharding> Task::take_sharding() { return std::move(sharding_); }

std::vector<std::vector<std::string>> Task::block_parameter_names() { return model::block_parameter_names(module()); }

int64_t global_target_count(const std::vector<TaskBatch>& batches, dist::Group& dp, const std::string& data_path) {
  int64_t local = 0;
  for (const TaskBatch& batch : batches) local += batch.target_count;
  const int64_t global = dp.all_reduce(local, dist::ReduceOp::Sum);
  if (global == 0)
    throw std::runtime_error(data_path +
                             ": a global batch has no targets (tokens with loss_mask 1, or labels other than -100)");
  return global;
}

dist::ZeroUnitNames Task::zero3_unit_names() {
  if (model_->s2s) return dist::zero3_seq2seq_unit_names(module(), model_->s2s->head_weight_name());
  const bool ties = model_->lm && model_->lm->ties_embeddings();
  return dist::zero3_unit_names(module(), model_->lm ? model_->lm->head_weight_name() : "", ties, plan_.tp_size);
}

void Task::stream_vocabulary(const dist::DataParallel& data_parallel) {
  if (const auto embedding = model::token_embedding(module()))
    if (const auto* rows = data_parallel.vocabulary_rows(embedding->weight_name))
      embedding->layer->set_style(dist::streamed_embedding(*rows, embedding->layer->options.padding_idx()));
  if (model_->lm) head_rows_ = data_parallel.vocabulary_rows(model_->lm->head_weight_name());
  if (model_->s2s) {
    head_rows_ = data_parallel.vocabulary_rows(model_->s2s->head_weight_name());
    // Generation reads logits: an untied head computes them window by window too.
    if (head_rows_ && !model_->s2s->ties_embeddings() && !dist::stream_head(module(), *head_rows_))
      throw std::logic_error("stream_vocabulary: no linear layer holds '" + head_rows_->name + "'");
  }
}

void Task::set_block_runner(const model::BlockRunner& runner) {
  // Block indices run over every body in order (T5: the encoder's blocks, then the
  // decoder's), as block_parameter_names() lists them.
  std::size_t first = 0;
  for (model::TransformerBody* body : model::transformer_bodies(module())) {
    body->set_block_runner([runner, first](std::size_t index, const at::Tensor& x, const model::BlockForward& block) {
      return runner(first + index, x, block);
    });
    first += body->num_blocks();
  }
}

template <typename Split>
void Task::naming_dist_tp(dist::Communicator& comm, Split split) {
  try {
    split();
  } catch (const std::invalid_argument& error) {
    // The sizes that do not divide are the model's; the choice to change is dist.tp.
    throw std::runtime_error("dist.tp = " + std::to_string(comm.tp().size()) + " does not fit the model in " +
                             model_path_ + ": " + error.what());
  }
}

dist::TensorParallelPlan Task::parallelize(dist::Communicator& comm) {
  if (comm.tp().size() == 1 || plan_.tp_size > 1) return plan_;  // whole, or split as it was built
  naming_dist_tp(comm, [&] { split(comm); });
  return plan_;
}

dist::TensorParallelPlan Task::split(dist::Communicator& comm) {
  if (model_->s2s) {  // whole logits: the usual loss
    plan_ = dist::apply_tensor_parallel(*model_->s2s, comm);
    return plan_;
  }
  if (model_->lm) {
    plan_ = dist::apply_tensor_parallel(*model_->lm, comm);
    tp_ = &comm.tp();  // the loss reads vocabulary-parallel logits
    return plan_;
  }
  // The head reads whole hidden states and stays whole: the loss is the usual one.
  plan_ = dist::apply_tensor_parallel(*model_->classifier, comm);
  return plan_;
}

at::Tensor Task::loss_sum(const TaskBatch& batch) {
  if (model_->lm) {
    // Hidden states (B, T, C) at positions 0..T-2 predict tokens 1..T-1; the head and the
    // cross-entropy run together over row chunks, so the (B, T-1, V) logits never exist.
    const model::CausalLm::HeadInput head = model_->lm->head_input(batch.input_ids, batch.attention_mask);
    const int64_t T = head.hidden.size(1);
    const at::Tensor hidden = head.hidden.slice(1, 0, T - 1).reshape({-1, head.hidden.size(-1)});  // (B (T-1), C)
    const at::Tensor targets = batch.targets.reshape({-1}), weights = batch.target_mask.reshape({-1});
    if (head_rows_)  // ZeRO-3: the head streams by rows over the data-parallel group
      return dist::streamed_linear_cross_entropy_sum(*head_rows_, hidden, targets, weights);
    if (tp_) {
      // Each rank holds V_pad / N rows of the head; no rank computes every logit.
      const model::VocabShards shards = dist::vocab_shards(*tp_, model_->lm->vocab_size());
      return model::linear_cross_entropy_sum(hidden, head.weight, targets, weights, &shards);
    }
    return model::linear_cross_entropy_sum(hidden, head.weight, targets, weights);
  }
  if (model_->s2s) {  // teacher forcing: the decoder reads the targets shifted right
    if (head_rows_) {  // ZeRO-3: the head streams by rows over the data-parallel group
      const at::Tensor hidden = model_->s2s->head_input(batch.input_ids, batch.attention_mask, batch.targets);
      return dist::streamed_linear_cross_entropy_sum(*head_rows_, hidden.reshape({-1, hidden.size(-1)}),
                                                     batch.targets.reshape({-1}), at::Tensor());
    }
    return cross_entropy_sum(model_->s2s->logits(batch.input_ids, batch.attention_mask, batch.targets), batch.targets);
  }
  const torch::Tensor logits =
      model_->classifier->logits(batch.input_ids, batch.attention_mask, batch.token_type_ids);
  if (kind_ == TaskKind::question_answering) return span_loss_sum(logits, batch.targets);
  // (B, L) or (B, T, L) logits against labels with -100 where there is no target.
  return cross_entropy_sum(logits, batch.targets);
}

EvalTotals Task::empty_totals(const std::string& split) {
  EvalTotals totals;
  totals.split = split;
  if (kind_ == TaskKind::question_answering) {
    auto& spans = model_->answer_spans[split];
    if (!spans) spans = std::make_shared<const AnswerSpans>(model_->data_path, split);
    totals.spans.assign(static_cast<std::size_t>(spans->num_rows() * AnswerSpans::kValuesPerRow), 0.0);
    return totals;
  }
  if (kind_ == TaskKind::seq2seq) {
    const int64_t rows = data::TokenDataset(model_->data_path, split).num_rows();
    totals.generated.assign(static_cast<std::size_t>(rows * (1 + model_->target_len)), 0);
    return totals;
  }
  if (kind_ != TaskKind::causal_lm) totals.confusion.assign(label_names_.size() * label_names_.size(), 0);
  if (model_->entity_metrics) totals.entities.assign(3, 0);
  return totals;
}

void Task::evaluate(const TaskBatch& batch, EvalTotals& totals) {
  totals.count += batch.target_count;
  if (model_->lm) {
    totals.loss_sum += loss_sum(batch).item<double>();
    return;
  }
  if (model_->s2s) {
    totals.loss_sum += loss_sum(batch).item<double>();
    evaluate_generation(batch, totals);
    return;
  }
  torch::Tensor logits = model_->classifier->logits(batch.input_ids, batch.attention_mask, batch.token_type_ids);
  if (kind_ == TaskKind::question_answering) {
    totals.loss_sum += span_loss_sum(logits, batch.targets).item<double>();
    // Each row's best span, by the rank that evaluated it (launch/eval/squad.h).
    const torch::Tensor scores = logits.to(torch::kCPU, torch::kFloat32).contiguous();  // (B, T, 2)
    const torch::Tensor starts = scores.select(2, 0).contiguous(), ends = scores.select(2, 1).contiguous();
    const AnswerSpans& spans = *model_->answer_spans.at(totals.split);
    const int64_t width = scores.size(1);
    for (int64_t i = 0; i < scores.size(0); ++i) {
      const int64_t row = batch.rows[static_cast<std::size_t>(i)];
      if (row < 0) continue;  // a filler
      const std::span<const float> start(starts.data_ptr<float>() + i * width, static_cast<std::size_t>(width));
      const std::span<const float> end(ends.data_ptr<float>() + i * width, static_cast<std::size_t>(width));
      AnswerSpans::record(totals.spans, row, best_span(start, end, spans.offsets(row), model_->max_answer_tokens));
    }
    return;
  }
  totals.loss_sum += cross_entropy_sum(logits, batch.targets).item<double>();
  const torch::Tensor predicted = logits.argmax(-1).to(torch::kCPU).contiguous();  // (B) or (B, T)
  const std::span<const int64_t> predictions(predicted.data_ptr<int64_t>(), static_cast<std::size_t>(predicted.numel()));
  ConfusionMatrix confusion(static_cast<int64_t>(label_names_.size()));
  confusion.counts() = totals.confusion;
  confusion.add(batch.host_labels, predictions);  // positions with label -100 are skipped
  totals.confusion = confusion.counts();
  if (model_->entity_metrics) {
    EntityCounts entities = EntityCounts::from_vector(totals.entities);
    const int64_t width = batch.input_ids.size(1);
    const std::span<const int64_t> truth(batch.host_labels);
    for (int64_t row = 0; row < batch.input_ids.size(0); ++row)
      add_sentence(entities, truth.subspan(row * width, width), predictions.subspan(row * width, width), label_names_);
    totals.entities = entities.as_vector();
  }
}

nlohmann::json Task::metrics(const EvalTotals& totals, nlohmann::json* predictions) const {
  nlohmann::json out;
  const double loss = totals.count > 0 ? totals.loss_sum / static_cast<double>(totals.count) : 0.0;
  out["loss"] = loss;
  out["targets"] = totals.count;
  if (kind_ == TaskKind::causal_lm) {
    out["perplexity"] = perplexity(loss);
    return out;
  }
  if (kind_ == TaskKind::seq2seq) {
    std::array<double, 3> rouge{};
    BleuCounts bleu;
    const auto texts = generated_texts(totals);
    if (predictions) *predictions = nlohmann::json::array();
    for (const auto& [prediction, reference] : texts) {
      const auto f = rouge_f(prediction, reference, /*stem=*/true);  // as run_summarization scores
      for (size_t i = 0; i < 3; ++i) rouge[i] += f[i];
      bleu.add(prediction, reference);
      if (predictions) predictions->push_back({{"prediction", prediction}, {"reference", reference}});
    }
    const double n = static_cast<double>(std::max<size_t>(texts.size(), 1));
    out["rouge1"] = 100 * rouge[0] / n;
    out["rouge2"] = 100 * rouge[1] / n;
    out["rougeL"] = 100 * rouge[2] / n;
    out["bleu"] = bleu.score();
    out["generated"] = static_cast<int64_t>(texts.size());
    return out;
  }
  if (kind_ == TaskKind::question_answering) {
    const AnswerSpans& spans = *model_->answer_spans.at(totals.split);
    AnswerSpans::Scores scores = spans.score(totals.spans, spans.has_unanswerable());
    if (predictions) *predictions = std::move(scores.predictions);
    out["exact_match"] = scores.exact_match;
    out["f1"] = scores.f1;
    out["questions"] = scores.questions;
    return out;
  }
  ConfusionMatrix confusion(static_cast<int64_t>(label_names_.size()));
  confusion.counts() = totals.confusion;
  out["accuracy"] = confusion.accuracy();
  out["macro_f1"] = confusion.macro_f1();
  if (!totals.entities.empty()) {
    const EntityCounts entities = EntityCounts::from_vector(totals.entities);
    out["entity_precision"] = entities.precision();
    out["entity_recall"] = entities.recall();
    out["entity_f1"] = entities.f1();
  }
  return out;
}

void Task::evaluate_generation(const TaskBatch& batch, EvalTotals& totals) {
  model::Seq2SeqGenerationOptions options;
  options.max_new_tokens = model_->target_len;
  options.num_beams = model_->eval_num_beams;
  options.continue_together = model_->continue_together;
  const torch::Tensor generated = model_->s2s->generate(batch.input_ids, batch.attention_mask, options);  // (B, 1 + N)
  const int64_t width = 1 + model_->target_len;
  const auto tokens = generated.accessor<int64_t, 2>();
  for (int64_t i = 0; i < generated.size(0); ++i) {
    const int64_t row = batch.rows[static_cast<std::size_t>(i)];
    if (row < 0) continue;  // a filler
    int64_t* out = totals.generated.data() + row * width;
    out[0] = 1;
    // The tokens after the start token; the table is all-reduced, so the ids are kept + 1
    // and 0 marks the end.
    for (int64_t t = 1; t < generated.size(1); ++t) out[t] = tokens[i][t] + 1;
  }
}

std::vector<std::array<std::string, 2>> Task::generated_texts(const EvalTotals& totals) const {
  if (!model_->tokenizer) {
    if (!std::filesystem::is_directory(model_->tokenizer_path))
      throw std::runtime_error(model_->data_path + ": its tokenizer " + model_->tokenizer_path +
                               " (attribute 'tokenizer') is needed to score generated text, and is not there");
    model_->tokenizer = data::load_tokenizer(model_->tokenizer_path);
  }
  const data::Tokenizer& tokenizer = *model_->tokenizer;
  const int64_t width = 1 + model_->target_len, target_len = model_->target_len;
  std::vector<int64_t> rows;  // the evaluated ones
  for (int64_t row = 0; row < static_cast<int64_t>(totals.generated.size()) / width; ++row)
    if (totals.generated[static_cast<std::size_t>(row * width)] != 0) rows.push_back(row);
  std::vector<int64_t> labels(rows.size() * static_cast<std::size_t>(target_len));
  data::TokenDataset(model_->data_path, totals.split).read_labels(rows, labels.data());  // one read for all
  std::vector<std::array<std::string, 2>> texts;
  const auto eos = tokenizer.special_ids().eos;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const int64_t* entry = totals.generated.data() + rows[i] * width;
    std::vector<int32_t> predicted, reference;
    for (int64_t t = 1; t < width && entry[t] > 0; ++t) {
      const auto id = static_cast<int32_t>(entry[t] - 1);
      if (eos && id == *eos) break;
      predicted.push_back(id);
    }
    for (int64_t t = 0; t < target_len; ++t) {
      const int64_t label = labels[i * static_cast<std::size_t>(target_len) + static_cast<std::size_t>(t)];
      if (label != data::format::kIgnoreLabel) reference.push_back(static_cast<int32_t>(label));
    }
    texts.push_back({tokenizer.decode(predicted, true), tokenizer.decode(reference, true)});
  }
  return texts;
}

void Task::save_streamed(const std::filesystem::path& dir, model::ExistingDirectory existing,
                         const std::function<at::Tensor(const std::string& parameter)>& whole_value) const {
  // A Task built WithoutValues is a skeleton already; otherwise one is built here.
  std::optional<model::CausalLm> lm = model_->lm;
  std::optional<model::Classifier> classifier = model_->classifier;
  std::optional<model::Seq2SeqLm> s2s = model_->s2s;
  if (!model_->skeleton && s2s) {
    model::Seq2SeqLmOptions options = model_->s2s_options;
    options.skeleton = true;
    s2s = model::Seq2SeqLm::load(options);
  } else if (!model_->skeleton && lm) {
    model::CausalLmOptions options = model_->lm_options;
    options.skeleton = true;
    lm = model::CausalLm::load(options);
  } else if (!model_->skeleton) {
    model::ClassifierOptions options = model_->classifier_options;
    options.skeleton = true;
    options.split = {};
    classifier = model::Classifier::load(options);
  }
  torch::nn::Module& skeleton = s2s ? s2s->module() : lm ? lm->module() : classifier->module();
  // A stored tensor is a parameter or a view of one (GPT-2's Conv1D weights transposed);
  // its storage says which, its strides and offset how.
  std::map<const void*, std::pair<std::string, at::Tensor>> viewed;
  for (const auto& item : skeleton.named_parameters())
    viewed.emplace(item.value().storage().data(), std::pair{item.key(), item.value()});
  const model::TensorValues values = [&](const std::string& stored, const at::Tensor& described) {
    auto found = viewed.find(described.storage().data());
    if (found == viewed.end())
      throw std::logic_error("Task::save_streamed: stored tensor " + stored + " is no view of a parameter");
    const auto& [name, param] = found->second;
    const at::Tensor whole = whole_value(name).contiguous();
    if (whole.sizes() != param.sizes())
      throw std::logic_error("Task::save_streamed: parameter " + name + " is " + c10::str(param.sizes()) +
                             ", its whole value " + c10::str(whole.sizes()));
    // as_strided's offset counts from the start of the storage, which `whole` (a view
    // into ZeRO's flat buffer, say) need not begin at.
    return whole.as_strided(described.sizes(), described.strides(),
                            whole.storage_offset() + described.storage_offset() - param.storage_offset());
  };
  if (s2s) s2s->save(dir, existing, values);
  else if (lm) lm->save(dir, existing, values);
  else classifier->save(dir, existing, values);
}

void Task::save(const std::filesystem::path& dir, model::ExistingDirectory existing) const {
  if (plan_.tp_size > 1) throw std::logic_error("Task::save: a split model is written by save_streamed()");
  if (model_->s2s) return model_->s2s->save(dir, existing);
  if (model_->lm) model_->lm->save(dir, existing);
  else model_->classifier->save(dir, existing);
}

}  // namespace ftrain::launch
