#include "launch/eval/squad.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>

#include "data/token_dataset.h"
#include "data/tokenizer.h"

using nlohmann::json;

namespace ftrain::launch {
namespace {

using data::tokenizer_parts::decode_utf8;
using data::tokenizer_parts::scan_utf8;

// A character of Python's \w.
bool is_word(char32_t c) { return c == '_' || data::tokenizer_parts::is_alphanumeric(c); }

struct Character {
  char32_t code;
  std::size_t begin, end;  // bytes of it
};

std::vector<Character> characters(std::string_view text) {
  std::vector<Character> out;
  for (std::size_t pos = 0; pos < text.size();) {
    const auto unit = scan_utf8(text, pos);
    out.push_back({unit.valid ? decode_utf8(text.substr(pos, unit.length)) : U'\uFFFD', pos, pos + unit.length});
    pos += unit.length;
  }
  return out;
}

std::vector<std::string> words_of(std::string_view text) {
  const std::string normalized = squad_normalize(text);
  std::vector<std::string> words;
  for (std::size_t start = 0; start < normalized.size();) {
    const std::size_t space = normalized.find(' ', start);
    const std::size_t end = space == std::string::npos ? normalized.size() : space;
    if (end > start) words.push_back(normalized.substr(start, end - start));
    start = end + 1;
  }
  return words;
}

double f1_of(std::string_view prediction, std::string_view answer) {
  const std::vector<std::string> predicted = words_of(prediction), gold = words_of(answer);
  if (predicted.empty() || gold.empty()) return predicted == gold ? 1.0 : 0.0;
  std::map<std::string, int64_t> counts;
  for (const auto& word : gold) ++counts[word];
  int64_t common = 0;
  for (const auto& word : predicted) {
    auto found = counts.find(word);
    if (found != counts.end() && found->second > 0) --found->second, ++common;
  }
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(predicted.size());
  const double recall = static_cast<double>(common) / static_cast<double>(gold.size());
  return 2 * precision * recall / (precision + recall);
}

template <typename Score>
double best_over(const std::vector<std::string>& answers, Score score) {
  if (answers.empty()) return score(std::string_view());
  double best = 0;
  for (const auto& answer : answers) best = std::max(best, score(std::string_view(answer)));
  return best;
}

}  // namespace

std::string squad_normalize(std::string_view text) {
  // Lower case, then ASCII punctuation out.
  static constexpr char kPunctuation[] = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";  // Python's string.punctuation
  std::string stripped;
  for (const char c : data::lowercase(text))
    if (!(c > 0 && std::strchr(kPunctuation, c) != nullptr)) stripped.push_back(c);
  // Whole words a, an, the become a space (Python's \b(a|an|the)\b); then whitespace
  // runs become one space, none at the ends.
  const std::vector<Character> chars = characters(stripped);
  std::string spaced;
  for (std::size_t i = 0; i < chars.size();) {
    if (is_word(chars[i].code)) {
      std::size_t j = i;
      while (j < chars.size() && is_word(chars[j].code)) ++j;
      const std::string_view word(stripped.data() + chars[i].begin, chars[j - 1].end - chars[i].begin);
      spaced += word == "a" || word == "an" || word == "the" ? std::string_view(" ") : word;
      i = j;
      continue;
    }
    spaced.append(stripped, chars[i].begin, chars[i].end - chars[i].begin);
    ++i;
  }
  return data::collapse_whitespace(spaced);
}

double squad_exact_match(std::string_view prediction, const std::vector<std::string>& answers) {
  const std::string predicted = squad_normalize(prediction);
  return best_over(answers, [&](std::string_view answer) { return predicted == squad_normalize(answer) ? 1.0 : 0.0; });
}

double squad_f1(std::string_view prediction, const std::vector<std::string>& answers) {
  return best_over(answers, [&](std::string_view answer) { return f1_of(prediction, answer); });
}

SpanChoice best_span(std::span<const float> start_logits, std::span<const float> end_logits,
                     std::span<const int32_t> offsets, int64_t max_answer_tokens) {
  const auto width = static_cast<int64_t>(start_logits.size());
  if (end_logits.size() != start_logits.size() || offsets.size() < 2 * start_logits.size())
    throw std::invalid_argument("best_span: logits and offsets disagree in length");
  SpanChoice choice;
  if (width > 0) choice.null_score = static_cast<double>(start_logits[0]) + end_logits[0];
  const auto in_context = [&](int64_t t) { return offsets[static_cast<std::size_t>(2 * t)] >= 0; };
  for (int64_t s = 0; s < width; ++s) {
    if (!in_context(s)) continue;
    for (int64_t e = s; e < std::min(width, s + max_answer_tokens); ++e) {
      if (!in_context(e)) continue;
      const double score = static_cast<double>(start_logits[static_cast<std::size_t>(s)]) +
                           end_logits[static_cast<std::size_t>(e)];
      if (!choice.found || score > choice.score) {
        choice.found = true;
        choice.score = score;
        choice.begin = offsets[static_cast<std::size_t>(2 * s)];
        choice.end = offsets[static_cast<std::size_t>(2 * e + 1)];
      }
    }
  }
  return choice;
}

AnswerSpans::AnswerSpans(const std::string& path, const std::string& split) {
  const data::TokenDataset dataset(path, split);
  if (!dataset.has_answer_spans())
    throw std::runtime_error(path + ": split '/" + split + "' has no offset_mapping, example_index and examples; "
                             "question answering evaluates with them (ftrain-prep --task question_answering)");
  seq_len_ = dataset.seq_len();
  const int64_t rows = dataset.num_rows();
  std::vector<int64_t> all(static_cast<std::size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) all[static_cast<std::size_t>(i)] = i;
  offsets_.resize(static_cast<std::size_t>(rows * 2 * seq_len_));
  example_of_row_.resize(static_cast<std::size_t>(rows));
  dataset.read_offset_mapping(all, offsets_.data());
  dataset.read_example_index(all, example_of_row_.data());

  const std::string text = dataset.read_examples();
  const std::string where = path + ": '/" + split + "/examples' line ";
  for (std::size_t start = 0, line = 1; start < text.size(); ++line) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    Question question;
    try {
      const json entry = json::parse(text.substr(start, end - start));
      question.id = entry.at("id").get<std::string>();
      question.context = entry.at("context").get<std::string>();
      question.answers = entry.at("answers").at("text").get<std::vector<std::string>>();
    } catch (const json::exception& error) {
      throw std::runtime_error(where + std::to_string(line) + ": " + error.what());
    }
    if (question.answers.empty()) has_unanswerable_ = true;
    questions_.push_back(std::move(question));
    start = end + 1;
  }
  const auto characters_in = [](const std::string& context) {
    return static_cast<int64_t>(data::character_starts(context).size()) - 1;
  };
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t question = example_of_row_[static_cast<std::size_t>(row)];
    if (question < 0 || question >= static_cast<int64_t>(questions_.size()))
      throw std::runtime_error(path + ": '/" + split + "/example_index' row " + std::to_string(row) + " is " +
                               std::to_string(question) + ", outside the " + std::to_string(questions_.size()) +
                               " examples");
    const int64_t length = characters_in(questions_[static_cast<std::size_t>(question)].context);
    for (int64_t t = 0; t < seq_len_; ++t) {
      const int32_t begin = offsets_[static_cast<std::size_t>(row * 2 * seq_len_ + 2 * t)];
      const int32_t end = offsets_[static_cast<std::size_t>(row * 2 * seq_len_ + 2 * t + 1)];
      if (begin < 0 && end < 0) continue;
      if (begin < 0 || end < begin || end > length)
        throw std::runtime_error(path + ": '/" + split + "/offset_mapping' row " + std::to_string(row) +
                                 " position " + std::to_string(t) + " is [" + std::to_string(begin) + ", " +
                                 std::to_string(end) + "), outside its context's " + std::to_string(length) +
                                 " characters");
    }
  }
}

