#include "data/prep_examples.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <stdexcept>

#include "data/dataset_format.h"

namespace ftrain::data {

LabelMap::LabelMap(std::vector<std::string> names) : names_(std::move(names)) {
  for (std::size_t i = 0; i < names_.size(); ++i) {
    if (!ids_.emplace(names_[i], static_cast<int64_t>(i)).second) {
      throw std::runtime_error("label '" + names_[i] + "' is listed twice");
    }
  }
}

LabelMap LabelMap::sorted(const std::vector<std::string>& seen) {
  std::vector<std::string> names = seen;
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return LabelMap(std::move(names));
}

std::optional<int64_t> LabelMap::find(const std::string& name) const {
  const auto found = ids_.find(name);
  if (found == ids_.end()) return std::nullopt;
  return found->second;
}

std::string LabelMap::to_json() const { return nlohmann::json(names_).dump(); }

namespace {

// Pads every field the example uses to seq_len on the right.
void pad_row(Example& example, int64_t seq_len, int32_t pad_id) {
  const auto width = static_cast<std::size_t>(seq_len);
  example.attention_mask.assign(example.input_ids.size(), 1);
  example.attention_mask.resize(width, 0);
  example.input_ids.resize(width, pad_id);
  if (!example.token_type_ids.empty()) example.token_type_ids.resize(width, 0);
  if (!example.loss_mask.empty()) example.loss_mask.resize(width, 0);
  if (!example.position_labels.empty()) example.position_labels.resize(width, format::kIgnoreLabel);
}

std::size_t text_budget(const Tokenizer& tokenizer, bool pair, int64_t seq_len) {
  const std::size_t added = tokenizer.special_template().added_count(pair);
  if (static_cast<std::size_t>(seq_len) <= added) {
    throw std::runtime_error("--seq-len " + std::to_string(seq_len) + " cannot hold the " + std::to_string(added) +
                             " special tokens the tokenizer adds");
  }
  return static_cast<std::size_t>(seq_len) - added;
}

}  // namespace

Example build_classification_row(const Tokenizer& tokenizer, std::string_view text,
                                 const std::optional<std::string_view>& pair, int64_t seq_len,
                                 Truncation truncation, int32_t pad_id) {
  std::vector<int32_t> first = tokenizer.encode(text);
  std::vector<int32_t> second;
  if (pair) second = tokenizer.encode(*pair);
  const std::size_t budget = text_budget(tokenizer, pair.has_value(), seq_len);
  Example example;
  example.length = static_cast<int64_t>(first.size() + second.size() +
                                        tokenizer.special_template().added_count(pair.has_value()));
  example.truncated = first.size() + second.size() > budget;
  if (example.truncated) {
    // Left truncation is right truncation of the reversed texts.
    if (truncation == Truncation::kLeft) {
      std::reverse(first.begin(), first.end());
      std::reverse(second.begin(), second.end());
    }
    truncate_longest_first(first, pair ? &second : nullptr, budget);
    if (truncation == Truncation::kLeft) {
      std::reverse(first.begin(), first.end());
      std::reverse(second.begin(), second.end());
    }
  }
  Encoding encoding = tokenizer.special_template().apply(first, pair ? &second : nullptr, true);
  example.input_ids = std::move(encoding.ids);
  example.token_type_ids.assign(encoding.token_type_ids.begin(), encoding.token_type_ids.end());
  pad_row(example, seq_len, pad_id);
  return example;
}

Example build_token_classification_row(const Tokenizer& tokenizer, const std::vector<std::string>& words,
                                       const std::vector<int64_t>& tag_ids, int64_t seq_len, int32_t pad_id) {
  const bool leading_space = tokenizer.kind() == "byte-level BPE";
  std::vector<int32_t> ids;
  std::vector<int64_t> labels;  // parallel to ids
  for (std::size_t w = 0; w < words.size(); ++w) {
    const std::vector<int32_t> pieces = tokenizer.encode(w > 0 && leading_space ? " " + words[w] : words[w]);
    for (std::size_t p = 0; p < pieces.size(); ++p) {
      ids.push_back(pieces[p]);
      labels.push_back(p == 0 ? tag_ids[w] : format::kIgnoreLabel);
    }
  }
  const std::size_t budget = text_budget(tokenizer, false, seq_len);
  Example example;
  example.length = static_cast<int64_t>(ids.size() + tokenizer.special_template().added_count(false));
  example.truncated = ids.size() > budget;
  if (example.truncated) {
    ids.resize(budget);
    labels.resize(budget);
  }
  // Place the words in the template; its special tokens get no label.
  for (const auto& part : tokenizer.special_template().single()) {
    if (part.kind == SpecialTokenTemplate::Part::Kind::special) {
      for (const int32_t id : part.ids) {
        example.input_ids.push_back(id);
        example.position_labels.push_back(format::kIgnoreLabel);
        example.token_type_ids.push_back(static_cast<uint8_t>(part.type_id));
      }
    } else {
      example.input_ids.insert(example.input_ids.end(), ids.begin(), ids.end());
      example.position_labels.insert(example.position_labels.end(), labels.begin(), labels.end());
      example.token_type_ids.insert(example.token_type_ids.end(), ids.size(), static_cast<uint8_t>(part.type_id));
    }
  }
  if (example.input_ids.empty()) example.position_labels.clear();
  pad_row(example, seq_len, pad_id);
  if (example.position_labels.empty()) example.position_labels.assign(static_cast<std::size_t>(seq_len), format::kIgnoreLabel);
  return example;
}

Example build_instruction_row(const Tokenizer& tokenizer, std::string_view prompt, std::string_view response,
                              int64_t seq_len, int32_t eos_id, int32_t pad_id) {
  std::vector<int32_t> prompt_ids = tokenizer.encode(prompt);
  std::vector<int32_t> response_ids = tokenizer.encode(response);
  response_ids.push_back(eos_id);
  Example example;
  const auto width = static_cast<std::size_t>(seq_len);
  example.length = static_cast<int64_t>(prompt_ids.size() + response_ids.size());
  example.truncated = prompt_ids.size() + response_ids.size() > width;
  if (response_ids.size() >= width) {
    prompt_ids.clear();
    response_ids.resize(width);
  } else if (example.truncated) {
    prompt_ids.erase(prompt_ids.begin(),
                     prompt_ids.begin() + static_cast<std::ptrdiff_t>(prompt_ids.size() + response_ids.size() - width));
  }
  example.input_ids = prompt_ids;
  example.input_ids.insert(example.input_ids.end(), response_ids.begin(), response_ids.end());
  example.loss_mask.assign(prompt_ids.size(), 0);
  example.loss_mask.resize(example.input_ids.size(), 1);
  pad_row(example, seq_len, pad_id);
  return example;
}

}  // namespace ftrain::data
