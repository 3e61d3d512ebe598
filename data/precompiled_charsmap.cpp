#include "data/precompiled_charsmap.h"

#include "data/tokenizer.h"

#include <unicode/ubrk.h>
#include <unicode/utext.h>

#include <array>
#include <memory>
#include <stdexcept>

namespace ftrain::data::tokenizer_parts {

namespace {

// A Darts-clone unit: a label byte (or a leaf flag) and the XOR offset of its children.
bool has_leaf(uint32_t unit) { return ((unit >> 8) & 1) != 0; }
uint32_t value(uint32_t unit) { return unit & 0x7FFFFFFFu; }
uint32_t label(uint32_t unit) { return unit & (0x80000000u | 0xFFu); }
uint32_t offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

struct BreakIteratorClose {
  void operator()(UBreakIterator* iterator) const { ubrk_close(iterator); }
};
struct TextClose {
  void operator()(UText* text) const { utext_close(text); }
};

// The byte offsets that cut text into extended grapheme clusters: 0, ..., text.size().
// Opening an ICU iterator costs more than most texts, so each thread keeps one.
std::vector<size_t> grapheme_bounds(std::string_view text) {
  thread_local std::unique_ptr<UBreakIterator, BreakIteratorClose> iterator;
  UErrorCode status = U_ZERO_ERROR;
  if (!iterator) {
    iterator.reset(ubrk_open(UBRK_CHARACTER, "", nullptr, 0, &status));
    if (U_FAILURE(status)) throw std::runtime_error(std::string("ICU: cannot open a grapheme iterator: ") + u_errorName(status));
  }
  std::unique_ptr<UText, TextClose> utext(
      utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status));
  if (U_FAILURE(status)) throw std::runtime_error(std::string("ICU: cannot read text: ") + u_errorName(status));
  ubrk_setUText(iterator.get(), utext.get(), &status);
  if (U_FAILURE(status)) throw std::runtime_error(std::string("ICU: cannot cut text: ") + u_errorName(status));
  std::vector<size_t> bounds;
  for (int32_t bound = ubrk_first(iterator.get()); bound != UBRK_DONE; bound = ubrk_next(iterator.get())) {
    bounds.push_back(static_cast<size_t>(bound));
  }
  // The iterator must not keep pointing at text once it is gone.
  ubrk_setText(iterator.get(), nullptr, 0, &status);
  return bounds;
}

}  // namespace

PrecompiledCharsmap::PrecompiledCharsmap(std::string_view bytes, const std::filesystem::path& file,
                                         const std::string& where)
    : source_(file.string() + ": " + where) {
  if (bytes.size() < 4) fail(file, where + " holds " + std::to_string(bytes.size()) + " bytes, fewer than its 4-byte size");
  const auto byte_at = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])); };
  const uint32_t trie_bytes = byte_at(0) | byte_at(1) << 8 | byte_at(2) << 16 | byte_at(3) << 24;
  if (trie_bytes % 4 != 0 || trie_bytes == 0 || trie_bytes > bytes.size() - 4) {
    fail(file, where + " gives its trie " + std::to_string(trie_bytes) + " bytes, not a positive multiple of 4 within its " +
                   std::to_string(bytes.size() - 4) + " bytes");
  }
  units_.resize(trie_bytes / 4);
  for (size_t i = 0; i < units_.size(); ++i) {
    const size_t at = 4 + 4 * i;
    units_[i] = byte_at(at) | byte_at(at + 1) << 8 | byte_at(at + 2) << 16 | byte_at(at + 3) << 24;
  }
  replacements_ = bytes.substr(4 + trie_bytes);
  if (replace_invalid_utf8(replacements_) != replacements_) fail(file, where + ": the replacements are not valid UTF-8");
}

void PrecompiledCharsmap::corrupt(const std::string& problem) const {
  throw std::runtime_error(source_ + ": the trie is corrupt: " + problem);
}

std::optional<std::string_view> PrecompiledCharsmap::transform(std::string_view chunk) const {
  const auto unit_at = [&](size_t node) {
    if (node >= units_.size()) corrupt("node " + std::to_string(node) + " of " + std::to_string(units_.size()));
    return units_[node];
  };
  size_t node = offset(unit_at(0));
  for (const char byte : chunk) {
    const auto c = static_cast<unsigned char>(byte);
    if (c == 0) break;
    node ^= c;
    const uint32_t unit = unit_at(node);
    if (label(unit) != c) return std::nullopt;
    node ^= offset(unit);
    if (!has_leaf(unit)) continue;
    const size_t start = value(unit_at(node));
    if (start >= replacements_.size()) {
      corrupt("replacement offset " + std::to_string(start) + " of " + std::to_string(replacements_.size()));
    }
    if ((static_cast<unsigned char>(replacements_[start]) & 0xC0) == 0x80) {
      corrupt("replacement offset " + std::to_string(start) + " is inside a character");
    }
    const size_t end = replacements_.find('\0', start);
    return std::string_view(replacements_).substr(start, end == std::string::npos ? std::string::npos : end - start);
  }
  return std::nullopt;
}

void PrecompiledCharsmap::normalize(std::string_view text, std::string& out) const {
  const std::vector<size_t> bounds = grapheme_bounds(text);
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    const std::string_view cluster = text.substr(bounds[i], bounds[i + 1] - bounds[i]);
    if (cluster.size() < 6) {
      if (const auto replacement = transform(cluster)) {
        out += *replacement;
        continue;
      }
    }
    for (size_t pos = 0; pos < cluster.size();) {
      const size_t length = scan_utf8(cluster, pos).length;
      const std::string_view character = cluster.substr(pos, length);
      const auto replacement = transform(character);
      out += replacement ? *replacement : character;
      pos += length;
    }
  }
}

std::optional<std::string> decode_base64(std::string_view text) {
  static const std::array<int8_t, 256> kValue = [] {
    std::array<int8_t, 256> value{};
    value.fill(-1);
    const std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < alphabet.size(); ++i) value[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return value;
  }();
  if (text.size() % 4 != 0) return std::nullopt;
  size_t padding = 0;
  while (padding < 2 && padding < text.size() && text[text.size() - 1 - padding] == '=') ++padding;
  std::string bytes;
  bytes.reserve(text.size() / 4 * 3);
  uint32_t bits = 0;
  int count = 0;
  for (size_t i = 0; i < text.size() - padding; ++i) {
    const int8_t v = kValue[static_cast<unsigned char>(text[i])];
    if (v < 0) return std::nullopt;
    bits = bits << 6 | static_cast<uint32_t>(v);
    if (++count == 4) {
      bytes += static_cast<char>(bits >> 16);
      bytes += static_cast<char>(bits >> 8);
      bytes += static_cast<char>(bits);
      bits = 0;
      count = 0;
    }
  }
  if (count == 3) {
    bytes += static_cast<char>(bits >> 10);
    bytes += static_cast<char>(bits >> 2);
  } else if (count == 2) {
    bytes += static_cast<char>(bits >> 4);
  } else if (count != 0) {
    return std::nullopt;
  }
  return bytes;
}

}  // namespace ftrain::data::tokenizer_parts
