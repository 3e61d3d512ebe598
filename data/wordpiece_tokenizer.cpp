#include "data/wordpiece_tokenizer.h"

#include <nlohmann/json.hpp>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <array>
#include <deque>
#include <stdexcept>

namespace ftrain::data {
namespace {

namespace fs = std::filesystem;
using namespace tokenizer_parts;

// ---- BERT's character classes ----
//
// Hugging Face's BERT normalizer and pre-tokenizer classify characters with the tables of
// Rust crates that stopped at older versions of Unicode: general categories (control,
// punctuation, non-spacing mark) as of Unicode 8.0, canonical decompositions and
// combining classes as of Unicode 9.0. Lower-casing and whitespace follow Rust's own,
// current tables. ICU knows the age of every character, so an older table is ICU's
// restricted to the characters assigned by then, corrected for the few characters whose
// category has changed since.

bool assigned_by(UChar32 c, uint8_t major, uint8_t minor) {
  UVersionInfo age;
  u_charAge(c, age);
  if (age[0] == 0 && age[1] == 0) return false;  // unassigned (to this ICU)
  return age[0] < major || (age[0] == major && age[1] <= minor);
}

// The general category a character had in Unicode 8.0.
int8_t category_in_unicode_8(char32_t c) {
  switch (c) {
    case 0x166D:   // CANADIAN SYLLABICS CHI SIGN, now So
    case 0x111C9:  // SHARADA SANDHI MARK, now Mn
      return U_OTHER_PUNCTUATION;
    case 0x1734:  // HANUNOO SIGN PAMUDPOD, now Mc
      return U_NON_SPACING_MARK;
    case 0x1885:  // MONGOLIAN LETTER ALI GALI BALUDA, now Mn
    case 0x1886:  // MONGOLIAN LETTER ALI GALI THREE BALUDA, now Mn
      return U_OTHER_LETTER;
    case 0xA9BD:  // JAVANESE CONSONANT SIGN KERET, now Mn
      return U_COMBINING_SPACING_MARK;
    default:
      break;
  }
  const auto code = static_cast<UChar32>(c);
  return assigned_by(code, 8, 0) ? u_charType(code) : static_cast<int8_t>(U_UNASSIGNED);
}

// Removed by clean_text: controls, format characters and private use (tab, newline and
// carriage return count as whitespace instead).
bool is_bert_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  if (c < 0x80) return c < 0x20 || c == 0x7F;
  const int8_t category = category_in_unicode_8(c);
  return category == U_CONTROL_CHAR || category == U_FORMAT_CHAR || category == U_PRIVATE_USE_CHAR;
}

// Every ASCII symbol counts as punctuation ("$", "+", "^", "`", ...), beside Unicode's P*.
bool is_bert_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  switch (category_in_unicode_8(c)) {
    case U_CONNECTOR_PUNCTUATION:
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
    case U_OTHER_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

bool is_non_spacing_mark(char32_t c) { return c >= 0x300 && category_in_unicode_8(c) == U_NON_SPACING_MARK; }

// The CJK ideograph blocks BERT puts spaces around (not Hangul, Hiragana or Katakana,
// which write space-separated words). Extension B..F as Hugging Face lists them, which
// leaves out U+2B820..U+2B91F.
bool is_cjk_ideograph(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

const UNormalizer2* nfd_instance() {
  static const UNormalizer2* instance = [] {
    UErrorCode status = U_ZERO_ERROR;
    const UNormalizer2* nfd = unorm2_getNFDInstance(&status);
    if (U_FAILURE(status)) throw std::runtime_error(std::string("ICU has no NFD data: ") + u_errorName(status));
    return nfd;
  }();
  return instance;
}

// Canonical decomposition as of Unicode 9.0: characters assigned later stay whole.
void append_decomposition(char32_t c, std::u32string& out) {
  if (c < 0xC0 || !assigned_by(static_cast<UChar32>(c), 9, 0)) {
    out.push_back(c);
    return;
  }
  std::array<UChar, 32> buffer{};
  UErrorCode status = U_ZERO_ERROR;
  const int32_t length =
      unorm2_getDecomposition(nfd_instance(), static_cast<UChar32>(c), buffer.data(), buffer.size(), &status);
  if (U_FAILURE(status) || length < 0) {
    out.push_back(c);
    return;
  }
  for (int32_t i = 0; i < length;) {
    UChar32 part = 0;
    U16_NEXT(buffer.data(), i, length, part);
    out.push_back(static_cast<char32_t>(part));
  }
}

uint8_t combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const auto code = static_cast<UChar32>(c);
  return assigned_by(code, 9, 0) ? u_getCombiningClass(code) : 0;
}

// NFD: decomposition, then each run of combining marks stably sorted by combining class.
// With origin (one entry per character of text), the result gets entries as Hugging
// Face aligns it: the first character of each decomposition is marked as replacing a
// character and the others as inserted; the marks travel with the characters when they
// are sorted, and then each replacing character takes the entry of the next character
// of text, each inserted one the entry of the character before it.
std::u32string nfd(const std::u32string& text, std::vector<int64_t>* origin) {
  std::u32string decomposed;
  decomposed.reserve(text.size());
  std::vector<bool> inserted;
  for (char32_t c : text) {
    append_decomposition(c, decomposed);
    inserted.push_back(false);
    inserted.resize(decomposed.size(), true);
  }
  std::vector<size_t> order;
  for (size_t start = 0; start < decomposed.size();) {
    if (combining_class(decomposed[start]) == 0) {
      ++start;
      continue;
    }
    size_t end = start;
    while (end < decomposed.size() && combining_class(decomposed[end]) != 0) ++end;
    order.resize(end - start);
    for (size_t i = 0; i < order.size(); ++i) order[i] = start + i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return combining_class(decomposed[a]) < combining_class(decomposed[b]);
    });
    const std::u32string run = decomposed.substr(start, end - start);
    const std::vector<bool> run_inserted(inserted.begin() + static_cast<std::ptrdiff_t>(start),
                                         inserted.begin() + static_cast<std::ptrdiff_t>(end));
    for (size_t i = 0; i < order.size(); ++i) {
      decomposed[start + i] = run[order[i] - start];
      inserted[start + i] = run_inserted[order[i] - start];
    }
    start = end;
  }
  if (origin && !text.empty()) {
    std::vector<int64_t> aligned(decomposed.size());
    size_t next = 0;  // the next character of text a replacing character takes
    for (size_t i = 0; i < decomposed.size(); ++i) {
      if (!inserted[i] || i == 0) aligned[i] = (*origin)[std::min(next++, text.size() - 1)];
      else aligned[i] = aligned[i - 1];
    }
    origin->swap(aligned);
  }
  return decomposed;
}

