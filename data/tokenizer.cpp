#include "data/tokenizer.h"

#include "data/bpe_tokenizer.h"
#include "data/unigram_tokenizer.h"
#include "data/wordpiece_tokenizer.h"

#include <nlohmann/json.hpp>
#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ftrain::data {

namespace fs = std::filesystem;
using namespace tokenizer_parts;

// ---- the template ----

SpecialTokenTemplate::SpecialTokenTemplate()
    : SpecialTokenTemplate({{Part::Kind::first_text, {}, 0}},
                           {{Part::Kind::first_text, {}, 0}, {Part::Kind::second_text, {}, 1}}) {}

SpecialTokenTemplate::SpecialTokenTemplate(std::vector<Part> single, std::vector<Part> pair)
    : single_(std::move(single)), pair_(std::move(pair)) {}

size_t SpecialTokenTemplate::added_count(bool pair) const {
  size_t count = 0;
  for (const Part& part : pair ? pair_ : single_) count += part.ids.size();
  return count;
}

Encoding SpecialTokenTemplate::apply(std::span<const int32_t> first, const std::vector<int32_t>* second,
                                     bool add_special_tokens) const {
  Encoding encoding;
  const auto append = [&](std::span<const int32_t> ids, int32_t type_id) {
    encoding.ids.insert(encoding.ids.end(), ids.begin(), ids.end());
    encoding.token_type_ids.insert(encoding.token_type_ids.end(), ids.size(), type_id);
  };
  for (const Part& part : second ? pair_ : single_) {
    switch (part.kind) {
      case Part::Kind::first_text:
        append(first, part.type_id);
        break;
      case Part::Kind::second_text:
        append(*second, part.type_id);
        break;
      case Part::Kind::special:
        if (add_special_tokens) append(part.ids, part.type_id);
        break;
    }
  }
  return encoding;
}

void truncate_longest_first(std::vector<int32_t>& first, std::vector<int32_t>* second, size_t max_length) {
  if (!second) {
    if (first.size() > max_length) first.resize(max_length);
    return;
  }
  if (first.size() + second->size() <= max_length) return;
  size_t shorter = std::min(first.size(), second->size());
  size_t longer = shorter > max_length ? shorter : std::max(shorter, max_length - shorter);
  if (shorter + longer > max_length) {  // cutting the longer one alone is not enough
    shorter = max_length / 2;
    longer = shorter + max_length % 2;
  }
  const bool first_is_longer = first.size() > second->size();
  first.resize(std::min(first.size(), first_is_longer ? longer : shorter));
  second->resize(std::min(second->size(), first_is_longer ? shorter : longer));
}

// ---- the common interface ----

std::string lowercase(std::string_view text) {
  using namespace tokenizer_parts;
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Unit unit = scan_utf8(text, pos);
    const char32_t c = unit.valid ? decode_utf8(text.substr(pos, unit.length)) : U'\uFFFD';
    pos += unit.length;
    if (c < 0x80) {
      out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
    } else if (c == 0x130) {
      append_utf8(out, U'i');
      append_utf8(out, 0x307);
    } else {
      append_utf8(out, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
    }
  }
  return out;
}

std::string collapse_whitespace(std::string_view text) {
  using namespace tokenizer_parts;
  std::string out;
  bool pending = false;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Unit unit = scan_utf8(text, pos);
    const char32_t c = unit.valid ? decode_utf8(text.substr(pos, unit.length)) : U'\uFFFD';
    if (is_white_space(c) || (c >= 0x1C && c <= 0x1F)) {
      pending = !out.empty();
    } else {
      if (pending) out.push_back(' ');
      pending = false;
      out.append(text.substr(pos, unit.length));
    }
    pos += unit.length;
  }
  return out;
}

