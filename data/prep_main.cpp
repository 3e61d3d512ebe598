// ftrain-prep: turns text corpora into an ftrain token dataset (docs/dataset-format.md).
//
// Documents are read twice. The first pass counts and validates them, so malformed
// input fails before any tokenizing and the split of every document can be decided up
// front (a seeded permutation of document indices, so no document straddles splits).
// The second pass tokenizes in parallel, in input order, and packs each split's
// documents into rows that are appended to the file in blocks. The output appears only
// when everything succeeded; an existing output is replaced only with --overwrite.

#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "data/tokenizer.h"
#include "data/document_reader.h"
#include "data/prep_records.h"
#include "data/prep_qa.h"
#include "data/prep_seq2seq.h"
#include "data/prep_tasks.h"
#include "data/row_packer.h"
#include "data/prep_splits.h"
#include "data/token_dataset.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;
using namespace ftrain::data;

namespace {

struct PrepOptions {
  std::vector<fs::path> inputs;
  std::vector<fs::path> validation_inputs;
  std::vector<fs::path> test_inputs;
  fs::path tokenizer;
  fs::path output;
  int64_t seq_len = 0;
  double validation_fraction = 0.05;
  double test_fraction = 0.0;
  bool validation_fraction_given = false;
  bool test_fraction_given = false;
  uint64_t seed = 1234;
  bool overwrite = false;
  DocumentReaderOptions reader;
  std::optional<std::string> eos_token;
  int threads = 1;
  TaskPrepOptions task;  // the fine-tuning tasks; task.task == kCausalLm packs documents

  void validate() const {
    auto fail = [](const std::string& what) { throw po::error(what); };
    if (inputs.empty()) fail("--input is required (a .txt or .jsonl file; repeat it for several)");
    if (tokenizer.empty()) fail("--tokenizer is required (a model directory with tokenizer.json, vocab.txt, or vocab.json + merges.txt)");
    if (output.empty()) fail("--output is required (the .h5 file to write)");
    if (seq_len < 2) {
      fail("--seq-len must be >= 2 (a row needs a token to predict from and one to predict), got " +
           std::to_string(seq_len));
    }
    if (!(validation_fraction >= 0 && validation_fraction < 1)) fail("--validation-fraction must be in [0, 1)");
    if (!(test_fraction >= 0 && test_fraction < 1)) fail("--test-fraction must be in [0, 1)");
    if (!validation_inputs.empty() && validation_fraction_given) {
      fail("give either --validation-input or --validation-fraction, not both");
    }
    if (!test_inputs.empty() && test_fraction_given) fail("give either --test-input or --test-fraction, not both");
    if (drawn_validation_fraction() + drawn_test_fraction() >= 1) {
      fail("--validation-fraction plus --test-fraction must leave documents for training");
    }
    if (threads < 1) fail("--threads must be >= 1");
  }

