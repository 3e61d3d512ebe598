#include "data/prep_qa.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "data/prep_records.h"
#include "data/prep_splits.h"
#include "data/token_dataset.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::data {
namespace {

using Split = PrepSplit;

struct Answer {
  std::string text;
  int64_t start = 0;  // characters
};

// One question about one context, and where it was read, for messages.
struct QaExample {
  std::string where;  // "<file>:<line>" or "<file>: data[i].paragraphs[j].qas[k]"
  std::string id;
  std::string context;
  std::string question;
  std::vector<Answer> answers;  // empty: unanswerable
};

[[noreturn]] void fail(const QaExample& example, const std::string& problem) {
  throw std::runtime_error(example.where + (example.id.empty() ? "" : " (id " + example.id + ")") + ": " + problem);
}

const json& member(const json& object, const std::string& key, const std::string& where) {
  if (!object.is_object()) throw std::runtime_error(where + ": is " + std::string(object.type_name()) + ", expected an object");
  const auto found = object.find(key);
  if (found == object.end()) throw std::runtime_error(where + ": has no \"" + key + "\"");
  return *found;
}

std::string text_of(const json& value, const std::string& where) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return value.dump();
  throw std::runtime_error(where + " is " + std::string(value.type_name()) + ", expected a string");
}

int64_t start_of(const json& value, const std::string& where) {
  if (!value.is_number_integer()) {
    throw std::runtime_error(where + " is " + value.dump().substr(0, 40) + ", expected a character index");
  }
  return value.get<int64_t>();
}

// answers as {"text": [...], "answer_start": [...]} or [{"text", "answer_start"}, ...].
std::vector<Answer> read_answers(const json& value, const std::string& where) {
  std::vector<Answer> answers;
  if (value.is_object()) {
    const json& texts = member(value, "text", where + ": answers");
    const json& starts = member(value, "answer_start", where + ": answers");
    if (!texts.is_array() || !starts.is_array() || texts.size() != starts.size()) {
      throw std::runtime_error(where + ": answers.text and answers.answer_start must be lists of one length");
    }
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const std::string at = where + ": answers." ;
      answers.push_back({text_of(texts[i], at + "text[" + std::to_string(i) + "]"),
                         start_of(starts[i], at + "answer_start[" + std::to_string(i) + "]")});
    }
    return answers;
  }
  if (!value.is_array()) {
    throw std::runtime_error(where + ": answers is " + std::string(value.type_name()) +
                             ", expected a list of {\"text\", \"answer_start\"} or {\"text\": [...], \"answer_start\": [...]}");
  }
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string at = where + ": answers[" + std::to_string(i) + "]";
    answers.push_back({text_of(member(value[i], "text", at), at + ".text"),
                       start_of(member(value[i], "answer_start", at), at + ".answer_start")});
  }
  return answers;
}

