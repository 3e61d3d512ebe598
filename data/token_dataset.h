#pragma once
// Writing and reading ftrain token datasets (HDF5, schema in data/dataset_format.h and
// docs/dataset-format.md).
//
// TokenDatasetWriter builds a file in `<output>.tmp` and renames it into place only at
// finish(), so a reader never sees a half-written dataset and a failed run leaves any
// earlier output untouched. TokenDataset opens one split read-only, checks the schema
// once, then reads arbitrary rows.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/dataset_format.h"

namespace ftrain::data {

// Which optional datasets a split carries besides input_ids.
// labels (N), (N, seq_len), (N, 2): the first and last position of an answer span, or
// (N, target_len): a sequence-to-sequence target
enum class LabelKind { kNone, kPerRow, kPerPosition, kSpan, kTarget };

struct SplitFields {
  bool loss_mask = false;
  bool attention_mask = false;
  LabelKind labels = LabelKind::kNone;
  bool document_index = false;
  bool token_type_ids = false;
  bool answer_spans = false;  // question answering: offset_mapping, example_index and examples
};

// A block of consecutive rows to append to a split. Spans of optional fields must be
// empty exactly when the split was created without them.
struct RowBlock {
  int64_t num_rows = 0;
  std::span<const int32_t> input_ids;      // (num_rows, seq_len)
  std::span<const uint8_t> loss_mask;      // (num_rows, seq_len)
  std::span<const uint8_t> attention_mask; // (num_rows, seq_len)
  std::span<const int64_t> labels;         // (num_rows), (num_rows, 2), (num_rows, seq_len) or (num_rows, target_len)
  std::span<const uint8_t> token_type_ids; // (num_rows, seq_len)
  std::span<const int32_t> offset_mapping = {}; // (num_rows, 2 * seq_len)
  std::span<const int64_t> example_index = {};  // (num_rows)
};

struct WriterOptions {
  bool overwrite = false;  // replace an existing output at finish()
  int64_t rows_per_chunk = format::kDefaultRowsPerChunk;

  void validate() const;
};

class TokenDatasetWriter {
 public:
  // Throws if `output` exists and options.overwrite is false, before creating anything.
  TokenDatasetWriter(std::filesystem::path output, DatasetInfo info, WriterOptions options = {});
  // Without finish(), removes the temporary file: nothing partial is ever left behind.
  ~TokenDatasetWriter();
  TokenDatasetWriter(const TokenDatasetWriter&) = delete;
  TokenDatasetWriter& operator=(const TokenDatasetWriter&) = delete;

  void create_split(std::string_view split, SplitFields fields = {});
  // Token ids must lie in [0, vocab_size); a violation throws, naming the row.
  void append_rows(std::string_view split, const RowBlock& rows);
  void append_document_index(std::string_view split, std::span<const int64_t> indices);
  // Appends to the split's `examples` text (SplitFields::answer_spans).
  void append_examples(std::string_view split, std::string_view json_lines);
  // Integer attribute of the split group; every split needs format::kAttrNumDocuments.
  void set_split_attribute(std::string_view split, std::string_view name, int64_t value);
  int64_t num_rows(std::string_view split) const;

  // Closes the file, makes it durable (fsync of file and directory) and renames it to
  // the output path. Throws, leaving the output untouched, if that fails or if a split
  // lacks num_documents.
  void finish();

  const std::filesystem::path& output_path() const { return output_; }
  std::filesystem::path temporary_path() const;

 private:
  struct State;
  std::filesystem::path output_;
  DatasetInfo info_;
  WriterOptions options_;
  std::unique_ptr<State> state_;
};

struct ReaderOptions {
  // HDF5 chunk cache per compressed dataset, whose chunks must be decoded whole. Datasets
  // without filters are read uncached: HDF5 then reads exactly the requested rows.
  std::size_t chunk_cache_bytes = std::size_t{8} << 20;
};

// Reads and validates the root attributes. Throws std::runtime_error naming the file and
// the attribute for a missing file, a file that is not HDF5 or is truncated, a missing
// or mistyped attribute, another format, or a format_version newer than format::kVersion.
DatasetInfo read_dataset_info(const std::filesystem::path& path);

// Names of the split groups in the file, sorted.
std::vector<std::string> list_splits(const std::filesystem::path& path);

class TokenDataset {
 public:
  // Opens one split read-only and validates its datasets against the root attributes.
  TokenDataset(const std::filesystem::path& path, std::string_view split, ReaderOptions options = {});
  ~TokenDataset();
  TokenDataset(TokenDataset&&) noexcept;
  TokenDataset& operator=(TokenDataset&&) noexcept;

  const std::filesystem::path& path() const { return path_; }
  const std::string& split() const { return split_; }
  const DatasetInfo& info() const { return info_; }
  int64_t num_rows() const { return num_rows_; }
  int64_t seq_len() const { return info_.seq_len; }
  int64_t num_documents() const { return num_documents_; }
  bool has_loss_mask() const;
  bool has_attention_mask() const;
  bool has_token_type_ids() const;
  LabelKind labels() const;

  // Reads rows[i] of input_ids into out[i * seq_len, (i + 1) * seq_len). Rows may come in
  // any order and repeat; only the requested rows are read (one hyperslab per run of
  // consecutive rows).
  void read_rows(std::span<const int64_t> rows, int32_t* out) const;
  void read_loss_mask(std::span<const int64_t> rows, uint8_t* out) const;
  void read_attention_mask(std::span<const int64_t> rows, uint8_t* out) const;
  void read_token_type_ids(std::span<const int64_t> rows, uint8_t* out) const;
  // One value per row (LabelKind::kPerRow), seq_len (kPerPosition), 2 (kSpan) or
  // target_len (kTarget): label_width() values.
  void read_labels(std::span<const int64_t> rows, int64_t* out) const;
  int64_t label_width() const;
  // Question answering: whether the split has offset_mapping, example_index and examples.
  bool has_answer_spans() const;
  void read_offset_mapping(std::span<const int64_t> rows, int32_t* out) const;  // 2 * seq_len per row
  void read_example_index(std::span<const int64_t> rows, int64_t* out) const;
  // The whole `examples` text (at most format::kMaxExamplesBytes).
  std::string read_examples() const;

 private:
  struct Handles;
  std::filesystem::path path_;
  std::string split_;
  DatasetInfo info_;
  int64_t num_rows_ = 0;
  int64_t num_documents_ = 0;
  std::unique_ptr<Handles> handles_;
};

}  // namespace ftrain::data
