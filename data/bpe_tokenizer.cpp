#include "data/bpe_tokenizer.h"

#include "data/regex.h"
#include "data/sentencepiece_text.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <deque>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <unordered_map>

namespace ftrain::data {
namespace {

namespace fs = std::filesystem;
using namespace tokenizer_parts;
using sentencepiece::byte_token;
using sentencepiece::Metaspace;

constexpr std::string_view kEndOfText = "<|endoftext|>";


// GPT-2's split: English contractions, then runs of letters, of digits or of other
// symbols (each may take one leading space), then whitespace. The lookahead leaves the
// last space of a run to the word after it, so " world" stays one piece.
constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Hugging Face matches split patterns with Oniguruma and Unicode 16.0; PCRE2 10.42 knows
// Unicode 14.0 and counts U+180E as \s. These are the letters (L) and numbers (N) that
// Unicode 15.0 to 16.0 added (no earlier character changed between L, N and the rest),
// written into every \p{L} and \p{N}; where PCRE2 already knows them they change nothing.
constexpr std::string_view kLettersSinceUnicode14 =
    R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D4A}-\x{10D65})"
    R"(\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240}\x{11380}-\x{11389}\x{1138B}\x{1138E})"
    R"(\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10})"
    R"(\x{11F12}-\x{11F33}\x{1342F}\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D})"
    R"(\x{16D40}-\x{16D6C}\x{18CFF}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D})"
    R"(\x{1E4D0}-\x{1E4EB}\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";
constexpr std::string_view kNumbersSinceUnicode14 =
    R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59}\x{16130}-\x{16139})"
    R"(\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3}\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";

// A split pattern as Hugging Face writes it, rewritten so that PCRE2 reads it the same
// way: \s is exactly Unicode's White_Space, and \p{L} and \p{N} take in the characters above.
std::string adapt_pattern(std::string_view pattern) {
  std::string adapted;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const std::string_view rest = pattern.substr(i);
    if (rest.starts_with("\\Q")) {  // quoted literally up to \E
      const size_t end = rest.find("\\E");
      const size_t length = end == std::string_view::npos ? rest.size() : end + 2;
      adapted += rest.substr(0, length);
      i += length - 1;
    } else if (rest.starts_with("\\p{L}") || rest.starts_with("\\p{N}")) {
      const auto extra = rest[3] == 'L' ? kLettersSinceUnicode14 : kNumbersSinceUnicode14;
      adapted += in_class ? "" : "[";
      adapted += rest.substr(0, 5);
      adapted += extra;
      adapted += in_class ? "" : "]";
      i += 4;
    } else if (rest.starts_with("\\s") || rest.starts_with("\\S")) {
      adapted += rest[1] == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
      i += 1;
    } else if (rest[0] == '\\' && rest.size() > 1) {
      adapted += rest.substr(0, 2);
      i += 1;
    } else if (!in_class && rest[0] == '[') {
      // "]" straight after "[" or "[^" is a literal, not the end of the class.
      const size_t prefix = rest.starts_with("[^]") ? 3 : rest.starts_with("[]") ? 2 : rest.starts_with("[^") ? 2 : 1;
      adapted += rest.substr(0, prefix);
      i += prefix - 1;
      in_class = true;
    } else if (in_class && rest.starts_with("[:") && rest.find(":]") != std::string_view::npos) {
      const size_t length = rest.find(":]") + 2;  // a POSIX class such as [:alpha:]
      adapted += rest.substr(0, length);
      i += length - 1;
    } else {
      if (in_class && rest[0] == ']') in_class = false;
      adapted += rest[0];
    }
  }
  return adapted;
}

// ---- GPT-2's byte alphabet ----

// BPE tokens are strings of printable characters, one per byte: printable Latin-1 bytes
// stand for themselves and the others take the code points from U+0100 upwards, in
// byte order. The largest code point used is U+0143.
struct ByteAlphabet {
  static constexpr size_t kCharLimit = 0x144;
  std::array<std::string, 256> char_of_byte;           // UTF-8 of the byte's character
  std::array<int16_t, kCharLimit> byte_of_char;        // -1: no byte's character

