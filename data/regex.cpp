#include "data/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/tokenizer.h"

#include <array>
#include <new>
#include <stdexcept>

namespace ftrain::data::tokenizer_parts {

namespace {

struct MatchDataFree {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataFree>;

[[noreturn]] void throw_match_error(int rc) {
  std::array<PCRE2_UCHAR, 256> message{};
  pcre2_get_error_message(rc, message.data(), message.size());
  throw std::runtime_error(std::string("tokenizer pattern failed: ") + reinterpret_cast<const char*>(message.data()));
}

}  // namespace

void Regex::CodeFree::operator()(pcre2_code* code) const { pcre2_code_free(code); }

Regex::Regex(std::string_view pattern, const std::filesystem::path& file, const std::string& key, uint32_t options) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | options, &error, &error_offset,
                            nullptr));
  if (!code_) {
    std::array<PCRE2_UCHAR, 256> message{};
    pcre2_get_error_message(error, message.data(), message.size());
    fail(file, key + " is not a pattern PCRE2 accepts: " + reinterpret_cast<const char*>(message.data()) +
                   " at offset " + std::to_string(error_offset));
  }
  // Without JIT support pcre2_match interprets the pattern instead: slower, same result.
  pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

template <class Found>
void Regex::for_each_match(std::string_view text, Found&& found) const {
  MatchData match_data(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
  if (!match_data) throw std::bad_alloc();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const PCRE2_SIZE* bounds = pcre2_get_ovector_pointer(match_data.get());
  size_t search_from = 0;
  while (search_from <= text.size()) {
    const int rc = pcre2_match(code_.get(), subject, text.size(), search_from, 0, match_data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw_match_error(rc);
    const size_t match_start = bounds[0], match_end = bounds[1];
    found(match_start, match_end);
    if (match_end > match_start) {
      search_from = match_end;
    } else {
      if (match_start == text.size()) break;
      search_from = match_start + scan_utf8(text, match_start).length;
    }
  }
}

void Regex::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  size_t piece_start = 0;
  for_each_match(text, [&](size_t match_start, size_t match_end) {
    if (match_start > piece_start) pieces.push_back(text.substr(piece_start, match_start - piece_start));
    if (match_end > match_start) pieces.push_back(text.substr(match_start, match_end - match_start));
    piece_start = match_end;
  });
  if (piece_start < text.size()) pieces.push_back(text.substr(piece_start));
}

void Regex::replace(std::string_view text, std::string_view content, std::string& out) const {
  size_t copied = 0;
  for_each_match(text, [&](size_t match_start, size_t match_end) {
    if (match_end == match_start) return;
    out.append(text.substr(copied, match_start - copied));
    out.append(content);
    copied = match_end;
  });
  out.append(text.substr(copied));
}

}  // namespace ftrain::data::tokenizer_parts