std::vector<std::size_t> character_starts(std::string_view text) {
  std::vector<std::size_t> starts;
  for (size_t pos = 0; pos < text.size(); pos += tokenizer_parts::scan_utf8(text, pos).length) starts.push_back(pos);
  starts.push_back(text.size());
  return starts;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(table().token_of_id.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const { return table().find(token); }

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const auto& token_of_id = table().token_of_id;
  if (id < 0 || static_cast<size_t>(id) >= token_of_id.size()) return std::nullopt;
  return token_of_id[id];
}

const SpecialTokenIds& Tokenizer::special_ids() const { return table().special_ids; }

const SpecialTokenTemplate& Tokenizer::special_template() const { return table().special_template; }

std::vector<int32_t> Tokenizer::encode_with_offsets(std::string_view, std::vector<CharSpan>&) const {
  throw std::runtime_error(std::string(kind()) + " tokenizers do not report character offsets");
}

Encoding Tokenizer::encode_with_specials(std::string_view text, const EncodeOptions& options) const {
  return encode_with_template(text, std::nullopt, options);
}

Encoding Tokenizer::encode_with_specials(std::string_view text, std::string_view pair,
                                         const EncodeOptions& options) const {
  return encode_with_template(text, pair, options);
}

Encoding Tokenizer::encode_with_template(std::string_view text, const std::optional<std::string_view>& pair,
                                         const EncodeOptions& options) const {
  const SpecialTokenTemplate& specials = special_template();
  std::vector<int32_t> first = encode(text);
  std::optional<std::vector<int32_t>> second;
  if (pair) second = encode(*pair);
  if (options.max_length) {
    const size_t added = options.add_special_tokens ? specials.added_count(pair.has_value()) : 0;
    if (*options.max_length < added) {
      throw std::invalid_argument("max_length " + std::to_string(*options.max_length) + " cannot hold the " +
                                  std::to_string(added) + " special tokens the template adds");
    }
    truncate_longest_first(first, second ? &*second : nullptr, *options.max_length - added);
  }
  return specials.apply(first, second ? &*second : nullptr, options.add_special_tokens);
}

// ---- choosing the tokenizer ----

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& model_dir) {
  std::error_code error;
  if (!fs::is_directory(model_dir, error)) {
    fail(model_dir, fs::exists(model_dir, error) ? "is not a directory" : "does not exist (expected a model directory)");
  }
  const fs::path tokenizer_json = model_dir / "tokenizer.json";
  if (fs::exists(tokenizer_json, error)) {
    const Json document = read_json(tokenizer_json);
    if (!document.is_object()) fail(tokenizer_json, "is not a JSON object");
    const Json* model = member(document, "model");
    if (!model || !model->is_object()) fail(tokenizer_json, "has no \"model\" object");
    std::optional<std::string> type = read_optional_string(*model, "type", tokenizer_json, "model");
    if (!type) {
      // Files written before models carried their type: the fields tell them apart.
      if (member(*model, "merges")) {
        type = "BPE";
      } else if (member(*model, "max_input_chars_per_word")) {
        type = "WordPiece";
      } else {
        fail(tokenizer_json, "model has no \"type\" and is neither BPE (merges) nor WordPiece");
      }
    }
    if (*type == "BPE") return std::make_unique<BpeTokenizer>(BpeTokenizer::from_tokenizer_json(tokenizer_json, document));
    if (*type == "WordPiece") {
      return std::make_unique<WordPieceTokenizer>(WordPieceTokenizer::from_tokenizer_json(tokenizer_json, document));
    }
    if (*type == "Unigram") {
      return std::make_unique<UnigramTokenizer>(UnigramTokenizer::from_tokenizer_json(tokenizer_json, document));
    }
    fail(tokenizer_json, "model.type is " + shown(*type) +
                             "; supported are \"BPE\" (byte-level or SentencePiece-style), \"Unigram\" and \"WordPiece\"");
  }
  if (fs::exists(model_dir / "vocab.txt", error)) {
    return std::make_unique<WordPieceTokenizer>(WordPieceTokenizer::from_directory(model_dir));
  }
  if (fs::exists(model_dir / "vocab.json", error) || fs::exists(model_dir / "merges.txt", error)) {
    return std::make_unique<BpeTokenizer>(BpeTokenizer::from_directory(model_dir));
  }
  if (fs::exists(model_dir / "tokenizer.model", error)) {
    fail(model_dir / "tokenizer.model",
         "is a SentencePiece model, which is read only through tokenizer.json; write one with "
         "transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)");
  }
  fail(model_dir, "has no tokenizer: none of tokenizer.json, vocab.txt, or vocab.json and merges.txt");
}

