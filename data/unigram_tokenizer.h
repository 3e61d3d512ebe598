#pragma once
// UnigramTokenizer: SentencePiece's Unigram language model as Hugging Face `tokenizers`
// reads it from tokenizer.json (T5, flan-t5, mT5), producing the same ids. Each word is
// cut into the pieces whose log-probabilities (scores) sum highest: Viterbi over every
// piece of the vocabulary that matches at each byte.
//
// Encoding runs in four stages:
//   1. added tokens ("</s>", "<extra_id_0>") are cut out of the text, one id each;
//   2. the normalizer runs on each stretch between them: SentencePiece's precompiled
//      NFKC rules, Strip, Replace and Prepend steps (data/sentencepiece_text.h);
//   3. the pre-tokenizer cuts it into words: WhitespaceSplit, then Metaspace ("▁" for
//      spaces and before each word), or either alone, or nothing;
//   4. each word is cut into pieces. A character no piece starts with becomes the
//      unknown token, whose score is the lowest piece's minus 10; neighbouring unknown
//      characters fuse into one. With byte_fallback such a stretch becomes its bytes'
//      "<0xXX>" tokens instead when all of them exist.
// Ties between cuts of equal score go to the cut whose last piece starts first, as in
// Hugging Face. Text that is not valid UTF-8 is read with each ill-formed stretch as
// U+FFFD, as Python decodes it with errors="replace".
//
// Anything that would tokenize differently from the reference is refused when loading,
// naming the file and key: other pre-tokenizers, a missing unk_id, non-finite scores,
// a piece given twice. A tokenizer is cheap to copy and its const members may be called
// from several threads at once.

#include "data/tokenizer.h"

#include <filesystem>
#include <memory>

namespace ftrain::data {

class UnigramTokenizer final : public Tokenizer {
 public:
  // From <dir>/tokenizer.json; special tokens follow <dir>/tokenizer_config.json where
  // there is one, else "</s>" ends a text and "<pad>" pads where the vocabulary has them.
  static UnigramTokenizer from_directory(const std::filesystem::path& dir);
  // The same from a tokenizer.json already parsed (its directory is file's parent).
  static UnigramTokenizer from_tokenizer_json(const std::filesystem::path& file, const nlohmann::json& document);

  std::string_view kind() const override;
  std::vector<int32_t> encode(std::string_view text) const override;
  using Tokenizer::decode;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;


  // Stages 2 and 3 alone on text without added tokens: the words cut into pieces
  // separately, for inspecting the split.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  const tokenizer_parts::TokenTable& table() const override;

  struct Model;
  explicit UnigramTokenizer(std::shared_ptr<const Model> model);
  std::shared_ptr<const Model> model_;
};

}  // namespace ftrain::data
