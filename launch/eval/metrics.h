// Evaluation metrics of the fine-tuning tasks. Each is kept as integer counts that the
// data-parallel ranks sum with one all-reduce, and only the summed counts are turned
// into scores: a confusion matrix for sequence classification (accuracy, macro-F1),
// entity counts for BIO-tagged token classification (entity precision, recall, F1 as
// seqeval computes them by default), and perplexity for causal language models.
// docs/evaluation.md gives the formulas.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ftrain::launch {

// Confusion counts of a classifier; summable across ranks.
class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int64_t num_labels);

  // truth < 0 (the ignore index -100) is skipped; any other label outside
  // [0, num_labels) throws.
  void add(int64_t truth, int64_t predicted);
  // Element-wise over two sequences of the same length.
  void add(std::span<const int64_t> truth, std::span<const int64_t> predicted);

  // num_labels * num_labels, row = truth, column = prediction: the buffer to all-reduce.
  std::vector<int64_t>& counts() { return counts_; }
  const std::vector<int64_t>& counts() const { return counts_; }
  int64_t num_labels() const { return num_labels_; }
  int64_t total() const;

  double accuracy() const;  // 0 when empty
  // As sklearn's f1_score(average="macro"): the mean F1 over the labels that occur in
  // the truth or in the predictions; a label without true positives scores 0. 0 when
  // empty.
  double macro_f1() const;
  // Of one label, 0 where the ratio is undefined.
  double precision(int64_t label) const;
  double recall(int64_t label) const;
  double f1(int64_t label) const;

 private:
  int64_t at(int64_t truth, int64_t predicted) const { return counts_[truth * num_labels_ + predicted]; }
  int64_t predicted_as(int64_t label) const;  // column sum
  int64_t truly(int64_t label) const;         // row sum

  int64_t num_labels_;
  std::vector<int64_t> counts_;
};

// One entity: its type and the word positions [begin, end) it covers.
struct EntitySpan {
  std::string type;
  int64_t begin = 0;
  int64_t end = 0;
  bool operator==(const EntitySpan&) const = default;
};

// Throws unless every label name is "O" or a tag "B-TYPE", "I-TYPE", "E-TYPE",
// "S-TYPE" (the bare "B", "I", "E", "S" are untyped entities). Entity metrics read
// IOB1, IOB2 and IOBES sequences; a name without such a prefix (e.g. "PER") is refused
// rather than guessed at. The trainer can call this once before evaluating.
void check_entity_labels(const std::vector<std::string>& label_names);

// Whether token-classification labels are BIO-style tags, so entities can be scored.
bool has_entity_labels(const std::vector<std::string>& label_names);

// The metrics evaluation reports for a dataset of `task` (data/dataset_format.h's task
// names) with `label_names`: "loss" and "perplexity" for a causal LM, "loss",
// "accuracy", "macro_f1" for classification, and "entity_f1" too for BIO tags; "loss",
// "exact_match", "f1" (SQuAD's, launch/eval/squad.h) for question answering.
std::vector<std::string> metric_names(const std::string& task, const std::vector<std::string>& label_names);
// The one validation follows (train.eval_metric = auto): "loss" for a causal LM,
// "entity_f1" for BIO tags, "f1" for question answering, else "accuracy".
std::string default_metric(const std::string& task, const std::vector<std::string>& label_names);

// The entities of one tag sequence (tag ids index label_names), read as seqeval does by
// default: every tag other than O belongs to an entity; an I- or E- tag continues the
// entity of the previous word when that word is B- or I- of the same type, and any
// other non-O tag starts a new one (so an I- after O or after another type starts an
// entity, and an entity ends at O, B-, S-, after E-, or at a change of type).
std::vector<EntitySpan> extract_entities(std::span<const int64_t> tag_ids,
                                         const std::vector<std::string>& label_names);

// Entity counts of token classification; summable across ranks. An entity is correct
// when the prediction has one of the same type over exactly the same words.
struct EntityCounts {
  int64_t true_entities = 0;
  int64_t predicted_entities = 0;
  int64_t correct = 0;

  // {true_entities, predicted_entities, correct}: the buffer to all-reduce.
  std::vector<int64_t> as_vector() const;
  static EntityCounts from_vector(std::span<const int64_t> values);

  // Micro-averaged over entity types, 0 where undefined.
  double precision() const;
  double recall() const;
  double f1() const;
};

// Adds one sentence: positions where truth < 0 (continuation sub-tokens, padding,
// special tokens) are dropped first, so the word-level tag sequences are compared.
void add_sentence(EntityCounts& counts, std::span<const int64_t> truth, std::span<const int64_t> predicted,
                  const std::vector<std::string>& label_names);

// exp(mean_loss), +inf where that overflows a double.
double perplexity(double mean_loss);

// For early stopping and best-checkpoint choice: whether larger values of the metric are
// better. Names: loss, perplexity (lower is better), accuracy, macro_f1, entity_f1,
// exact_match, f1 (higher is better). Any other name throws, naming train.eval_metric.
bool higher_is_better(const std::string& metric);

}  // namespace ftrain::launch