namespace tokenizer_parts {

// ---- configuration files ----

void fail(const fs::path& file, const std::string& problem) {
  throw std::runtime_error(file.string() + ": " + problem);
}

void check_id_within_table(int64_t id, size_t tokens, const fs::path& file, const std::string& where) {
  const int64_t limit = 2 * static_cast<int64_t>(tokens) + 65536;
  if (id >= limit)
    fail(file, where + " has id " + std::to_string(id) + ", far beyond the " + std::to_string(tokens) +
                   " tokens the file defines (ids are read into a table, so they must stay below " +
                   std::to_string(limit) + ")");
}

std::string shown(const Json& value) { return value.dump(-1, ' ', false, Json::error_handler_t::replace); }
std::string shown(std::string_view text) { return shown(Json(std::string(text))); }
std::string shown(const std::string& text) { return shown(Json(text)); }
std::string shown(const char* text) { return shown(std::string_view(text)); }

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot be opened: ") + std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail(path, "read failed");
  return std::move(content).str();
}

Json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail(path, std::string("is not valid JSON: ") + e.what());
  }
}

const Json* member(const Json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

bool read_bool(const Json& object, const char* key, bool fallback, const fs::path& file, const std::string& where) {
  const Json* value = member(object, key);
  if (!value || value->is_null()) return fallback;
  if (!value->is_boolean()) fail(file, where + "." + key + " is " + shown(*value) + ", not true or false");
  return value->get<bool>();
}

std::optional<std::string> read_optional_string(const Json& object, const char* key, const fs::path& file,
                                                const std::string& where) {
  const Json* value = member(object, key);
  if (!value || value->is_null()) return std::nullopt;
  if (!value->is_string()) fail(file, where + "." + key + " is " + shown(*value) + ", not a string");
  return value->get<std::string>();
}

uint64_t read_count(const Json& object, const char* key, uint64_t fallback, const fs::path& file,
                    const std::string& where) {
  const Json* value = member(object, key);
  if (!value || value->is_null()) return fallback;
  if (!value->is_number_unsigned()) fail(file, where + "." + key + " is " + shown(*value) + ", not a count (0 or more)");
  return value->get<uint64_t>();
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

// ---- UTF-8 (Unicode's table 3-7: no overlong forms, surrogates or values past U+10FFFF) ----

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

std::optional<char32_t> char_at(std::string_view text, size_t pos) {
  const Utf8Unit unit = scan_utf8(text, pos);
  if (!unit.valid) return std::nullopt;
  return decode_utf8(text.substr(pos, unit.length));
}

size_t previous_char_start(std::string_view text, size_t end) {
  const auto is_continuation = [&](size_t pos) { return (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80; };
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && is_continuation(start)) --start;
  const Utf8Unit unit = scan_utf8(text, start);
  return unit.valid && start + unit.length == end ? start : end - 1;
}

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool is_alphanumeric(char32_t c) {
  const auto code = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(code, UCHAR_ALPHABETIC)) return true;
  const auto category = u_charType(code);
  return category == U_DECIMAL_DIGIT_NUMBER || category == U_LETTER_NUMBER || category == U_OTHER_NUMBER;
}

// ---- added tokens ----

// Finds added tokens the way Hugging Face does: leftmost match first, the longest token
// there, scanning on after it; a single_word candidate that touches a word is passed over.
class AddedVocabulary::Matcher {
 public:
  struct Candidate {
    std::string pattern;
    int32_t id;
    const AddedToken* token;
  };

  void add(Candidate candidate) {
    auto& candidates = by_first_byte_[static_cast<unsigned char>(candidate.pattern[0])];
    candidates.push_back(std::move(candidate));
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) { return a.pattern.size() > b.pattern.size(); });
    empty_ = false;
  }

  // Appends the pieces of text (offset: where text starts in the encoded text).
  void split(std::string_view text, bool text_at_start, std::vector<TextPiece>& pieces) const {
    const auto plain = [&](size_t start, size_t end) {
      if (end > start) pieces.push_back({text.substr(start, end - start), std::nullopt, text_at_start && start == 0});
    };
    if (empty_) {
      plain(0, text.size());
      return;
    }
    size_t plain_start = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const Candidate* candidate = longest_at(text, pos);
      if (!candidate) {
        ++pos;
        continue;
      }
      const AddedToken& token = *candidate->token;
      size_t start = pos;
      size_t end = pos + candidate->pattern.size();
      pos = end;
      if (token.single_word && (touches_word_before(text, start) || touches_word_after(text, end))) continue;
      if (token.lstrip) {
        // Whitespace already taken by the previous token stays with it.
        while (start > plain_start) {
          const size_t before = previous_char_start(text, start);
          const auto c = char_at(text, before);
          if (!c || !is_white_space(*c)) break;
          start = before;
        }
      }
      if (token.rstrip) {
        while (end < text.size()) {
          const auto c = char_at(text, end);
          if (!c || !is_white_space(*c)) break;
          end += scan_utf8(text, end).length;
        }
        pos = end;
      }
      plain(plain_start, start);
      pieces.push_back({text.substr(start, end - start), candidate->id, text_at_start && start == 0});
      plain_start = end;
    }
    plain(plain_start, text.size());
  }

 private:
  const Candidate* longest_at(std::string_view text, size_t pos) const {
    for (const Candidate& candidate : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos).starts_with(candidate.pattern)) return &candidate;
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

  std::array<std::vector<Candidate>, 256> by_first_byte_;
  bool empty_ = true;
};

