#pragma once
// The text side of SentencePiece-style tokenizers (Llama 2's BPE, T5's Unigram) as
// Hugging Face `tokenizers` reads it from tokenizer.json: the normalizer, the Metaspace
// pre-tokenizer that makes spaces "▁" and the decoder that makes them spaces again, and
// the "<0xXX>" byte tokens. Only data/*_tokenizer.cpp use it.

#include <nlohmann/json_fwd.hpp>

#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ftrain::data::sentencepiece {

inline constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // "▁", U+2581

// Appends text with every occurrence of from (not empty) replaced by to, left to right.
void replace_all(std::string_view text, std::string_view from, std::string_view to, std::string& out);

// "<0x41>" for byte 0x41, and back (two hex digits, or a '+' and one, as Rust's
// u8::from_str_radix reads them).
std::string byte_token(unsigned char byte);
std::optional<unsigned char> byte_token_value(std::string_view token);

// tokenizer.json's normalizer: null, or a Sequence of
//   Prepend(content)          content before non-empty text (Llama 2);
//   Replace(pattern, content) a String or a Regex (T5's " {2,}");
//   Strip(left, right)        whitespace at either end;
//   Precompiled(charsmap)     SentencePiece's rules (T5), data/precompiled_charsmap.h.
// Anything else is refused naming the file and key. Cheap to copy; const members may be
// called from several threads at once.
class Normalizer {
 public:
  Normalizer();
  static Normalizer read(const nlohmann::json& normalizer, const std::filesystem::path& file);
  bool empty() const;
  // Appends the normalized text to out; text must be valid UTF-8.
  void operator()(std::string_view text, std::string& out) const;

  struct Step;  // one normalizer, defined in the .cpp

 private:
  std::shared_ptr<const std::vector<Step>> steps_;
};

// Where the Metaspace pre-tokenizer puts its "▁" in front of a piece that lacks one:
// always, only on the piece that starts the text, or never.
enum class PrependScheme { always, first, never };

struct Metaspace {
  std::string replacement = std::string(kMetaspace);  // one character
  PrependScheme prepend_scheme = PrependScheme::always;
  bool split = true;  // cut before every replacement character

  // Metaspace as pre-tokenizer or decoder: replacement, prepend_scheme ("always" when
  // absent) and split, or the older add_prefix_space (false meaning "never").
  static Metaspace read(const nlohmann::json& metaspace, const std::filesystem::path& file, const std::string& where);

  // One stretch of text -> its words: spaces become the replacement, which is prepended
  // as the scheme says (at_text_start: the stretch begins the text) and, with split,
  // starts each word. Words point into text or into storage.
  void pre_tokenize(std::string_view text, bool at_text_start, std::deque<std::string>& storage,
                    std::vector<std::string_view>& words) const;
};

// tokenizer.json's decoder for SentencePiece-style tokens: a Sequence of Replace,
// ByteFallback, Fuse, Strip and Metaspace steps; without one, tokens are joined with
// spaces. Anything else is refused naming the file and key.
class Decoder {
 public:
  Decoder();
  // decoder: tokenizer.json's "decoder", nullptr or null when there is none.
  static Decoder read(const nlohmann::json* decoder, const std::filesystem::path& file);
  std::string decode(std::vector<std::string> tokens) const;

  struct Step;  // one decoder, defined in the .cpp

 private:
  std::shared_ptr<const std::vector<Step>> steps_;  // nullptr: join with spaces
};

}  // namespace ftrain::data::sentencepiece
