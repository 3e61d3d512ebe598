#include "data/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace ftrain::data {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

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

[[noreturn]] void fail(const fs::path& file, const std::string& problem) {
  throw std::runtime_error(file.string() + ": " + problem);
}

// A JSON value or text quoted for an error message, invalid UTF-8 replaced.
std::string shown(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}
std::string shown(std::string_view text) { return shown(Json(std::string(text))); }
std::string shown(const std::string& text) { return shown(Json(text)); }

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot be opened: ") + std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail(path, "read failed");
  return std::move(content).str();
}

Json read_json(const fs::path& path) {
  std::string text = read_file(path);
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    fail(path, std::string("is not valid JSON: ") + e.what());
  }
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

// ---- UTF-8 ----

// The well-formed sequence starting at text[pos] (Unicode's table 3-7: no overlong forms,
// surrogates or values past U+10FFFF): its length, or, when ill-formed, the length of the
// longest prefix of a well-formed sequence found there (at least 1), which is the unit
// one U+FFFD replaces.
struct Utf8Unit {
  size_t length;
  bool valid;
};

Utf8Unit scan_utf8(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return {1, true};
  size_t continuation_count = 0;
  unsigned char low = 0x80, high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    continuation_count = 1;
  } else if (lead == 0xE0) {
    continuation_count = 2, low = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    continuation_count = 2;
  } else if (lead == 0xED) {
    continuation_count = 2, high = 0x9F;
  } else if (lead == 0xF0) {
    continuation_count = 3, low = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    continuation_count = 3;
  } else if (lead == 0xF4) {
    continuation_count = 3, high = 0x8F;
  } else {
    return {1, false};
  }
  size_t end = pos + 1;
  for (size_t i = 0; i < continuation_count; ++i, ++end) {
    if (end >= text.size()) return {end - pos, false};
    const auto byte = static_cast<unsigned char>(text[end]);
    if (byte < low || byte > high) return {end - pos, false};
    low = 0x80, high = 0xBF;
  }
  return {end - pos, true};
}

char32_t decode_utf8(std::string_view unit) {
  const auto lead = static_cast<unsigned char>(unit[0]);
  if (unit.size() == 1) return lead;
  char32_t code = lead & (0x7F >> unit.size());
  for (size_t i = 1; i < unit.size(); ++i) code = (code << 6) | (static_cast<unsigned char>(unit[i]) & 0x3F);
  return code;
}

