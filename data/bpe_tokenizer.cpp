#include "data/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

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

// ---- regular expressions ----

class Regex {
 public:
  // Patterns are UTF-8 with Unicode properties for \p, \s and friends. Bytes that are not
  // valid UTF-8 are allowed in subjects and match nothing.
  Regex(std::string_view pattern, const fs::path& file, const std::string& key, uint32_t options = 0) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | options, &error,
                              &error_offset, nullptr));
    if (!code_) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      fail(file, key + " is not a pattern PCRE2 accepts: " + reinterpret_cast<const char*>(message.data()) +
                     " at offset " + std::to_string(error_offset));
    }
    // Without JIT support pcre2_match interprets the pattern instead: slower, same result.
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);
  }

  // Cuts text into the matches and the stretches between them, keeping both as pieces in
  // order (Hugging Face's "Isolated" split). Empty matches only mark a cut.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const {
    MatchData match_data(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    if (!match_data) throw std::bad_alloc();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const PCRE2_SIZE* bounds = pcre2_get_ovector_pointer(match_data.get());
    size_t piece_start = 0;
    size_t search_from = 0;
    while (search_from <= text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), search_from, 0, match_data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw_match_error(rc);
      const size_t match_start = bounds[0], match_end = bounds[1];
      if (match_start > piece_start) pieces.push_back(text.substr(piece_start, match_start - piece_start));
      if (match_end > match_start) {
        pieces.push_back(text.substr(match_start, match_end - match_start));
        search_from = match_end;
      } else {
        if (match_start == text.size()) break;
        search_from = match_start + scan_utf8(text, match_start).length;
      }
      piece_start = match_end;
    }
    if (piece_start < text.size()) pieces.push_back(text.substr(piece_start));
  }

 private:
  struct CodeFree {
    void operator()(pcre2_code* code) const { pcre2_code_free(code); }
  };
  struct MatchDataFree {
    void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
  };
  using MatchData = std::unique_ptr<pcre2_match_data, MatchDataFree>;

  [[noreturn]] static void throw_match_error(int rc) {
    std::array<PCRE2_UCHAR, 256> message{};
    pcre2_get_error_message(rc, message.data(), message.size());
    throw std::runtime_error(std::string("BpeTokenizer: pre-tokenizer pattern failed: ") +
                             reinterpret_cast<const char*>(message.data()));
  }

  std::unique_ptr<pcre2_code, CodeFree> code_;
};

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

// ---- SentencePiece-style text ----

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // "▁", U+2581

// Appends text with every occurrence of from (not empty) replaced by to, left to right.
void replace_all(std::string_view text, std::string_view from, std::string_view to, std::string& out) {
  size_t pos = 0;
  for (size_t found = text.find(from); found != std::string_view::npos; found = text.find(from, pos)) {
    out.append(text.substr(pos, found - pos));
    out.append(to);
    pos = found + from.size();
  }
  out.append(text.substr(pos));
}

// One step of a normalizer: Prepend(content), which leaves empty text empty, or
// Replace(pattern, content) of a literal string.
struct NormalizerStep {
  enum class Kind { prepend, replace };
  Kind kind = Kind::prepend;
  std::string pattern = {};
  std::string content = {};
};

void normalize(const std::vector<NormalizerStep>& steps, std::string_view text, std::string& out) {
  std::string current(text), next;
  for (const NormalizerStep& step : steps) {
    if (step.kind == NormalizerStep::Kind::prepend) {
      if (!current.empty()) current.insert(0, step.content);
    } else {
      next.clear();
      replace_all(current, step.pattern, step.content, next);
      current.swap(next);
    }
  }
  out += current;
}

// Where the Metaspace pre-tokenizer puts its "▁" in front of a piece that lacks one:
// always, only on the piece that starts the text, or never.
enum class PrependScheme { always, first, never };

struct Metaspace {
  std::string replacement = std::string(kMetaspace);  // one character
  PrependScheme prepend_scheme = PrependScheme::always;
  bool split = true;  // cut before every replacement character
};