  // Fractions of the --input documents that go to each held-out split; a split given
  // by its own files takes nothing from --input.
  double drawn_validation_fraction() const { return validation_inputs.empty() ? validation_fraction : 0.0; }
  double drawn_test_fraction() const { return test_inputs.empty() ? test_fraction : 0.0; }
};

constexpr int kUsageError = 2;

std::optional<PrepOptions> parse_options(int argc, char** argv) {
  PrepOptions options;
  std::vector<std::string> inputs, validation_inputs, test_inputs;
  std::string text_mode = "line";
  std::string eos_token;
  std::string task = "causal_lm";
  std::string truncation = "right";
  std::string labels;
  std::string text_pair_column;
  std::string packing;
  po::options_description described(
      "ftrain-prep: tokenize text corpora into an ftrain HDF5 token dataset\n\n"
      "Documents are tokenized, each followed by the end-of-text token, concatenated and\n"
      "cut into rows of exactly --seq-len tokens; the tail shorter than a row is dropped.\n"
      "Documents are assigned to splits before packing, so none straddles two splits.\n"
      "With --packing documents, whole documents are packed into rows instead, padded, and\n"
      "each keeps its own positions and attention (format_version 2).\n\n"
      "With --task other than causal_lm every example is one row padded to --seq-len\n"
      "(docs/dataset-format.md): sequence_classification, token_classification, instruction;\n"
      "question_answering cuts each context into windows (--doc-stride) of one row each.\n\n"
      "Options");
  described.add_options()
      ("help,h", "print this help")
      ("input,i", po::value(&inputs)->composing(),
       "input file, repeatable: .txt (one document per line), .jsonl (one JSON object per line), "
       ".csv or .tsv (a header row naming the columns), .conll (token<TAB>tag lines)")
      ("task", po::value(&task)->default_value("causal_lm"),
       "causal_lm (packed documents), sequence_classification, token_classification, instruction, "
       "question_answering (SQuAD .json or .jsonl) or seq2seq (source and target texts)")
      ("text-column", po::value<std::string>(),
       "column (CSV/TSV header or JSON key) holding the text; default 'text' (same as --text-key)")
      ("validation-text-column", po::value<std::string>(),
       "text column of the --validation-input files when it differs (default: --text-column)")
      ("test-text-column", po::value<std::string>(),
       "text column of the --test-input files when it differs (default: --text-column)")
      ("text-pair-column", po::value(&text_pair_column), "sequence_classification: column of the second text of a pair")
      ("label-column", po::value(&options.task.label_column)->default_value("label"),
       "sequence_classification: column holding the class")
      ("labels", po::value(&labels),
       "comma-separated label names fixing the ids 0..K-1 (default: the sorted labels of --input)")
      ("tokens-column", po::value(&options.task.tokens_column)->default_value("tokens"),
       "token_classification: JSON key of the list of words")
      ("tags-column", po::value(&options.task.tags_column)->default_value("tags"),
       "token_classification: JSON key of the list of tags, one per word")
      ("prompt-column", po::value(&options.task.prompt_column)->default_value("prompt"),
       "instruction: JSON key of the prompt (not trained on)")
      ("response-column", po::value(&options.task.response_column)->default_value("response"),
       "instruction: JSON key of the response (trained on, followed by EOS)")
      ("question-column", po::value(&options.task.question_column)->default_value("question"),
       "question_answering: JSON Lines key of the question")
      ("context-column", po::value(&options.task.context_column)->default_value("context"),
       "question_answering: JSON Lines key of the context")
      ("id-column", po::value(&options.task.id_column)->default_value("id"),
       "question_answering: JSON Lines key of the question's id (optional; named in errors and predictions)")
      ("answers-column", po::value(&options.task.answers_column)->default_value("answers"),
       "question_answering: JSON Lines key of the answers ({\"text\": [...], \"answer_start\": [...]})")
      ("doc-stride", po::value(&options.task.doc_stride)->default_value(128),
       "question_answering: tokens shared by consecutive windows over a context longer than a row")
      ("source-column", po::value(&options.task.source_column)->default_value("source"),
       "seq2seq: column of the source text (a.b for a nested JSON key, e.g. translation.en)")
      ("target-column", po::value(&options.task.target_column)->default_value("target"),
       "seq2seq: column of the target text (e.g. translation.de)")
      ("source-prefix", po::value(&options.task.source_prefix),
       "seq2seq: text put before every source, e.g. 'summarize: ' or 'translate English to German: '")
      ("target-len", po::value(&options.task.target_len)->default_value(128),
       "seq2seq: tokens of the target kept (the source keeps --seq-len)")
      ("packing", po::value(&packing),
       "causal_lm: 'concatenate' (default: documents cut into full rows, reading across their boundaries) or "
       "'documents' (whole documents per row with document masking; longer ones split into row-sized pieces); "
       "instruction: 'none' (default: one example per row) or 'documents'")
      ("truncation", po::value(&truncation)->default_value("right"),
       "sequence_classification: drop tokens past --seq-len at the 'right' or the 'left' end")
      ("tokenizer,t", po::value<std::string>()->required(),
       "tokenizer directory: tokenizer.json, vocab.txt (WordPiece), or vocab.json + merges.txt")
      ("output,o", po::value<std::string>()->required(), "output .h5 file")
      ("seq-len", po::value(&options.seq_len)->required(), "tokens per row")
      ("validation-fraction", po::value(&options.validation_fraction)->default_value(0.05),
       "fraction of --input documents for the validation split (0: no validation split)")
      ("test-fraction", po::value(&options.test_fraction)->default_value(0.0),
       "fraction of --input documents for the test split (0: no test split)")
      ("validation-input", po::value(&validation_inputs)->composing(),
       "file(s) forming the validation split instead of --validation-fraction; repeatable")
      ("test-input", po::value(&test_inputs)->composing(),
       "file(s) forming the test split instead of --test-fraction; repeatable")
      ("seed", po::value(&options.seed)->default_value(1234), "seed of the split assignment")
      ("text-mode", po::value(&text_mode)->default_value("line"),
       "for .txt inputs: 'line' (one document per line), 'paragraph' (documents separated by blank lines) "
       "or 'conll' (token<TAB>tag lines, token_classification)")
      ("text-key", po::value(&options.reader.text_key)->default_value("text"),
       "for .jsonl inputs: the string field that holds the document")
      ("eos-token", po::value(&eos_token),
       "token appended to every document (default: the tokenizer's end-of-text token, <|endoftext|>)")
      ("threads", po::value(&options.threads)->default_value(
           static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u))),
       "tokenizer threads")
      ("overwrite", po::bool_switch(&options.overwrite), "replace an existing output file");

  po::variables_map values;
  po::store(po::parse_command_line(argc, argv, described), values);
  if (values.count("help")) {
    std::cout << described << "\n"
              << "Example:\n  ftrain-prep --input corpus.jsonl --tokenizer gpt2/ --output data.h5 --seq-len 1024\n";
    return std::nullopt;
  }
  po::notify(values);
  for (const auto& input : inputs) options.inputs.emplace_back(input);
  for (const auto& input : validation_inputs) options.validation_inputs.emplace_back(input);
  for (const auto& input : test_inputs) options.test_inputs.emplace_back(input);
  options.tokenizer = values["tokenizer"].as<std::string>();
  options.output = values["output"].as<std::string>();
  options.validation_fraction_given = !values["validation-fraction"].defaulted();
  options.test_fraction_given = !values["test-fraction"].defaulted();
  if (text_mode == "line") {
    options.reader.text_mode = TextMode::kLine;
  } else if (text_mode == "paragraph") {
    options.reader.text_mode = TextMode::kParagraph;
  } else if (text_mode == "conll") {
    options.task.text_is_conll = true;
  } else {
    throw po::error("--text-mode must be 'line', 'paragraph' or 'conll', got '" + text_mode + "'");
  }
  if (values.count("text-column")) options.reader.text_key = values["text-column"].as<std::string>();
  if (values.count("eos-token")) options.eos_token = eos_token;
  options.validate();

  TaskPrepOptions& fine_tune = options.task;
  const std::map<std::string, PrepTask> tasks = {{"causal_lm", PrepTask::kCausalLm},
                                                 {"sequence_classification", PrepTask::kSequenceClassification},
                                                 {"token_classification", PrepTask::kTokenClassification},
                                                 {"instruction", PrepTask::kInstruction},
                                                 {"question_answering", PrepTask::kQuestionAnswering},
                                                 {"seq2seq", PrepTask::kSeq2Seq}};
  if (!tasks.contains(task)) {
    throw po::error("--task must be causal_lm, sequence_classification, token_classification, instruction, "
                    "question_answering or seq2seq, got '" + task + "'");
  }
  fine_tune.task = tasks.at(task);
  if (truncation != "right" && truncation != "left") {
    throw po::error("--truncation must be 'right' or 'left', got '" + truncation + "'");
  }
  fine_tune.truncation = truncation == "left" ? Truncation::kLeft : Truncation::kRight;
  const bool causal = fine_tune.task == PrepTask::kCausalLm;
  if (packing.empty()) packing = causal ? "concatenate" : "none";
  const std::map<std::string, Packing> packings = {
      {"none", Packing::kNone}, {"concatenate", Packing::kConcatenate}, {"documents", Packing::kDocuments}};
  const bool instruction = fine_tune.task == PrepTask::kInstruction;
  const std::string accepted = causal ? "concatenate or documents" : instruction ? "none or documents" : "none";
  const bool allowed = causal ? packing == "concatenate" || packing == "documents"
                              : packing == "none" || (packing == "documents" && instruction);
  if (!allowed) throw po::error("--packing '" + packing + "' is not one --task " + task + " takes (" + accepted + ")");
  fine_tune.packing = packings.at(packing);
  if (fine_tune.task == PrepTask::kCausalLm) {
    if (options.task.text_is_conll) throw po::error("--text-mode conll is for --task token_classification");
    return options;
  }
  fine_tune.inputs = options.inputs;
  fine_tune.validation_inputs = options.validation_inputs;
  fine_tune.test_inputs = options.test_inputs;
  fine_tune.tokenizer = options.tokenizer;
  fine_tune.output = options.output;
  fine_tune.seq_len = options.seq_len;
  fine_tune.validation_fraction = options.drawn_validation_fraction();
  fine_tune.test_fraction = options.drawn_test_fraction();
  fine_tune.seed = options.seed;
  fine_tune.overwrite = options.overwrite;
  fine_tune.eos_token = options.eos_token;
  fine_tune.text_column = options.reader.text_key;
  if (values.count("validation-text-column")) {
    fine_tune.validation_text_column = values["validation-text-column"].as<std::string>();
  }
  if (values.count("test-text-column")) fine_tune.test_text_column = values["test-text-column"].as<std::string>();
  if (values.count("text-pair-column")) fine_tune.text_pair_column = text_pair_column;
  if (values.count("labels")) {
    std::vector<std::string> names;
    std::size_t start = 0;
    while (true) {
      const std::size_t comma = labels.find(',', start);
      names.push_back(labels.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    fine_tune.labels = names;
  }
  return options;
}

// ---------------------------------------------------------------------------------------

using Split = PrepSplit;

struct LengthStats {
  int64_t documents = 0;
  int64_t tokens = 0;  // without EOS
  int64_t shortest = std::numeric_limits<int64_t>::max();
  int64_t longest = 0;

  void add(int64_t length) {
    ++documents;
    tokens += length;
    shortest = std::min(shortest, length);
    longest = std::max(longest, length);
  }
};

// One split being written: its packer, buffered document indices and statistics.
class SplitSink {
 public:
  // `documents`: pack whole documents with document masking (padding with pad_id) instead.
  SplitSink(Split split, int64_t seq_len, int32_t eos_id, std::optional<int32_t> documents, TokenDatasetWriter& writer)
      : name_(split_name(split)), packer_(seq_len, eos_id), writer_(writer), eos_id_(eos_id) {
    SplitFields fields;
    fields.document_index = true;
    if (documents) {
      documents_.emplace(seq_len, *documents);
      fields.attention_mask = true;
    }
    writer_.create_split(name_, fields);
  }

  void add(int64_t document_index, const std::vector<int32_t>& tokens) {
    stats_.add(static_cast<int64_t>(tokens.size()));
    document_indices_.push_back(document_index);
    if (documents_) {
      // The document and its EOS; one longer than a row goes in row-sized pieces, each
      // read on its own (the first token of each piece is not predicted).
      std::vector<int32_t> text(tokens);
      text.push_back(eos_id_);
      const auto row = static_cast<std::size_t>(packer_.seq_len());
      for (std::size_t start = 0; start < text.size(); start += row)
        documents_->add(std::span(text).subspan(start, std::min(row, text.size() - start)));
      if (documents_->ready_rows() * packer_.seq_len() >= (int64_t{1} << 23)) flush();
      return;
    }
    packer_.add_document(tokens);
    // About 8M tokens per append: large writes, bounded memory.
    if (packer_.ready_rows() * packer_.seq_len() >= (int64_t{1} << 23)) flush();
  }

  void flush() {
    if (documents_) {
      const DocumentPacker::Rows rows = documents_->take_rows();
      if (rows.num_rows > 0)
        writer_.append_rows(name_, RowBlock{rows.num_rows, rows.input_ids, {}, rows.attention_mask, {}, {}});
      rows_ += rows.num_rows;
      writer_.append_document_index(name_, document_indices_);
      document_indices_.clear();
      return;
    }
    const int64_t rows = packer_.ready_rows();
    if (rows > 0) {
      const std::vector<int32_t> ids = packer_.take_rows();
      writer_.append_rows(name_, RowBlock{rows, ids, {}, {}, {}, {}});
      rows_ += rows;
    }
    writer_.append_document_index(name_, document_indices_);
    document_indices_.clear();
  }

  void close() {
    if (documents_) documents_->close_row();
    flush();
    writer_.set_split_attribute(name_, format::kAttrNumDocuments, stats_.documents);
    writer_.set_split_attribute(name_, format::kAttrNumTokens, tokens());
    writer_.set_split_attribute(name_, format::kAttrDroppedTokens, dropped());
  }

  const std::string& name() const { return name_; }
  int64_t rows() const { return rows_; }
  int64_t tokens() const { return documents_ ? documents_->tokens() : packer_.tokens(); }  // EOS included
  int64_t dropped() const { return documents_ ? 0 : packer_.pending_tokens(); }
  int64_t padding() const { return documents_ ? documents_->padding() : 0; }
  const LengthStats& stats() const { return stats_; }

 private:
  std::string name_;
  RowPacker packer_;
  TokenDatasetWriter& writer_;
  LengthStats stats_;
  std::vector<int64_t> document_indices_;
  int64_t rows_ = 0;
  int32_t eos_id_;
  std::optional<DocumentPacker> documents_;  // --packing documents
};

// Tokenizes batches of documents on several threads, returning them in input order.
class ParallelEncoder {
 public:
  ParallelEncoder(const Tokenizer& tokenizer, int threads) : tokenizer_(tokenizer), threads_(threads) {}

  std::vector<std::vector<int32_t>> encode(const std::vector<Document>& documents) const {
    std::vector<std::vector<int32_t>> encoded(documents.size());
    const auto workers = static_cast<std::size_t>(std::min<std::size_t>(threads_, documents.size()));
    if (workers <= 1) {
      for (std::size_t i = 0; i < documents.size(); ++i) encoded[i] = tokenizer_.encode(documents[i].text);
      return encoded;
    }
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errors(workers);
    for (std::size_t w = 0; w < workers; ++w) {
      pool.emplace_back([&, w] {
        try {
          for (std::size_t i = w; i < documents.size(); i += workers) encoded[i] = tokenizer_.encode(documents[i].text);
        } catch (...) {
          errors[w] = std::current_exception();
        }
      });
    }
    for (auto& thread : pool) thread.join();
    for (const auto& error : errors) {
      if (error) std::rethrow_exception(error);
    }
    return encoded;
  }

 private:
  const Tokenizer& tokenizer_;
  int threads_;
};

// Calls visit(document) for every document of the files, in order. CSV and TSV files
// hold one document per row, in the column --text-column; empty cells are skipped.
template <typename Visit>
void for_each_document(const std::vector<fs::path>& files, const DocumentReaderOptions& options, Visit visit) {
  for (const auto& file : files) {
    Document document;
    if (file.extension() == ".csv" || file.extension() == ".tsv") {
      RecordReader reader(file);
      Record record;
      while (reader.next(record)) {
        document.text = field_text(record, file, options.text_key, "--text-column");
        document.line = record.line;
        if (!document.text.empty()) visit(file, document);
      }
      continue;
    }
    DocumentReader reader(file, options);
    while (reader.next(document)) visit(file, document);
  }
}

int64_t count_documents(const std::vector<fs::path>& files, const DocumentReaderOptions& options) {
  int64_t count = 0;
  for_each_document(files, options, [&](const fs::path&, const Document&) { ++count; });
  return count;
}

std::string format_fixed(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", value);
  return text;
}

void print_summary(const PrepOptions& options, const DatasetInfo& info, const std::vector<const SplitSink*>& sinks) {
  std::printf("ftrain-prep: wrote %s\n", options.output.c_str());
  std::printf("  tokenizer %s (vocab_size %lld, eos_id %lld), seq_len %lld, seed %llu\n", info.tokenizer.c_str(),
              static_cast<long long>(info.vocab_size), static_cast<long long>(info.eos_id),
              static_cast<long long>(info.seq_len),
              static_cast<unsigned long long>(options.seed));
  std::printf("  %-10s %10s %14s %10s %8s   %s\n", "split", "documents", "tokens+eos", "rows", "dropped",
              "tokens/document min/mean/max");
  for (const SplitSink* sink : sinks) {
    const LengthStats& stats = sink->stats();
    const double mean = stats.documents ? static_cast<double>(stats.tokens) / static_cast<double>(stats.documents) : 0;
    std::printf("  %-10s %10lld %14lld %10lld %8lld   %lld/%s/%lld\n", sink->name().c_str(),
                static_cast<long long>(stats.documents), static_cast<long long>(sink->tokens()),
                static_cast<long long>(sink->rows()), static_cast<long long>(sink->dropped()),
                static_cast<long long>(stats.documents ? stats.shortest : 0), format_fixed(mean).c_str(),
                static_cast<long long>(stats.longest));
  }
  if (options.task.packing == Packing::kDocuments) {
    for (const SplitSink* sink : sinks) {
      const double cells = static_cast<double>(std::max<int64_t>(sink->rows() * options.seq_len, 1));
      std::printf("  %-10s documents packed with document masking: %lld padding tokens (%s%% of the rows)\n",
                  sink->name().c_str(), static_cast<long long>(sink->padding()),
                  format_fixed(100.0 * static_cast<double>(sink->padding()) / cells).c_str());
    }
  }
  std::fflush(stdout);
}

void run(const PrepOptions& options) {
  check_output_free(options.output, options.overwrite);
  // Any tokenizer a model directory holds (byte-level BPE, SentencePiece-style BPE,
  // Unigram, WordPiece); documents are separated by the model's end-of-text token.
  const std::unique_ptr<Tokenizer> loaded = load_tokenizer(options.tokenizer);
  const Tokenizer& tokenizer = *loaded;
  std::optional<int32_t> eos_id =
      options.eos_token ? tokenizer.token_to_id(*options.eos_token) : tokenizer.special_ids().eos;
  if (!eos_id) {
    throw std::runtime_error(options.tokenizer.string() + ": " +
                             (options.eos_token ? "token '" + *options.eos_token + "' is not in the vocabulary"
                                                : std::string("the tokenizer has no end-of-text token; name one with --eos-token")));
  }

  // Pass 1: validate every file and count the documents the split assignment ranges over.
  const int64_t input_documents = count_documents(options.inputs, options.reader);
  const int64_t validation_documents = count_documents(options.validation_inputs, options.reader);
  const int64_t test_documents = count_documents(options.test_inputs, options.reader);
  if (input_documents == 0) {
    throw std::runtime_error("no documents in --input (every line was blank or every text empty)");
  }
  // Documents are numbered across all inputs in order: --input files, then
  // --validation-input, then --test-input; document_index stores these numbers.
  const SplitAssignment assignment(input_documents, options.drawn_validation_fraction(), options.drawn_test_fraction(),
                                   options.seed, "documents");

  DatasetInfo info;
  info.seq_len = options.seq_len;
  info.vocab_size = tokenizer.vocab_size();
  info.eos_id = *eos_id;
  // Concatenated rows have no padding; rows of whole documents are padded like the
  // fine-tuning tasks' (the tokenizer's padding token, else its end-of-text token).
  const std::optional<int32_t> documents =
      options.task.packing == Packing::kDocuments
          ? std::optional<int32_t>(tokenizer.special_ids().pad ? *tokenizer.special_ids().pad : *eos_id)
          : std::nullopt;
  info.pad_id = documents ? *documents : -1;
  if (documents) info.format_version = format::kVersionPackedDocuments;
  info.tokenizer = fs::absolute(options.tokenizer).lexically_normal().string();
  info.task = format::kTaskCausalLm;
  WriterOptions writer_options;
  writer_options.overwrite = options.overwrite;
  TokenDatasetWriter writer(options.output, info, writer_options);

  std::map<Split, std::unique_ptr<SplitSink>> sinks;
  for (const Split split : assignment.splits(!options.validation_inputs.empty(), !options.test_inputs.empty()))
    sinks[split] = std::make_unique<SplitSink>(split, options.seq_len, *eos_id, documents, writer);

  // Pass 2.
  const ParallelEncoder encoder(tokenizer, options.threads);
  int64_t next_index = 0;
  std::vector<Document> pending;
  std::vector<std::optional<Split>> pending_split;
  auto encode_pending = [&] {
    const auto encoded = encoder.encode(pending);
    for (std::size_t i = 0; i < pending.size(); ++i) {
      const int64_t index = next_index++;
      const Split split = pending_split[i] ? *pending_split[i] : assignment.of(index);
      sinks.at(split)->add(index, encoded[i]);
    }
    pending.clear();
    pending_split.clear();
  };
  auto encode_files = [&](const std::vector<fs::path>& files, std::optional<Split> split) {
    for_each_document(files, options.reader, [&](const fs::path&, const Document& document) {
      pending.push_back(document);
      pending_split.push_back(split);
      if (pending.size() >= 4096) encode_pending();
    });
    encode_pending();
  };
  encode_files(options.inputs, std::nullopt);
  encode_files(options.validation_inputs, Split::kValidation);
  encode_files(options.test_inputs, Split::kTest);
  if (next_index != input_documents + validation_documents + test_documents) {
    throw std::runtime_error("the inputs changed while ftrain-prep was reading them");
  }

  std::vector<const SplitSink*> written;
  for (auto& [split, sink] : sinks) {
    sink->close();
    written.push_back(sink.get());
  }
  for (const SplitSink* sink : written) {
    if (sink->rows() == 0) {
      throw std::runtime_error("split '" + sink->name() + "' would have no rows: its " +
                               std::to_string(sink->stats().documents) + " documents hold " +
                               std::to_string(sink->tokens()) + " tokens with EOS, fewer than one row of " +
                               std::to_string(options.seq_len) + "; add text or lower --seq-len");
    }
  }
  writer.finish();
  print_summary(options, info, written);
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<PrepOptions> options;
  try {
    options = parse_options(argc, argv);
    if (!options) return 0;  // --help
  } catch (const po::error& error) {
    std::cerr << "ftrain-prep: " << error.what() << "\nRun ftrain-prep --help for the options.\n";
    return kUsageError;
  }
  try {
    if (options->task.task == PrepTask::kCausalLm) {
      run(*options);
    } else if (options->task.task == PrepTask::kQuestionAnswering) {
      prepare_qa_dataset(options->task);
    } else if (options->task.task == PrepTask::kSeq2Seq) {
      prepare_seq2seq_dataset(options->task);
    } else {
      prepare_task_dataset(options->task);
    }
  } catch (const std::exception& error) {
    std::cerr << "ftrain-prep: error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