// Lower-case mappings that Unicode 16.0 and 17.0 added, which Rust has and ICU 72 lacks.
struct CaseRange {
  char32_t first;
  char32_t last;
  int32_t offset;  // lower case = upper case + offset
};
constexpr std::array<CaseRange, 10> kRecentLowerCase = {{
    {0x1C89, 0x1C89, 1},
    {0xA7CB, 0xA7CB, 0x0264 - 0xA7CB},
    {0xA7CC, 0xA7CC, 1},
    {0xA7CE, 0xA7CE, 1},
    {0xA7D2, 0xA7D2, 1},
    {0xA7D4, 0xA7D4, 1},
    {0xA7DA, 0xA7DA, 1},
    {0xA7DC, 0xA7DC, 0x019B - 0xA7DC},
    {0x10D50, 0x10D65, 0x20},
    {0x16EA0, 0x16EB8, 0x1B},
}};

// Rust's char::to_lowercase: the full mapping without context, so final sigma is not
// special and U+0130 (capital I with dot) is the one character that becomes two.
void append_lowercase(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  if (c == 0x130) {
    out.push_back('i');
    out.push_back(0x307);
    return;
  }
  for (const CaseRange& range : kRecentLowerCase) {
    if (c >= range.first && c <= range.last) {
      out.push_back(static_cast<char32_t>(static_cast<int32_t>(c) + range.offset));
      return;
    }
  }
  out.push_back(static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
}

std::u32string to_code_points(std::string_view text) {
  std::u32string chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Unit unit = scan_utf8(text, pos);
    chars.push_back(unit.valid ? decode_utf8(text.substr(pos, unit.length)) : U'\uFFFD');
    pos += unit.length;
  }
  return chars;
}

