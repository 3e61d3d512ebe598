#include "data/prep_seq2seq.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>

#include "data/prep_records.h"
#include "data/prep_splits.h"
#include "data/token_dataset.h"

namespace fs = std::filesystem;

namespace ftrain::data {
namespace {

using Split = PrepSplit;

// The text of column `key` of a record; "a.b" reads key b of the object under a (the
// `datasets` translation layout, {"translation": {"en": ..., "de": ...}}).
std::string column_text(const Record& record, const fs::path& file, const std::string& key, const std::string& option) {
  const std::string where = file.string() + ":" + std::to_string(record.line) + ": column '" + key + "'";
  const nlohmann::json* value = &record.fields;
  for (std::size_t start = 0; start <= key.size();) {
    std::size_t dot = key.find('.', start);
    if (dot == std::string::npos) dot = key.size();
    const std::string part = key.substr(start, dot - start);
    if (!value->is_object() || !value->contains(part))
      throw std::runtime_error(where + " is missing (" + option + ")");
    value = &(*value)[part];
    start = dot + 1;
  }
  if (value->is_string()) return value->get<std::string>();
  if (value->is_number() || value->is_boolean()) return value->dump();
  throw std::runtime_error(where + " is " + std::string(value->type_name()) + ", expected text");
}

struct SplitStats {
  int64_t examples = 0;
  int64_t truncated_sources = 0, truncated_targets = 0;
  int64_t longest_source = 0, longest_target = 0;  // before truncation
};

class Seq2SeqSplit {
 public:
  Seq2SeqSplit(Split split, const TaskPrepOptions& options, int32_t pad_id, TokenDatasetWriter& writer)
      : name_(split_name(split)),
        seq_len_(options.seq_len),
        target_len_(options.target_len),
        pad_id_(pad_id),
        writer_(writer) {
    SplitFields fields;
    fields.attention_mask = true;
    fields.labels = LabelKind::kTarget;
    fields.document_index = true;
    writer_.create_split(name_, fields);
  }

  void add(int64_t record, const Encoding& source, const Encoding& target, int64_t source_tokens, int64_t target_tokens) {
    const auto source_length = static_cast<int64_t>(source.ids.size());
    ids_.insert(ids_.end(), source.ids.begin(), source.ids.end());
    ids_.insert(ids_.end(), static_cast<std::size_t>(seq_len_ - source_length), pad_id_);
    attention_.insert(attention_.end(), static_cast<std::size_t>(source_length), uint8_t{1});
    attention_.insert(attention_.end(), static_cast<std::size_t>(seq_len_ - source_length), uint8_t{0});
    labels_.insert(labels_.end(), target.ids.begin(), target.ids.end());
    labels_.insert(labels_.end(), static_cast<std::size_t>(target_len_ - static_cast<int64_t>(target.ids.size())),
                   format::kIgnoreLabel);
    records_.push_back(record);
    ++stats_.examples;
    stats_.truncated_sources += source_tokens > seq_len_ ? 1 : 0;
    stats_.truncated_targets += target_tokens > target_len_ ? 1 : 0;
    stats_.longest_source = std::max(stats_.longest_source, source_tokens);
    stats_.longest_target = std::max(stats_.longest_target, target_tokens);
    if (++pending_ >= 4096) flush();
  }

  void flush() {
    RowBlock block;
    block.num_rows = pending_;
    block.input_ids = ids_;
    block.attention_mask = attention_;
    block.labels = labels_;
    writer_.append_rows(name_, block);
    writer_.append_document_index(name_, records_);
    ids_.clear(), attention_.clear(), labels_.clear(), records_.clear();
    pending_ = 0;
  }

  void close() {
    flush();
    writer_.set_split_attribute(name_, format::kAttrNumDocuments, stats_.examples);
  }

  const std::string& name() const { return name_; }
  const SplitStats& stats() const { return stats_; }

