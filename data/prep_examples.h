#pragma once
// One padded row per example for ftrain-prep's fine-tuning tasks (docs/dataset-format.md):
//   sequence classification  [CLS] text [SEP] (or a pair) by the model's template, a label per row;
//   token classification     words tokenized one by one, the word's tag on its first
//                            sub-token and format::kIgnoreLabel everywhere else;
//   instruction tuning       prompt + response + EOS, loss on the response and EOS only.
// Rows are padded on the right to seq_len with pad_id and carry an attention mask.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace ftrain::data {

// Class names -> ids 0..K-1, in a fixed order: sorted, or as the user listed them.
class LabelMap {
 public:
  LabelMap() = default;
  explicit LabelMap(std::vector<std::string> names);  // throws on a name given twice
  // Sorted, duplicates removed.
  static LabelMap sorted(const std::vector<std::string>& seen);

  std::optional<int64_t> find(const std::string& name) const;
  const std::vector<std::string>& names() const { return names_; }
  int64_t size() const { return static_cast<int64_t>(names_.size()); }
  std::string to_json() const;  // ["a","b"]

 private:
  std::vector<std::string> names_;
  std::map<std::string, int64_t> ids_;
};

enum class Truncation { kRight, kLeft };

struct Example {
  std::vector<int32_t> input_ids;       // seq_len
  std::vector<uint8_t> attention_mask;  // seq_len
  std::vector<uint8_t> token_type_ids;  // seq_len (classification tasks)
  std::vector<uint8_t> loss_mask;       // seq_len (instruction)
  std::vector<int64_t> position_labels; // seq_len (token classification)
  int64_t length = 0;      // tokens before truncation, special tokens included
  bool truncated = false;
};

// Throws std::runtime_error if seq_len cannot even hold the template's special tokens.
Example build_classification_row(const Tokenizer& tokenizer, std::string_view text,
                                 const std::optional<std::string_view>& pair, int64_t seq_len,
                                 Truncation truncation, int32_t pad_id);

// tag_ids: one per word. Words are encoded one by one; for byte-level BPE every word
// after the first is encoded with a leading space, as the words of a sentence would be.
// Words beyond seq_len are cut at the end.
Example build_token_classification_row(const Tokenizer& tokenizer, const std::vector<std::string>& words,
                                       const std::vector<int64_t>& tag_ids, int64_t seq_len, int32_t pad_id);

// Longer examples lose prompt tokens from the left; a response (with EOS) longer than
// seq_len alone keeps its first seq_len tokens.
Example build_instruction_row(const Tokenizer& tokenizer, std::string_view prompt, std::string_view response,
                              int64_t seq_len, int32_t eos_id, int32_t pad_id);

}  // namespace ftrain::data