// One step of a SentencePiece-style decoder, applied to the list of token strings.
struct DecoderStep {
  enum class Kind { replace, byte_fallback, fuse, strip, metaspace };
  Kind kind = Kind::fuse;
  std::string pattern = {};  // replace: the literal replaced
  std::string content = {};  // replace: its replacement; strip: the character removed
  size_t start = 0;          // strip: at most this many characters from the start
  size_t stop = 0;           //        and this many from the end
  Metaspace metaspace = {};
};

// The byte a "<0xXX>" token stands for, read as ByteFallback does (two hex digits, or a
// '+' and one, as Rust's u8::from_str_radix allows).
std::optional<unsigned char> byte_token_value(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || !token.ends_with('>')) return std::nullopt;
  std::string_view digits = token.substr(3, 2);
  if (digits[0] == '+') digits.remove_prefix(1);
  unsigned value = 0;
  for (char digit : digits) {
    const auto c = static_cast<unsigned char>(digit);
    if (!std::isxdigit(c)) return std::nullopt;
    value = value * 16 + (std::isdigit(c) ? c - '0' : std::tolower(c) - 'a' + 10);
  }
  return static_cast<unsigned char>(value);
}

std::string byte_token(unsigned char byte) {
  constexpr std::string_view kHex = "0123456789ABCDEF";
  return std::string("<0x") + kHex[byte >> 4] + kHex[byte & 0xF] + ">";
}

// The characters of a token (UTF-8 units), for steps that count characters.
std::vector<std::string_view> characters(std::string_view text) {
  std::vector<std::string_view> chars;
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = scan_utf8(text, pos).length;
    chars.push_back(text.substr(pos, length));
    pos += length;
  }
  return chars;
}

void run_decoder_step(const DecoderStep& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case DecoderStep::Kind::replace:
      for (std::string& token : tokens) {
        std::string replaced;
        replace_all(token, step.pattern, step.content, replaced);
        token.swap(replaced);
      }
      break;
    case DecoderStep::Kind::byte_fallback: {
      // A run of byte tokens becomes its text when the bytes are valid UTF-8, else one
      // U+FFFD per byte.
      std::vector<std::string> decoded;
      std::string run;
      size_t run_length = 0;
      const auto flush = [&] {
        if (run_length == 0) return;
        if (replace_invalid_utf8(run) == run) {
          decoded.push_back(run);
        } else {
          decoded.insert(decoded.end(), run_length, "\xEF\xBF\xBD");
        }
        run.clear();
        run_length = 0;
      };
      for (std::string& token : tokens) {
        if (const auto byte = byte_token_value(token)) {
          run += static_cast<char>(*byte);
          ++run_length;
        } else {
          flush();
          decoded.push_back(std::move(token));
        }
      }
      flush();
      tokens.swap(decoded);
      break;
    }
    case DecoderStep::Kind::fuse: {
      std::string joined;
      for (const std::string& token : tokens) joined += token;
      tokens.assign(1, std::move(joined));
      break;
    }
    case DecoderStep::Kind::strip:
      for (std::string& token : tokens) {
        const std::vector<std::string_view> chars = characters(token);
        size_t first = 0, last = chars.size();
        while (first < step.start && first < chars.size() && chars[first] == step.content) ++first;
        while (chars.size() - last < step.stop && last > first && chars[last - 1] == step.content) --last;
        std::string stripped;
        for (size_t i = first; i < last; ++i) stripped += chars[i];
        token.swap(stripped);
      }
      break;
    case DecoderStep::Kind::metaspace:
      // The first token loses its replacement characters (the prepended space) unless
      // nothing was prepended; elsewhere they become spaces.
      for (size_t i = 0; i < tokens.size(); ++i) {
        const bool drop = i == 0 && step.metaspace.prepend_scheme != PrependScheme::never;
        std::string decoded;
        replace_all(tokens[i], step.metaspace.replacement, drop ? "" : " ", decoded);
        tokens[i].swap(decoded);
      }
      break;
  }
}

}  // namespace

// ---- the model ----