  ByteAlphabet() {
    byte_of_char.fill(-1);
    char32_t next_unprintable = 0x100;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                             (byte >= 0xAE && byte <= 0xFF);
      const char32_t code = printable ? static_cast<char32_t>(byte) : next_unprintable++;
      append_utf8(char_of_byte[byte], code);
      byte_of_char[code] = static_cast<int16_t>(byte);
    }
  }

  std::string encode(std::string_view bytes) const {
    std::string chars;
    for (unsigned char byte : bytes) chars += char_of_byte[byte];
    return chars;
  }

  // The bytes a token stands for; a token with any character outside the alphabet (an
  // added token such as "hello world") stands for its own UTF-8 instead.
  std::string decode(std::string_view token) const {
    std::string bytes;
    for (size_t pos = 0; pos < token.size();) {
      const Utf8Unit unit = scan_utf8(token, pos);
      const char32_t code = unit.valid ? decode_utf8(token.substr(pos, unit.length)) : kCharLimit;
      if (code >= kCharLimit || byte_of_char[code] < 0) return std::string(token);
      bytes += static_cast<char>(byte_of_char[code]);
      pos += unit.length;
    }
    return bytes;
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// ---- word cache ----

// BPE results of recent pieces. Natural text repeats its words, so most pieces are found
// here. Sharded so that threads encoding at once rarely wait on the same lock; a full shard
// stops taking words rather than evicting, which keeps lookups cheap.
class WordCache {
 public:
  bool find(std::string_view word, std::vector<int32_t>& ids) const {
    const size_t hash = StringHash{}(word);
    const Shard& shard = shards_[shard_of(hash)];
    std::shared_lock lock(shard.mutex);
    const auto it = shard.words.find(word);
    if (it == shard.words.end()) return false;
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    return true;
  }

  void insert(std::string_view word, std::span<const int32_t> ids) {
    if (word.size() > kMaxWordBytes) return;
    const size_t hash = StringHash{}(word);
    Shard& shard = shards_[shard_of(hash)];
    std::unique_lock lock(shard.mutex);
    if (shard.words.size() >= kMaxWordsPerShard) return;
    shard.words.try_emplace(std::string(word), ids.begin(), ids.end());
  }

 private:
  static constexpr size_t kShardCount = 16;
  static constexpr size_t kMaxWordsPerShard = 1 << 14;
  static constexpr size_t kMaxWordBytes = 256;

  static size_t shard_of(size_t hash) { return (hash >> 32) % kShardCount; }

  struct Shard {
    mutable std::shared_mutex mutex;
    StringMap<std::vector<int32_t>> words;
  };
  std::array<Shard, kShardCount> shards_;
};

// One merge rule as written, with where it was written for error messages.
struct MergeEntry {
  std::string left = {};
  std::string right = {};
  std::string where = {};
};

// "a b" with exactly one space, as merges.txt and older tokenizer.json files write merges.
bool parse_merge_line(std::string_view line, MergeEntry& entry) {
  const size_t space = line.find(' ');
  if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos) return false;
  entry.left = line.substr(0, space);
  entry.right = line.substr(space + 1);
  return true;
}

