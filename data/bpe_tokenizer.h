#pragma once
// BpeTokenizer: the byte-level BPE tokenizer of GPT-2 and the models that share its
// design, producing the same ids as Hugging Face `tokenizers` for the same files.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ftrain::data {

// Encoding runs in three stages, as in Hugging Face `tokenizers`:
//   1. added tokens (e.g. "<|endoftext|>") are cut out of the text and become one id each;
//   2. the rest is pre-tokenized: an optional leading space, then the split pattern
//      (GPT-2's, or a `Split` regex before `ByteLevel` as in Llama 3);
//   3. every piece is mapped byte by byte onto printable characters and merged by BPE,
//      lowest merge rank first, leftmost first among equal ranks.
//
// Only configurations that tokenize exactly like the reference are accepted: a BPE model
// without byte fallback, dropout or subword affixes, no normalizer, and a ByteLevel
// pre-tokenizer. Anything else is refused when loading, naming the file and key.
// The `truncation`, `padding` and `post_processor` sections are ignored: encode returns
// every id and adds no special tokens.
//
// A tokenizer is cheap to copy (copies share one immutable model and one word cache)
// and every const member may be called from several threads at once.
class BpeTokenizer {
 public:
  // Reads <dir>/tokenizer.json if present, else <dir>/vocab.json + <dir>/merges.txt.
  // The second form is GPT-2's original layout: no prefix space, and "<|endoftext|>",
  // when the vocabulary has it, is the one added token.
  // Throws std::runtime_error naming the file and the problem.
  static BpeTokenizer from_directory(const std::filesystem::path& dir);

  // Text -> ids, no special tokens added. Added tokens that appear literally in the text
  // become their single id. Bytes that are not valid UTF-8 are kept, each run of them a
  // piece of its own, so no input is rejected.
  std::vector<int32_t> encode(std::string_view text) const;

  // Ids -> text, special tokens included. Ids that name no token are skipped and byte
  // sequences that are not valid UTF-8 (a character cut between ids) become U+FFFD, both
  // as Hugging Face does.
  std::string decode(std::span<const int32_t> ids) const;

  // One more than the largest id, added tokens included: the rows an embedding needs.
  int32_t vocab_size() const;

  // Looks a token up in its stored form ("Ġthe" for " the"); added tokens first.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The stored form of a token; nullopt for ids that name none.
  std::optional<std::string> id_to_token(int32_t id) const;

  // "<|endoftext|>" if present (GPT-2 convention).
  std::optional<int32_t> eos_id() const;

  // Stage 2 alone on text without added tokens: the raw byte pieces that BPE merges
  // separately, for inspecting the split.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  struct Model;
  explicit BpeTokenizer(std::shared_ptr<const Model> model);
  std::shared_ptr<const Model> model_;
};

}  // namespace ftrain::data