AddedVocabulary::AddedVocabulary() : raw_(std::make_unique<Matcher>()), normalized_(std::make_unique<Matcher>()) {}
AddedVocabulary::~AddedVocabulary() = default;
AddedVocabulary::AddedVocabulary(AddedVocabulary&&) noexcept = default;
AddedVocabulary& AddedVocabulary::operator=(AddedVocabulary&&) noexcept = default;

void AddedVocabulary::add(AddedToken token, const StringMap<int32_t>& model_vocab) {
  if (token.content.empty() || ids_.contains(token.content)) return;
  int32_t id = 0;
  if (const auto it = model_vocab.find(token.content); it != model_vocab.end()) {
    id = it->second;
  } else {
    const auto model_size = static_cast<int32_t>(model_vocab.size());
    const int32_t largest = largest_id();
    id = largest < 0 ? model_size : (largest >= model_size || model_size == 0 ? largest + 1 : model_size);
  }
  ids_.emplace(token.content, id);
  tokens_.insert_or_assign(id, std::move(token));
}

void AddedVocabulary::read(const Json& added_tokens, const fs::path& file, const StringMap<int32_t>& model_vocab) {
  if (added_tokens.is_null()) return;
  if (!added_tokens.is_array()) fail(file, "added_tokens is not an array");
  for (size_t i = 0; i < added_tokens.size(); ++i) {
    const Json& entry = added_tokens[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!entry.is_object()) fail(file, where + " is not an object");
    const auto content = read_optional_string(entry, "content", file, where);
    if (!content) fail(file, where + " has no \"content\"");
    AddedToken token;
    token.content = *content;
    token.single_word = read_bool(entry, "single_word", false, file, where);
    token.lstrip = read_bool(entry, "lstrip", false, file, where);
    token.rstrip = read_bool(entry, "rstrip", false, file, where);
    token.special = read_bool(entry, "special", false, file, where);
    token.normalized = read_bool(entry, "normalized", !token.special, file, where);
    add(std::move(token), model_vocab);
  }
}

void AddedVocabulary::prepare(const Normalizer& normalizer) {
  for (const auto& [id, token] : tokens_) {
    if (!token.normalized) {
      raw_->add({token.content, id, &token});
      continue;
    }
    std::string pattern = token.content;
    if (normalizer) {
      pattern.clear();
      normalizer(token.content, pattern);
      if (pattern != token.content) normalized_forms_.emplace(id, pattern);
    }
    if (!pattern.empty()) normalized_->add({std::move(pattern), id, &token});
  }
}

void AddedVocabulary::split(std::string_view text, const Normalizer& normalizer, std::deque<std::string>& storage,
                            std::vector<TextPiece>& pieces) const {
  std::vector<TextPiece> raw_pieces;
  raw_->split(text, true, raw_pieces);
  for (const TextPiece& piece : raw_pieces) {
    if (piece.added_id) {
      pieces.push_back(piece);
      continue;
    }
    std::string_view normalized = piece.text;
    if (normalizer) {
      storage.emplace_back();
      normalizer(piece.text, storage.back());
      normalized = storage.back();
    }
    normalized_->split(normalized, piece.at_text_start, pieces);
  }
}

