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

DocumentPacker::DocumentPacker(int64_t seq_len, int32_t pad_id) : seq_len_(seq_len), pad_id_(pad_id) {
  if (seq_len < 1) throw std::invalid_argument("DocumentPacker: seq_len must be >= 1, got " + std::to_string(seq_len));
}

void DocumentPacker::add(std::span<const int32_t> tokens, std::span<const uint8_t> loss_mask) {
  const auto length = static_cast<int64_t>(tokens.size());
  if (length < 1 || length > seq_len_)
    throw std::invalid_argument("DocumentPacker: an example holds 1 to seq_len = " + std::to_string(seq_len_) +
                                " tokens, got " + std::to_string(length));
  if (!loss_mask.empty() && loss_mask.size() != tokens.size())
    throw std::invalid_argument("DocumentPacker: the loss mask has " + std::to_string(loss_mask.size()) +
                                " entries for " + std::to_string(length) + " tokens");
  if (static_cast<int64_t>(ids_.size()) + length > seq_len_ || in_row_ == kMaxDocumentsPerRow) close_row();
  ++in_row_;
  ids_.insert(ids_.end(), tokens.begin(), tokens.end());
  numbers_.insert(numbers_.end(), tokens.size(), static_cast<uint8_t>(in_row_));
  if (loss_mask.empty()) loss_.insert(loss_.end(), tokens.size(), uint8_t{1});
  else loss_.insert(loss_.end(), loss_mask.begin(), loss_mask.end());
  ++documents_;
  tokens_ += length;
}

void DocumentPacker::close_row() {
  if (in_row_ == 0) return;
  const auto pad = static_cast<std::size_t>(seq_len_) - ids_.size();
  done_.input_ids.insert(done_.input_ids.end(), ids_.begin(), ids_.end());
  done_.input_ids.insert(done_.input_ids.end(), pad, pad_id_);
  done_.attention_mask.insert(done_.attention_mask.end(), numbers_.begin(), numbers_.end());
  done_.attention_mask.insert(done_.attention_mask.end(), pad, uint8_t{0});
  done_.loss_mask.insert(done_.loss_mask.end(), loss_.begin(), loss_.end());
  done_.loss_mask.insert(done_.loss_mask.end(), pad, uint8_t{0});
  ++done_.num_rows;
  padding_ += static_cast<int64_t>(pad);
  ids_.clear(), numbers_.clear(), loss_.clear();
  in_row_ = 0;
}

DocumentPacker::Rows DocumentPacker::take_rows() {
  Rows out = std::move(done_);
  done_ = Rows{};
  return out;
}

}  // namespace ftrain::data
