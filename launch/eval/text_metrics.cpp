#include "launch/eval/text_metrics.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "data/tokenizer.h"

namespace ftrain::launch {
namespace {

using data::tokenizer_parts::decode_utf8;
using data::tokenizer_parts::scan_utf8;

double f_measure(double matches, double predicted, double reference) {
  const double precision = predicted > 0 ? matches / predicted : 0.0;
  const double recall = reference > 0 ? matches / reference : 0.0;
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

std::map<std::vector<std::string>, int64_t> ngrams(const std::vector<std::string>& tokens, size_t n) {
  std::map<std::vector<std::string>, int64_t> counts;
  for (size_t i = 0; i + n <= tokens.size(); ++i)
    ++counts[std::vector<std::string>(tokens.begin() + static_cast<std::ptrdiff_t>(i),
                                      tokens.begin() + static_cast<std::ptrdiff_t>(i + n))];
  return counts;
}

int64_t overlap(const std::map<std::vector<std::string>, int64_t>& a, const std::map<std::vector<std::string>, int64_t>& b) {
  int64_t matches = 0;
  for (const auto& [gram, count] : a)
    if (const auto found = b.find(gram); found != b.end()) matches += std::min(count, found->second);
  return matches;
}

size_t longest_common_subsequence(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<size_t> previous(b.size() + 1, 0), current(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      current[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    std::swap(previous, current);
  }
  return previous[b.size()];
}

std::string replaced(std::string text, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  for (size_t found = text.find(from); found != std::string::npos; found = text.find(from, pos)) {
    out.append(text, pos, found - pos).append(to);
    pos = found + from.size();
  }
  return out.append(text, pos);
}

bool digit(char c) { return c >= '0' && c <= '9'; }

// Python's str.split() then " ".join: runs of whitespace become one space, none at the ends.
std::string collapse_spaces(std::string_view text) {
  std::string out;
  bool pending = false;
  for (size_t pos = 0; pos < text.size();) {
    const auto unit = scan_utf8(text, pos);
    const char32_t c = unit.valid ? decode_utf8(text.substr(pos, unit.length)) : U'\uFFFD';
    if (data::tokenizer_parts::is_white_space(c) || (c >= 0x1C && c <= 0x1F)) {
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

}  // namespace

std::vector<std::string> rouge_tokens(std::string_view text) {
  std::vector<std::string> tokens;
  std::string current;
  for (const char c : data::lowercase(text)) {
    if ((c >= 'a' && c <= 'z') || digit(c)) {
      current.push_back(c);
    } else if (!current.empty()) {
      tokens.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) tokens.push_back(std::move(current));
  return tokens;
}

std::array<double, 3> rouge_f(std::string_view prediction, std::string_view reference) {
  const std::vector<std::string> predicted = rouge_tokens(prediction), expected = rouge_tokens(reference);
  std::array<double, 3> out{};
  for (size_t n = 1; n <= 2; ++n) {
    const auto a = ngrams(predicted, n), b = ngrams(expected, n);
    const auto count = [](const auto& grams) {
      int64_t total = 0;
      for (const auto& [gram, c] : grams) total += c;
      return static_cast<double>(total);
    };
    out[n - 1] = f_measure(static_cast<double>(overlap(a, b)), count(a), count(b));
  }
  out[2] = f_measure(static_cast<double>(longest_common_subsequence(predicted, expected)),
                     static_cast<double>(predicted.size()), static_cast<double>(expected.size()));
  return out;
}

std::string bleu_13a(std::string_view line) {
  std::string text = replaced(std::string(line), "<skipped>", "");
  text = replaced(text, "-\n", "");
  text = replaced(text, "\n", " ");
  if (text.find('&') != std::string::npos) {
    text = replaced(text, "&quot;", "\"");
    text = replaced(text, "&amp;", "&");
    text = replaced(text, "&lt;", "<");
    text = replaced(text, "&gt;", ">");
  }
  text = " " + text + " ";
  // Each pass scans the previous one's output left to right, matches not overlapping,
  // as re.sub does; only ASCII bytes are matched, so bytes stand for characters.
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    const bool symbol = (u >= '{' && u <= '~') || (u >= '[' && u <= '`') || (u >= ' ' && u <= '&') ||
                        (u >= '(' && u <= '+') || (u >= ':' && u <= '@') || u == '/';
    if (symbol) {
      out += ' ';
      out += c;
      out += ' ';
    } else {
      out += c;
    }
  }
  text.swap(out), out.clear();
  for (size_t i = 0; i < text.size(); ++i) {  // a period or comma after a non-digit
    if (!digit(text[i]) && i + 1 < text.size() && (text[i + 1] == '.' || text[i + 1] == ',')) {
      out.push_back(text[i]), out.push_back(' '), out.push_back(text[i + 1]), out.push_back(' ');
      ++i;
    } else {
      out.push_back(text[i]);
    }
  }
  text.swap(out), out.clear();
  for (size_t i = 0; i < text.size(); ++i) {  // ... or before one
    if ((text[i] == '.' || text[i] == ',') && i + 1 < text.size() && !digit(text[i + 1])) {
      out.push_back(' '), out.push_back(text[i]), out.push_back(' '), out.push_back(text[i + 1]);
      ++i;
    } else {
      out.push_back(text[i]);
    }
  }
  text.swap(out), out.clear();
  for (size_t i = 0; i < text.size(); ++i) {  // a dash after a digit
    if (digit(text[i]) && i + 1 < text.size() && text[i + 1] == '-') {
      out.push_back(text[i]), out.append(" - ");
      ++i;
    } else {
      out.push_back(text[i]);
    }
  }
  return collapse_spaces(out);
}

void BleuCounts::add(std::string_view prediction, std::string_view reference) {
  const auto split = [](const std::string& text) {
    std::vector<std::string> tokens;
    for (size_t start = 0; start < text.size();) {
      size_t end = text.find(' ', start);
      if (end == std::string::npos) end = text.size();
      if (end > start) tokens.push_back(text.substr(start, end - start));
      start = end + 1;
    }
    return tokens;
  };
  const std::vector<std::string> predicted = split(bleu_13a(prediction)), expected = split(bleu_13a(reference));
  prediction_length += static_cast<int64_t>(predicted.size());
  reference_length += static_cast<int64_t>(expected.size());
  for (size_t n = 1; n <= 4; ++n) {
    const auto a = ngrams(predicted, n);
    correct[n - 1] += overlap(a, ngrams(expected, n));
    total[n - 1] += predicted.size() >= n ? static_cast<int64_t>(predicted.size() - n + 1) : 0;
  }
}

std::vector<int64_t> BleuCounts::as_vector() const {
  std::vector<int64_t> out(correct.begin(), correct.end());
  out.insert(out.end(), total.begin(), total.end());
  out.push_back(prediction_length);
  out.push_back(reference_length);
  return out;
}

BleuCounts BleuCounts::from_vector(std::span<const int64_t> values) {
  BleuCounts counts;
  std::copy_n(values.begin(), 4, counts.correct.begin());
  std::copy_n(values.begin() + 4, 4, counts.total.begin());
  counts.prediction_length = values[8];
  counts.reference_length = values[9];
  return counts;
}

double BleuCounts::score() const {
  double brevity = 1.0;
  if (prediction_length < reference_length)
    brevity = prediction_length > 0 ? std::exp(1.0 - static_cast<double>(reference_length) /
                                                         static_cast<double>(prediction_length))
                                    : 0.0;
  if (std::all_of(correct.begin(), correct.end(), [](int64_t c) { return c == 0; })) return 0.0;
  std::array<double, 4> precision{};
  double smooth = 1.0;
  for (size_t n = 0; n < 4; ++n) {
    if (total[n] == 0) break;
    if (correct[n] == 0) {
      smooth *= 2;
      precision[n] = 100.0 / (smooth * static_cast<double>(total[n]));
    } else {
      precision[n] = 100.0 * static_cast<double>(correct[n]) / static_cast<double>(total[n]);
    }
  }
  double log_sum = 0;
  for (const double p : precision) log_sum += p == 0.0 ? -9999999999.0 : std::log(p);
  return brevity * std::exp(log_sum / 4.0);
}

}  // namespace ftrain::launch