// Calls visit(example) for every question of the files, in order.
template <typename Visit>
void for_each_example(const std::vector<fs::path>& files, const TaskPrepOptions& options, Visit visit) {
  for (const fs::path& file : files) {
    if (file.extension() == ".jsonl") {
      RecordReader reader(file);
      Record record;
      while (reader.next(record)) {
        QaExample example;
        example.where = file.string() + ":" + std::to_string(record.line);
        if (record.fields.contains(options.id_column))
          example.id = text_of(record.fields[options.id_column], example.where + ": " + options.id_column);
        example.context = field_text(record, file, options.context_column, "--context-column");
        example.question = field_text(record, file, options.question_column, "--question-column");
        example.answers = read_answers(member(record.fields, options.answers_column, example.where), example.where);
        visit(example);
      }
      continue;
    }
    if (file.extension() != ".json") {
      throw std::runtime_error(file.string() + ": question answering reads SQuAD .json or .jsonl files");
    }
    std::ifstream stream(file, std::ios::binary);
    if (!stream) throw std::runtime_error(file.string() + ": cannot be opened");
    json root;
    try {
      root = json::parse(stream);
    } catch (const json::exception& error) {
      throw std::runtime_error(file.string() + ": is not valid JSON: " + error.what());
    }
    const json& data = member(root, "data", file.string());
    if (!data.is_array()) throw std::runtime_error(file.string() + ": \"data\" is not a list");
    for (std::size_t a = 0; a < data.size(); ++a) {
      const std::string article = file.string() + ": data[" + std::to_string(a) + "]";
      const json& paragraphs = member(data[a], "paragraphs", article);
      if (!paragraphs.is_array()) throw std::runtime_error(article + ".paragraphs is not a list");
      for (std::size_t p = 0; p < paragraphs.size(); ++p) {
        const std::string paragraph = article + ".paragraphs[" + std::to_string(p) + "]";
        const std::string context = text_of(member(paragraphs[p], "context", paragraph), paragraph + ".context");
        const json& qas = member(paragraphs[p], "qas", paragraph);
        if (!qas.is_array()) throw std::runtime_error(paragraph + ".qas is not a list");
        for (std::size_t q = 0; q < qas.size(); ++q) {
          QaExample example;
          example.where = paragraph + ".qas[" + std::to_string(q) + "]";
          example.context = context;
          if (qas[q].contains("id")) example.id = text_of(qas[q]["id"], example.where + ".id");
          example.question = text_of(member(qas[q], "question", example.where), example.where + ".question");
          example.answers = read_answers(member(qas[q], "answers", example.where), example.where);
          if (qas[q].value("is_impossible", false)) example.answers.clear();
          visit(example);
        }
      }
    }
  }
}

void check_example(const QaExample& example) {
  if (example.context.find_first_not_of(" \t\r\n") == std::string::npos) fail(example, "context is empty");
  const std::vector<std::size_t> starts = character_starts(example.context);
  const auto characters = static_cast<int64_t>(starts.size()) - 1;
  for (std::size_t i = 0; i < example.answers.size(); ++i) {
    const Answer& answer = example.answers[i];
    const std::string field = "answers[" + std::to_string(i) + "]";
    if (answer.text.empty()) fail(example, field + ".text is empty (an unanswerable question has no answers)");
    const auto length = static_cast<int64_t>(character_starts(answer.text).size()) - 1;
    if (answer.start < 0 || answer.start + length > characters) {
      fail(example, field + ".answer_start " + std::to_string(answer.start) + " with a text of " +
                        std::to_string(length) + " characters runs outside the context's " +
                        std::to_string(characters) + " characters");
    }
    const std::size_t begin = starts[static_cast<std::size_t>(answer.start)];
    const std::size_t end = starts[static_cast<std::size_t>(answer.start + length)];
    const std::string found = example.context.substr(begin, end - begin);
    if (found != answer.text) {
      fail(example, field + ".answer_start " + std::to_string(answer.start) + " does not point at its text \"" +
                        answer.text + "\": the context there reads \"" + found + "\"");
    }
  }
}

// The ids of [CLS] question [SEP] window [SEP] as the tokenizer's pair template lays
// them out, with where the window starts.
struct Layout {
  Encoding encoding;
  std::size_t window_start = 0;
};

Layout lay_out(const Tokenizer& tokenizer, std::span<const int32_t> question, std::span<const int32_t> window) {
  Layout layout;
  for (const auto& part : tokenizer.special_template().pair()) {
    using Kind = SpecialTokenTemplate::Part::Kind;
    const std::span<const int32_t> ids = part.kind == Kind::first_text    ? question
                                         : part.kind == Kind::second_text ? window
                                                                          : std::span<const int32_t>(part.ids);
    if (part.kind == Kind::second_text) layout.window_start = layout.encoding.ids.size();
    layout.encoding.ids.insert(layout.encoding.ids.end(), ids.begin(), ids.end());
    layout.encoding.token_type_ids.insert(layout.encoding.token_type_ids.end(), ids.size(), part.type_id);
  }
  return layout;
}