// ---- BERT's normalizer ----

struct BertNormalizer {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;  // tokenizer.json's null means: as lowercase
  bool lowercase = true;

  void operator()(std::string_view text, std::string& out) const {
    for (char32_t c : normalize(to_code_points(text), nullptr)) append_utf8(out, c);
  }

  // The same, saying for each byte appended which character of text it came from.
  void operator()(std::string_view text, std::string& out, std::vector<int64_t>& byte_origin) const {
    std::u32string chars = to_code_points(text);
    std::vector<int64_t> origin(chars.size());
    for (size_t i = 0; i < origin.size(); ++i) origin[i] = static_cast<int64_t>(i);
    chars = normalize(std::move(chars), &origin);
    for (size_t i = 0; i < chars.size(); ++i) {
      append_utf8(out, chars[i]);
      byte_origin.resize(out.size(), origin[i]);
    }
  }

  // The stages in order; with origin (one entry per character), every character written
  // keeps the entry of the character it came from, and removed characters lose theirs.
  std::u32string normalize(std::u32string chars, std::vector<int64_t>* origin) const {
    std::u32string next;
    std::vector<int64_t> next_origin;
    const auto keep = [&](char32_t c, size_t from) {
      next.push_back(c);
      if (origin) next_origin.push_back((*origin)[from]);
    };
    const auto finish_stage = [&] {
      chars.swap(next);
      next.clear();
      if (origin) origin->swap(next_origin), next_origin.clear();
    };
    if (clean_text) {
      for (size_t i = 0; i < chars.size(); ++i) {
        const char32_t c = chars[i];
        if (c == 0 || c == 0xFFFD || is_bert_control(c)) continue;
        keep(c == '\t' || c == '\n' || c == '\r' || is_white_space(c) ? U' ' : c, i);
      }
      finish_stage();
    }
    if (handle_chinese_chars) {
      for (size_t i = 0; i < chars.size(); ++i) {
        if (is_cjk_ideograph(chars[i])) {
          keep(U' ', i), keep(chars[i], i), keep(U' ', i);
        } else {
          keep(chars[i], i);
        }
      }
      finish_stage();
    }
    if (strip_accents) {
      const std::u32string decomposed = nfd(chars, origin);
      for (size_t i = 0; i < decomposed.size(); ++i) {
        if (!is_non_spacing_mark(decomposed[i])) {
          next.push_back(decomposed[i]);
          if (origin) next_origin.push_back((*origin)[i]);
        }
      }
      finish_stage();
    }
    if (lowercase) {
      for (size_t i = 0; i < chars.size(); ++i) {
        append_lowercase(chars[i], next);
        if (origin) next_origin.resize(next.size(), (*origin)[i]);
      }
      finish_stage();
    }
    return chars;
  }
};

// ---- WordPiece's decoder ----

// The spaces that joining tokens leaves before punctuation and in English contractions.
std::string cleanup(std::string token) {
  static const std::array<std::pair<std::string_view, std::string_view>, 11> kReplacements = {{
      {" .", "."},
      {" ?", "?"},
      {" !", "!"},
      {" ,", ","},
      {" ' ", "'"},
      {" n't", "n't"},
      {" 'm", "'m"},
      {" do not", " don't"},
      {" 's", "'s"},
      {" 've", "'ve"},
      {" 're", "'re"},
  }};
  for (const auto& [from, to] : kReplacements) {
    std::string replaced;
    size_t pos = 0;
    for (size_t found = token.find(from); found != std::string::npos; found = token.find(from, pos)) {
      replaced.append(token, pos, found - pos);
      replaced.append(to);
      pos = found + from.size();
    }
    replaced.append(token, pos);
    token.swap(replaced);
  }
  return token;
}

}  // namespace

// ---- the model ----

struct WordPieceTokenizer::Model : TokenTable {
  StringMap<int32_t> continuations;  // tokens that start with the prefix, keyed without it
  std::string prefix = "##";
  int32_t unk_id = 0;
  size_t max_input_chars_per_word = 100;

  std::optional<BertNormalizer> bert_normalizer;
  AddedVocabulary::Normalizer normalizer;  // empty when there is none
  AddedVocabulary::AlignedNormalizer aligned_normalizer;  // the same, tracking offsets

