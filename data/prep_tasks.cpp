#include "data/prep_tasks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>

#include "data/prep_records.h"
#include "data/prep_splits.h"
#include "data/token_dataset.h"

namespace fs = std::filesystem;

namespace ftrain::data {

namespace {

using Split = PrepSplit;

const char* task_attribute(PrepTask task) {
  switch (task) {
    case PrepTask::kSequenceClassification: return "sequence_classification";
    case PrepTask::kTokenClassification: return "token_classification";
    default: return format::kTaskCausalLm;
  }
}

bool has_labels(PrepTask task) { return task != PrepTask::kInstruction; }

// Calls visit(file, record) for every record of the files, in order.
template <typename Visit>
void for_each_record(const std::vector<fs::path>& files, const RecordReaderOptions& options, Visit visit) {
  for (const auto& file : files) {
    RecordReader reader(file, options);
    Record record;
    while (reader.next(record)) visit(file, record);
  }
}

// The label strings of one record: its class, or the tags of its words.
std::vector<std::string> record_labels(const TaskPrepOptions& options, const fs::path& file, const Record& record) {
  if (options.task == PrepTask::kSequenceClassification) {
    return {field_text(record, file, options.label_column, "--label-column")};
  }
  return field_list(record, file, options.tags_column, "--tags-column");
}

std::string where(const fs::path& file, const Record& record) {
  return file.string() + ":" + std::to_string(record.line) + ": ";
}

std::vector<int64_t> label_ids(const LabelMap& labels, const std::vector<std::string>& names, const fs::path& file,
                               const Record& record, bool from_training) {
  std::vector<int64_t> ids;
  for (const auto& name : names) {
    const auto id = labels.find(name);
    if (!id) {
      throw std::runtime_error(where(file, record) + "label '" + name + "' is not among the " +
                               (from_training ? std::string("labels given with --labels")
                                              : std::string("labels of the training inputs")) +
                               " " + labels.to_json());
    }
    ids.push_back(*id);
  }
  return ids;
}

struct SplitStats {
  int64_t rows = 0;          // examples
  int64_t written_rows = 0;  // rows of the file: the examples, or the rows they were packed into
  int64_t truncated = 0;
  int64_t tokens = 0;  // before truncation
  int64_t shortest = std::numeric_limits<int64_t>::max();
  int64_t longest = 0;
  std::map<int64_t, int64_t> per_label;  // rows (sequence) or tagged words (tokens)
};

// One split being written, in blocks of rows.
class SplitRows {
 public:
  SplitRows(Split split, const TaskPrepOptions& options, int32_t pad_id, TokenDatasetWriter& writer)
      : name_(split_name(split)), task_(options.task), writer_(writer) {
    if (options.packing == Packing::kDocuments) packer_.emplace(options.seq_len, pad_id);
    SplitFields fields;
    fields.attention_mask = true;
    fields.document_index = true;
    fields.loss_mask = task_ == PrepTask::kInstruction;
    fields.labels = task_ == PrepTask::kSequenceClassification ? LabelKind::kPerRow
                    : task_ == PrepTask::kTokenClassification  ? LabelKind::kPerPosition
                                                               : LabelKind::kNone;
    fields.token_type_ids = has_labels(task_);
    writer_.create_split(name_, fields);
  }

  void add(int64_t index, const Example& example, int64_t row_label) {
    if (packer_) {
      // The example's tokens (padding follows them) go into the row being filled.
      const auto length = static_cast<std::size_t>(
          std::count(example.attention_mask.begin(), example.attention_mask.end(), uint8_t{1}));
      packer_->add(std::span(example.input_ids).first(length), std::span(example.loss_mask).first(length));
      count(example);
      indices_.push_back(index);
      if (packer_->ready_rows() >= 4096) flush();
      return;
    }
    ids_.insert(ids_.end(), example.input_ids.begin(), example.input_ids.end());
    attention_.insert(attention_.end(), example.attention_mask.begin(), example.attention_mask.end());
    if (task_ == PrepTask::kInstruction) loss_.insert(loss_.end(), example.loss_mask.begin(), example.loss_mask.end());
    if (has_labels(task_)) types_.insert(types_.end(), example.token_type_ids.begin(), example.token_type_ids.end());
    if (task_ == PrepTask::kSequenceClassification) {
      labels_.push_back(row_label);
      ++stats_.per_label[row_label];
    } else if (task_ == PrepTask::kTokenClassification) {
      labels_.insert(labels_.end(), example.position_labels.begin(), example.position_labels.end());
      for (const int64_t label : example.position_labels) {
        if (label != format::kIgnoreLabel) ++stats_.per_label[label];
      }
    }
    indices_.push_back(index);
    ++pending_;
    count(example);
    if (pending_ >= 4096) flush();
  }

