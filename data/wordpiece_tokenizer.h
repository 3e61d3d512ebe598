#pragma once
// WordPieceTokenizer: BERT's tokenizer, producing the same ids as Hugging Face
// `tokenizers` (and transformers' BertTokenizer) for the same files.

#include "data/tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ftrain::data {

// Encoding runs in four stages, as in Hugging Face `tokenizers`:
//   1. added tokens ("[CLS]", "[SEP]", ...) are cut out of the text and become one id each;
//   2. BERT's normalizer runs on each stretch between them: control characters removed
//      and whitespace made a space (clean_text), spaces put around CJK ideographs
//      (handle_chinese_chars), accents stripped (NFD, then non-spacing marks removed)
//      and lower-casing, each as configured;
//   3. BERT's pre-tokenizer cuts the text at whitespace and isolates every punctuation
//      character (Unicode's P* categories and all ASCII symbols);
//   4. each word becomes the longest vocabulary token that starts it, then the longest
//      "##" continuation after that, and so on; a word that cannot be covered this way,
//      or that is longer than max_input_chars_per_word characters, is one unknown token.
//
// Character classes follow Hugging Face exactly, including where its Unicode tables are
// older than the current standard. Configurations other than BertNormalizer (or none),
// BertPreTokenizer and a WordPiece decoder (or none) are refused when loading, naming the
// file and key. The `truncation` and `padding` sections are ignored.
//
// A tokenizer is cheap to copy (copies share one immutable model) and every const member
// may be called from several threads at once.
class WordPieceTokenizer final : public Tokenizer {
 public:
  // Reads <dir>/tokenizer.json if present, else <dir>/vocab.txt (one token per line, the
  // id being the line number from 0) with the options of <dir>/tokenizer_config.json
  // where there is one: do_lower_case (default true), strip_accents (default: as
  // do_lower_case), tokenize_chinese_chars (default true) and the special tokens
  // unk/sep/pad/cls/mask_token (default "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"),
  // with the template [CLS] A [SEP] B [SEP], as transformers' BertTokenizer builds it.
  // Throws std::runtime_error naming the file and the problem.
  static WordPieceTokenizer from_directory(const std::filesystem::path& dir);
  // The same from a tokenizer.json already parsed (its directory is file's parent).
  static WordPieceTokenizer from_tokenizer_json(const std::filesystem::path& file, const nlohmann::json& document);

  std::string_view kind() const override;

  // Text -> ids, no special tokens added. Bytes that are not valid UTF-8 are read as
  // U+FFFD, which the normalizer removes when it cleans text.
  std::vector<int32_t> encode(std::string_view text) const override;
  // encode() with each id's characters in text, through the normalizer's alignment: a
  // word piece covers the characters its normalized bytes came from.
  std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<CharSpan>& offsets) const override;

  // Ids -> text through the WordPiece decoder: continuations ("##ing") join the token
  // before them, other tokens follow a space, and with cleanup the spaces before
  // punctuation and contractions go.
  using Tokenizer::decode;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;


  // Stage 2 alone on text without added tokens.
  std::string normalize(std::string_view text) const;
  // Stages 2 and 3 on text without added tokens: the words WordPiece looks up.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  const tokenizer_parts::TokenTable& table() const override;

  struct Model;
  explicit WordPieceTokenizer(std::shared_ptr<const Model> model);
  std::shared_ptr<const Model> model_;
};

}  // namespace ftrain::data