struct SplitStats {
  int64_t examples = 0;
  int64_t rows = 0;
  int64_t unanswerable = 0;
  int64_t split_examples = 0;    // examples needing more than one window
  int64_t rows_without_answer = 0;  // rows labelled at [CLS]
};

class QaSplit {
 public:
  QaSplit(Split split, const TaskPrepOptions& options, TokenDatasetWriter& writer)
      : name_(split_name(split)), seq_len_(options.seq_len), writer_(writer) {
    SplitFields fields;
    fields.attention_mask = true;
    fields.token_type_ids = true;
    fields.labels = LabelKind::kSpan;
    fields.answer_spans = true;
    fields.document_index = true;
    writer_.create_split(name_, fields);
  }

  void add_example(int64_t record, const QaExample& example) {
    json line = {{"id", example.id}, {"context", example.context}, {"question", example.question}};
    json texts = json::array(), starts = json::array();
    for (const Answer& answer : example.answers) texts.push_back(answer.text), starts.push_back(answer.start);
    line["answers"] = {{"text", texts}, {"answer_start", starts}};
    examples_ += line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    records_.push_back(record);
    ++stats_.examples;
    if (example.answers.empty()) ++stats_.unanswerable;
  }

  // One window of the current example (the last one added).
  void add_row(const Layout& layout, int32_t pad_id, const std::vector<CharSpan>& window_offsets,
               int64_t start_label, int64_t end_label) {
    const auto length = static_cast<int64_t>(layout.encoding.ids.size());
    ids_.insert(ids_.end(), layout.encoding.ids.begin(), layout.encoding.ids.end());
    ids_.insert(ids_.end(), static_cast<std::size_t>(seq_len_ - length), pad_id);
    attention_.insert(attention_.end(), static_cast<std::size_t>(length), uint8_t{1});
    attention_.insert(attention_.end(), static_cast<std::size_t>(seq_len_ - length), uint8_t{0});
    for (const int32_t type : layout.encoding.token_type_ids) types_.push_back(static_cast<uint8_t>(type));
    types_.insert(types_.end(), static_cast<std::size_t>(seq_len_ - length), uint8_t{0});
    const std::size_t first_offset = offsets_.size();
    offsets_.resize(first_offset + 2 * static_cast<std::size_t>(seq_len_), -1);
    for (std::size_t i = 0; i < window_offsets.size(); ++i) {
      offsets_[first_offset + 2 * (layout.window_start + i)] = static_cast<int32_t>(window_offsets[i].begin);
      offsets_[first_offset + 2 * (layout.window_start + i) + 1] = static_cast<int32_t>(window_offsets[i].end);
    }
    labels_.push_back(start_label);
    labels_.push_back(end_label);
    example_index_.push_back(stats_.examples - 1);
    ++stats_.rows;
    ++pending_;
    if (pending_ >= 1024) flush();
  }

  void count_split_example() { ++stats_.split_examples; }
  void count_row_without_answer() { ++stats_.rows_without_answer; }

  void flush() {
    RowBlock block;
    block.num_rows = pending_;
    block.input_ids = ids_;
    block.attention_mask = attention_;
    block.token_type_ids = types_;
    block.labels = labels_;
    block.offset_mapping = offsets_;
    block.example_index = example_index_;
    writer_.append_rows(name_, block);
    writer_.append_document_index(name_, records_);
    writer_.append_examples(name_, examples_);
    ids_.clear(), attention_.clear(), types_.clear(), labels_.clear(), offsets_.clear(), example_index_.clear();
    records_.clear(), examples_.clear();
    pending_ = 0;
  }

  void close() {
    flush();
    writer_.set_split_attribute(name_, format::kAttrNumDocuments, stats_.examples);
    writer_.set_split_attribute(name_, "unanswerable_examples", stats_.unanswerable);
  }

  const std::string& name() const { return name_; }
  const SplitStats& stats() const { return stats_; }

 private:
  std::string name_;
  int64_t seq_len_;
  TokenDatasetWriter& writer_;
  SplitStats stats_;
  int64_t pending_ = 0;
  std::vector<int32_t> ids_, offsets_;
  std::vector<uint8_t> attention_, types_;
  std::vector<int64_t> labels_, example_index_, records_;
  std::string examples_;
};