struct BpeTokenizer::Model {
  struct MergeRule {
    int32_t rank;
    int32_t merged_id;
  };
  // What BPE starts from: the bytes of a piece as GPT-2's printable characters, or its
  // characters (SentencePiece-style).
  enum class Symbols { bytes, characters };

  Symbols symbols = Symbols::bytes;
  StringMap<int32_t> vocab;  // the BPE model's tokens
  std::unordered_map<uint64_t, MergeRule> merges;
  std::array<int32_t, 256> byte_ids{};      // bytes: id of each byte's character, -1 if not in vocab
  std::array<int32_t, 256> fallback_ids{};  // characters: id of "<0xXX>", -1 if not in vocab
  bool byte_fallback = false;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;  // a piece that is itself a token skips merging

  AddedVocabulary added;

  // Byte-level pre-tokenization.
  std::vector<Regex> splits;  // Split pre-tokenizers, in order, before ByteLevel
  bool add_prefix_space = false;
  std::optional<Regex> byte_level_split;

  // SentencePiece-style normalization, pre-tokenization and decoding.
  std::vector<NormalizerStep> normalizer_steps;
  AddedVocabulary::Normalizer normalizer;  // empty when there are no steps
  std::optional<Metaspace> metaspace;
  bool has_decoder = false;  // without one, tokens are joined with spaces
  std::vector<DecoderStep> decoder_steps;

  std::vector<std::optional<std::string>> token_of_id;
  std::vector<std::string> bytes_of_id;  // byte-level decoding
  SpecialTokenTemplate special_template;
  SpecialTokenIds special_ids;

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
  static Metaspace read_metaspace(const Json& metaspace, const fs::path& file, const std::string& where);
  void read_normalizer(const Json& normalizer_json, const fs::path& file, const std::string& where);
  void read_decoder(const Json* decoder, const fs::path& file);
  void read_decoder_step(const Json& step, const fs::path& file, const std::string& where);
  void finish(const fs::path& dir, const Json* post_processor, const fs::path& file);