  bool has_decoder = true;  // without one, tokens are joined with spaces
  std::string decoder_prefix = "##";
  bool decoder_cleanup = true;

  static std::shared_ptr<Model> from_tokenizer_json(const fs::path& file, const Json& root);
  static std::shared_ptr<Model> from_vocab_txt(const fs::path& dir);

  void set_vocab(StringMap<int32_t> tokens, const std::string& unk_token, const fs::path& file,
                 const std::string& unk_where);
  void read_normalizer(const Json* normalizer_json, const fs::path& file);
  void read_decoder(const Json* decoder, const fs::path& file);
  // `file`: where the vocabulary's ids came from, for errors.
  void finish(const fs::path& dir, const fs::path& file);

  void pre_tokenize(std::string_view text, std::vector<std::string_view>& words) const;
  // spans: when given, gets each id's bytes [begin, end) in word.
  void encode_word(std::string_view word, std::vector<int32_t>& ids,
                   std::vector<std::pair<size_t, size_t>>* spans = nullptr) const;
};

void WordPieceTokenizer::Model::set_vocab(StringMap<int32_t> tokens, const std::string& unk_token, const fs::path& file,
                                          const std::string& unk_where) {
  vocab = std::move(tokens);
  const auto unk = vocab.find(unk_token);
  if (unk == vocab.end()) fail(file, unk_where + " " + shown(unk_token) + " is not in the vocabulary");
  unk_id = unk->second;
  for (const auto& [token, id] : vocab) {
    if (token.starts_with(prefix)) continuations.emplace(token.substr(prefix.size()), id);
  }
}

void WordPieceTokenizer::Model::read_normalizer(const Json* normalizer_json, const fs::path& file) {
  if (!normalizer_json || normalizer_json->is_null()) return;
  const std::string type = type_of(*normalizer_json, file, "normalizer");
  if (type != "BertNormalizer") {
    fail(file, "normalizer.type is " + shown(type) + "; WordPiece supports BertNormalizer or none (null)");
  }
  BertNormalizer options;
  options.clean_text = read_bool(*normalizer_json, "clean_text", true, file, "normalizer");
  options.handle_chinese_chars = read_bool(*normalizer_json, "handle_chinese_chars", true, file, "normalizer");
  options.lowercase = read_bool(*normalizer_json, "lowercase", true, file, "normalizer");
  options.strip_accents = read_bool(*normalizer_json, "strip_accents", options.lowercase, file, "normalizer");
  bert_normalizer = options;
}

void WordPieceTokenizer::Model::read_decoder(const Json* decoder, const fs::path& file) {
  has_decoder = decoder && !decoder->is_null();
  if (!has_decoder) return;
  const std::string type = type_of(*decoder, file, "decoder");
  if (type != "WordPiece") fail(file, "decoder.type is " + shown(type) + "; WordPiece supports a WordPiece decoder or none");
  decoder_prefix = read_optional_string(*decoder, "prefix", file, "decoder").value_or("##");
  decoder_cleanup = read_bool(*decoder, "cleanup", true, file, "decoder");
}

void WordPieceTokenizer::Model::finish(const fs::path& dir, const fs::path& file) {
  if (bert_normalizer) {
    normalizer = *bert_normalizer;
    aligned_normalizer = [options = *bert_normalizer](std::string_view text, std::string& out,
                                                      std::vector<int64_t>& origin) { options(text, out, origin); };
  }
  index(normalizer, file);

  SpecialTokenIds defaults;
  defaults.unk = unk_id;
  defaults.cls = find("[CLS]");
  defaults.sep = find("[SEP]");
  defaults.pad = find("[PAD]");
  defaults.mask = find("[MASK]");
  special_ids = read_special_token_ids(dir, [this](std::string_view token) { return find(token); }, defaults);
}