std::vector<MergeEntry> read_json_merges(const Json& merges, const fs::path& file) {
  if (!merges.is_array()) fail(file, "model.merges is not an array");
  std::vector<MergeEntry> entries;
  entries.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const Json& merge = merges[i];
    MergeEntry entry{.where = "model.merges[" + std::to_string(i) + "]"};
    if (merge.is_string()) {
      const auto& line = merge.get_ref<const std::string&>();
      if (line.starts_with("#version")) continue;
      if (!parse_merge_line(line, entry)) {
        fail(file, entry.where + " is " + shown(merge) + ", not two tokens separated by one space");
      }
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      entry.left = merge[0].get<std::string>();
      entry.right = merge[1].get<std::string>();
    } else {
      fail(file, entry.where + " is " + shown(merge) + ", not a pair of strings");
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

std::vector<MergeEntry> read_merges_txt(const fs::path& file) {
  const std::string text = read_file(file);
  std::vector<MergeEntry> entries;
  size_t line_number = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    ++line_number;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.starts_with("#version")) continue;
    MergeEntry entry{.where = "line " + std::to_string(line_number)};
    if (!parse_merge_line(line, entry)) {
      fail(file, entry.where + " is " + shown(line) + ", not two tokens separated by one space");
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

}  // namespace

// ---- the model ----

struct BpeTokenizer::Model : TokenTable {
  struct MergeRule {
    int32_t rank;
    int32_t merged_id;
  };
  // What BPE starts from: the bytes of a piece as GPT-2's printable characters, or its
  // characters (SentencePiece-style).
  enum class Symbols { bytes, characters };

  Symbols symbols = Symbols::bytes;
  std::unordered_map<uint64_t, MergeRule> merges;
  std::array<int32_t, 256> byte_ids{};      // bytes: id of each byte's character, -1 if not in vocab
  std::array<int32_t, 256> fallback_ids{};  // characters: id of "<0xXX>", -1 if not in vocab
  bool byte_fallback = false;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;  // a piece that is itself a token skips merging

  // Byte-level pre-tokenization.
  std::vector<Regex> splits;  // Split pre-tokenizers, in order, before ByteLevel
  bool add_prefix_space = false;
  std::optional<Regex> byte_level_split;

  // SentencePiece-style normalization, pre-tokenization and decoding.
  sentencepiece::Normalizer sentencepiece_normalizer;
  AddedVocabulary::Normalizer normalizer;  // empty when there are no steps
  std::optional<Metaspace> metaspace;
  sentencepiece::Decoder decoder;  // without one, tokens are joined with spaces

  std::vector<std::string> bytes_of_id;  // byte-level decoding

  mutable WordCache cache;

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  static std::shared_ptr<Model> from_tokenizer_json(const fs::path& file, const Json& root);
  static std::shared_ptr<Model> from_vocab_and_merges(const fs::path& vocab_file, const fs::path& merges_file);

  void set_merges(const std::vector<MergeEntry>& entries, const fs::path& file);
  void read_model(const Json& model, const fs::path& file);
  void read_pre_tokenizer(const Json& pre_tokenizer, const fs::path& file);
  void read_byte_level(const Json& byte_level, const fs::path& file, const std::string& where);
  void read_split(const Json& split, const fs::path& file, const std::string& where);
  void read_normalizer(const Json& normalizer_json, const fs::path& file);
  void read_decoder(const Json* decoder, const fs::path& file);
  void finish(const fs::path& dir, const Json* post_processor, const fs::path& file);

  void pre_tokenize(const TextPiece& piece, std::deque<std::string>& storage,
                    std::vector<std::string_view>& words) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void byte_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
  void character_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
  void merge_symbols(const std::vector<int32_t>& initial, std::vector<int32_t>& ids) const;
};

// A merge's rank is its position in the list: earlier merges apply first.
void BpeTokenizer::Model::set_merges(const std::vector<MergeEntry>& entries, const fs::path& file) {
  merges.reserve(entries.size());
  for (size_t rank = 0; rank < entries.size(); ++rank) {
    const MergeEntry& entry = entries[rank];
    const auto find = [&](const std::string& token) {
      const auto it = vocab.find(token);
      if (it == vocab.end()) {
        fail(file, entry.where + " (" + shown(entry.left) + " " + shown(entry.right) + "): " + shown(token) +
                       " is not in the vocabulary");
      }
      return it->second;
    };
    const int32_t left_id = find(entry.left), right_id = find(entry.right);
    const int32_t merged_id = find(entry.left + entry.right);
    // A repeated pair takes its later rank, as Hugging Face's map does.
    merges.insert_or_assign(pair_key(left_id, right_id), MergeRule{static_cast<int32_t>(rank), merged_id});
  }
}

void BpeTokenizer::Model::read_model(const Json& model, const fs::path& file) {
  if (!model.is_object()) fail(file, "has no \"model\" object");
  if (const auto type = read_optional_string(model, "type", file, "model"); type && *type != "BPE") {
    fail(file, "model.type is " + shown(*type) + "; only \"BPE\" models are supported");
  }
  byte_fallback = read_bool(model, "byte_fallback", false, file, "model");
  if (byte_fallback && symbols == Symbols::bytes) {
    fail(file, "model.byte_fallback is true with a ByteLevel pre-tokenizer; byte fallback is supported for "
               "SentencePiece-style BPE (a Metaspace pre-tokenizer or none)");
  }
  if (const Json* dropout = member(model, "dropout"); dropout && !dropout->is_null()) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      fail(file, "model.dropout is " + shown(*dropout) + "; BPE dropout (random merges) is not supported");
    }
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const auto value = read_optional_string(model, affix, file, "model"); value && !value->empty()) {
      fail(file, std::string("model.") + affix + " is " + shown(*value) + "; subword affixes are not supported");
    }
  }
  const Json* vocab_json = member(model, "vocab");
  if (!vocab_json) fail(file, "model has no \"vocab\"");
  vocab = read_vocab(*vocab_json, file, "model.vocab");
  const Json* merges_json = member(model, "merges");
  if (!merges_json) fail(file, "model has no \"merges\"");
  set_merges(read_json_merges(*merges_json, file), file);
  if (const auto unk = read_optional_string(model, "unk_token", file, "model")) {
    const auto it = vocab.find(*unk);
    if (it == vocab.end()) fail(file, "model.unk_token " + shown(*unk) + " is not in model.vocab");
    unk_id = it->second;
  }
  fuse_unk = read_bool(model, "fuse_unk", false, file, "model");
  ignore_merges = read_bool(model, "ignore_merges", false, file, "model");
}