void AddedVocabulary::split_aligned(std::string_view text, const AlignedNormalizer& normalizer,
                                    std::deque<std::string>& storage, std::vector<TextPiece>& pieces,
                                    std::vector<std::vector<int64_t>>& origins) const {
  std::vector<int64_t> char_of_byte(text.size());  // character index of each byte of text
  for (size_t pos = 0, index = 0; pos < text.size(); ++index) {
    const size_t length = scan_utf8(text, pos).length;
    std::fill_n(char_of_byte.begin() + static_cast<std::ptrdiff_t>(pos), length, static_cast<int64_t>(index));
    pos += length;
  }
  const auto origins_in_text = [&](std::string_view piece) {
    const auto start = char_of_byte.begin() + (piece.data() - text.data());
    return std::vector<int64_t>(start, start + static_cast<std::ptrdiff_t>(piece.size()));
  };
  std::vector<TextPiece> raw_pieces;
  raw_->split(text, true, raw_pieces);
  for (const TextPiece& piece : raw_pieces) {
    if (piece.added_id || !normalizer) {
      const size_t first = pieces.size();
      if (piece.added_id) pieces.push_back(piece);
      else normalized_->split(piece.text, piece.at_text_start, pieces);
      for (size_t i = first; i < pieces.size(); ++i) origins.push_back(origins_in_text(pieces[i].text));
      continue;
    }
    storage.emplace_back();
    std::vector<int64_t> origin;  // per byte of the normalized stretch
    normalizer(piece.text, storage.back(), origin);
    const int64_t first_char = char_of_byte[static_cast<size_t>(piece.text.data() - text.data())];
    const std::string_view normalized = storage.back();
    const size_t first = pieces.size();
    normalized_->split(normalized, piece.at_text_start, pieces);
    for (size_t i = first; i < pieces.size(); ++i) {
      const auto start = origin.begin() + (pieces[i].text.data() - normalized.data());
      std::vector<int64_t> piece_origin(start, start + static_cast<std::ptrdiff_t>(pieces[i].text.size()));
      for (int64_t& character : piece_origin) character += first_char;
      origins.push_back(std::move(piece_origin));
    }
  }
}

std::optional<int32_t> AddedVocabulary::find(std::string_view content) const {
  const auto it = ids_.find(content);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::token(int32_t id) const {
  const auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second;
}

const std::string* AddedVocabulary::decoded_form(int32_t id) const {
  if (const auto it = normalized_forms_.find(id); it != normalized_forms_.end()) return &it->second;
  const AddedToken* added = token(id);
  return added ? &added->content : nullptr;
}

bool AddedVocabulary::is_special(int32_t id) const {
  const AddedToken* added = token(id);
  return added && added->special;
}

int32_t AddedVocabulary::largest_id() const { return tokens_.empty() ? -1 : tokens_.rbegin()->first; }

void TokenTable::index(const AddedVocabulary::Normalizer& normalizer, const fs::path& file) {
  added.prepare(normalizer);
  const size_t tokens = vocab.size() + added.by_id().size();
  int32_t largest = -1;
  for (const auto& [token, id] : vocab) {
    if (id > largest) check_id_within_table(id, tokens, file, "model.vocab[" + shown(token) + "]");
    largest = std::max(largest, id);
  }
  // Added tokens take the model's id or the next ones after it (AddedVocabulary::add).
  largest = std::max(largest, added.largest_id());
  token_of_id.assign(static_cast<size_t>(largest) + 1, std::nullopt);
  for (const auto& [token, id] : vocab) token_of_id[id] = token;
  for (const auto& [id, token] : added.by_id()) token_of_id[id] = token.content;  // added tokens win
}

std::optional<int32_t> TokenTable::find(std::string_view token) const {
  if (const auto id = added.find(token)) return id;
  if (const auto it = vocab.find(token); it != vocab.end()) return it->second;
  return std::nullopt;
}

std::vector<int32_t> TokenTable::encode(std::string_view text, const AddedVocabulary::Normalizer& normalizer,
                                        const WordSplitter& split_words, const WordEncoder& encode_word) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  std::deque<std::string> storage;
  std::vector<TextPiece> pieces;
  added.split(text, normalizer, storage, pieces);
  std::vector<std::string_view> words;
  for (const TextPiece& piece : pieces) {
    if (piece.added_id) {
      ids.push_back(*piece.added_id);
      continue;
    }
    words.clear();
    split_words(piece, storage, words);
    for (std::string_view word : words) encode_word(word, ids);
  }
  return ids;
}

