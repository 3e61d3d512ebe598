// Metrics of generated text against a reference, for summarization and translation:
// ROUGE-1, ROUGE-2 and ROUGE-L as the rouge-score package computes them (with or without
// its Porter stemmer, NLTK's variant), and corpus BLEU as sacreBLEU computes it by
// default (13a tokenization, exponential smoothing). Both are kept as sums that data-parallel ranks add up before
// the scores are taken. docs/evaluation.md gives the formulas.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ftrain::launch {

// The Porter stemmer as NLTK's PorterStemmer (its default NLTK_EXTENSIONS mode) stems
// a lower-case word.
std::string porter_stem(std::string_view word);

// rouge-score's tokens: lower case, every run of characters other than a-z and 0-9 a
// separator; with `stem`, tokens longer than 3 characters stemmed (porter_stem).
std::vector<std::string> rouge_tokens(std::string_view text, bool stem = false);

// F-measures of one prediction against its reference: {ROUGE-1, ROUGE-2, ROUGE-L},
// each 2PR / (P + R) over n-gram overlap (or the longest common subsequence), 0 where
// undefined. `stem`: as rouge-score's use_stemmer (transformers' run_summarization
// sets it).
std::array<double, 3> rouge_f(std::string_view prediction, std::string_view reference, bool stem = false);

// sacreBLEU's 13a tokenization (mteval-v13a): punctuation and symbols split off, except
// periods and commas inside numbers and dashes after digits.
std::string bleu_13a(std::string_view line);

// Corpus BLEU's sufficient statistics: per n-gram order (1-4) the clipped matches and the
// prediction's n-grams, the predictions' and the references' lengths.
struct BleuCounts {
  std::array<int64_t, 4> correct{};
  std::array<int64_t, 4> total{};
  int64_t prediction_length = 0;
  int64_t reference_length = 0;

  void add(std::string_view prediction, std::string_view reference);
  std::vector<int64_t> as_vector() const;  // the buffer to all-reduce
  static BleuCounts from_vector(std::span<const int64_t> values);
  // 0-100: brevity penalty times the geometric mean of the precisions, an order with no
  // match counting 1 / (2^k total) for its k-th such order (sacreBLEU's "exp").
  double score() const;
};

}  // namespace ftrain::launch
