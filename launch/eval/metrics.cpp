#include "launch/eval/metrics.h"

#include "data/dataset_format.h"

#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace ftrain::launch {

namespace {

double ratio(int64_t numerator, int64_t denominator) {
  return denominator == 0 ? 0.0 : static_cast<double>(numerator) / static_cast<double>(denominator);
}

// The harmonic mean of precision tp/(tp+fp) and recall tp/(tp+fn), written so that it
// needs no special case when either of them is undefined.
double f1_of(int64_t true_positives, int64_t false_positives, int64_t false_negatives) {
  return ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives);
}

// Where a tag puts its word in an entity (B-, I-, E-, S- or O).
enum class Position { outside, begin, inside, end, single };

struct Tag {
  Position position = Position::outside;
  std::string type;
};

Tag parse_tag(const std::string& name) {
  if (name == "O") return {};
  Tag tag;
  switch (name.empty() ? '\0' : name[0]) {
    case 'B': tag.position = Position::begin; break;
    case 'I': tag.position = Position::inside; break;
    case 'E': tag.position = Position::end; break;
    case 'S': tag.position = Position::single; break;
    default: tag.position = Position::outside; break;
  }
  const bool prefixed = tag.position != Position::outside && (name.size() == 1 || name[1] == '-');
  if (!prefixed)
    throw std::runtime_error("label_names: '" + name +
                             "' is not an entity tag; entity metrics read O, B-TYPE, I-TYPE, E-TYPE and "
                             "S-TYPE (IOB1, IOB2 or IOBES tagging)");
  if (name.size() > 2) tag.type = name.substr(2);
  return tag;
}

std::vector<Tag> parse_tags(const std::vector<std::string>& label_names) {
  std::vector<Tag> tags;
  tags.reserve(label_names.size());
  for (const auto& name : label_names) tags.push_back(parse_tag(name));
  return tags;
}

// Whether `current` extends the entity that `previous` is in, rather than starting one.
bool continues(const Tag& previous, const Tag& current) {
  const bool open = previous.position == Position::begin || previous.position == Position::inside;
  const bool joining = current.position == Position::inside || current.position == Position::end;
  return open && joining && previous.type == current.type;
}

std::vector<EntitySpan> entities_of(std::span<const int64_t> tag_ids, const std::vector<Tag>& tags) {
  std::vector<EntitySpan> entities;
  const Tag outside;
  const Tag* previous = &outside;
  for (size_t i = 0; i < tag_ids.size(); ++i) {
    const int64_t id = tag_ids[i];
    if (id < 0 || id >= static_cast<int64_t>(tags.size()))
      throw std::runtime_error("entity metrics: tag id " + std::to_string(id) + " at position " +
                               std::to_string(i) + " is outside label_names (" +
                               std::to_string(tags.size()) + " names)");
    const Tag& tag = tags[id];
    const auto position = static_cast<int64_t>(i);
    if (continues(*previous, tag))
      entities.back().end = position + 1;
    else if (tag.position != Position::outside)
      entities.push_back(EntitySpan{tag.type, position, position + 1});
    previous = &tag;
  }
  return entities;
}

// Entities in one list are disjoint and in word order, so one merge pass finds the
// identical ones.
int64_t count_identical(const std::vector<EntitySpan>& a, const std::vector<EntitySpan>& b) {
  int64_t identical = 0;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (a[i].begin < b[j].begin) {
      ++i;
    } else if (b[j].begin < a[i].begin) {
      ++j;
    } else {
      identical += a[i] == b[j];
      ++i;
      ++j;
    }
  }
  return identical;
}

}  // namespace

ConfusionMatrix::ConfusionMatrix(int64_t num_labels) : num_labels_(num_labels) {
  if (num_labels < 1)
    throw std::runtime_error("ConfusionMatrix: num_labels must be at least 1, got " + std::to_string(num_labels));
  counts_.assign(num_labels * num_labels, 0);
}

void ConfusionMatrix::add(int64_t truth, int64_t predicted) {
  if (truth < 0) return;
  if (truth >= num_labels_ || predicted < 0 || predicted >= num_labels_)
    throw std::runtime_error("ConfusionMatrix: label pair (truth " + std::to_string(truth) + ", predicted " +
                             std::to_string(predicted) + ") is outside [0, " + std::to_string(num_labels_) +
                             ")");
  ++counts_[truth * num_labels_ + predicted];
}

void ConfusionMatrix::add(std::span<const int64_t> truth, std::span<const int64_t> predicted) {
  if (truth.size() != predicted.size())
    throw std::runtime_error("ConfusionMatrix: " + std::to_string(truth.size()) + " true labels but " +
                             std::to_string(predicted.size()) + " predictions");
  for (size_t i = 0; i < truth.size(); ++i) add(truth[i], predicted[i]);
}

int64_t ConfusionMatrix::total() const { return std::accumulate(counts_.begin(), counts_.end(), int64_t{0}); }

int64_t ConfusionMatrix::predicted_as(int64_t label) const {
  int64_t sum = 0;
  for (int64_t truth = 0; truth < num_labels_; ++truth) sum += at(truth, label);
  return sum;
}

int64_t ConfusionMatrix::truly(int64_t label) const {
  int64_t sum = 0;
  for (int64_t predicted = 0; predicted < num_labels_; ++predicted) sum += at(label, predicted);
  return sum;
}

