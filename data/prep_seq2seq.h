#pragma once
// ftrain-prep --task seq2seq: source and target texts for an encoder-decoder
// (summarization, translation), prepared as transformers' run_summarization and
// run_translation prepare them: the source, after an optional prefix ("summarize: ",
// "translate English to German: "), tokenized with the model's special tokens and cut to
// --seq-len; the target likewise cut to --target-len, padded with -100 (no loss).
// Columns may name a nested key ("translation.de"). Inputs: JSON Lines, CSV or TSV.

#include "data/prep_tasks.h"

namespace ftrain::data {

// Writes the dataset and prints the summary. Throws std::runtime_error naming the file,
// line and column of bad input (a missing column, an empty target) before the output
// appears.
void prepare_seq2seq_dataset(const TaskPrepOptions& options);

}  // namespace ftrain::data