void append_utf8(std::string& out, char32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

std::string replace_invalid_utf8(std::string_view bytes) {
  std::string text;
  text.reserve(bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Unit unit = scan_utf8(bytes, pos);
    if (unit.valid) {
      text.append(bytes.substr(pos, unit.length));
    } else {
      text += "\xEF\xBF\xBD";
    }
    pos += unit.length;
  }
  return text;
}

// The code point of the character that starts at pos, or nullopt for an invalid byte.
std::optional<char32_t> char_at(std::string_view text, size_t pos) {
  const Utf8Unit unit = scan_utf8(text, pos);
  if (!unit.valid) return std::nullopt;
  return decode_utf8(text.substr(pos, unit.length));
}

// The start of the character that ends at end (> 0); an invalid byte counts as one.
size_t previous_char_start(std::string_view text, size_t end) {
  const auto is_continuation = [&](size_t pos) { return (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80; };
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && is_continuation(start)) --start;
  const Utf8Unit unit = scan_utf8(text, start);
  return unit.valid && start + unit.length == end ? start : end - 1;
}

// Unicode's White_Space property, which added tokens' lstrip/rstrip strip.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
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

  // Whether the pattern matches at the very start of text (compile with PCRE2_ANCHORED).
  bool matches_start(std::string_view text) const {
    MatchData match_data(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    if (!match_data) throw std::bad_alloc();
    const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0,
                               match_data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) throw_match_error(rc);
    return true;
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

// Rust's char::is_alphanumeric, which decides an added token's single_word boundaries.
bool is_alphanumeric(char32_t c) {
  static const Regex alphanumeric(R"([\p{Alphabetic}\p{N}])", "BpeTokenizer", "is_alphanumeric", PCRE2_ANCHORED);
  std::string utf8;
  append_utf8(utf8, c);
  return alphanumeric.matches_start(utf8);
}

// ---- added tokens ----

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false;  // only where no letter or digit touches it
  bool lstrip = false;       // takes the whitespace before it
  bool rstrip = false;       // takes the whitespace after it
};

struct Segment {
  std::string_view text;
  std::optional<int32_t> added_id;  // set: text is this added token
};

// Finds added tokens the way Hugging Face does: leftmost match first, the longest token
// there, scanning on after it; a single_word candidate that touches a word is passed over.
class AddedTokenMatcher {
 public:
  void add(AddedToken token) {
    auto& candidates = by_first_byte_[static_cast<unsigned char>(token.content[0])];
    candidates.push_back(std::move(token));
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    empty_ = false;
  }

  bool empty() const { return empty_; }

  void split(std::string_view text, std::vector<Segment>& segments) const {
    size_t plain_start = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const AddedToken* token = longest_at(text, pos);
      if (!token) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t end = pos + token->content.size();
      pos = end;
      if (token->single_word && (touches_word_before(text, start) || touches_word_after(text, end))) continue;
      if (token->lstrip) {
        // Whitespace already taken by the previous token stays with it.
        while (start > plain_start) {
          const size_t before = previous_char_start(text, start);
          const auto c = char_at(text, before);
          if (!c || !is_white_space(*c)) break;
          start = before;
        }
      }
      if (token->rstrip) {
        while (end < text.size()) {
          const auto c = char_at(text, end);
          if (!c || !is_white_space(*c)) break;
          end += scan_utf8(text, end).length;
        }
        pos = end;
      }
      if (start > plain_start) segments.push_back({text.substr(plain_start, start - plain_start), std::nullopt});
      segments.push_back({text.substr(start, end - start), token->id});
      plain_start = end;
    }
    if (plain_start < text.size()) segments.push_back({text.substr(plain_start), std::nullopt});
  }

 private:
  const AddedToken* longest_at(std::string_view text, size_t pos) const {
    for (const AddedToken& token : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos).starts_with(token.content)) return &token;
    }
    return nullptr;
  }

  static bool touches_word_before(std::string_view text, size_t start) {
    if (start == 0) return false;
    const auto c = char_at(text, previous_char_start(text, start));
    return c && is_alphanumeric(*c);
  }

  static bool touches_word_after(std::string_view text, size_t end) {
    if (end == text.size()) return false;
    const auto c = char_at(text, end);
    return c && is_alphanumeric(*c);
  }

  std::array<std::vector<AddedToken>, 256> by_first_byte_;
  bool empty_ = true;
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

// ---- reading the configuration ----

