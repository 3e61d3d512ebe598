#pragma once
// The on-disk schema of ftrain token datasets: the names, types and version shared by
// the writer, the reader and ftrain-prep. docs/dataset-format.md describes the same
// schema for people and for other tools (h5py).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ftrain::data {

namespace format {

// Value of the root attribute `format`; identifies the file as an ftrain token dataset.
inline constexpr std::string_view kName = "ftrain.tokens";
// Newest format_version this build reads. Adding optional datasets or attributes does
// not change it; it changes only when a reader of the old version would misread a new
// file. Version 1: attention_mask is 0 (padding) or 1. Version 2: attention_mask holds
// document ids, 0 padding and 1, 2, ... the documents packed into a row (model/documents.h);
// writers use it only for such rows, so that no older reader mistakes ids for a mask.
inline constexpr int64_t kVersion = 2;
inline constexpr int64_t kVersionPlain = 1;
inline constexpr int64_t kVersionPackedDocuments = 2;
// The longest row a reader takes: buffers are sized rows x seq_len, so the file's
// seq_len must not size them alone. 2^20 tokens covers million-token contexts.
inline constexpr int64_t kMaxSeqLen = int64_t{1} << 20;
// deflate's largest expansion: a dataset may declare at most this many times the
// bytes the file stores for it (plus a small allowance for unwritten fill).
inline constexpr int64_t kMaxExpansion = 1032;

// Root attributes.
inline constexpr char kAttrFormat[] = "format";                 // string
inline constexpr char kAttrFormatVersion[] = "format_version";  // int64
inline constexpr char kAttrSeqLen[] = "seq_len";                // int64, tokens per row
inline constexpr char kAttrVocabSize[] = "vocab_size";          // int64
inline constexpr char kAttrEosId[] = "eos_id";                  // int64, -1 if none
inline constexpr char kAttrPadId[] = "pad_id";                  // int64, -1 if none
inline constexpr char kAttrTokenizer[] = "tokenizer";           // string, path or description
inline constexpr char kAttrTask[] = "task";                     // string, e.g. "causal_lm"
inline constexpr char kAttrTargetLen[] = "target_len";          // int64, seq2seq: label positions per row

// Split groups directly under the root.
inline constexpr char kSplitTrain[] = "train";
inline constexpr char kSplitValidation[] = "validation";
inline constexpr char kSplitTest[] = "test";

// Datasets inside a split group; N = number of rows.
inline constexpr char kInputIds[] = "input_ids";            // int32 (N, seq_len), required
inline constexpr char kLossMask[] = "loss_mask";            // uint8 (N, seq_len), 1 = target
inline constexpr char kAttentionMask[] = "attention_mask";  // uint8 (N, seq_len), 0 = padding
inline constexpr char kLabels[] = "labels";                 // int64 (N) or (N, seq_len)
inline constexpr char kDocumentIndex[] = "document_index";  // int64 (num_documents)
inline constexpr char kTokenTypeIds[] = "token_type_ids";   // uint8 (N, seq_len), segment per position
// Question answering (several rows, windows over the context, per example):
inline constexpr char kOffsetMapping[] = "offset_mapping";  // int32 (N, 2 * seq_len): begin, end character
                                                            // of each position in the context, -1 outside it
inline constexpr char kExampleIndex[] = "example_index";    // int64 (N): the row's line of `examples`
inline constexpr char kExamples[] = "examples";             // uint8 (bytes): JSON Lines, one per example,
                                                            // {"id", "context", "question", "answers"}

// Root attributes of classification datasets.
inline constexpr char kAttrLabelNames[] = "label_names";  // string, JSON array, index = label id
inline constexpr char kAttrNumLabels[] = "num_labels";    // int64

// Attributes of a split group.
inline constexpr char kAttrNumDocuments[] = "num_documents";  // int64, required
inline constexpr char kAttrNumTokens[] = "num_tokens";        // int64, tokens before packing
inline constexpr char kAttrDroppedTokens[] = "dropped_tokens";  // int64, tail shorter than a row

// Values of `task`.
inline constexpr char kTaskCausalLm[] = "causal_lm";
inline constexpr char kTaskSequenceClassification[] = "sequence_classification";
inline constexpr char kTaskTokenClassification[] = "token_classification";
inline constexpr char kTaskQuestionAnswering[] = "question_answering";
inline constexpr char kTaskSeq2Seq[] = "seq2seq";

// Rows per HDF5 chunk: 64 rows of 2048 int32 tokens are 512 KiB, small enough that a
// random row costs little extra I/O and large enough to keep the chunk index short.
inline constexpr int64_t kDefaultRowsPerChunk = 64;

// The longest `examples` text a reader takes (1 GiB): it is read whole.
inline constexpr int64_t kMaxExamplesBytes = int64_t{1} << 30;

// Label value that marks a position or row without a target (the Hugging Face convention).
inline constexpr int64_t kIgnoreLabel = -100;

}  // namespace format

// How rows hold examples (ftrain-prep --packing, ftrain's data.packing): one example
// each (none), documents concatenated and cut at seq_len with no boundary kept
// (concatenate, continued pretraining), or whole documents packed with their boundaries
// kept for document masking (documents).
enum class Packing { kNone, kConcatenate, kDocuments };

// The root attributes of a token dataset.
struct DatasetInfo {
  int64_t format_version = format::kVersionPlain;  // written; kVersionPackedDocuments for packed rows
  int64_t seq_len = 0;
  int64_t vocab_size = 0;
  int64_t eos_id = -1;
  int64_t pad_id = -1;
  std::string tokenizer;
  std::string task = format::kTaskCausalLm;
  // Classification datasets: label id i is label_names[i]. Empty for other tasks.
  std::vector<std::string> label_names;
  // Sequence-to-sequence datasets: the target's positions per row (labels (N, target_len));
  // 0 for other tasks.
  int64_t target_len = 0;

  // Throws std::runtime_error naming the attribute that is out of range.
  void validate() const;

  // What the attributes say of the rows: format_version 2 is documents; a causal-LM
  // dataset without padding (pad_id -1) is concatenated; anything else is one example a row.
  Packing packing() const;
};

}  // namespace ftrain::data