std::shared_ptr<WordPieceTokenizer::Model> WordPieceTokenizer::Model::from_tokenizer_json(const fs::path& file,
                                                                                          const Json& root) {
  if (!root.is_object()) fail(file, "is not a JSON object");
  auto model = std::make_shared<Model>();
  const Json* model_json = member(root, "model");
  if (!model_json || !model_json->is_object()) fail(file, "has no \"model\" object");
  if (const auto type = read_optional_string(*model_json, "type", file, "model"); type && *type != "WordPiece") {
    fail(file, "model.type is " + shown(*type) + "; expected \"WordPiece\"");
  }
  model->prefix = read_optional_string(*model_json, "continuing_subword_prefix", file, "model").value_or("##");
  model->max_input_chars_per_word = read_count(*model_json, "max_input_chars_per_word", 100, file, "model");
  const auto unk = read_optional_string(*model_json, "unk_token", file, "model");
  if (!unk) fail(file, "model has no \"unk_token\"");
  const Json* vocab_json = member(*model_json, "vocab");
  if (!vocab_json) fail(file, "model has no \"vocab\"");
  model->set_vocab(read_vocab(*vocab_json, file, "model.vocab"), *unk, file, "model.unk_token");

  model->read_normalizer(member(root, "normalizer"), file);
  const Json* pre_tokenizer = member(root, "pre_tokenizer");
  const std::string pre_tokenizer_type =
      pre_tokenizer && !pre_tokenizer->is_null() ? type_of(*pre_tokenizer, file, "pre_tokenizer") : "null";
  if (pre_tokenizer_type != "BertPreTokenizer") {
    fail(file, "pre_tokenizer is " + shown(pre_tokenizer_type) + "; WordPiece supports BertPreTokenizer only");
  }
  model->read_decoder(member(root, "decoder"), file);
  if (const Json* added = member(root, "added_tokens")) model->added.read(*added, file, model->vocab);
  model->finish(file.parent_path(), file);
  const auto vocab_size = static_cast<int32_t>(model->token_of_id.size());
  model->special_template = read_post_processor(member(root, "post_processor"), file, vocab_size);
  return model;
}

std::shared_ptr<WordPieceTokenizer::Model> WordPieceTokenizer::Model::from_vocab_txt(const fs::path& dir) {
  const fs::path vocab_file = dir / "vocab.txt";
  const fs::path config_file = dir / "tokenizer_config.json";
  std::error_code error;
  Json config = Json::object();
  if (fs::exists(config_file, error)) {
    config = read_json(config_file);
    if (!config.is_object()) fail(config_file, "is not a JSON object");
  }
  const auto special_token = [&](const char* key, const char* fallback) -> std::string {
    const Json* value = member(config, key);
    if (!value || value->is_null()) return fallback;
    const Json* content = value->is_object() ? member(*value, "content") : value;
    if (!content || !content->is_string()) {
      fail(config_file, std::string(key) + " is " + shown(*value) + ", not a token or {\"content\": token}");
    }
    return content->get<std::string>();
  };

  auto model = std::make_shared<Model>();
  const std::string text = read_file(vocab_file);
  StringMap<int32_t> tokens;
  size_t line_number = 0;
  for (size_t start = 0; start < text.size(); ++line_number) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string token = text.substr(start, end - start);
    start = end + 1;
    const auto [other, inserted] = tokens.try_emplace(token, static_cast<int32_t>(line_number));
    if (!inserted) {
      fail(vocab_file, "line " + std::to_string(line_number + 1) + " repeats " + shown(token) + " of line " +
                           std::to_string(other->second + 1));
    }
  }
  const std::string unk = special_token("unk_token", "[UNK]");
  if (!tokens.contains(unk)) fail(vocab_file, "has no " + shown(unk) + " (the unk_token)");
  model->set_vocab(std::move(tokens), unk, vocab_file, "unk_token");

  BertNormalizer options;
  options.lowercase = read_bool(config, "do_lower_case", true, config_file, "tokenizer_config");
  options.strip_accents = read_bool(config, "strip_accents", options.lowercase, config_file, "tokenizer_config");
  options.handle_chinese_chars = read_bool(config, "tokenize_chinese_chars", true, config_file, "tokenizer_config");
  model->bert_normalizer = options;

  // Tokens the configuration lists with their ids, then the special tokens, each kept
  // out of WordPiece as transformers does; one missing from vocab.txt takes the next id.
  if (const Json* listed = member(config, "added_tokens_decoder"); listed && !listed->is_null()) {
    if (!listed->is_object()) fail(config_file, "added_tokens_decoder is not an object");
    std::map<int64_t, std::pair<std::string, const Json*>> by_id;
    for (const auto& [key, entry] : listed->items()) {
      const std::string where = "added_tokens_decoder[" + shown(key) + "]";
      char* end = nullptr;
      const long long id = std::strtoll(key.c_str(), &end, 10);
      if (key.empty() || *end != '\0' || id < 0) fail(config_file, where + ": the key is not an id");
      by_id.emplace(id, std::pair{where, &entry});
    }
    for (const auto& [id, named] : by_id) {
      const auto& [where, entry] = named;
      const auto content = read_optional_string(*entry, "content", config_file, where);
      if (!content) fail(config_file, where + " has no \"content\"");
      AddedToken token{.content = *content,
                       .single_word = read_bool(*entry, "single_word", false, config_file, where),
                       .lstrip = read_bool(*entry, "lstrip", false, config_file, where),
                       .rstrip = read_bool(*entry, "rstrip", false, config_file, where),
                       .normalized = read_bool(*entry, "normalized", false, config_file, where),
                       .special = read_bool(*entry, "special", false, config_file, where)};
      model->added.add(std::move(token), model->vocab);
      if (model->added.find(*content) != id) {
        fail(config_file, where + " is " + shown(*content) + ", which vocab.txt gives id " +
                              std::to_string(model->added.find(*content).value_or(-1)));
      }
    }
  }
  const std::string sep = special_token("sep_token", "[SEP]");
  const std::string cls = special_token("cls_token", "[CLS]");
  for (const std::string& content :
       {unk, sep, special_token("pad_token", "[PAD]"), cls, special_token("mask_token", "[MASK]")}) {
    model->added.add(AddedToken{.content = content, .normalized = false, .special = true}, model->vocab);
  }
  model->finish(dir, config_file);
  const int32_t cls_id = *model->find(cls), sep_id = *model->find(sep);
  using Part = SpecialTokenTemplate::Part;
  std::vector<Part> single = {{Part::Kind::special, {cls_id}, 0}, {Part::Kind::first_text, {}, 0},
                              {Part::Kind::special, {sep_id}, 0}};
  std::vector<Part> pair = single;
  pair.push_back({Part::Kind::second_text, {}, 1});
  pair.push_back({Part::Kind::special, {sep_id}, 1});
  model->special_template = SpecialTokenTemplate(std::move(single), std::move(pair));
  return model;
}

