#pragma once
// ftrain-prep for the fine-tuning tasks: one padded example per row (sequence
// classification, token classification, instruction tuning), from CSV, TSV, JSONL or
// CoNLL inputs. Causal-LM packing stays in prep_main.cpp, question answering's windows
// are in prep_qa.h.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/row_packer.h"
#include "data/prep_examples.h"

namespace ftrain::data {

enum class PrepTask {
  kCausalLm,
  kSequenceClassification,
  kTokenClassification,
  kInstruction,
  kQuestionAnswering,
  kSeq2Seq
};

struct TaskPrepOptions {
  PrepTask task = PrepTask::kSequenceClassification;
  std::vector<std::filesystem::path> inputs;
  std::vector<std::filesystem::path> validation_inputs;
  std::vector<std::filesystem::path> test_inputs;
  std::filesystem::path tokenizer;
  std::filesystem::path output;
  int64_t seq_len = 0;
  double validation_fraction = 0;  // of --input records; 0 when given as files
  double test_fraction = 0;
  uint64_t seed = 1234;
  bool overwrite = false;
  std::optional<std::string> eos_token;
  std::string text_column = "text";
  // Text column of the --validation-input / --test-input files when they name it otherwise.
  std::optional<std::string> validation_text_column;
  std::optional<std::string> test_text_column;
  std::optional<std::string> text_pair_column;
  std::string label_column = "label";
  std::optional<std::vector<std::string>> labels;  // fixed label order
  std::string tokens_column = "tokens";
  std::string tags_column = "tags";
  std::string prompt_column = "prompt";
  std::string response_column = "response";
  // Question answering (data/prep_qa.h): JSON Lines keys, and the tokens consecutive
  // windows over a long context share.
  std::string question_column = "question";
  std::string context_column = "context";
  std::string answers_column = "answers";
  std::string id_column = "id";
  int64_t doc_stride = 128;
  // Sequence to sequence (data/prep_seq2seq.h): columns (a.b for nested keys), the
  // source's prefix, and the target's length (the source's is seq_len).
  std::string source_column = "source";
  std::string target_column = "target";
  std::string source_prefix;
  int64_t target_len = 128;
  Truncation truncation = Truncation::kRight;
  bool text_is_conll = false;
  Packing packing = Packing::kNone;  // kDocuments: instruction examples packed with document masking
};

// Writes the dataset and prints the summary. Throws std::runtime_error naming the file
// and line of bad input, before the output appears.
void prepare_task_dataset(const TaskPrepOptions& options);

}  // namespace ftrain::data