// The windows of one example, labelled as run_qa labels them: the first answer's first
// and last token when the window holds the whole answer, else the [CLS] position.
void add_windows(const Tokenizer& tokenizer, const TaskPrepOptions& options, int32_t pad_id, const QaExample& example,
                 QaSplit& split) {
  // run_qa strips the question's leading whitespace: some questions start with many
  // spaces, which would only take room from the context.
  const std::size_t first = example.question.find_first_not_of(" \t\r\n");
  const std::vector<int32_t> question =
      tokenizer.encode(first == std::string::npos ? std::string_view() : std::string_view(example.question).substr(first));
  std::vector<CharSpan> offsets;
  const std::vector<int32_t> context = tokenizer.encode_with_offsets(example.context, offsets);
  if (context.empty()) fail(example, "context has no tokens (only characters the tokenizer drops)");
  const auto added = static_cast<int64_t>(tokenizer.special_template().added_count(true));
  const int64_t room = options.seq_len - added - static_cast<int64_t>(question.size());
  if (room < 1) {
    fail(example, "the question is " + std::to_string(question.size()) + " tokens; with " + std::to_string(added) +
                      " special tokens it leaves no room for the context in --seq-len " + std::to_string(options.seq_len));
  }
  if (options.doc_stride >= room) {
    fail(example, "--doc-stride " + std::to_string(options.doc_stride) + " must be smaller than the " +
                      std::to_string(room) + " context tokens a row has room for beside this question");
  }
  const std::optional<int32_t> cls = tokenizer.special_ids().cls;
  const auto total = static_cast<int64_t>(context.size());
  const int64_t step = room - options.doc_stride;
  int64_t windows = 0;
  for (int64_t start = 0;; start += step) {
    const int64_t end = std::min(start + room, total);
    const std::span<const int32_t> window(context.data() + start, static_cast<std::size_t>(end - start));
    const Layout layout = lay_out(tokenizer, question, window);
    const std::vector<CharSpan> window_offsets(offsets.begin() + start, offsets.begin() + end);
    int64_t cls_position = 0;
    if (cls) {
      const auto found = std::find(layout.encoding.ids.begin(), layout.encoding.ids.end(), *cls);
      if (found != layout.encoding.ids.end()) cls_position = found - layout.encoding.ids.begin();
    }
    int64_t start_label = cls_position, end_label = cls_position;
    if (!example.answers.empty()) {
      const Answer& answer = example.answers.front();
      const int64_t answer_end = answer.start + static_cast<int64_t>(character_starts(answer.text).size()) - 1;
      if (window_offsets.front().begin <= answer.start && window_offsets.back().end >= answer_end) {
        // The last token starting at or before the answer, the first ending at or after it.
        int64_t first_token = 0;
        while (first_token + 1 < static_cast<int64_t>(window_offsets.size()) &&
               window_offsets[static_cast<std::size_t>(first_token + 1)].begin <= answer.start) {
          ++first_token;
        }
        int64_t last_token = static_cast<int64_t>(window_offsets.size()) - 1;
        while (last_token > 0 && window_offsets[static_cast<std::size_t>(last_token - 1)].end >= answer_end) --last_token;
        start_label = static_cast<int64_t>(layout.window_start) + first_token;
        end_label = static_cast<int64_t>(layout.window_start) + last_token;
      }
    }
    if (start_label == cls_position) split.count_row_without_answer();
    split.add_row(layout, pad_id, window_offsets, start_label, end_label);
    ++windows;
    if (end == total) break;
  }
  if (windows > 1) split.count_split_example();
}

}  // namespace