void BpeTokenizer::Model::read_byte_level(const Json& byte_level, const fs::path& file, const std::string& where) {
  if (!member(byte_level, "add_prefix_space")) fail(file, where + " has no \"add_prefix_space\"");
  add_prefix_space = read_bool(byte_level, "add_prefix_space", false, file, where);
  if (read_bool(byte_level, "use_regex", true, file, where)) {
    byte_level_split.emplace(adapt_pattern(kGpt2SplitPattern), file, where);
  }
}

void BpeTokenizer::Model::read_split(const Json& split, const fs::path& file, const std::string& where) {
  const Json* pattern = member(split, "pattern");
  if (!pattern || !pattern->is_object()) fail(file, where + " has no \"pattern\" object");
  const auto behavior = read_optional_string(split, "behavior", file, where);
  if (behavior != "Isolated") {
    fail(file, where + ".behavior is " + (behavior ? shown(*behavior) : "missing") +
                   "; only \"Isolated\" splits are supported");
  }
  if (read_bool(split, "invert", false, file, where)) fail(file, where + ".invert is true; not supported");
  if (const auto regex = read_optional_string(*pattern, "Regex", file, where + ".pattern")) {
    splits.emplace_back(adapt_pattern(*regex), file, where + ".pattern.Regex");
  } else if (const auto literal = read_optional_string(*pattern, "String", file, where + ".pattern")) {
    std::string escaped;
    for (char c : *literal) {
      // A backslash before an ASCII symbol always means the symbol itself.
      if (static_cast<unsigned char>(c) < 0x80 && !std::isalnum(static_cast<unsigned char>(c))) escaped += '\\';
      escaped += c;
    }
    splits.emplace_back(escaped, file, where + ".pattern.String");
  } else {
    fail(file, where + ".pattern has neither \"Regex\" nor \"String\"");
  }
}

