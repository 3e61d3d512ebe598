#pragma once
// BpeTokenizer: the BPE tokenizers of Hugging Face model directories, producing the same
// ids as Hugging Face `tokenizers` for the same files. Two designs share the class:
//   byte-level (GPT-2, Llama 3): text is cut by a split pattern and every byte is a
//     printable character of its own, so no input is out of the vocabulary;
//   SentencePiece-style (Llama 2, Mistral): spaces become "▁", symbols are characters,
//     and a character outside the vocabulary becomes its UTF-8 bytes as "<0xXX>" tokens
//     (byte fallback) or the unknown token.

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
//   1. added tokens (e.g. "<|endoftext|>", "<s>") are cut out of the text and become one
//      id each;
//   2. SentencePiece-style only: the normalizer (Prepend "▁", Replace " " by "▁") runs on
//      each stretch between added tokens;
//   3. the stretch is pre-tokenized: byte-level, an optional leading space and the split
//      pattern (GPT-2's, or `Split` regexes before `ByteLevel` as in Llama 3);
//      SentencePiece-style, the older Metaspace form of step 2 or nothing;
//   4. every piece becomes symbols (bytes as printable characters, or characters with
//      byte fallback) that BPE merges, lowest merge rank first, leftmost first among equals.
//
// Only configurations that tokenize exactly like the reference are accepted: no BPE
// dropout or subword affixes; byte-level: no normalizer, a ByteLevel pre-tokenizer and
// decoder, no byte fallback; SentencePiece-style: Prepend/Replace normalizers, a
// Metaspace pre-tokenizer or none, and a decoder of Replace, ByteFallback, Fuse, Strip
// and Metaspace steps. Anything else is refused when loading, naming the file and key.
// The `truncation` and `padding` sections are ignored: encode returns every id.
//
// A tokenizer is cheap to copy (copies share one immutable model and one word cache)
// and every const member may be called from several threads at once.
class BpeTokenizer final : public Tokenizer {
 public:
  // Reads <dir>/tokenizer.json if present, else <dir>/vocab.json + <dir>/merges.txt.
  // The second form is GPT-2's original layout: byte-level, no prefix space, and
  // "<|endoftext|>", when the vocabulary has it, is the one added token.
  // Special tokens follow <dir>/tokenizer_config.json where there is one.
  // Throws std::runtime_error naming the file and the problem.
  static BpeTokenizer from_directory(const std::filesystem::path& dir);
  // The same from a tokenizer.json already parsed (its directory is file's parent).
  static BpeTokenizer from_tokenizer_json(const std::filesystem::path& file, const nlohmann::json& document);

  std::string_view kind() const override;
  bool byte_level() const;

  // Text -> ids, no special tokens added. Added tokens that appear literally in the text
  // become their single id. Bytes that are not valid UTF-8 are kept: byte-level, each run
  // of them a piece of its own; SentencePiece-style, each byte a symbol of its own (so a
  // byte-fallback token). No input is rejected.
  std::vector<int32_t> encode(std::string_view text) const override;
  // encode() with each id's characters in text, for byte-level BPE without a
  // normalizer or an added prefix space (GPT-2, Llama 3): a token covers the characters
  // its bytes belong to, a leading space included, as Hugging Face reports them without
  // trim_offsets. Other BPE tokenizers throw std::runtime_error.
  std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<CharSpan>& offsets) const override;

  // Ids -> text through the file's decoder. Ids that name no token are skipped.
  // Byte-level, byte sequences that are not valid UTF-8 (a character cut between ids)
  // become U+FFFD; SentencePiece-style, each byte of a run of byte tokens that is not
  // valid UTF-8 becomes one U+FFFD; both as Hugging Face does.
  using Tokenizer::decode;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;


  // special_ids().eos: tokenizer_config.json's eos_token, else "<|endoftext|>"
  // (byte-level) or "</s>" (SentencePiece-style) when the vocabulary has it.
  std::optional<int32_t> eos_id() const;

  // Stages 2 and 3 alone on text without added tokens: the pieces that BPE merges
  // separately, for inspecting the split (byte-level: the raw bytes of each piece;
  // SentencePiece-style: the normalized text, "▁" for spaces).
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  const tokenizer_parts::TokenTable& table() const override;

  struct Model;
  explicit BpeTokenizer(std::shared_ptr<const Model> model);
  std::shared_ptr<const Model> model_;
};

}  // namespace ftrain::data
