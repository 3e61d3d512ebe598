#pragma once
// Packing rows from documents, two ways.
//
// RowPacker, for continued pretraining (ftrain-prep --packing concatenate): each
// document's tokens followed by EOS, all documents concatenated, cut into rows of
// exactly seq_len tokens. The model shifts inside a row (position t is predicted from
// positions < t), so rows need no overlap; documents may cross row boundaries and read
// the ones before them, and the final tokens that do not fill a row are dropped.
//
// DocumentPacker, with document masking (--packing documents): whole examples placed in
// rows in order, a row closed when the next does not fit, padded; its attention_mask
// numbers each token's document 1, 2, ... (0: padding), so the model reads each as if it
// were alone (model/documents.h, dataset format_version 2).

#include <cstdint>
#include <span>
#include <vector>

#include "data/dataset_format.h"  // Packing

namespace ftrain::data {

class RowPacker {
 public:
  // Throws std::invalid_argument if seq_len < 1 or eos_id < 0.
  RowPacker(int64_t seq_len, int32_t eos_id);

  // Appends the document's tokens and one EOS.
  void add_document(std::span<const int32_t> tokens);

  // Complete rows not yet taken, and taking them: (rows, seq_len) row-major.
  int64_t ready_rows() const;
  std::vector<int32_t> take_rows();

  // Tokens of the row still being filled; they are dropped if no document follows.
  int64_t pending_tokens() const;
  int64_t documents() const { return documents_; }
  int64_t tokens() const { return tokens_; }  // every token added, EOS included
  int64_t seq_len() const { return seq_len_; }

 private:
  int64_t seq_len_;
  int32_t eos_id_;
  std::vector<int32_t> buffer_;  // complete rows first, then the pending tail
  int64_t documents_ = 0;
  int64_t tokens_ = 0;
};

class DocumentPacker {
 public:
  // A uint8 attention_mask numbers at most 255 documents in a row.
  static constexpr int64_t kMaxDocumentsPerRow = 255;

  // Throws std::invalid_argument if seq_len < 1.
  DocumentPacker(int64_t seq_len, int32_t pad_id);

  // Appends one example: 1 to seq_len tokens, and its loss mask (1: a prediction target)
  // of the same length, or empty. Throws std::invalid_argument otherwise.
  void add(std::span<const int32_t> tokens, std::span<const uint8_t> loss_mask = {});
  // Pads and closes the row being filled, if it holds any example.
  void close_row();

  struct Rows {
    int64_t num_rows = 0;
    std::vector<int32_t> input_ids;       // (num_rows, seq_len)
    std::vector<uint8_t> attention_mask;  // document numbers, 0 on padding
    std::vector<uint8_t> loss_mask;       // the examples' masks, 0 on padding
  };
  // Complete rows not yet taken, and taking them.
  int64_t ready_rows() const { return done_.num_rows; }
  Rows take_rows();

  int64_t documents() const { return documents_; }
  int64_t tokens() const { return tokens_; }
  int64_t padding() const { return padding_; }  // pad tokens in closed rows

 private:
  int64_t seq_len_;
  int32_t pad_id_;
  Rows done_;
  std::vector<int32_t> ids_;  // the row being filled, unpadded
  std::vector<uint8_t> numbers_, loss_;
  int64_t in_row_ = 0;
  int64_t documents_ = 0, tokens_ = 0, padding_ = 0;
};

}  // namespace ftrain::data