void BpeTokenizer::Model::read_pre_tokenizer(const Json& pre_tokenizer, const fs::path& file) {
  const std::string where = "pre_tokenizer";
  if (pre_tokenizer.is_null()) {
    symbols = Symbols::characters;
    return;
  }
  const std::string type = type_of(pre_tokenizer, file, where);
  if (type == "ByteLevel") {
    read_byte_level(pre_tokenizer, file, where);
    return;
  }
  if (type == "Metaspace") {
    symbols = Symbols::characters;
    metaspace = Metaspace::read(pre_tokenizer, file, where);
    return;
  }
  if (type != "Sequence") {
    fail(file, where + ".type is " + shown(type) +
                   "; supported are ByteLevel (alone or after Split steps), Metaspace, or none (null)");
  }
  const Json* steps = member(pre_tokenizer, "pretokenizers");
  if (!steps || !steps->is_array() || steps->empty()) fail(file, where + ".pretokenizers is not a non-empty array");
  for (size_t i = 0; i < steps->size(); ++i) {
    const std::string step_where = where + ".pretokenizers[" + std::to_string(i) + "]";
    const std::string step_type = type_of((*steps)[i], file, step_where);
    const bool last = i + 1 == steps->size();
    if (step_type == "Split" && !last) {
      read_split((*steps)[i], file, step_where);
    } else if (step_type == "ByteLevel" && last) {
      read_byte_level((*steps)[i], file, step_where);
    } else {
      fail(file, step_where + " is " + shown(step_type) +
                     "; only Split steps followed by one final ByteLevel are supported");
    }
  }
}

void BpeTokenizer::Model::read_normalizer(const Json& json, const fs::path& file) {
  if (!json.is_null() && symbols == Symbols::bytes) {
    fail(file, "normalizer is " + shown(type_of(json, file, "normalizer")) + "; a ByteLevel pre-tokenizer takes no normalizer");
  }
  sentencepiece_normalizer = sentencepiece::Normalizer::read(json, file);
}

void BpeTokenizer::Model::read_decoder(const Json* json, const fs::path& file) {
  if (!json || json->is_null()) return;
  if (symbols == Symbols::bytes) {
    // Byte-level decoding is the only sensible one, with or without a decoder.
    const std::string type = type_of(*json, file, "decoder");
    if (type != "ByteLevel") fail(file, "decoder.type is " + shown(type) + "; a ByteLevel pre-tokenizer needs a ByteLevel decoder");
    return;
  }
  decoder = sentencepiece::Decoder::read(json, file);
}

// Ids of tokens and of the bytes that decoding writes, the template and the special tokens.
void BpeTokenizer::Model::finish(const fs::path& dir, const Json* post_processor, const fs::path& file) {
  const ByteAlphabet& alphabet = byte_alphabet();
  for (int byte = 0; byte < 256; ++byte) {
    const auto it = vocab.find(alphabet.char_of_byte[byte]);
    byte_ids[byte] = it == vocab.end() ? -1 : it->second;
    const auto fallback = vocab.find(byte_token(static_cast<unsigned char>(byte)));
    fallback_ids[byte] = fallback == vocab.end() ? -1 : fallback->second;
  }
  if (!sentencepiece_normalizer.empty()) normalizer = sentencepiece_normalizer;
  index(normalizer, file);
  if (symbols == Symbols::bytes) {
    bytes_of_id.assign(token_of_id.size(), std::string());
    for (size_t id = 0; id < token_of_id.size(); ++id) {
      if (token_of_id[id]) bytes_of_id[id] = alphabet.decode(*token_of_id[id]);
    }
  }

  special_template = read_post_processor(post_processor, file, static_cast<int32_t>(token_of_id.size()));
  const TokenLookup lookup = [this](std::string_view token) { return find(token); };
  SpecialTokenIds defaults;
  defaults.unk = unk_id;
  if (symbols == Symbols::bytes) {
    // GPT-2's one special token stands for all three.
    defaults.bos = defaults.eos = lookup(kEndOfText);
    if (!defaults.unk) defaults.unk = defaults.eos;
  } else {
    defaults.bos = lookup("<s>");
    defaults.eos = lookup("</s>");
  }
  special_ids = read_special_token_ids(dir, lookup, defaults);
}