const Json* member(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

bool read_bool(const Json& object, const char* key, bool fallback, const fs::path& file, const std::string& where) {
  const Json* value = member(object, key);
  if (!value || value->is_null()) return fallback;
  if (!value->is_boolean()) fail(file, where + "." + key + " is " + shown(*value) + ", not true or false");
  return value->get<bool>();
}

// A string member that may be absent or null.
std::optional<std::string> read_optional_string(const Json& object, const char* key, const fs::path& file,
                                                const std::string& where) {
  const Json* value = member(object, key);
  if (!value || value->is_null()) return std::nullopt;
  if (!value->is_string()) fail(file, where + "." + key + " is " + shown(*value) + ", not a string");
  return value->get<std::string>();
}

std::string type_of(const Json& object, const fs::path& file, const std::string& where) {
  if (!object.is_object()) fail(file, where + " is " + shown(object) + ", not an object");
  const auto type = read_optional_string(object, "type", file, where);
  if (!type) fail(file, where + " has no \"type\"");
  return *type;
}

int32_t read_id(const Json& value, const fs::path& file, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX) {
    fail(file, where + " is " + shown(value) + ", not an id (an integer from 0 to 2^31-1)");
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

StringMap<int32_t> read_vocab(const Json& vocab, const fs::path& file, const std::string& where) {
  if (!vocab.is_object()) fail(file, where + " is not an object of token: id");
  StringMap<int32_t> ids;
  std::unordered_map<int32_t, std::string> tokens;
  for (const auto& [token, id_value] : vocab.items()) {
    const std::string key = where.empty() ? shown(token) : where + "[" + shown(token) + "]";
    const int32_t id = read_id(id_value, file, key);
    const auto [other, inserted] = tokens.try_emplace(id, token);
    if (!inserted) fail(file, key + ": id " + std::to_string(id) + " is also given to " + shown(other->second));
    ids.emplace(token, id);
  }
  return ids;
}

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

struct BpeTokenizer::Model {
  struct MergeRule {
    int32_t rank;
    int32_t merged_id;
  };

  StringMap<int32_t> vocab;  // the BPE model's tokens
  std::unordered_map<uint64_t, MergeRule> merges;
  std::array<int32_t, 256> byte_ids{};  // id of each byte's character, -1 if not in vocab
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;  // a piece that is itself a token skips merging

  StringMap<int32_t> added_ids;
  AddedTokenMatcher raw_added;         // matched on the text as given
  AddedTokenMatcher normalized_added;  // matched after normalization, i.e. in what is left

  std::vector<Regex> splits;  // Split pre-tokenizers, in order, before ByteLevel
  bool add_prefix_space = false;
  std::optional<Regex> byte_level_split;

  std::vector<std::optional<std::string>> token_of_id;
  std::vector<std::string> bytes_of_id;

  mutable WordCache cache;

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  static std::shared_ptr<Model> from_tokenizer_json(const fs::path& file);
  static std::shared_ptr<Model> from_vocab_and_merges(const fs::path& vocab_file, const fs::path& merges_file);

  void set_merges(const std::vector<MergeEntry>& entries, const fs::path& file);
  void read_model(const Json& model, const fs::path& file);
  void read_pre_tokenizer(const Json& pre_tokenizer, const fs::path& file);
  void read_byte_level(const Json& byte_level, const fs::path& file, const std::string& where);
  void read_split(const Json& split, const fs::path& file, const std::string& where);
  void add_token(AddedToken token, bool normalized);
  void index_ids();

  void split_added(std::string_view text, std::vector<Segment>& segments) const;
  void pre_tokenize(std::string_view text, std::deque<std::string>& storage,
                    std::vector<std::string_view>& pieces) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  void merge_piece(std::string_view piece, std::vector<int32_t>& ids) const;
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
  if (read_bool(model, "byte_fallback", false, file, "model")) {
    fail(file, "model.byte_fallback is true; byte fallback is not supported");
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
  if (pre_tokenizer.is_null()) fail(file, "pre_tokenizer is null; byte-level BPE needs a ByteLevel pre-tokenizer");
  const std::string type = type_of(pre_tokenizer, file, where);
  if (type == "ByteLevel") {
    read_byte_level(pre_tokenizer, file, where);
    return;
  }
  if (type != "Sequence") {
    fail(file, where + ".type is " + shown(type) + "; only ByteLevel, alone or after Split steps, is supported");
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

// Ids as Hugging Face gives them: a token the model already has keeps the model's id;
// a new one takes the next id after the vocabulary and the added tokens so far, whatever
// id the file wrote beside it.
void BpeTokenizer::Model::add_token(AddedToken token, bool normalized) {
  if (token.content.empty() || added_ids.contains(token.content)) return;
  if (const auto it = vocab.find(token.content); it != vocab.end()) {
    token.id = it->second;
  } else {
    const auto model_size = static_cast<int32_t>(vocab.size());
    int32_t largest = -1;
    for (const auto& entry : added_ids) largest = std::max(largest, entry.second);
    token.id = largest < 0 ? model_size : (largest >= model_size || model_size == 0 ? largest + 1 : model_size);
  }
  added_ids.emplace(token.content, token.id);
  (normalized ? normalized_added : raw_added).add(std::move(token));
}

void BpeTokenizer::Model::index_ids() {
  const ByteAlphabet& alphabet = byte_alphabet();
  for (int byte = 0; byte < 256; ++byte) {
    const auto it = vocab.find(alphabet.char_of_byte[byte]);
    byte_ids[byte] = it == vocab.end() ? -1 : it->second;
  }
  int32_t largest = -1;
  for (const auto& entry : vocab) largest = std::max(largest, entry.second);
  for (const auto& entry : added_ids) largest = std::max(largest, entry.second);
  token_of_id.assign(static_cast<size_t>(largest) + 1, std::nullopt);
  bytes_of_id.assign(static_cast<size_t>(largest) + 1, std::string());
  for (const auto* ids : {&vocab, &added_ids}) {  // added tokens last: their content wins
    for (const auto& [token, id] : *ids) {
      token_of_id[id] = token;
      bytes_of_id[id] = alphabet.decode(token);
    }
  }
}

std::shared_ptr<BpeTokenizer::Model> BpeTokenizer::Model::from_tokenizer_json(const fs::path& file) {
  const Json root = read_json(file);
  if (!root.is_object()) fail(file, "is not a JSON object");
  auto model = std::make_shared<Model>();
  const Json* model_json = member(root, "model");
  if (!model_json) fail(file, "has no \"model\"");
  model->read_model(*model_json, file);

  if (const Json* normalizer = member(root, "normalizer"); normalizer && !normalizer->is_null()) {
    fail(file, "normalizer is " + shown(type_of(*normalizer, file, "normalizer")) + "; normalizers are not supported");
  }
  const Json* pre_tokenizer = member(root, "pre_tokenizer");
  if (!pre_tokenizer) fail(file, "has no \"pre_tokenizer\"");
  model->read_pre_tokenizer(*pre_tokenizer, file);
  // A missing decoder is accepted and decoded byte-level: Hugging Face would join the
  // stored token forms with spaces, which is not text.
  if (const Json* decoder = member(root, "decoder"); decoder && !decoder->is_null()) {
    const std::string type = type_of(*decoder, file, "decoder");
    if (type != "ByteLevel") fail(file, "decoder.type is " + shown(type) + "; only ByteLevel is supported");
  }

  if (const Json* added = member(root, "added_tokens"); added && !added->is_null()) {
    if (!added->is_array()) fail(file, "added_tokens is not an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const Json& entry = (*added)[i];
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      if (!entry.is_object()) fail(file, where + " is not an object");
      const auto content = read_optional_string(entry, "content", file, where);
      if (!content) fail(file, where + " has no \"content\"");
      AddedToken token;
      token.content = *content;
      token.single_word = read_bool(entry, "single_word", false, file, where);
      token.lstrip = read_bool(entry, "lstrip", false, file, where);
      token.rstrip = read_bool(entry, "rstrip", false, file, where);
      const bool special = read_bool(entry, "special", false, file, where);
      model->add_token(std::move(token), read_bool(entry, "normalized", !special, file, where));
    }
  }
  model->index_ids();
  return model;
}

std::shared_ptr<BpeTokenizer::Model> BpeTokenizer::Model::from_vocab_and_merges(const fs::path& vocab_file,
                                                                                const fs::path& merges_file) {
  auto model = std::make_shared<Model>();
  model->vocab = read_vocab(read_json(vocab_file), vocab_file, "");
  model->set_merges(read_merges_txt(merges_file), merges_file);
  model->byte_level_split.emplace(adapt_pattern(kGpt2SplitPattern), vocab_file, "GPT-2 split pattern");
  if (model->vocab.contains(kEndOfText)) model->add_token(AddedToken{std::string(kEndOfText)}, false);
  model->index_ids();
  return model;
}

void BpeTokenizer::Model::split_added(std::string_view text, std::vector<Segment>& segments) const {
  if (raw_added.empty() && normalized_added.empty()) {
    if (!text.empty()) segments.push_back({text, std::nullopt});
    return;
  }
  if (normalized_added.empty()) {
    raw_added.split(text, segments);
    return;
  }
  std::vector<Segment> first_pass;
  raw_added.split(text, first_pass);
  for (const Segment& segment : first_pass) {
    if (segment.added_id) {
      segments.push_back(segment);
    } else {
      normalized_added.split(segment.text, segments);
    }
  }
}

void BpeTokenizer::Model::pre_tokenize(std::string_view text, std::deque<std::string>& storage,
                                       std::vector<std::string_view>& pieces) const {
  if (text.empty()) return;
  std::vector<std::string_view> current{text};
  std::vector<std::string_view> next;
  for (const Regex& split : splits) {
    next.clear();
    for (std::string_view piece : current) split.split(piece, next);
    current.swap(next);
  }
  for (std::string_view piece : current) {
    if (add_prefix_space && !piece.starts_with(' ')) {
      storage.push_back(" ");
      storage.back().append(piece);
      piece = storage.back();
    }
    if (byte_level_split) {
      byte_level_split->split(piece, pieces);
    } else {
      pieces.push_back(piece);
    }
  }
}

void BpeTokenizer::Model::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (ignore_merges) {
    if (const auto it = vocab.find(byte_alphabet().encode(piece)); it != vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (cache.find(piece, ids)) return;
  const size_t first = ids.size();
  merge_piece(piece, ids);
  cache.insert(piece, std::span<const int32_t>(ids).subspan(first));
}

// Merges the piece's byte tokens pair by pair: always the adjacent pair whose merge has the
// lowest rank, the leftmost one among equals. A heap of candidate pairs keeps this
// O(n log n) on long pieces; candidates made stale by an earlier merge are skipped.
void BpeTokenizer::Model::merge_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;  // -1: none
    bool merged_away;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  bool previous_unknown = false;
  for (unsigned char byte : piece) {
    int32_t id = byte_ids[byte];
    if (id < 0) {
      // A byte outside the vocabulary becomes the unknown token (one per run when fused),
      // or is dropped when there is none.
      const bool skip = !unk_id || (fuse_unk && previous_unknown);
      previous_unknown = true;
      if (skip) continue;
      id = *unk_id;
    } else {
      previous_unknown = false;
    }
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1, false});
    if (index > 0) symbols[index - 1].next = index;
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
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const auto it = merges.find(pair_key(symbols[pos].id, symbols[next].id));
    if (it == merges.end()) return;
    heap.push_back({it->second.rank, pos, it->second.merged_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) consider(pos);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.merged_away || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const auto it = merges.find(pair_key(left.id, right.id));
    if (it == merges.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    right.merged_away = true;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& symbol : symbols) {
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
  if (fs::exists(tokenizer_json, error)) return BpeTokenizer(Model::from_tokenizer_json(tokenizer_json));
  const fs::path vocab_json = dir / "vocab.json", merges_txt = dir / "merges.txt";
  const bool has_vocab = fs::exists(vocab_json, error), has_merges = fs::exists(merges_txt, error);
  if (has_vocab && has_merges) return BpeTokenizer(Model::from_vocab_and_merges(vocab_json, merges_txt));
  if (has_vocab) fail(merges_txt, "does not exist (vocab.json needs merges.txt beside it)");
  if (has_merges) fail(vocab_json, "does not exist (merges.txt needs vocab.json beside it)");
  fail(dir, "has neither tokenizer.json nor vocab.json and merges.txt");
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  std::vector<Segment> segments;
  model_->split_added(text, segments);
  std::deque<std::string> storage;
  std::vector<std::string_view> pieces;
  for (const Segment& segment : segments) {
    if (segment.added_id) {
      ids.push_back(*segment.added_id);
      continue;
    }
    pieces.clear();
    model_->pre_tokenize(segment.text, storage, pieces);
    for (std::string_view piece : pieces) model_->encode_piece(piece, ids);
  }
  return ids;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id >= 0 && static_cast<size_t>(id) < model_->bytes_of_id.size()) bytes += model_->bytes_of_id[id];
  }
  return replace_invalid_utf8(bytes);
}

int32_t BpeTokenizer::vocab_size() const { return static_cast<int32_t>(model_->token_of_id.size()); }

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (const auto it = model_->added_ids.find(token); it != model_->added_ids.end()) return it->second;
  if (const auto it = model_->vocab.find(token); it != model_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= model_->token_of_id.size()) return std::nullopt;
  return model_->token_of_id[id];
}

std::optional<int32_t> BpeTokenizer::eos_id() const { return token_to_id(kEndOfText); }

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::deque<std::string> storage;
  std::vector<std::string_view> pieces;
  model_->pre_tokenize(text, storage, pieces);
  return {pieces.begin(), pieces.end()};
}

}  // namespace ftrain::data
