#pragma once
// Causal-LM packing: each document's tokens followed by EOS, all documents concatenated,
// cut into rows of exactly seq_len tokens. The model shifts inside a row (position t is
// predicted from positions < t), so rows need no overlap; documents may cross row
// boundaries, and the final tokens that do not fill a row are dropped.

#include <cstdint>
#include <span>
#include <vector>

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

}  // namespace ftrain::data
