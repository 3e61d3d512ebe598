#pragma once
// ftrain-prep --task question_answering: extractive question answering (SQuAD v1.1 and
// v2.0), prepared as Hugging Face's run_qa recipe prepares it.
//
// Inputs are SQuAD's nested JSON ({"data": [{"paragraphs": [{"context", "qas": [{"id",
// "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}) or JSON
// Lines with one question per line ({"id", "context", "question", "answers": {"text":
// [...], "answer_start": [...]}}, the layout of the `datasets` SQuAD files, or answers
// as a list of {"text", "answer_start"}). answer_start counts characters (code points).
//
// Each question becomes one or more rows: [CLS] question [SEP] context window [SEP],
// the context cut into windows of the room --seq-len leaves, consecutive windows
// sharing --doc-stride tokens. A row's labels are the first and last position of the
// first answer when the window holds all of it, else the [CLS] position (as for an
// unanswerable question; position 0 for a tokenizer without [CLS], such as GPT-2's). One case differs from run_qa on purpose: an answer that starts
// at a window's last context token is labelled there, where run_qa's scan runs on over
// [SEP] and the padding and labels a position outside the context. Each row keeps its context positions' character offsets and
// the example it came from, and the split keeps every example's id, context and answers
// (docs/dataset-format.md), so evaluation maps predicted spans back to text.

#include "data/prep_tasks.h"

namespace ftrain::data {

// Writes the dataset and prints the summary. Throws std::runtime_error naming the file,
// the example (line, or its place in the nested JSON) and the field of bad input (an
// answer_start that does not point at its text, an empty context, a question that
// leaves no room for the context), before the output appears.
void prepare_qa_dataset(const TaskPrepOptions& options);

}  // namespace ftrain::data
