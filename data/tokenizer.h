#pragma once
// Tokenizer: what every tokenizer in data/ offers (text to ids and back, the model's
// special tokens and its template for one text or a pair), and load_tokenizer, which
// reads a Hugging Face model directory and returns the tokenizer it describes.
//
// The second half of this header holds the parts that the tokenizers share (reading
// their configuration files, UTF-8, added tokens); only data/*_tokenizer.cpp use it.

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ftrain::data {

// The ids of one text or of a pair of texts, and the segment (token type) of each id:
// what BERT reads as input_ids and token_type_ids.
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<int32_t> token_type_ids;  // one per id
};

// Where a token came from: characters [begin, end) of the encoded text, counted in
// Unicode code points as Python indexes a str (an ill-formed UTF-8 stretch counts as
// one): Hugging Face's offset_mapping.
struct CharSpan {
  int64_t begin = 0;
  int64_t end = 0;
  bool operator==(const CharSpan&) const = default;
};

struct EncodeOptions {
  // Put the model's special tokens around the text(s), as its template says:
  // [CLS] A [SEP] B [SEP] for BERT, <s> A for Llama 2, nothing for GPT-2.
  bool add_special_tokens = true;
  // At most this many ids in the result, special tokens included: the texts are cut at
  // the end, the longer one first (Hugging Face's "longest_first" truncation).
  std::optional<size_t> max_length = std::nullopt;
};

// The ids of the model's special tokens, each absent when the model has none. They come
// from tokenizer_config.json (bos_token, eos_token, ...) when the directory has one, else
// from the conventions of the model's family.
struct SpecialTokenIds {
  std::optional<int32_t> bos;
  std::optional<int32_t> eos;
  std::optional<int32_t> unk;
  std::optional<int32_t> pad;
  std::optional<int32_t> cls;
  std::optional<int32_t> sep;
  std::optional<int32_t> mask;
};

// A model's template for its special tokens (tokenizer.json's post_processor): the parts
// that make up the ids of one text and of a pair, each with its token type.
class SpecialTokenTemplate {
 public:
  struct Part {
    enum class Kind { first_text, second_text, special };
    Kind kind = Kind::first_text;
    std::vector<int32_t> ids = {};  // Kind::special: the ids it stands for
    int32_t type_id = 0;
  };

  // Adds no special token; the first text has type 0 and the second type 1.
  SpecialTokenTemplate();
  SpecialTokenTemplate(std::vector<Part> single, std::vector<Part> pair);

  // How many ids the template adds to one text or to a pair.
  size_t added_count(bool pair) const;

  // The texts' ids placed in the template. Without special tokens the texts keep the
  // token types the template gives them, as Hugging Face does.
  Encoding apply(std::span<const int32_t> first, const std::vector<int32_t>* second,
                 bool add_special_tokens) const;

  const std::vector<Part>& single() const { return single_; }
  const std::vector<Part>& pair() const { return pair_; }

 private:
  std::vector<Part> single_;
  std::vector<Part> pair_;
};

// Cuts two id sequences at the end so that together they hold at most max_length ids:
// the longer one alone while that suffices, else both to half of max_length (the first
// one rounded down). With no second sequence the first is cut to max_length.
void truncate_longest_first(std::vector<int32_t>& first, std::vector<int32_t>* second, size_t max_length);

namespace tokenizer_parts {
struct TokenTable;
}

// Every tokenizer produces the same ids as Hugging Face `tokenizers` for the same files.
// Implementations are immutable after loading: every const member may be called from
// several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "byte-level BPE", "SentencePiece-style BPE", "Unigram" or "WordPiece".
  virtual std::string_view kind() const = 0;

  // Text -> ids, no special tokens added. Added tokens (e.g. "[SEP]", "<s>") that appear
  // literally in the text become their single id.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;

  // encode() with each id's characters in the text (offsets: one per id), as Hugging
  // Face's offset_mapping gives them: an added token covers its match, a word piece the
  // characters its normalized text came from. Throws std::runtime_error for a tokenizer
  // that does not track offsets (WordPiece does, and byte-level BPE without a
  // normalizer or an added prefix space).
  virtual std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<CharSpan>& offsets) const;

  // One text, or a pair, with the model's special tokens and token types.
  // Throws std::invalid_argument when options.max_length cannot even hold the special tokens.
  Encoding encode_with_specials(std::string_view text, const EncodeOptions& options = {}) const;
  Encoding encode_with_specials(std::string_view text, std::string_view pair,
                                const EncodeOptions& options = {}) const;

  // Ids -> text. Ids that name no token are skipped; so are special tokens when asked.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  std::string decode(std::span<const int32_t> ids) const { return decode(ids, false); }

  // One more than the largest id, added tokens included: the rows an embedding needs.
  int32_t vocab_size() const;
  // Looks a token up in its stored form ("Ġthe", "▁the", "##ing"); added tokens first.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The stored form of a token; nullopt for ids that name none.
  std::optional<std::string> id_to_token(int32_t id) const;

  const SpecialTokenIds& special_ids() const;
  const SpecialTokenTemplate& special_template() const;

 protected:
  Tokenizer() = default;
  Tokenizer(const Tokenizer&) = default;
  Tokenizer& operator=(const Tokenizer&) = default;

  // The tokens the lookups above answer from.
  virtual const tokenizer_parts::TokenTable& table() const = 0;

 private:
  Encoding encode_with_template(std::string_view text, const std::optional<std::string_view>& pair,
                                const EncodeOptions& options) const;
};

