#include "data/row_packer.h"

#include <stdexcept>
#include <string>

namespace ftrain::data {

RowPacker::RowPacker(int64_t seq_len, int32_t eos_id) : seq_len_(seq_len), eos_id_(eos_id) {
  if (seq_len < 1) throw std::invalid_argument("RowPacker: seq_len must be >= 1, got " + std::to_string(seq_len));
  if (eos_id < 0) throw std::invalid_argument("RowPacker: packing needs an EOS token id, got " + std::to_string(eos_id));
}

void RowPacker::add_document(std::span<const int32_t> tokens) {
  buffer_.insert(buffer_.end(), tokens.begin(), tokens.end());
  buffer_.push_back(eos_id_);
  ++documents_;
  tokens_ += static_cast<int64_t>(tokens.size()) + 1;
}

int64_t RowPacker::ready_rows() const { return static_cast<int64_t>(buffer_.size()) / seq_len_; }

std::vector<int32_t> RowPacker::take_rows() {
  const auto complete = static_cast<std::size_t>(ready_rows() * seq_len_);
  std::vector<int32_t> tail(buffer_.begin() + static_cast<std::ptrdiff_t>(complete), buffer_.end());
  buffer_.resize(complete);
  std::vector<int32_t> rows = std::move(buffer_);
  buffer_ = std::move(tail);
  return rows;
}

int64_t RowPacker::pending_tokens() const { return static_cast<int64_t>(buffer_.size()) % seq_len_; }

}  // namespace ftrain::data
