#include "data/dataset_format.h"

#include <stdexcept>

namespace ftrain::data {

namespace {

[[noreturn]] void reject(const char* attribute, const std::string& requirement, const std::string& found) {
  throw std::runtime_error(std::string("dataset attribute '") + attribute + "' " + requirement +
                           ", found " + found);
}

}  // namespace

Packing DatasetInfo::packing() const {
  if (format_version == format::kVersionPackedDocuments) return Packing::kDocuments;
  if (task == format::kTaskCausalLm && pad_id < 0) return Packing::kConcatenate;
  return Packing::kNone;
}

void DatasetInfo::validate() const {
  if (format_version < 1 || format_version > format::kVersion) {
    reject(format::kAttrFormatVersion,
           "must be between 1 and " + std::to_string(format::kVersion) + " (this build's newest)",
           std::to_string(format_version));
  }
  if (seq_len < 1) reject(format::kAttrSeqLen, "must be >= 1", std::to_string(seq_len));
  if (seq_len > format::kMaxSeqLen)
    reject(format::kAttrSeqLen, "must be at most " + std::to_string(format::kMaxSeqLen), std::to_string(seq_len));
  if (vocab_size < 1) reject(format::kAttrVocabSize, "must be >= 1", std::to_string(vocab_size));
  if (eos_id < -1 || eos_id >= vocab_size) {
    reject(format::kAttrEosId, "must be -1 (none) or a token id below vocab_size " + std::to_string(vocab_size),
           std::to_string(eos_id));
  }
  if (pad_id < -1 || pad_id >= vocab_size) {
    reject(format::kAttrPadId, "must be -1 (none) or a token id below vocab_size " + std::to_string(vocab_size),
           std::to_string(pad_id));
  }
  if (task.empty()) reject(format::kAttrTask, "must name the task (e.g. causal_lm)", "an empty string");
  if (target_len < 0 || target_len > format::kMaxSeqLen)
    reject(format::kAttrTargetLen, "must be between 1 and " + std::to_string(format::kMaxSeqLen), std::to_string(target_len));
  if ((task == format::kTaskSeq2Seq) != (target_len > 0))
    reject(format::kAttrTargetLen, "is required by task seq2seq and only by it", std::to_string(target_len));
}

}  // namespace ftrain::data