// The tokenizer of a Hugging Face model directory:
//   tokenizer.json            its model.type: BPE, byte-level (GPT-2, Llama 3) or
//                             SentencePiece-style (Llama 2); Unigram (T5); WordPiece;
//   vocab.txt                 BERT's WordPiece, options from tokenizer_config.json;
//   vocab.json + merges.txt   GPT-2's byte-level BPE.
// Throws std::runtime_error naming the file and key of anything it does not support
// (other model types, a SentencePiece tokenizer.model without tokenizer.json, ...).
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir);

// Lower case as Python's str.lower() gives it for text without a final capital sigma:
// Unicode's full mapping (U+0130 becomes "i" + U+0307). Ill-formed UTF-8 becomes U+FFFD.
std::string lowercase(std::string_view text);
// Python's " ".join(text.split()): runs of whitespace (Unicode's White_Space and the
// ASCII separators U+001C..U+001F, as str.isspace()) become one space, none at the ends.
std::string collapse_whitespace(std::string_view text);
// The byte where each character of text starts (ill-formed UTF-8 counted as
// tokenizer_parts::scan_utf8 counts it), then text.size(): character i is bytes
// [starts[i], starts[i + 1]), counted as Python indexes a str.
std::vector<std::size_t> character_starts(std::string_view text);

// ---- parts shared by the tokenizer implementations ----

namespace tokenizer_parts {

using Json = nlohmann::json;

// Configuration files. Every problem is a std::runtime_error "<file>: <problem>", the
// problem naming the key ("model.vocab[\"a\"] is ..."); `where` is the key so far.
[[noreturn]] void fail(const std::filesystem::path& file, const std::string& problem);
// A table indexed by token id has room for ids 0 .. the largest, so the largest may
// pass the number of tokens the file defines only by a margin (2 x tokens + 65,536):
// otherwise one number in a small file would size it. Throws "<file>: <where> has id
// <id>, ..." for an id beyond that.
void check_id_within_table(int64_t id, size_t tokens, const std::filesystem::path& file, const std::string& where);
std::string shown(const Json& value);  // JSON text for messages, invalid UTF-8 replaced
std::string shown(std::string_view text);
std::string shown(const std::string& text);
std::string shown(const char* text);
std::string read_file(const std::filesystem::path& path);
Json read_json(const std::filesystem::path& path);
const Json* member(const Json& object, const char* key);
bool read_bool(const Json& object, const char* key, bool fallback, const std::filesystem::path& file,
               const std::string& where);
std::optional<std::string> read_optional_string(const Json& object, const char* key,
                                                const std::filesystem::path& file, const std::string& where);
uint64_t read_count(const Json& object, const char* key, uint64_t fallback, const std::filesystem::path& file,
                    const std::string& where);
std::string type_of(const Json& object, const std::filesystem::path& file, const std::string& where);
int32_t read_id(const Json& value, const std::filesystem::path& file, const std::string& where);

// UTF-8. A unit is one well-formed character or, where the bytes are ill-formed, the
// longest prefix of a well-formed sequence found there (at least one byte): the stretch
// one U+FFFD replaces.
struct Utf8Unit {
  size_t length;
  bool valid;
};
Utf8Unit scan_utf8(std::string_view text, size_t pos);
char32_t decode_utf8(std::string_view unit);  // unit: one valid character
void append_utf8(std::string& out, char32_t code);
std::string replace_invalid_utf8(std::string_view bytes);
std::optional<char32_t> char_at(std::string_view text, size_t pos);  // nullopt: ill-formed
size_t previous_char_start(std::string_view text, size_t end);       // end > 0
bool is_white_space(char32_t c);    // Unicode's White_Space
bool is_alphanumeric(char32_t c);   // Alphabetic or a number (N*), as Rust's char::is_alphanumeric

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

// The vocabulary of a model file: token -> id, every id given once.
StringMap<int32_t> read_vocab(const Json& vocab, const std::filesystem::path& file, const std::string& where);

struct AddedToken {
  std::string content;
  bool single_word = false;  // only where no letter or digit touches it
  bool lstrip = false;       // takes the whitespace before it
  bool rstrip = false;       // takes the whitespace after it
  bool normalized = true;    // matched in normalized text, in its normalized form
  bool special = false;      // left out by decode when skipping special tokens
};

// A stretch of text on its way to the model, or an added token found in the text.
struct TextPiece {
  std::string_view text;
  std::optional<int32_t> added_id;
  bool at_text_start = false;  // begins at the first byte of the encoded text
};

// Added tokens as Hugging Face keeps them: ids, and the two passes that find them in a
// text (tokens with normalized=false in the text as given, the others in each stretch of
// it after normalization, in their normalized form).
class AddedVocabulary {
 public:
  // The model's normalizer: appends the normalized form of its input to out.
  using Normalizer = std::function<void(std::string_view text, std::string& out)>;

