#pragma once
// Regex: a PCRE2 pattern from a tokenizer file, as Hugging Face `tokenizers` applies its
// patterns: pre-tokenizer splits (GPT-2, Llama 3) and Replace normalizers (T5's runs of
// spaces). Only data/*_tokenizer.cpp and data/sentencepiece_text.cpp use it.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;

namespace ftrain::data::tokenizer_parts {

class Regex {
 public:
  // Patterns are UTF-8 with Unicode properties for \p, \s and friends. Bytes that are not
  // valid UTF-8 are allowed in subjects and match nothing. A pattern PCRE2 refuses is a
  // std::runtime_error "<file>: <key> is not a pattern PCRE2 accepts: ...".
  Regex(std::string_view pattern, const std::filesystem::path& file, const std::string& key, uint32_t options = 0);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Cuts text into the matches and the stretches between them, keeping both as pieces in
  // order (Hugging Face's "Isolated" split). Empty matches only mark a cut.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;
  // Appends text with every match replaced by content, left to right; an empty match
  // replaces nothing.
  void replace(std::string_view text, std::string_view content, std::string& out) const;

 private:
  struct CodeFree {
    void operator()(pcre2_real_code_8* code) const;
  };
  // Calls found(start, end) for each match in text, left to right.
  template <class Found>
  void for_each_match(std::string_view text, Found&& found) const;

  std::unique_ptr<pcre2_real_code_8, CodeFree> code_;
};

}  // namespace ftrain::data::tokenizer_parts