// BERT's pre-tokenizer: whitespace separates words and is dropped; each punctuation
// character is a word of its own.
void WordPieceTokenizer::Model::pre_tokenize(std::string_view text, std::vector<std::string_view>& words) const {
  size_t word_start = 0;
  const auto end_word = [&](size_t end) {
    if (end > word_start) words.push_back(text.substr(word_start, end - word_start));
  };
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Unit unit = scan_utf8(text, pos);
    const char32_t c = unit.valid ? decode_utf8(text.substr(pos, unit.length)) : U'\uFFFD';
    if (is_white_space(c)) {
      end_word(pos);
      word_start = pos + unit.length;
    } else if (is_bert_punctuation(c)) {
      end_word(pos);
      words.push_back(text.substr(pos, unit.length));
      word_start = pos + unit.length;
    }
    pos += unit.length;
  }
  end_word(text.size());
}

// Greedy longest match from the start of the word; continuations carry the prefix.
void WordPieceTokenizer::Model::encode_word(std::string_view word, std::vector<int32_t>& ids,
                                            std::vector<std::pair<size_t, size_t>>* spans) const {
  const auto unknown = [&] {
    ids.push_back(unk_id);
    if (spans) spans->emplace_back(0, word.size());
  };
  size_t char_count = 0;
  for (size_t pos = 0; pos < word.size(); pos += scan_utf8(word, pos).length) ++char_count;
  if (char_count > max_input_chars_per_word) return unknown();
  const size_t first = ids.size();
  const size_t first_span = spans ? spans->size() : 0;
  for (size_t start = 0; start < word.size();) {
    const StringMap<int32_t>& tokens = start == 0 ? vocab : continuations;
    size_t end = word.size();
    std::optional<int32_t> found;
    while (end > start) {
      if (const auto it = tokens.find(word.substr(start, end - start)); it != tokens.end()) {
        found = it->second;
        break;
      }
      end = previous_char_start(word, end);
    }
    if (!found) {
      ids.resize(first);
      if (spans) spans->resize(first_span);
      return unknown();
    }
    ids.push_back(*found);
    if (spans) spans->emplace_back(start, end);
    start = end;
  }
}