 private:
  std::string name_;
  int64_t seq_len_, target_len_;
  int32_t pad_id_;
  TokenDatasetWriter& writer_;
  SplitStats stats_;
  int64_t pending_ = 0;
  std::vector<int32_t> ids_;
  std::vector<uint8_t> attention_;
  std::vector<int64_t> labels_, records_;
};

}  // namespace

void prepare_seq2seq_dataset(const TaskPrepOptions& options) {
  check_output_free(options.output, options.overwrite);
  if (options.target_len < 1) throw std::runtime_error("--target-len must be >= 1");
  const std::unique_ptr<Tokenizer> loaded = load_tokenizer(options.tokenizer);
  const Tokenizer& tokenizer = *loaded;
  const SpecialTokenIds& specials = tokenizer.special_ids();
  const std::optional<int32_t> pad_id = specials.pad ? specials.pad : specials.eos;
  if (!pad_id) {
    throw std::runtime_error(options.tokenizer.string() + ": the tokenizer has neither a padding nor an end-of-text token");
  }
  const size_t added = tokenizer.special_template().added_count(false);
  if (static_cast<int64_t>(added) >= std::min(options.seq_len, options.target_len)) {
    throw std::runtime_error("--seq-len and --target-len must leave room beside the tokenizer's " +
                             std::to_string(added) + " special tokens");
  }

  // Pass 1: every record read and checked before anything is written.
  const auto check = [&](const std::vector<fs::path>& files) {
    int64_t count = 0;
    for (const fs::path& file : files) {
      RecordReader reader(file);
      Record record;
      while (reader.next(record)) {
        (void)column_text(record, file, options.source_column, "--source-column");
        const std::string target = column_text(record, file, options.target_column, "--target-column");
        if (target.find_first_not_of(" \t\r\n") == std::string::npos)
          throw std::runtime_error(file.string() + ":" + std::to_string(record.line) + ": column '" +
                                   options.target_column + "' is empty: a target is needed to learn from");
        ++count;
      }
    }
    return count;
  };
  const int64_t input_records = check(options.inputs);
  const int64_t held_out = check(options.validation_inputs) + check(options.test_inputs);
  const SplitAssignment assignment(input_records, options.validation_fraction, options.test_fraction, options.seed,
                                   "records");

  DatasetInfo info;
  info.seq_len = options.seq_len;
  info.target_len = options.target_len;
  info.vocab_size = tokenizer.vocab_size();
  info.eos_id = specials.eos ? *specials.eos : -1;
  info.pad_id = *pad_id;
  info.tokenizer = fs::absolute(options.tokenizer).lexically_normal().string();
  info.task = format::kTaskSeq2Seq;
  WriterOptions writer_options;
  writer_options.overwrite = options.overwrite;
  TokenDatasetWriter writer(options.output, info, writer_options);

  std::map<Split, std::unique_ptr<Seq2SeqSplit>> splits;
  for (const Split split : assignment.splits(!options.validation_inputs.empty(), !options.test_inputs.empty()))
    splits[split] = std::make_unique<Seq2SeqSplit>(split, options, *pad_id, writer);

  int64_t next_index = 0;
  const auto encode_files = [&](const std::vector<fs::path>& files, std::optional<Split> given) {
    for (const fs::path& file : files) {
      RecordReader reader(file);
      Record record;
      while (reader.next(record)) {
        const int64_t index = next_index++;
        const Split split = given ? *given : assignment.of(index);
        const std::string source = options.source_prefix + column_text(record, file, options.source_column, "--source-column");
        const std::string target = column_text(record, file, options.target_column, "--target-column");
        const auto full_length = [&](const std::string& text) {
          return static_cast<int64_t>(tokenizer.encode(text).size() + added);
        };
        splits.at(split)->add(index,
                              tokenizer.encode_with_specials(source, {.max_length = static_cast<size_t>(options.seq_len)}),
                              tokenizer.encode_with_specials(target, {.max_length = static_cast<size_t>(options.target_len)}),
                              full_length(source), full_length(target));
      }
    }
  };
  encode_files(options.inputs, std::nullopt);
  encode_files(options.validation_inputs, Split::kValidation);
  encode_files(options.test_inputs, Split::kTest);
  if (next_index != input_records + held_out) throw std::runtime_error("the inputs changed while ftrain-prep was reading them");
  for (auto& [split, rows] : splits) rows->close();
  writer.finish();

  std::printf("ftrain-prep: wrote %s (task %s)\n", options.output.c_str(), info.task.c_str());
  std::printf("  tokenizer %s (vocab_size %lld, pad_id %lld), source %lld tokens, target %lld tokens, seed %llu\n",
              info.tokenizer.c_str(), static_cast<long long>(info.vocab_size), static_cast<long long>(info.pad_id),
              static_cast<long long>(options.seq_len), static_cast<long long>(options.target_len),
              static_cast<unsigned long long>(options.seed));
  std::printf("  %-10s %10s %16s %16s %14s %14s\n", "split", "examples", "sources cut", "targets cut",
              "longest source", "longest target");
  for (const auto& [split, rows] : splits) {
    const SplitStats& stats = rows->stats();
    std::printf("  %-10s %10lld %16lld %16lld %14lld %14lld\n", rows->name().c_str(),
                static_cast<long long>(stats.examples), static_cast<long long>(stats.truncated_sources),
                static_cast<long long>(stats.truncated_targets), static_cast<long long>(stats.longest_source),
                static_cast<long long>(stats.longest_target));
  }
  std::fflush(stdout);
}

}  // namespace ftrain::data
