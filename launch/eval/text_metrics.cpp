#include "launch/eval/text_metrics.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "data/tokenizer.h"

namespace ftrain::launch {
namespace {

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

// ---- the Porter stemmer, NLTK's variant ----

bool is_vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

// Whether each letter is a consonant: not a vowel, and a y only after a vowel (or first).
std::vector<bool> consonants(std::string_view word) {
  std::vector<bool> flags(word.size());
  for (size_t i = 0; i < word.size(); ++i)
    flags[i] = is_vowel(word[i]) ? false : word[i] == 'y' ? (i == 0 || !flags[i - 1]) : true;
  return flags;
}

bool consonant_at(std::string_view word, size_t i) { return consonants(word.substr(0, i + 1))[i]; }

// m: the number of vowel-consonant sequences, [C](VC)^m[V].
int measure(std::string_view stem) {
  const std::vector<bool> flags = consonants(stem);
  int m = 0;
  for (size_t i = 1; i < flags.size(); ++i) m += !flags[i - 1] && flags[i] ? 1 : 0;
  return m;
}

bool contains_vowel(std::string_view stem) {
  const std::vector<bool> flags = consonants(stem);
  return std::find(flags.begin(), flags.end(), false) != flags.end();
}

bool ends_double_consonant(std::string_view word) {
  return word.size() >= 2 && word[word.size() - 1] == word[word.size() - 2] && consonant_at(word, word.size() - 1);
}

// *o: consonant-vowel-consonant, the last not w, x or y; NLTK also takes a 2-letter vowel-consonant.
bool ends_cvc(std::string_view word) {
  const size_t n = word.size();
  if (n >= 3 && consonant_at(word, n - 3) && !consonant_at(word, n - 2) && consonant_at(word, n - 1) &&
      word[n - 1] != 'w' && word[n - 1] != 'x' && word[n - 1] != 'y')
    return true;
  return n == 2 && !consonant_at(word, 0) && consonant_at(word, 1);
}

struct Rule {
  std::string_view suffix;  // "*d": a double consonant
  std::string replacement;
  std::function<bool(std::string_view stem)> condition;  // empty: always
};

// The first rule whose suffix the word has decides: replaced when its condition holds,
// the word unchanged otherwise.
std::string apply_rules(const std::string& word, const std::vector<Rule>& rules) {
  for (const Rule& rule : rules) {
    if (rule.suffix == "*d" && ends_double_consonant(word)) {
      const std::string stem = word.substr(0, word.size() - 2);
      return !rule.condition || rule.condition(stem) ? stem + rule.replacement : word;
    }
    if (word.ends_with(rule.suffix)) {
      const std::string stem = word.substr(0, word.size() - rule.suffix.size());
      return !rule.condition || rule.condition(stem) ? stem + rule.replacement : word;
    }
  }
  return word;
}

bool positive(std::string_view stem) { return measure(stem) > 0; }
bool above_one(std::string_view stem) { return measure(stem) > 1; }

std::string step1a(const std::string& word) {
  if (word.ends_with("ies") && word.size() == 4) return word.substr(0, 1) + "ie";
  return apply_rules(word, {{"sses", "ss", {}}, {"ies", "i", {}}, {"ss", "ss", {}}, {"s", "", {}}});
}

std::string step1b(const std::string& word) {
  if (word.ends_with("ied")) return word.substr(0, word.size() - 3) + (word.size() == 4 ? "ie" : "i");
  if (word.ends_with("eed")) {
    const std::string stem = word.substr(0, word.size() - 3);
    return measure(stem) > 0 ? stem + "ee" : word;
  }
  std::string stem;
  bool removed = false;
  for (const std::string_view suffix : {std::string_view("ed"), std::string_view("ing")}) {
    if (word.ends_with(suffix) && contains_vowel(std::string_view(word).substr(0, word.size() - suffix.size()))) {
      stem = word.substr(0, word.size() - suffix.size());
      removed = true;
      break;
    }
  }
  if (!removed) return word;
  const char last = stem.back();
  return apply_rules(stem, {{"at", "ate", {}},
                            {"bl", "ble", {}},
                            {"iz", "ize", {}},
                            {"*d", std::string(1, last), [last](std::string_view) {
                               return last != 'l' && last != 's' && last != 'z';
                             }},
                            {"", "e", [](std::string_view s) { return measure(s) == 1 && ends_cvc(s); }}});
}

std::string step1c(const std::string& word) {
  return apply_rules(word, {{"y", "i", [](std::string_view s) { return s.size() > 1 && consonant_at(s, s.size() - 1); }}});
}

std::string step2(const std::string& word) {
  if (word.ends_with("alli") && positive(std::string_view(word).substr(0, word.size() - 4)))
    return step2(word.substr(0, word.size() - 4) + "al");
  const std::string logi_stem = word.size() >= 3 ? word.substr(0, word.size() - 3) : "";
  return apply_rules(word, {{"ational", "ate", positive}, {"tional", "tion", positive}, {"enci", "ence", positive},
                            {"anci", "ance", positive},   {"izer", "ize", positive},     {"bli", "ble", positive},
                            {"alli", "al", positive},     {"entli", "ent", positive},    {"eli", "e", positive},
                            {"ousli", "ous", positive},   {"ization", "ize", positive},  {"ation", "ate", positive},
                            {"ator", "ate", positive},    {"alism", "al", positive},     {"iveness", "ive", positive},
                            {"fulness", "ful", positive}, {"ousness", "ous", positive},  {"aliti", "al", positive},
                            {"iviti", "ive", positive},   {"biliti", "ble", positive},   {"fulli", "ful", positive},
                            {"logi", "log", [logi_stem](std::string_view) { return positive(logi_stem); }}});
}

std::string step3(const std::string& word) {
  return apply_rules(word, {{"icate", "ic", positive}, {"ative", "", positive}, {"alize", "al", positive},
                            {"iciti", "ic", positive}, {"ical", "ic", positive}, {"ful", "", positive},
                            {"ness", "", positive}});
}

std::string step4(const std::string& word) {
  return apply_rules(word, {{"al", "", above_one},   {"ance", "", above_one}, {"ence", "", above_one},
                            {"er", "", above_one},   {"ic", "", above_one},   {"able", "", above_one},
                            {"ible", "", above_one}, {"ant", "", above_one},  {"ement", "", above_one},
                            {"ment", "", above_one}, {"ent", "", above_one},
                            {"ion", "", [](std::string_view s) {
                               return measure(s) > 1 && !s.empty() && (s.back() == 's' || s.back() == 't');
                             }},
                            {"ou", "", above_one},   {"ism", "", above_one},  {"ate", "", above_one},
                            {"iti", "", above_one},  {"ous", "", above_one},  {"ive", "", above_one},
                            {"ize", "", above_one}});
}

std::string step5(const std::string& word) {
  std::string out = word;
  if (out.ends_with("e")) {
    const std::string stem = out.substr(0, out.size() - 1);
    if (measure(stem) > 1 || (measure(stem) == 1 && !ends_cvc(stem))) out = stem;
  }
  if (out.ends_with("ll") && measure(std::string_view(out).substr(0, out.size() - 1)) > 1) out.pop_back();
  return out;
}

}  // namespace

std::string porter_stem(std::string_view word) {
  static const std::map<std::string, std::string, std::less<>> kIrregular = {
      {"sky", "sky"},         {"skies", "sky"},     {"dying", "die"},     {"lying", "lie"},       {"tying", "tie"},
      {"news", "news"},       {"innings", "inning"}, {"inning", "inning"}, {"outings", "outing"}, {"outing", "outing"},
      {"cannings", "canning"}, {"canning", "canning"}, {"howe", "howe"},   {"proceed", "proceed"}, {"exceed", "exceed"},
      {"succeed", "succeed"}};
  if (const auto found = kIrregular.find(word); found != kIrregular.end()) return found->second;
  std::string stem(word);
  if (stem.size() <= 2) return stem;
  return step5(step4(step3(step2(step1c(step1b(step1a(stem)))))));
}

std::vector<std::string> rouge_tokens(std::string_view text, bool stem) {
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
  if (stem)
    for (std::string& token : tokens)
      if (token.size() > 3) token = porter_stem(token);
  return tokens;
}

std::array<double, 3> rouge_f(std::string_view prediction, std::string_view reference, bool stem) {
  const std::vector<std::string> predicted = rouge_tokens(prediction, stem), expected = rouge_tokens(reference, stem);
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
  return data::collapse_whitespace(out);
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