// ---- public interface ----

WordPieceTokenizer::WordPieceTokenizer(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

WordPieceTokenizer WordPieceTokenizer::from_directory(const fs::path& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    fail(dir, fs::exists(dir, error) ? "is not a directory" : "does not exist (expected a tokenizer directory)");
  }
  const fs::path tokenizer_json = dir / "tokenizer.json";
  if (fs::exists(tokenizer_json, error)) return from_tokenizer_json(tokenizer_json, read_json(tokenizer_json));
  if (!fs::exists(dir / "vocab.txt", error)) fail(dir, "has neither tokenizer.json nor vocab.txt");
  return WordPieceTokenizer(Model::from_vocab_txt(dir));
}

WordPieceTokenizer WordPieceTokenizer::from_tokenizer_json(const fs::path& file, const Json& document) {
  return WordPieceTokenizer(Model::from_tokenizer_json(file, document));
}

std::string_view WordPieceTokenizer::kind() const { return "WordPiece"; }

std::vector<int32_t> WordPieceTokenizer::encode(std::string_view text) const {
  const Model& model = *model_;
  return model.encode(
      text, model.normalizer,
      [&](const TextPiece& stretch, auto&, auto& words) { model.pre_tokenize(stretch.text, words); },
      [&](std::string_view word, std::vector<int32_t>& ids) { model.encode_word(word, ids); });
}

std::vector<int32_t> WordPieceTokenizer::encode_with_offsets(std::string_view text,
                                                             std::vector<CharSpan>& offsets) const {
  std::vector<int32_t> ids;
  offsets.clear();
  std::deque<std::string> storage;
  std::vector<TextPiece> pieces;
  std::vector<std::vector<int64_t>> origins;  // per byte of each piece: its character in text
  model_->added.split_aligned(text, model_->aligned_normalizer, storage, pieces, origins);
  // The characters bytes [begin, end) of a piece came from (normalization may reorder).
  const auto span_of = [](const std::vector<int64_t>& origin, size_t begin, size_t end) {
    const auto [low, high] = std::minmax_element(origin.begin() + static_cast<std::ptrdiff_t>(begin),
                                                 origin.begin() + static_cast<std::ptrdiff_t>(end));
    return CharSpan{*low, *high + 1};
  };
  std::vector<std::string_view> words;
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t p = 0; p < pieces.size(); ++p) {
    const TextPiece& piece = pieces[p];
    if (piece.added_id) {
      ids.push_back(*piece.added_id);
      offsets.push_back(span_of(origins[p], 0, piece.text.size()));
      continue;
    }
    words.clear();
    model_->pre_tokenize(piece.text, words);
    for (std::string_view word : words) {
      spans.clear();
      model_->encode_word(word, ids, &spans);
      const auto word_start = static_cast<size_t>(word.data() - piece.text.data());
      for (const auto& [begin, end] : spans) offsets.push_back(span_of(origins[p], word_start + begin, word_start + end));
    }
  }
  return ids;
}

std::string WordPieceTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Model& model = *model_;
  std::string text;
  size_t count = 0;
  for (std::string& token : model.decoded_tokens(ids, skip_special_tokens)) {
    if (!model.has_decoder) {
      text += (count++ ? " " : "") + token;
      continue;
    }
    if (count++ > 0) {
      token = token.starts_with(model.decoder_prefix) ? token.substr(model.decoder_prefix.size()) : " " + token;
    }
    text += model.decoder_cleanup ? cleanup(std::move(token)) : token;
  }
  return text;
}

const TokenTable& WordPieceTokenizer::table() const { return *model_; }

std::string WordPieceTokenizer::normalize(std::string_view text) const {
  if (!model_->normalizer) return std::string(text);
  std::string normalized;
  model_->normalizer(text, normalized);
  return normalized;
}

std::vector<std::string> WordPieceTokenizer::pre_tokenize(std::string_view text) const {
  const std::string normalized = normalize(text);
  std::vector<std::string_view> words;
  model_->pre_tokenize(normalized, words);
  return {words.begin(), words.end()};
}

}  // namespace ftrain::data