  AddedVocabulary();
  ~AddedVocabulary();
  AddedVocabulary(AddedVocabulary&&) noexcept;
  AddedVocabulary& operator=(AddedVocabulary&&) noexcept;

  // A token already in the model keeps the model's id; a new one takes the next id after
  // the model and the added tokens so far. A content added twice keeps its first entry.
  void add(AddedToken token, const StringMap<int32_t>& model_vocab);
  // tokenizer.json's "added_tokens" array, in order (the ids written there are ignored).
  void read(const Json& added_tokens, const std::filesystem::path& file, const StringMap<int32_t>& model_vocab);
  // Call once after the last add: prepares matching. normalizer may be empty.
  void prepare(const Normalizer& normalizer);

  // Splits text into added tokens and normalized stretches between them; normalized text
  // is kept in storage. With an empty normalizer the stretches point into text.
  void split(std::string_view text, const Normalizer& normalizer, std::deque<std::string>& storage,
             std::vector<TextPiece>& pieces) const;
  // The normalizer, also appending to origin, for each byte it writes, the character of
  // its input that byte came from (counted from 0).
  using AlignedNormalizer = std::function<void(std::string_view text, std::string& out, std::vector<int64_t>& origin)>;
  // split() that also says where each byte of each piece came from: origins[i] holds,
  // for each byte of pieces[i].text, its character in text (counted as CharSpan counts).
  void split_aligned(std::string_view text, const AlignedNormalizer& normalizer, std::deque<std::string>& storage,
                     std::vector<TextPiece>& pieces, std::vector<std::vector<int64_t>>& origins) const;

  std::optional<int32_t> find(std::string_view content) const;
  // The token with this id, nullptr if none.
  const AddedToken* token(int32_t id) const;
  // What decoding writes for the token: its normalized form when it is matched in one.
  const std::string* decoded_form(int32_t id) const;
  bool is_special(int32_t id) const;
  int32_t largest_id() const;  // -1 when empty
  const std::map<int32_t, AddedToken>& by_id() const { return tokens_; }

 private:
  class Matcher;
  StringMap<int32_t> ids_;
  std::map<int32_t, AddedToken> tokens_;
  std::unordered_map<int32_t, std::string> normalized_forms_;
  std::unique_ptr<Matcher> raw_;
  std::unique_ptr<Matcher> normalized_;
};

// The tokens a tokenizer knows, its model's and the added ones, with the special tokens
// and the template: what every tokenizer looks up the same way. Each tokenizer's model
// derives from it.
struct TokenTable {
  StringMap<int32_t> vocab;  // the model's tokens
  AddedVocabulary added;
  std::vector<std::optional<std::string>> token_of_id;  // filled by index()
  SpecialTokenTemplate special_template;
  SpecialTokenIds special_ids;

  // Prepares the added tokens for matching (normalizer may be empty) and fills
  // token_of_id, added tokens over the model's. The vocabulary's largest id is checked
  // with check_id_within_table, naming its token in `file`.
  void index(const AddedVocabulary::Normalizer& normalizer, const std::filesystem::path& file);
  // Added tokens first, then the model's.
  std::optional<int32_t> find(std::string_view token) const;
  // Encoding as every tokenizer runs it: the added tokens in text become their ids, and
  // each normalized stretch between them is cut into words by split_words, each word
  // then encoded by encode_word. Words may point into the stretch or into storage.
  using WordSplitter =
      std::function<void(const TextPiece& stretch, std::deque<std::string>& storage, std::vector<std::string_view>& words)>;
  using WordEncoder = std::function<void(std::string_view word, std::vector<int32_t>& ids)>;
  std::vector<int32_t> encode(std::string_view text, const AddedVocabulary::Normalizer& normalizer,
                              const WordSplitter& split_words, const WordEncoder& encode_word) const;
  // What decoding starts from: the stored form of each id, added tokens in their decoded
  // form; ids that name no token are skipped, and so are special tokens when asked.
  std::vector<std::string> decoded_tokens(std::span<const int32_t> ids, bool skip_special_tokens) const;
};

// tokenizer.json's post_processor: null, TemplateProcessing, BertProcessing,
// RobertaProcessing, ByteLevel, or a Sequence of ByteLevel and at most one of the others.
// Special-token ids must be below vocab_size.
SpecialTokenTemplate read_post_processor(const Json* post_processor, const std::filesystem::path& file,
                                         int32_t vocab_size);

// The special tokens named in <dir>/tokenizer_config.json (each key string, {"content":
// ...} or null), over the defaults; a named token must be in the vocabulary.
using TokenLookup = std::function<std::optional<int32_t>(std::string_view token)>;
SpecialTokenIds read_special_token_ids(const std::filesystem::path& dir, const TokenLookup& lookup,
                                       SpecialTokenIds defaults);

}  // namespace tokenizer_parts

}  // namespace ftrain::data
