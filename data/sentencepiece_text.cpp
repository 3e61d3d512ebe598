#include "data/sentencepiece_text.h"

#include "data/precompiled_charsmap.h"
#include "data/regex.h"
#include "data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <variant>

namespace ftrain::data::sentencepiece {

namespace fs = std::filesystem;
using namespace tokenizer_parts;

void replace_all(std::string_view text, std::string_view from, std::string_view to, std::string& out) {
  size_t pos = 0;
  for (size_t found = text.find(from); found != std::string_view::npos; found = text.find(from, pos)) {
    out.append(text.substr(pos, found - pos));
    out.append(to);
    pos = found + from.size();
  }
  out.append(text.substr(pos));
}

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

namespace {

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

// Replace's pattern: {"String": literal} or {"Regex": pattern}, not empty.
std::variant<std::string, Regex> read_pattern(const Json& step, const fs::path& file, const std::string& where,
                                              bool regex_allowed) {
  const Json* pattern = member(step, "pattern");
  if (pattern && pattern->is_object()) {
    if (const auto literal = read_optional_string(*pattern, "String", file, where + ".pattern");
        literal && !literal->empty()) {
      return *literal;
    }
    if (const auto regex = read_optional_string(*pattern, "Regex", file, where + ".pattern");
        regex && !regex->empty() && regex_allowed) {
      return Regex(*regex, file, where + ".pattern.Regex");
    }
  }
  fail(file, where + ".pattern is " + (pattern ? shown(*pattern) : "missing") + "; only a non-empty {\"String\": ...}" +
                 (regex_allowed ? " or {\"Regex\": ...}" : "") + " pattern is supported");
}

}  // namespace

// ---- the normalizer ----

struct Normalizer::Step {
  std::variant<std::monostate, std::string, Regex> pattern;  // Replace's
  std::string content;                                       // Prepend's or Replace's
  bool strip_left = false, strip_right = false;
  std::shared_ptr<const PrecompiledCharsmap> charsmap;