std::shared_ptr<BpeTokenizer::Model> BpeTokenizer::Model::from_tokenizer_json(const fs::path& file, const Json& root) {
  if (!root.is_object()) fail(file, "is not a JSON object");
  auto model = std::make_shared<Model>();
  const Json* model_json = member(root, "model");
  if (!model_json) fail(file, "has no \"model\"");
  const Json* pre_tokenizer = member(root, "pre_tokenizer");
  if (!pre_tokenizer) fail(file, "has no \"pre_tokenizer\"");
  model->read_pre_tokenizer(*pre_tokenizer, file);
  model->read_model(*model_json, file);
  if (const Json* normalizer = member(root, "normalizer")) model->read_normalizer(*normalizer, file);
  model->read_decoder(member(root, "decoder"), file);
  if (const Json* added = member(root, "added_tokens")) model->added.read(*added, file, model->vocab);
  model->finish(file.parent_path(), member(root, "post_processor"), file);
  return model;
}

std::shared_ptr<BpeTokenizer::Model> BpeTokenizer::Model::from_vocab_and_merges(const fs::path& vocab_file,
                                                                                const fs::path& merges_file) {
  auto model = std::make_shared<Model>();
  model->vocab = read_vocab(read_json(vocab_file), vocab_file, "");
  model->set_merges(read_merges_txt(merges_file), merges_file);
  model->byte_level_split.emplace(adapt_pattern(kGpt2SplitPattern), vocab_file, "GPT-2 split pattern");
  if (model->vocab.contains(kEndOfText)) {
    model->added.add(AddedToken{.content = std::string(kEndOfText), .normalized = false, .special = true}, model->vocab);
  }
  model->finish(vocab_file.parent_path(), nullptr, vocab_file);
  return model;
}

// A stretch of text between added tokens -> the words BPE merges one by one.
void BpeTokenizer::Model::pre_tokenize(const TextPiece& piece, std::deque<std::string>& storage,
                                       std::vector<std::string_view>& words) const {
  if (piece.text.empty()) return;
  if (symbols == Symbols::characters) {
    if (!metaspace) {
      words.push_back(piece.text);
      return;
    }
    metaspace->pre_tokenize(piece.text, piece.at_text_start, storage, words);
    return;
  }
  std::vector<std::string_view> current{piece.text};
  std::vector<std::string_view> next;
  for (const Regex& split : splits) {
    next.clear();
    for (std::string_view part : current) split.split(part, next);
    current.swap(next);
  }
  for (std::string_view part : current) {
    if (add_prefix_space && !part.starts_with(' ')) {
      storage.push_back(" ");
      storage.back().append(part);
      part = storage.back();
    }
    if (byte_level_split) {
      byte_level_split->split(part, words);
    } else {
      words.push_back(part);
    }
  }
}

void BpeTokenizer::Model::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges) {
    const auto it = symbols == Symbols::bytes ? vocab.find(byte_alphabet().encode(word)) : vocab.find(word);
    if (it != vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (cache.find(word, ids)) return;
  std::vector<int32_t> initial;
  if (symbols == Symbols::bytes) {
    byte_symbols(word, initial);
  } else {
    character_symbols(word, initial);
  }
  const size_t first = ids.size();
  merge_symbols(initial, ids);
  cache.insert(word, std::span<const int32_t>(ids).subspan(first));
}

// Each byte's character; a byte outside the vocabulary becomes the unknown token (one per
// run when fused), or is dropped when there is none.
void BpeTokenizer::Model::byte_symbols(std::string_view word, std::vector<int32_t>& symbols_out) const {
  bool previous_unknown = false;
  for (unsigned char byte : word) {
    int32_t id = byte_ids[byte];
    if (id < 0) {
      const bool skip = !unk_id || (fuse_unk && previous_unknown);
      previous_unknown = true;
      if (skip) continue;
      id = *unk_id;
    } else {
      previous_unknown = false;
    }
    symbols_out.push_back(id);
  }
}

// Each character's token. One outside the vocabulary becomes its bytes' "<0xXX>" tokens
// when byte fallback is on and all of them exist, else the unknown token (one per run
// when fused) or nothing. As in Hugging Face, a pending unknown token is written only
// when a known character follows or the word ends, so byte tokens may come before it.
void BpeTokenizer::Model::character_symbols(std::string_view word, std::vector<int32_t>& symbols_out) const {
  std::optional<int32_t> pending_unknown;
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = scan_utf8(word, pos).length;
    const std::string_view character = word.substr(pos, length);
    pos += length;
    if (const auto it = vocab.find(character); it != vocab.end()) {
      if (pending_unknown) symbols_out.push_back(*pending_unknown);
      pending_unknown.reset();
      symbols_out.push_back(it->second);
      continue;
    }
    if (byte_fallback && std::all_of(character.begin(), character.end(), [&](char byte) {
          return fallback_ids[static_cast<unsigned char>(byte)] >= 0;
        })) {
      for (char byte : character) symbols_out.push_back(fallback_ids[static_cast<unsigned char>(byte)]);
      continue;
    }
    if (!unk_id) continue;
    if (pending_unknown && !fuse_unk) symbols_out.push_back(*pending_unknown);
    pending_unknown = unk_id;
  }
  if (pending_unknown) symbols_out.push_back(*pending_unknown);
}