std::vector<std::string> TokenTable::decoded_tokens(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= token_of_id.size() || !token_of_id[id]) continue;
    if (skip_special_tokens && added.is_special(id)) continue;
    const std::string* decoded = added.decoded_form(id);
    tokens.push_back(decoded ? *decoded : *token_of_id[id]);
  }
  return tokens;
}

// ---- post-processors ----

namespace {

using Part = SpecialTokenTemplate::Part;

int32_t read_type_id(const Json& object, const fs::path& file, const std::string& where) {
  const uint64_t type_id = read_count(object, "type_id", 0, file, where);
  if (type_id > INT32_MAX) fail(file, where + ".type_id is too large");
  return static_cast<int32_t>(type_id);
}

// A ["token", id] pair of BertProcessing and RobertaProcessing.
std::vector<int32_t> read_token_pair(const Json& processor, const char* key, const fs::path& file,
                                     const std::string& where, int32_t vocab_size) {
  const Json* pair = member(processor, key);
  if (!pair || !pair->is_array() || pair->size() != 2 || !(*pair)[0].is_string()) {
    fail(file, where + "." + key + " is " + (pair ? shown(*pair) : "missing") + ", not [\"token\", id]");
  }
  const int32_t id = read_id((*pair)[1], file, where + "." + key + "[1]");
  if (id >= vocab_size) fail(file, where + "." + key + "[1] is " + std::to_string(id) + ", past the vocabulary");
  return {id};
}

std::vector<Part> read_template(const Json& processor, const char* key, const fs::path& file, const std::string& where,
                                const std::map<std::string, std::vector<int32_t>>& specials) {
  const Json* parts = member(processor, key);
  const std::string part_where = where + "." + key;
  if (!parts || !parts->is_array()) fail(file, part_where + " is not an array");
  std::vector<Part> result;
  int first_count = 0, second_count = 0;
  for (size_t i = 0; i < parts->size(); ++i) {
    const Json& entry = (*parts)[i];
    const std::string entry_where = part_where + "[" + std::to_string(i) + "]";
    if (const Json* sequence = member(entry, "Sequence")) {
      const auto id = read_optional_string(*sequence, "id", file, entry_where + ".Sequence");
      if (id != "A" && id != "B") fail(file, entry_where + ".Sequence.id is not \"A\" or \"B\"");
      (*id == "A" ? first_count : second_count) += 1;
      result.push_back({*id == "A" ? Part::Kind::first_text : Part::Kind::second_text, {},
                        read_type_id(*sequence, file, entry_where + ".Sequence")});
    } else if (const Json* special = member(entry, "SpecialToken")) {
      const auto id = read_optional_string(*special, "id", file, entry_where + ".SpecialToken");
      if (!id) fail(file, entry_where + ".SpecialToken has no \"id\"");
      const auto found = specials.find(*id);
      if (found == specials.end()) {
        fail(file, entry_where + " names " + shown(*id) + ", which " + where + ".special_tokens does not define");
      }
      result.push_back({Part::Kind::special, found->second, read_type_id(*special, file, entry_where + ".SpecialToken")});
    } else {
      fail(file, entry_where + " is " + shown(entry) + ", neither {\"Sequence\": ...} nor {\"SpecialToken\": ...}");
    }
  }
  const bool pair = std::string_view(key) == "pair";
  if (first_count != 1 || second_count != (pair ? 1 : 0)) {
    fail(file, part_where + (pair ? " must hold $A and $B once each" : " must hold $A once and no $B"));
  }
  return result;
}

SpecialTokenTemplate read_template_processing(const Json& processor, const fs::path& file, const std::string& where,
                                              int32_t vocab_size) {
  std::map<std::string, std::vector<int32_t>> specials;
  if (const Json* table = member(processor, "special_tokens"); table && !table->is_null()) {
    if (!table->is_object()) fail(file, where + ".special_tokens is not an object");
    for (const auto& [name, entry] : table->items()) {
      const std::string entry_where = where + ".special_tokens[" + shown(name) + "]";
      const Json* ids = member(entry, "ids");
      if (!ids || !ids->is_array() || ids->empty()) fail(file, entry_where + ".ids is not a non-empty array");
      std::vector<int32_t> values;
      for (size_t i = 0; i < ids->size(); ++i) {
        const std::string id_where = entry_where + ".ids[" + std::to_string(i) + "]";
        const int32_t id = read_id((*ids)[i], file, id_where);
        if (id >= vocab_size) fail(file, id_where + " is " + std::to_string(id) + ", past the vocabulary");
        values.push_back(id);
      }
      specials.emplace(name, std::move(values));
    }
  }
  return SpecialTokenTemplate(read_template(processor, "single", file, where, specials),
                              read_template(processor, "pair", file, where, specials));
}

// A processor of a kind that adds special tokens, or nullopt for ByteLevel (offsets only).
std::optional<SpecialTokenTemplate> read_one_processor(const Json& processor, const fs::path& file,
                                                       const std::string& where, int32_t vocab_size) {
  const std::string type = type_of(processor, file, where);
  if (type == "ByteLevel") return std::nullopt;
  if (type == "TemplateProcessing") return read_template_processing(processor, file, where, vocab_size);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const std::vector<int32_t> cls = read_token_pair(processor, "cls", file, where, vocab_size);
    const std::vector<int32_t> sep = read_token_pair(processor, "sep", file, where, vocab_size);
    const bool bert = type == "BertProcessing";
    std::vector<Part> single = {{Part::Kind::special, cls, 0}, {Part::Kind::first_text, {}, 0}, {Part::Kind::special, sep, 0}};
    std::vector<Part> pair = single;
    // BERT: [CLS] A [SEP] B [SEP] with B of type 1; RoBERTa: <s> A </s></s> B </s>, all of type 0.
    if (!bert) pair.push_back({Part::Kind::special, sep, 0});
    pair.push_back({Part::Kind::second_text, {}, bert ? 1 : 0});
    pair.push_back({Part::Kind::special, sep, bert ? 1 : 0});
    return SpecialTokenTemplate(std::move(single), std::move(pair));
  }
  fail(file, where + ".type is " + shown(type) +
                 "; supported are TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel and Sequence");
}

}  // namespace