void prepare_qa_dataset(const TaskPrepOptions& options) {
  check_output_free(options.output, options.overwrite);
  if (options.doc_stride < 0) throw std::runtime_error("--doc-stride must be >= 0");
  const std::unique_ptr<Tokenizer> loaded = load_tokenizer(options.tokenizer);
  const Tokenizer& tokenizer = *loaded;
  const SpecialTokenIds& specials = tokenizer.special_ids();
  const std::optional<int32_t> pad_id = specials.pad ? specials.pad : specials.eos;
  if (!pad_id) {
    throw std::runtime_error(options.tokenizer.string() + ": the tokenizer has neither a padding nor an end-of-text token");
  }
  {  // Offsets are what the task stands on: a tokenizer without them is refused up front.
    std::vector<CharSpan> offsets;
    (void)tokenizer.encode_with_offsets("a", offsets);
  }

  // Pass 1: read and check every example, so bad input fails before anything is written.
  int64_t input_examples = 0, held_out_examples = 0;
  for_each_example(options.inputs, options, [&](const QaExample& example) {
    check_example(example);
    ++input_examples;
  });
  for (const auto* files : {&options.validation_inputs, &options.test_inputs}) {
    for_each_example(*files, options, [&](const QaExample& example) {
      check_example(example);
      ++held_out_examples;
    });
  }
  const SplitAssignment assignment(input_examples, options.validation_fraction, options.test_fraction, options.seed,
                                   "questions");

  DatasetInfo info;
  info.seq_len = options.seq_len;
  info.vocab_size = tokenizer.vocab_size();
  info.eos_id = specials.eos ? *specials.eos : -1;
  info.pad_id = *pad_id;
  info.tokenizer = fs::absolute(options.tokenizer).lexically_normal().string();
  info.task = format::kTaskQuestionAnswering;
  WriterOptions writer_options;
  writer_options.overwrite = options.overwrite;
  TokenDatasetWriter writer(options.output, info, writer_options);

  std::map<Split, std::unique_ptr<QaSplit>> splits;
  for (const Split split : assignment.splits(!options.validation_inputs.empty(), !options.test_inputs.empty()))
    splits[split] = std::make_unique<QaSplit>(split, options, writer);

  // Pass 2: questions numbered across all inputs in order (document_index).
  int64_t next_index = 0;
  auto encode_files = [&](const std::vector<fs::path>& files, std::optional<Split> given) {
    for_each_example(files, options, [&](const QaExample& example) {
      const int64_t index = next_index++;
      const Split split = given ? *given : assignment.of(index);
      QaSplit& rows = *splits.at(split);
      rows.add_example(index, example);
      add_windows(tokenizer, options, *pad_id, example, rows);
    });
  };
  encode_files(options.inputs, std::nullopt);
  encode_files(options.validation_inputs, Split::kValidation);
  encode_files(options.test_inputs, Split::kTest);
  if (next_index != input_examples + held_out_examples) {
    throw std::runtime_error("the inputs changed while ftrain-prep was reading them");
  }
  for (auto& [split, rows] : splits) rows->close();
  writer.finish();

  std::printf("ftrain-prep: wrote %s (task %s)\n", options.output.c_str(), info.task.c_str());
  std::printf("  tokenizer %s (vocab_size %lld, pad_id %lld), seq_len %lld, doc_stride %lld, seed %llu\n",
              info.tokenizer.c_str(), static_cast<long long>(info.vocab_size), static_cast<long long>(info.pad_id),
              static_cast<long long>(info.seq_len), static_cast<long long>(options.doc_stride),
              static_cast<unsigned long long>(options.seed));
  std::printf("  %-10s %10s %10s %13s %15s %18s\n", "split", "questions", "rows", "unanswerable",
              "several rows", "rows without answer");
  for (const auto& [split, rows] : splits) {
    const SplitStats& stats = rows->stats();
    std::printf("  %-10s %10lld %10lld %13lld %15lld %18lld\n", rows->name().c_str(),
                static_cast<long long>(stats.examples), static_cast<long long>(stats.rows),
                static_cast<long long>(stats.unanswerable), static_cast<long long>(stats.split_examples),
                static_cast<long long>(stats.rows_without_answer));
  }
  std::fflush(stdout);
}

}  // namespace ftrain::data
