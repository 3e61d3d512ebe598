#pragma once
// Helpers shared by the dataset tests: a scratch directory and a small dataset whose
// every token is a known function of (row, position), so any read can be checked
// against arithmetic instead of against the writer.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/token_dataset.h"

namespace ftrain::data::testing {

// A whole file's bytes.
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base ? base : "/tmp") + "/ftrain-data-test-XXXXXX";
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

constexpr int64_t kPatternVocab = 1000;

// 31 is coprime with 1000, so rows 0..999 start with distinct tokens.
inline int32_t pattern_token(int64_t row, int64_t position) {
  return static_cast<int32_t>((row * 31 + position * 7) % kPatternVocab);
}

// 1 on even positions of even rows, so masks differ between rows and positions.
inline uint8_t pattern_mask(int64_t row, int64_t position) {
  return static_cast<uint8_t>((row % 2 == 0) && (position % 2 == 0));
}

struct PatternOptions {
  int64_t num_rows = 50;
  int64_t seq_len = 8;
  bool loss_mask = false;
  int64_t block_rows = 16;  // rows per append, to exercise appends across chunks
  int64_t rows_per_chunk = 8;
  std::string split = "train";
};

inline void write_pattern_dataset(const std::filesystem::path& path, const PatternOptions& options) {
  DatasetInfo info;
  info.seq_len = options.seq_len;
  info.vocab_size = kPatternVocab;
  info.eos_id = 0;
  info.tokenizer = "pattern";
  WriterOptions writer_options;
  writer_options.rows_per_chunk = options.rows_per_chunk;
  TokenDatasetWriter writer(path, info, writer_options);
  SplitFields fields;
  fields.loss_mask = options.loss_mask;
  writer.create_split(options.split, fields);
  for (int64_t first = 0; first < options.num_rows; first += options.block_rows) {
    const int64_t count = std::min(options.block_rows, options.num_rows - first);
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    for (int64_t row = first; row < first + count; ++row) {
      for (int64_t t = 0; t < options.seq_len; ++t) {
        ids.push_back(pattern_token(row, t));
        if (options.loss_mask) mask.push_back(pattern_mask(row, t));
      }
    }
    writer.append_rows(options.split, RowBlock{count, ids, mask, {}, {}, {}});
  }
  writer.set_split_attribute(options.split, format::kAttrNumDocuments, options.num_rows);
  writer.finish();
}

}  // namespace ftrain::data::testing
