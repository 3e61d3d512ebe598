#pragma once
// PrecompiledCharsmap: SentencePiece's normalization rules as tokenizer.json carries them
// ("Precompiled" normalizer, "precompiled_charsmap": base64 of the bytes SentencePiece
// stores in its model). T5, mT5 and XLM-R normalize with it: NFKC and a few extras, each
// rule a byte string mapped to its replacement.
//
// The bytes are a 32-bit little-endian size, that many bytes of a double-array trie
// (Darts-clone units of 32 bits) over the rules' left sides, then the replacements, each
// ended by a NUL byte, at the offsets the trie's leaves hold.
//
// normalize() follows Hugging Face `tokenizers` exactly, quirks included: text is cut into
// extended grapheme clusters (ICU's); a cluster shorter than 6 bytes whose bytes start with
// a rule is replaced whole by that rule's replacement (the shortest rule found); otherwise
// each character of the cluster is replaced by the rule for its own bytes, or kept.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ftrain::data::tokenizer_parts {

class PrecompiledCharsmap {
 public:
  // bytes: the decoded charsmap. Throws std::runtime_error "<file>: <where> ..." when the
  // sizes do not add up or the replacements are not UTF-8. Trie offsets are checked as
  // they are followed, so a corrupt trie is an error, never a read out of bounds.
  PrecompiledCharsmap(std::string_view bytes, const std::filesystem::path& file, const std::string& where);

  // Appends the normalized text to out. text must be valid UTF-8.
  void normalize(std::string_view text, std::string& out) const;

  // The replacement of the shortest rule that chunk starts with; nullopt if none.
  std::optional<std::string_view> transform(std::string_view chunk) const;

 private:
  [[noreturn]] void corrupt(const std::string& problem) const;

  std::vector<uint32_t> units_;  // the double-array trie
  std::string replacements_;     // NUL-ended replacements
  std::string source_;           // "<file>: <where>", for errors found while normalizing
};

// Standard base64 (RFC 4648, with padding), as tokenizer.json writes the charsmap.
// nullopt when text is not base64.
std::optional<std::string> decode_base64(std::string_view text);

}  // namespace ftrain::data::tokenizer_parts