  void pre_tokenize(const TextPiece& piece, std::deque<std::string>& storage,
                    std::vector<std::string_view>& words) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void byte_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
  void character_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
  void merge_symbols(const std::vector<int32_t>& initial, std::vector<int32_t>& ids) const;
  std::string decode_tokens(std::vector<std::string> tokens) const;
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

// Metaspace as pre-tokenizer or decoder: replacement, prepend_scheme ("always" when
// absent) and split, or the older add_prefix_space (false meaning "never").
Metaspace BpeTokenizer::Model::read_metaspace(const Json& json, const fs::path& file, const std::string& where) {
  Metaspace metaspace;
  const auto replacement = read_optional_string(json, "replacement", file, where);
  if (!replacement || replacement->empty() || scan_utf8(*replacement, 0).length != replacement->size() ||
      !scan_utf8(*replacement, 0).valid) {
    fail(file, where + ".replacement is " + (replacement ? shown(*replacement) : "missing") + ", not one character");
  }
  metaspace.replacement = *replacement;
  const auto scheme = read_optional_string(json, "prepend_scheme", file, where);
  if (!scheme || *scheme == "always") {
    metaspace.prepend_scheme = PrependScheme::always;
  } else if (*scheme == "first") {
    metaspace.prepend_scheme = PrependScheme::first;
  } else if (*scheme == "never") {
    metaspace.prepend_scheme = PrependScheme::never;
  } else {
    fail(file, where + ".prepend_scheme is " + shown(*scheme) + ", not \"always\", \"first\" or \"never\"");
  }
  if (!read_bool(json, "add_prefix_space", true, file, where)) {
    if (metaspace.prepend_scheme != PrependScheme::never) {
      fail(file, where + ".add_prefix_space is false but prepend_scheme is not \"never\"");
    }
  }
  metaspace.split = read_bool(json, "split", true, file, where);
  return metaspace;
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
    metaspace = read_metaspace(pre_tokenizer, file, where);
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

void BpeTokenizer::Model::read_normalizer(const Json& json, const fs::path& file, const std::string& where) {
  if (json.is_null()) return;
  const std::string type = type_of(json, file, where);
  if (symbols == Symbols::bytes) {
    fail(file, where + " is " + shown(type) + "; a ByteLevel pre-tokenizer takes no normalizer");
  }
  if (type == "Sequence") {
    const Json* steps = member(json, "normalizers");
    if (!steps || !steps->is_array()) fail(file, where + ".normalizers is not an array");
    for (size_t i = 0; i < steps->size(); ++i) {
      read_normalizer((*steps)[i], file, where + ".normalizers[" + std::to_string(i) + "]");
    }
  } else if (type == "Prepend") {
    const auto content = read_optional_string(json, "prepend", file, where);
    if (!content) fail(file, where + " has no \"prepend\"");
    normalizer_steps.push_back({NormalizerStep::Kind::prepend, "", *content});
  } else if (type == "Replace") {
    const Json* pattern = member(json, "pattern");
    const auto literal = pattern ? read_optional_string(*pattern, "String", file, where + ".pattern") : std::nullopt;
    if (!literal || literal->empty()) {
      fail(file, where + ".pattern is " + (pattern ? shown(*pattern) : "missing") +
                     "; only a non-empty {\"String\": ...} pattern is supported");
    }
    const auto content = read_optional_string(json, "content", file, where);
    if (!content) fail(file, where + " has no \"content\"");
    normalizer_steps.push_back({NormalizerStep::Kind::replace, *literal, *content});
  } else {
    fail(file, where + ".type is " + shown(type) +
                   "; SentencePiece-style BPE supports Prepend and Replace normalizers, alone or in a Sequence");
  }
}

void BpeTokenizer::Model::read_decoder_step(const Json& step, const fs::path& file, const std::string& where) {
  const std::string type = type_of(step, file, where);
  DecoderStep decoded;
  if (type == "Sequence") {
    const Json* steps = member(step, "decoders");
    if (!steps || !steps->is_array()) fail(file, where + ".decoders is not an array");
    for (size_t i = 0; i < steps->size(); ++i) {
      read_decoder_step((*steps)[i], file, where + ".decoders[" + std::to_string(i) + "]");
    }
    return;
  }
  if (type == "Replace") {
    const Json* pattern = member(step, "pattern");
    const auto literal = pattern ? read_optional_string(*pattern, "String", file, where + ".pattern") : std::nullopt;
    if (!literal || literal->empty()) {
      fail(file, where + ".pattern is " + (pattern ? shown(*pattern) : "missing") +
                     "; only a non-empty {\"String\": ...} pattern is supported");
    }
    const auto content = read_optional_string(step, "content", file, where);
    if (!content) fail(file, where + " has no \"content\"");
    decoded = {DecoderStep::Kind::replace, *literal, *content};
  } else if (type == "ByteFallback") {
    decoded.kind = DecoderStep::Kind::byte_fallback;
  } else if (type == "Fuse") {
    decoded.kind = DecoderStep::Kind::fuse;
  } else if (type == "Strip") {
    const auto content = read_optional_string(step, "content", file, where);
    if (!content || content->empty() || scan_utf8(*content, 0).length != content->size()) {
      fail(file, where + ".content is " + (content ? shown(*content) : "missing") + ", not one character");
    }
    decoded = {DecoderStep::Kind::strip, "", *content, read_count(step, "start", 0, file, where),
               read_count(step, "stop", 0, file, where)};
  } else if (type == "Metaspace") {
    decoded.kind = DecoderStep::Kind::metaspace;
    decoded.metaspace = read_metaspace(step, file, where);
  } else if (type == "ByteLevel") {
    fail(file, where + ".type is \"ByteLevel\", which decodes byte-level BPE; this tokenizer's pre_tokenizer "
                       "is not ByteLevel");
  } else {
    fail(file, where + ".type is " + shown(type) +
                   "; SentencePiece-style BPE supports Replace, ByteFallback, Fuse, Strip and Metaspace decoders");
  }
  decoder_steps.push_back(std::move(decoded));
}

void BpeTokenizer::Model::read_decoder(const Json* decoder, const fs::path& file) {
  has_decoder = decoder && !decoder->is_null();
  if (!has_decoder) return;  // byte-level decoding is the only sensible one without a decoder
  if (symbols == Symbols::bytes) {
    const std::string type = type_of(*decoder, file, "decoder");
    if (type != "ByteLevel") fail(file, "decoder.type is " + shown(type) + "; a ByteLevel pre-tokenizer needs a ByteLevel decoder");
    return;
  }
  read_decoder_step(*decoder, file, "decoder");
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
  if (!normalizer_steps.empty()) {
    normalizer = [steps = normalizer_steps](std::string_view text, std::string& out) { normalize(steps, text, out); };
  }
  added.prepare(normalizer);

  const int32_t largest = largest_checked_id(vocab, added, file);
  token_of_id.assign(static_cast<size_t>(largest) + 1, std::nullopt);
  for (const auto& [token, id] : vocab) token_of_id[id] = token;
  for (const auto& [id, token] : added.by_id()) token_of_id[id] = token.content;  // added tokens win
  if (symbols == Symbols::bytes) {
    bytes_of_id.assign(token_of_id.size(), std::string());
    for (size_t id = 0; id < token_of_id.size(); ++id) {
      if (token_of_id[id]) bytes_of_id[id] = alphabet.decode(*token_of_id[id]);
    }
  }

  special_template = read_post_processor(post_processor, file, static_cast<int32_t>(token_of_id.size()));
  const TokenLookup lookup = [this](std::string_view token) -> std::optional<int32_t> {
    if (const auto id = added.find(token)) return id;
    if (const auto it = vocab.find(token); it != vocab.end()) return it->second;
    return std::nullopt;
  };
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
  if (const Json* normalizer = member(root, "normalizer")) model->read_normalizer(*normalizer, file, "normalizer");
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
    std::string& text = storage.emplace_back();
    replace_all(piece.text, " ", metaspace->replacement, text);
    const bool prepend = metaspace->prepend_scheme == PrependScheme::always ||
                         (metaspace->prepend_scheme == PrependScheme::first && piece.at_text_start);
    if (prepend && !text.starts_with(metaspace->replacement)) text.insert(0, metaspace->replacement);
    if (!metaspace->split) {
      words.push_back(text);
      return;
    }
    // Each replacement character starts a new word.
    const std::string_view view = text;
    size_t start = 0;
    for (size_t found = view.find(metaspace->replacement, 1); found != std::string_view::npos;
         found = view.find(metaspace->replacement, found + 1)) {
      words.push_back(view.substr(start, found - start));
      start = found;
    }
    words.push_back(view.substr(start));
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

std::string BpeTokenizer::Model::decode_tokens(std::vector<std::string> tokens) const {
  std::string text;
  if (!has_decoder) {
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  for (const DecoderStep& step : decoder_steps) run_decoder_step(step, tokens);
  for (const std::string& token : tokens) text += token;
  return text;
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
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  std::deque<std::string> storage;
  std::vector<TextPiece> pieces;
  model_->added.split(text, model_->normalizer, storage, pieces);
  std::vector<std::string_view> words;
  for (const TextPiece& piece : pieces) {
    if (piece.added_id) {
      ids.push_back(*piece.added_id);
      continue;
    }
    words.clear();
    model_->pre_tokenize(piece, storage, words);
    for (std::string_view word : words) model_->encode_word(word, ids);
  }
  return ids;
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
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (!known(id)) continue;
    const std::string* added = model.added.decoded_form(id);
    tokens.push_back(added ? *added : *model.token_of_id[id]);
  }
  return model.decode_tokens(std::move(tokens));
}

int32_t BpeTokenizer::vocab_size() const { return static_cast<int32_t>(model_->token_of_id.size()); }

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (const auto id = model_->added.find(token)) return id;
  if (const auto it = model_->vocab.find(token); it != model_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= model_->token_of_id.size()) return std::nullopt;
  return model_->token_of_id[id];
}

const SpecialTokenIds& BpeTokenizer::special_ids() const { return model_->special_ids; }

const SpecialTokenTemplate& BpeTokenizer::special_template() const { return model_->special_template; }

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