std::span<const int32_t> AnswerSpans::offsets(int64_t row) const {
  return std::span(offsets_).subspan(static_cast<std::size_t>(row * 2 * seq_len_), static_cast<std::size_t>(2 * seq_len_));
}

void AnswerSpans::record(std::span<double> values, int64_t row, const SpanChoice& choice) {
  double* at = values.data() + row * kValuesPerRow;
  at[0] = 1;
  at[1] = choice.found ? 1 : 0;
  at[2] = choice.score;
  at[3] = static_cast<double>(choice.begin);
  at[4] = static_cast<double>(choice.end);
  at[5] = choice.null_score;
}

AnswerSpans::Scores AnswerSpans::score(std::span<const double> values, bool null_answers) const {
  if (static_cast<int64_t>(values.size()) != num_rows() * kValuesPerRow)
    throw std::invalid_argument("AnswerSpans::score: expected " + std::to_string(num_rows() * kValuesPerRow) + " values");
  struct Best {
    bool evaluated = false, found = false;
    double score = 0, null_score = std::numeric_limits<double>::infinity();
    int64_t begin = 0, end = 0;
  };
  std::vector<Best> best(questions_.size());
  for (int64_t row = 0; row < num_rows(); ++row) {
    const double* at = values.data() + row * kValuesPerRow;
    if (at[0] == 0) continue;
    Best& question = best[static_cast<std::size_t>(example_of_row_[static_cast<std::size_t>(row)])];
    question.evaluated = true;
    question.null_score = std::min(question.null_score, at[5]);
    if (at[1] != 0 && (!question.found || at[2] > question.score)) {
      question.found = true;
      question.score = at[2];
      question.begin = static_cast<int64_t>(at[3]);
      question.end = static_cast<int64_t>(at[4]);
    }
  }
  Scores scores;
  double exact = 0, f1 = 0;
  for (std::size_t i = 0; i < questions_.size(); ++i) {
    if (!best[i].evaluated) continue;
    const Question& question = questions_[i];
    std::string answer;
    if (best[i].found && !(null_answers && best[i].null_score > best[i].score)) {
      const std::vector<std::size_t> starts = data::character_starts(question.context);
      const std::size_t begin = starts[static_cast<std::size_t>(best[i].begin)];
      const std::size_t end = starts[static_cast<std::size_t>(best[i].end)];
      answer = question.context.substr(begin, end - begin);
    }
    exact += squad_exact_match(answer, question.answers);
    f1 += squad_f1(answer, question.answers);
    scores.predictions[question.id] = answer;
    ++scores.questions;
  }
  if (scores.questions > 0) {
    scores.exact_match = 100.0 * exact / static_cast<double>(scores.questions);
    scores.f1 = 100.0 * f1 / static_cast<double>(scores.questions);
  }
  return scores;
}

}  // namespace ftrain::launch