// Merges the symbols pair by pair: always the adjacent pair whose merge has the lowest
// rank, the leftmost one among equals. A heap of candidate pairs keeps this O(n log n) on
// long words; candidates made stale by an earlier merge are skipped.
void BpeTokenizer::Model::merge_symbols(const std::vector<int32_t>& initial, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;  // -1: none
    bool merged_away;
  };
  std::vector<Symbol> symbols_list;
  symbols_list.reserve(initial.size());
  for (const int32_t id : initial) {
    const auto index = static_cast<int32_t>(symbols_list.size());
    symbols_list.push_back({id, index - 1, -1, false});
    if (index > 0) symbols_list[index - 1].next = index;
  }

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t merged_id;
  };
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Candidate> heap;
  const auto consider = [&](int32_t pos) {
    const int32_t next = symbols_list[pos].next;
    if (next < 0) return;
    const auto it = merges.find(pair_key(symbols_list[pos].id, symbols_list[next].id));
    if (it == merges.end()) return;
    heap.push_back({it->second.rank, pos, it->second.merged_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols_list.size()); ++pos) consider(pos);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols_list[top.pos];
    if (left.merged_away || left.next < 0) continue;
    Symbol& right = symbols_list[left.next];
    const auto it = merges.find(pair_key(left.id, right.id));
    if (it == merges.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    right.merged_away = true;
    left.next = right.next;
    if (left.next >= 0) symbols_list[left.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& symbol : symbols_list) {
    if (!symbol.merged_away) ids.push_back(symbol.id);
  }
}

// ---- public interface ----

BpeTokenizer::BpeTokenizer(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

BpeTokenizer BpeTokenizer::from_directory(const fs::path& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    fail(dir, fs::exists(dir, error) ? "is not a directory" : "does not exist (expected a tokenizer directory)");
  }
  const fs::path tokenizer_json = dir / "tokenizer.json";
  if (fs::exists(tokenizer_json, error)) return from_tokenizer_json(tokenizer_json, read_json(tokenizer_json));
  const fs::path vocab_json = dir / "vocab.json", merges_txt = dir / "merges.txt";
  const bool has_vocab = fs::exists(vocab_json, error), has_merges = fs::exists(merges_txt, error);
  if (has_vocab && has_merges) return BpeTokenizer(Model::from_vocab_and_merges(vocab_json, merges_txt));
  if (has_vocab) fail(merges_txt, "does not exist (vocab.json needs merges.txt beside it)");
  if (has_merges) fail(vocab_json, "does not exist (merges.txt needs vocab.json beside it)");
  fail(dir, "has neither tokenizer.json nor vocab.json and merges.txt");
}

BpeTokenizer BpeTokenizer::from_tokenizer_json(const fs::path& file, const Json& document) {
  return BpeTokenizer(Model::from_tokenizer_json(file, document));
}

std::string_view BpeTokenizer::kind() const { return byte_level() ? "byte-level BPE" : "SentencePiece-style BPE"; }

bool BpeTokenizer::byte_level() const { return model_->symbols == Model::Symbols::bytes; }

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  const Model& model = *model_;
  return model.encode(
      text, model.normalizer,
      [&](const TextPiece& stretch, auto& storage, auto& words) { model.pre_tokenize(stretch, storage, words); },
      [&](std::string_view word, std::vector<int32_t>& ids) { model.encode_word(word, ids); });
}

