// Extractive question answering's evaluation: the best answer span of each row (a
// window of the context), each question's answer over its windows, and the SQuAD
// metrics, exact match and F1, as the official evaluation script computes them.
//
// A row's best span is the pair of context positions (start <= end, at most
// max_answer_tokens apart) with the highest start + end logit: the search run_qa
// approximates with the 20 best starts and ends. A question's answer is its rows' best
// span; with null answers (SQuAD v2) it is empty when the lowest [CLS] score of its rows
// (start + end logit at position 0) beats that span, as run_qa decides with threshold 0.
// docs/evaluation.md gives the formulas.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ftrain::launch {

// SQuAD's normalisation: lower case, ASCII punctuation removed, the words a, an and the
// removed, whitespace collapsed to single spaces.
std::string squad_normalize(std::string_view text);
// Best over the gold answers (one empty answer when there are none, as in SQuAD v2):
// 1 when the normalised texts are equal; the F1 of their words (1 when both are empty,
// 0 when one is).
double squad_exact_match(std::string_view prediction, const std::vector<std::string>& answers);
double squad_f1(std::string_view prediction, const std::vector<std::string>& answers);

// One row's best span in characters of the context, and its [CLS] score.
struct SpanChoice {
  bool found = false;    // some context position pair qualifies
  double score = 0;      // start + end logit of the span
  int64_t begin = 0;     // characters [begin, end) of the context
  int64_t end = 0;
  double null_score = 0;  // start + end logit at position 0
};

// start_logits, end_logits: `width` positions of one row; offsets: 2 per position of
// the full row (begin, end character; -1 outside the context), width <= its length / 2.
SpanChoice best_span(std::span<const float> start_logits, std::span<const float> end_logits,
                     std::span<const int32_t> offsets, int64_t max_answer_tokens);

// What evaluation needs of one split of a question-answering dataset: each row's
// offsets and question, and each question's id, context and answers.
class AnswerSpans {
 public:
  // Reads the split's offset_mapping, example_index and examples. Throws
  // std::runtime_error naming the file and the line of `examples` that is malformed.
  AnswerSpans(const std::string& path, const std::string& split);

  int64_t num_rows() const { return static_cast<int64_t>(example_of_row_.size()); }
  int64_t seq_len() const { return seq_len_; }
  std::span<const int32_t> offsets(int64_t row) const;
  bool has_unanswerable() const { return has_unanswerable_; }

  // Per row, kValuesPerRow numbers: 1 when evaluated, then the SpanChoice (found, score,
  // begin, end, null_score); the rows no rank evaluated are all 0. The buffer the ranks
  // sum, each row filled by the rank that evaluated it.
  static constexpr int64_t kValuesPerRow = 6;
  static void record(std::span<double> values, int64_t row, const SpanChoice& choice);

  struct Scores {
    int64_t questions = 0;  // with at least one evaluated row
    double exact_match = 0;  // percent, as SQuAD reports it
    double f1 = 0;
    nlohmann::json predictions = nlohmann::json::object();  // id -> answer text
  };
  // null_answers: a question may be answered with nothing (SQuAD v2).
  Scores score(std::span<const double> values, bool null_answers) const;

 private:
  struct Question {
    std::string id;
    std::string context;
    std::vector<std::string> answers;
  };
  int64_t seq_len_ = 0;
  std::vector<int32_t> offsets_;         // rows x 2 seq_len
  std::vector<int64_t> example_of_row_;  // rows
  std::vector<Question> questions_;
  bool has_unanswerable_ = false;
};

}  // namespace ftrain::launch