  void flush() {
    if (packer_) {
      const DocumentPacker::Rows rows = packer_->take_rows();
      writer_.append_rows(name_, RowBlock{rows.num_rows, rows.input_ids, rows.loss_mask, rows.attention_mask, {}, {}});
      writer_.append_document_index(name_, indices_);
      indices_.clear();
      stats_.written_rows += rows.num_rows;
      return;
    }
    stats_.written_rows += pending_;
    writer_.append_rows(name_, RowBlock{pending_, ids_, loss_, attention_, labels_, types_});
    writer_.append_document_index(name_, indices_);
    ids_.clear(), attention_.clear(), loss_.clear(), types_.clear(), labels_.clear(), indices_.clear();
    pending_ = 0;
  }

  void close() {
    if (packer_) packer_->close_row();
    flush();
    writer_.set_split_attribute(name_, format::kAttrNumDocuments, stats_.rows);
    writer_.set_split_attribute(name_, format::kAttrNumTokens, stats_.tokens);
    writer_.set_split_attribute(name_, "truncated_examples", stats_.truncated);
  }

  const std::string& name() const { return name_; }
  const SplitStats& stats() const { return stats_; }

 private:
  void count(const Example& example) {
    ++stats_.rows;
    stats_.truncated += example.truncated ? 1 : 0;
    stats_.tokens += example.length;
    stats_.shortest = std::min(stats_.shortest, example.length);
    stats_.longest = std::max(stats_.longest, example.length);
  }