double ConfusionMatrix::accuracy() const {
  int64_t correct = 0;
  for (int64_t label = 0; label < num_labels_; ++label) correct += at(label, label);
  return ratio(correct, total());
}

double ConfusionMatrix::precision(int64_t label) const { return ratio(at(label, label), predicted_as(label)); }

double ConfusionMatrix::recall(int64_t label) const { return ratio(at(label, label), truly(label)); }

double ConfusionMatrix::f1(int64_t label) const {
  const int64_t true_positives = at(label, label);
  return f1_of(true_positives, predicted_as(label) - true_positives, truly(label) - true_positives);
}

double ConfusionMatrix::macro_f1() const {
  // A label that occurs nowhere is left out of the mean rather than counted as 0, so
  // the score does not depend on how many unused labels the head has.
  double sum = 0;
  int64_t present = 0;
  for (int64_t label = 0; label < num_labels_; ++label) {
    if (truly(label) == 0 && predicted_as(label) == 0) continue;
    sum += f1(label);
    ++present;
  }
  return present == 0 ? 0.0 : sum / static_cast<double>(present);
}

void check_entity_labels(const std::vector<std::string>& label_names) { parse_tags(label_names); }

std::vector<EntitySpan> extract_entities(std::span<const int64_t> tag_ids,
                                         const std::vector<std::string>& label_names) {
  return entities_of(tag_ids, parse_tags(label_names));
}

std::vector<int64_t> EntityCounts::as_vector() const { return {true_entities, predicted_entities, correct}; }

EntityCounts EntityCounts::from_vector(std::span<const int64_t> values) {
  if (values.size() != 3)
    throw std::runtime_error("EntityCounts::from_vector: expected 3 counts (true, predicted, correct), got " +
                             std::to_string(values.size()));
  return EntityCounts{values[0], values[1], values[2]};
}

double EntityCounts::precision() const { return ratio(correct, predicted_entities); }

double EntityCounts::recall() const { return ratio(correct, true_entities); }

double EntityCounts::f1() const { return f1_of(correct, predicted_entities - correct, true_entities - correct); }

void add_sentence(EntityCounts& counts, std::span<const int64_t> truth, std::span<const int64_t> predicted,
                  const std::vector<std::string>& label_names) {
  if (truth.size() != predicted.size())
    throw std::runtime_error("entity metrics: " + std::to_string(truth.size()) + " true tags but " +
                             std::to_string(predicted.size()) + " predicted tags");
  std::vector<int64_t> true_words, predicted_words;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] < 0) continue;
    true_words.push_back(truth[i]);
    predicted_words.push_back(predicted[i]);
  }
  const std::vector<Tag> tags = parse_tags(label_names);
  const auto true_entities = entities_of(true_words, tags);
  const auto predicted_entities = entities_of(predicted_words, tags);
  counts.true_entities += static_cast<int64_t>(true_entities.size());
  counts.predicted_entities += static_cast<int64_t>(predicted_entities.size());
  counts.correct += count_identical(true_entities, predicted_entities);
}

double perplexity(double mean_loss) {
  // Beyond log(DBL_MAX) the exponential is not representable; say so with +inf instead
  // of relying on how the math library reports the range error.
  if (mean_loss > std::log(std::numeric_limits<double>::max())) return std::numeric_limits<double>::infinity();
  return std::exp(mean_loss);
}

bool higher_is_better(const std::string& metric) {
  if (metric == "loss" || metric == "perplexity") return false;
  if (metric == "accuracy" || metric == "macro_f1" || metric == "entity_f1") return true;
  if (metric == "exact_match" || metric == "f1") return true;
  if (metric == "rouge1" || metric == "rouge2" || metric == "rougeL" || metric == "bleu") return true;
  throw std::runtime_error("train.eval_metric: unknown metric '" + metric +
                           "'; expected one of loss, perplexity, accuracy, macro_f1, entity_f1, exact_match, f1, "
                           "rouge1, rouge2, rougeL, bleu");
}

bool has_entity_labels(const std::vector<std::string>& label_names) {
  try {
    check_entity_labels(label_names);
    return true;
  } catch (const std::runtime_error&) {
    return false;
  }
}

std::vector<std::string> metric_names(const std::string& task, const std::vector<std::string>& label_names) {
  if (task == data::format::kTaskCausalLm) return {"loss", "perplexity"};
  if (task == data::format::kTaskQuestionAnswering) return {"loss", "exact_match", "f1"};
  if (task == data::format::kTaskSeq2Seq) return {"loss", "rouge1", "rouge2", "rougeL", "bleu"};
  if (task == data::format::kTaskTokenClassification && has_entity_labels(label_names))
    return {"loss", "accuracy", "macro_f1", "entity_f1"};
  return {"loss", "accuracy", "macro_f1"};
}

std::string default_metric(const std::string& task, const std::vector<std::string>& label_names) {
  if (task == data::format::kTaskCausalLm || task == data::format::kTaskSeq2Seq) return "loss";
  if (task == data::format::kTaskQuestionAnswering) return "f1";
  if (task == data::format::kTaskTokenClassification && has_entity_labels(label_names)) return "entity_f1";
  return "accuracy";
}

}  // namespace ftrain::launch