  void run(std::string_view text, std::string& out) const {
    if (charsmap) {
      charsmap->normalize(text, out);
    } else if (const auto* literal = std::get_if<std::string>(&pattern)) {
      replace_all(text, *literal, content, out);
    } else if (const auto* regex = std::get_if<Regex>(&pattern)) {
      regex->replace(text, content, out);
    } else if (strip_left || strip_right) {
      size_t begin = 0, end = text.size();
      while (strip_left && begin < end) {
        const auto c = char_at(text, begin);
        if (!c || !is_white_space(*c)) break;
        begin += scan_utf8(text, begin).length;
      }
      while (strip_right && end > begin) {
        const size_t start = previous_char_start(text, end);
        const auto c = char_at(text, start);
        if (!c || !is_white_space(*c)) break;
        end = start;
      }
      out.append(text.substr(begin, end - begin));
    } else {  // Prepend
      if (!text.empty()) out += content;
      out.append(text);
    }
  }
};

namespace {

void read_normalizer_steps(const Json& json, const fs::path& file, const std::string& where,
                           std::vector<Normalizer::Step>& steps);

}  // namespace

Normalizer::Normalizer() : steps_(std::make_shared<const std::vector<Step>>()) {}

bool Normalizer::empty() const { return steps_->empty(); }

void Normalizer::operator()(std::string_view text, std::string& out) const {
  std::string current(text), next;
  for (const Step& step : *steps_) {
    next.clear();
    step.run(current, next);
    current.swap(next);
  }
  out += current;
}

Normalizer Normalizer::read(const Json& json, const fs::path& file) {
  auto steps = std::make_shared<std::vector<Step>>();
  if (!json.is_null()) read_normalizer_steps(json, file, "normalizer", *steps);
  Normalizer normalizer;
  normalizer.steps_ = std::move(steps);
  return normalizer;
}

namespace {

void read_normalizer_steps(const Json& json, const fs::path& file, const std::string& where,
                           std::vector<Normalizer::Step>& steps) {
  const std::string type = type_of(json, file, where);
  Normalizer::Step step;
  if (type == "Sequence") {
    const Json* list = member(json, "normalizers");
    if (!list || !list->is_array()) fail(file, where + ".normalizers is not an array");
    for (size_t i = 0; i < list->size(); ++i) {
      read_normalizer_steps((*list)[i], file, where + ".normalizers[" + std::to_string(i) + "]", steps);
    }
    return;
  }
  if (type == "Prepend") {
    const auto content = read_optional_string(json, "prepend", file, where);
    if (!content) fail(file, where + " has no \"prepend\"");
    step.content = *content;
  } else if (type == "Replace") {
    std::visit([&](auto&& pattern) { step.pattern = std::move(pattern); }, read_pattern(json, file, where, true));
    const auto content = read_optional_string(json, "content", file, where);
    if (!content) fail(file, where + " has no \"content\"");
    step.content = *content;
  } else if (type == "Strip") {
    step.strip_left = read_bool(json, "strip_left", false, file, where);
    step.strip_right = read_bool(json, "strip_right", false, file, where);
    if (!step.strip_left && !step.strip_right) return;  // strips nothing
  } else if (type == "Precompiled") {
    const auto encoded = read_optional_string(json, "precompiled_charsmap", file, where);
    if (!encoded) fail(file, where + " has no \"precompiled_charsmap\" string");
    if (encoded->empty()) return;  // no rules: the text stays as it is
    const auto bytes = decode_base64(*encoded);
    if (!bytes) fail(file, where + ".precompiled_charsmap is not base64");
    step.charsmap = std::make_shared<const PrecompiledCharsmap>(*bytes, file, where + ".precompiled_charsmap");
  } else {
    fail(file, where + ".type is " + shown(type) +
                   "; SentencePiece-style tokenizers support Prepend, Replace, Strip and Precompiled normalizers, "
                   "alone or in a Sequence");
  }
  steps.push_back(std::move(step));
}

}  // namespace

// ---- the Metaspace pre-tokenizer ----

Metaspace Metaspace::read(const Json& json, const fs::path& file, const std::string& where) {
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

void Metaspace::pre_tokenize(std::string_view piece, bool at_text_start, std::deque<std::string>& storage,
                             std::vector<std::string_view>& words) const {
  std::string& text = storage.emplace_back();
  replace_all(piece, " ", replacement, text);
  const bool prepend =
      prepend_scheme == PrependScheme::always || (prepend_scheme == PrependScheme::first && at_text_start);
  if (prepend && !text.starts_with(replacement)) text.insert(0, replacement);
  if (!split) {
    words.push_back(text);
    return;
  }
  // Each replacement character starts a new word.
  const std::string_view view = text;
  size_t start = 0;
  for (size_t found = view.find(replacement, 1); found != std::string_view::npos;
       found = view.find(replacement, found + 1)) {
    words.push_back(view.substr(start, found - start));
    start = found;
  }
  words.push_back(view.substr(start));
}

// ---- the decoder ----

struct Decoder::Step {
  enum class Kind { replace, byte_fallback, fuse, strip, metaspace };
  Kind kind = Kind::fuse;
  std::string pattern = {};  // replace: the literal replaced
  std::string content = {};  // replace: its replacement; strip: the character removed
  size_t start = 0;          // strip: at most this many characters from the start
  size_t stop = 0;           //        and this many from the end
  Metaspace metaspace = {};

  void run(std::vector<std::string>& tokens) const;
};

void Decoder::Step::run(std::vector<std::string>& tokens) const {
  switch (kind) {
    case Kind::replace:
      for (std::string& token : tokens) {
        std::string replaced;
        replace_all(token, pattern, content, replaced);
        token.swap(replaced);
      }
      break;
    case Kind::byte_fallback: {
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
    case Kind::fuse: {
      std::string joined;
      for (const std::string& token : tokens) joined += token;
      tokens.assign(1, std::move(joined));
      break;
    }
    case Kind::strip:
      for (std::string& token : tokens) {
        const std::vector<std::string_view> chars = characters(token);
        size_t first = 0, last = chars.size();
        while (first < start && first < chars.size() && chars[first] == content) ++first;
        while (chars.size() - last < stop && last > first && chars[last - 1] == content) --last;
        std::string stripped;
        for (size_t i = first; i < last; ++i) stripped += chars[i];
        token.swap(stripped);
      }
      break;
    case Kind::metaspace:
      // The first token loses its replacement characters (the prepended space) unless
      // nothing was prepended; elsewhere they become spaces.
      for (size_t i = 0; i < tokens.size(); ++i) {
        const bool drop = i == 0 && metaspace.prepend_scheme != PrependScheme::never;
        std::string decoded;
        replace_all(tokens[i], metaspace.replacement, drop ? "" : " ", decoded);
        tokens[i].swap(decoded);
      }
      break;
  }
}

namespace {

void read_decoder_steps(const Json& json, const fs::path& file, const std::string& where,
                        std::vector<Decoder::Step>& steps);

}  // namespace

Decoder::Decoder() = default;

Decoder Decoder::read(const Json* json, const fs::path& file) {
  Decoder decoder;
  if (!json || json->is_null()) return decoder;
  auto steps = std::make_shared<std::vector<Step>>();
  read_decoder_steps(*json, file, "decoder", *steps);
  decoder.steps_ = std::move(steps);
  return decoder;
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  std::string text;
  if (!steps_) {
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  for (const Step& step : *steps_) step.run(tokens);
  for (const std::string& token : tokens) text += token;
  return text;
}

namespace {

void read_decoder_steps(const Json& json, const fs::path& file, const std::string& where,
                        std::vector<Decoder::Step>& steps) {
  using Kind = Decoder::Step::Kind;
  const std::string type = type_of(json, file, where);
  Decoder::Step step;
  if (type == "Sequence") {
    const Json* list = member(json, "decoders");
    if (!list || !list->is_array()) fail(file, where + ".decoders is not an array");
    for (size_t i = 0; i < list->size(); ++i) {
      read_decoder_steps((*list)[i], file, where + ".decoders[" + std::to_string(i) + "]", steps);
    }
    return;
  }
  if (type == "Replace") {
    step.kind = Kind::replace;
    step.pattern = std::get<std::string>(read_pattern(json, file, where, false));
    const auto content = read_optional_string(json, "content", file, where);
    if (!content) fail(file, where + " has no \"content\"");
    step.content = *content;
  } else if (type == "ByteFallback") {
    step.kind = Kind::byte_fallback;
  } else if (type == "Fuse") {
    step.kind = Kind::fuse;
  } else if (type == "Strip") {
    const auto content = read_optional_string(json, "content", file, where);
    if (!content || content->empty() || scan_utf8(*content, 0).length != content->size()) {
      fail(file, where + ".content is " + (content ? shown(*content) : "missing") + ", not one character");
    }
    step.kind = Kind::strip;
    step.content = *content;
    step.start = read_count(json, "start", 0, file, where);
    step.stop = read_count(json, "stop", 0, file, where);
  } else if (type == "Metaspace") {
    step.kind = Kind::metaspace;
    step.metaspace = Metaspace::read(json, file, where);
  } else if (type == "ByteLevel") {
    fail(file, where + ".type is \"ByteLevel\", which decodes byte-level BPE; this tokenizer's pre_tokenizer "
                       "is not ByteLevel");
  } else {
    fail(file, where + ".type is " + shown(type) +
                   "; SentencePiece-style tokenizers support Replace, ByteFallback, Fuse, Strip and Metaspace decoders");
  }
  steps.push_back(std::move(step));
}

}  // namespace

}  // namespace ftrain::data::sentencepiece