  std::string name_;
  PrepTask task_;
  TokenDatasetWriter& writer_;
  SplitStats stats_;
  int64_t pending_ = 0;
  std::vector<int32_t> ids_;
  std::vector<uint8_t> attention_, loss_, types_;
  std::vector<int64_t> labels_, indices_;
  std::optional<DocumentPacker> packer_;  // --packing documents
};

std::string format_fixed(double value, const char* format = "%.1f") {
  char text[32];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

void print_summary(const TaskPrepOptions& options, const DatasetInfo& info, const LabelMap& labels,
                   const std::vector<const SplitRows*>& splits) {
  std::printf("ftrain-prep: wrote %s (task %s)\n", options.output.c_str(), info.task.c_str());
  std::printf("  tokenizer %s (vocab_size %lld, pad_id %lld), seq_len %lld, seed %llu\n", info.tokenizer.c_str(),
              static_cast<long long>(info.vocab_size), static_cast<long long>(info.pad_id),
              static_cast<long long>(info.seq_len), static_cast<unsigned long long>(options.seed));
  std::printf("  %-10s %10s %10s %10s   %s\n", "split", "examples", "rows", "truncated",
              "tokens/example min/mean/max (before truncation)");
  for (const SplitRows* split : splits) {
    const SplitStats& stats = split->stats();
    const double rows = static_cast<double>(std::max<int64_t>(stats.rows, 1));
    std::printf("  %-10s %10lld %10lld %9s%%   %lld/%s/%lld\n", split->name().c_str(),
                static_cast<long long>(stats.rows), static_cast<long long>(stats.written_rows),
                format_fixed(100.0 * static_cast<double>(stats.truncated) / rows, "%.2f").c_str(),
                static_cast<long long>(stats.rows ? stats.shortest : 0),
                format_fixed(static_cast<double>(stats.tokens) / rows).c_str(), static_cast<long long>(stats.longest));
  }
  if (labels.size() > 0) {
    std::printf("  %s per label:\n", options.task == PrepTask::kSequenceClassification ? "examples" : "tagged words");
    for (int64_t id = 0; id < labels.size(); ++id) {
      std::printf("    %lld %-16s", static_cast<long long>(id), labels.names()[static_cast<std::size_t>(id)].c_str());
      for (const SplitRows* split : splits) {
        const auto found = split->stats().per_label.find(id);
        std::printf("  %s %lld", split->name().c_str(),
                    static_cast<long long>(found == split->stats().per_label.end() ? 0 : found->second));
      }
      std::printf("\n");
    }
  }
  std::fflush(stdout);
}

}  // namespace

void prepare_task_dataset(const TaskPrepOptions& options) {
  check_output_free(options.output, options.overwrite);
  const std::unique_ptr<Tokenizer> loaded = load_tokenizer(options.tokenizer);
  const Tokenizer& tokenizer = *loaded;
  const SpecialTokenIds& specials = tokenizer.special_ids();
  std::optional<int32_t> eos_id = options.eos_token ? tokenizer.token_to_id(*options.eos_token) : specials.eos;
  if (options.eos_token && !eos_id) {
    throw std::runtime_error(options.tokenizer.string() + ": token '" + *options.eos_token + "' is not in the vocabulary");
  }
  if (options.task == PrepTask::kInstruction && !eos_id) {
    throw std::runtime_error(options.tokenizer.string() + ": the tokenizer has no end-of-text token; name one with --eos-token");
  }
  // GPT-2-style tokenizers have no padding token; padding is masked, so EOS serves.
  const std::optional<int32_t> pad_id = specials.pad ? specials.pad : eos_id;
  if (!pad_id) {
    throw std::runtime_error(options.tokenizer.string() + ": the tokenizer has neither a padding nor an end-of-text token");
  }

  RecordReaderOptions reader;
  reader.text_is_conll = options.text_is_conll;
  reader.tokens_key = options.tokens_column;
  reader.tags_key = options.tags_column;

  // Pass 1: read every record once, so bad input fails before anything is written, and
  // fix the labels: the given order, else the sorted labels of the --input records.
  int64_t input_records = 0;
  std::vector<std::string> seen;
  for_each_record(options.inputs, reader, [&](const fs::path& file, const Record& record) {
    ++input_records;
    if (has_labels(options.task)) {
      for (auto& label : record_labels(options, file, record)) seen.push_back(std::move(label));
    }
  });
  LabelMap labels;
  if (has_labels(options.task)) labels = options.labels ? LabelMap(*options.labels) : LabelMap::sorted(seen);
  seen.clear();
  auto check_labels = [&](const std::vector<fs::path>& files, bool from_training) {
    int64_t count = 0;
    for_each_record(files, reader, [&](const fs::path& file, const Record& record) {
      ++count;
      if (has_labels(options.task)) (void)label_ids(labels, record_labels(options, file, record), file, record, from_training);
    });
    return count;
  };
  if (options.labels) check_labels(options.inputs, true);
  const int64_t validation_records = check_labels(options.validation_inputs, false);
  const int64_t test_records = check_labels(options.test_inputs, false);
  const SplitAssignment assignment(input_records, options.validation_fraction, options.test_fraction, options.seed,
                                   "records");

  DatasetInfo info;
  info.seq_len = options.seq_len;
  info.vocab_size = tokenizer.vocab_size();
  info.eos_id = eos_id ? *eos_id : -1;
  info.pad_id = *pad_id;
  info.tokenizer = fs::absolute(options.tokenizer).lexically_normal().string();
  info.task = task_attribute(options.task);
  if (options.packing == Packing::kDocuments) info.format_version = format::kVersionPackedDocuments;
  WriterOptions writer_options;
  writer_options.overwrite = options.overwrite;
  if (has_labels(options.task)) info.label_names = labels.names();
  TokenDatasetWriter writer(options.output, info, writer_options);

  std::map<Split, std::unique_ptr<SplitRows>> splits;
  for (const Split split : assignment.splits(!options.validation_inputs.empty(), !options.test_inputs.empty()))
    splits[split] = std::make_unique<SplitRows>(split, options, *pad_id, writer);

  // Pass 2. Records are numbered across all inputs in order, as documents are for
  // causal-LM packing; document_index stores these numbers.
  int64_t next_index = 0;
  auto encode_files = [&](const std::vector<fs::path>& files, std::optional<Split> given) {
    const std::string& text_column =
        given == Split::kValidation && options.validation_text_column ? *options.validation_text_column
        : given == Split::kTest && options.test_text_column           ? *options.test_text_column
                                                                      : options.text_column;
    for_each_record(files, reader, [&](const fs::path& file, const Record& record) {
      const int64_t index = next_index++;
      const Split split = given ? *given : assignment.of(index);
      Example example;
      int64_t row_label = format::kIgnoreLabel;
      if (options.task == PrepTask::kSequenceClassification) {
        const std::string text = field_text(record, file, text_column, "--text-column");
        std::optional<std::string> pair;
        if (options.text_pair_column) pair = field_text(record, file, *options.text_pair_column, "--text-pair-column");
        example = build_classification_row(tokenizer, text, pair ? std::optional<std::string_view>(*pair) : std::nullopt,
                                           options.seq_len, options.truncation, *pad_id);
        row_label = label_ids(labels, record_labels(options, file, record), file, record, false).front();
      } else if (options.task == PrepTask::kTokenClassification) {
        const auto words = field_list(record, file, options.tokens_column, "--tokens-column");
        const auto tags = label_ids(labels, record_labels(options, file, record), file, record, false);
        if (words.size() != tags.size()) {
          throw std::runtime_error(where(file, record) + std::to_string(words.size()) + " tokens but " +
                                   std::to_string(tags.size()) + " tags");
        }
        example = build_token_classification_row(tokenizer, words, tags, options.seq_len, *pad_id);
      } else {
        example = build_instruction_row(tokenizer, field_text(record, file, options.prompt_column, "--prompt-column"),
                                        field_text(record, file, options.response_column, "--response-column"),
                                        options.seq_len, *eos_id, *pad_id);
      }
      splits.at(split)->add(index, example, row_label);
    });
  };
  encode_files(options.inputs, std::nullopt);
  encode_files(options.validation_inputs, Split::kValidation);
  encode_files(options.test_inputs, Split::kTest);
  if (next_index != input_records + validation_records + test_records) {
    throw std::runtime_error("the inputs changed while ftrain-prep was reading them");
  }

  std::vector<const SplitRows*> written;
  for (auto& [split, rows] : splits) {
    rows->close();
    written.push_back(rows.get());
  }
  writer.finish();
  print_summary(options, info, labels, written);
}

}  // namespace ftrain::data