std::vector<int32_t> BpeTokenizer::encode_with_offsets(std::string_view text, std::vector<CharSpan>& offsets) const {
  const Model& model = *model_;
  if (model.symbols != Model::Symbols::bytes || model.normalizer || model.add_prefix_space) {
    throw std::runtime_error(std::string(kind()) + " tokenizers report character offsets only when byte-level, "
                             "without a normalizer and without add_prefix_space (GPT-2, Llama 3)");
  }
  std::vector<int64_t> char_of_byte(text.size());  // character index of each byte of text
  for (size_t pos = 0, index = 0; pos < text.size(); ++index) {
    const size_t length = scan_utf8(text, pos).length;
    std::fill_n(char_of_byte.begin() + static_cast<std::ptrdiff_t>(pos), length, static_cast<int64_t>(index));
    pos += length;
  }
  // Without a normalizer or a prefix space, every piece and word is a stretch of text.
  const auto span_of = [&](std::string_view part, size_t begin, size_t end) {
    const auto start = static_cast<size_t>(part.data() - text.data()) + begin;
    const auto stop = static_cast<size_t>(part.data() - text.data()) + end;
    return CharSpan{char_of_byte[start], char_of_byte[stop - 1] + 1};
  };
  std::vector<int32_t> ids;
  offsets.clear();
  std::deque<std::string> storage;
  std::vector<TextPiece> pieces;
  model.added.split(text, model.normalizer, storage, pieces);
  std::vector<std::string_view> words;
  for (const TextPiece& piece : pieces) {
    if (piece.added_id) {
      ids.push_back(*piece.added_id);
      offsets.push_back(span_of(piece.text, 0, piece.text.size()));
      continue;
    }
    words.clear();
    model.pre_tokenize(piece, storage, words);
    for (std::string_view word : words) {
      const size_t first = ids.size();
      model.encode_word(word, ids);
      size_t begin = 0;
      for (size_t i = first; i < ids.size(); ++i) {
        const size_t length = model.bytes_of_id[static_cast<size_t>(ids[i])].size();
        if (length == 0 || begin + length > word.size())
          throw std::logic_error("BpeTokenizer::encode_with_offsets: token " + std::to_string(ids[i]) +
                                 " does not cover the bytes of its word");
        offsets.push_back(span_of(word, begin, begin + length));
        begin += length;
      }
    }
  }
  return ids;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Model& model = *model_;
  const auto known = [&](int32_t id) {
    return id >= 0 && static_cast<size_t>(id) < model.token_of_id.size() && model.token_of_id[id] &&
           !(skip_special_tokens && model.added.is_special(id));
  };
  if (model.symbols == Model::Symbols::bytes) {
    std::string bytes;
    for (const int32_t id : ids) {
      if (known(id)) bytes += model.bytes_of_id[id];
    }
    return replace_invalid_utf8(bytes);
  }
  return model.decoder.decode(model.decoded_tokens(ids, skip_special_tokens));
}

const TokenTable& BpeTokenizer::table() const { return *model_; }

std::optional<int32_t> BpeTokenizer::eos_id() const { return model_->special_ids.eos; }

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::deque<std::string> storage;
  std::vector<std::string_view> words;
  std::string normalized;
  TextPiece piece{text, std::nullopt, true};
  if (model_->normalizer) {
    model_->normalizer(text, normalized);
    piece.text = normalized;
  }
  model_->pre_tokenize(piece, storage, words);
  return {words.begin(), words.end()};
}

}  // namespace ftrain::data