SpecialTokenTemplate read_post_processor(const Json* post_processor, const fs::path& file, int32_t vocab_size) {
  if (!post_processor || post_processor->is_null()) return SpecialTokenTemplate();
  const std::string where = "post_processor";
  if (type_of(*post_processor, file, where) != "Sequence") {
    return read_one_processor(*post_processor, file, where, vocab_size).value_or(SpecialTokenTemplate());
  }
  const Json* steps = member(*post_processor, "processors");
  if (!steps || !steps->is_array()) fail(file, where + ".processors is not an array");
  std::optional<SpecialTokenTemplate> result;
  for (size_t i = 0; i < steps->size(); ++i) {
    const std::string step_where = where + ".processors[" + std::to_string(i) + "]";
    auto step = read_one_processor((*steps)[i], file, step_where, vocab_size);
    if (step && result) fail(file, step_where + " is a second processor that adds special tokens; not supported");
    if (step) result = std::move(step);
  }
  return result.value_or(SpecialTokenTemplate());
}

// ---- special tokens ----

SpecialTokenIds read_special_token_ids(const fs::path& dir, const TokenLookup& lookup, SpecialTokenIds defaults) {
  const fs::path file = dir / "tokenizer_config.json";
  std::error_code error;
  if (!fs::exists(file, error)) return defaults;
  const Json config = read_json(file);
  if (!config.is_object()) fail(file, "is not a JSON object");
  const std::pair<const char*, std::optional<int32_t>*> keys[] = {
      {"bos_token", &defaults.bos}, {"eos_token", &defaults.eos}, {"unk_token", &defaults.unk},
      {"pad_token", &defaults.pad}, {"cls_token", &defaults.cls}, {"sep_token", &defaults.sep},
      {"mask_token", &defaults.mask}};
  for (const auto& [key, id] : keys) {
    const Json* value = member(config, key);
    if (!value) continue;
    if (value->is_null()) {
      id->reset();
      continue;
    }
    const Json* content = value->is_object() ? member(*value, "content") : value;
    if (!content || !content->is_string()) {
      fail(file, std::string(key) + " is " + shown(*value) + ", not a token or {\"content\": token}");
    }
    const std::string token = content->get<std::string>();
    *id = lookup(token);
    if (!*id) fail(file, std::string(key) + " " + shown(token) + " is not a token of the tokenizer");
  }
  return defaults;
}

}  // namespace tokenizer_parts

}  // namespace ftrain::data
