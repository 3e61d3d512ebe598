#pragma once
// How ftrain-prep assigns records to splits, for every task: the held-out splits come
// from their own files (--validation-input, --test-input), or are drawn from the --input
// records by fraction, in an order the seed fixes (data/sample_order.h).

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/sample_order.h"

namespace ftrain::data {

enum class PrepSplit { kTrain, kValidation, kTest };
const char* split_name(PrepSplit split);  // the split group's name in the file

// Throws std::runtime_error "<output>: already exists; pass --overwrite to replace it"
// unless `overwrite`; called before anything is read.
void check_output_free(const std::filesystem::path& output, bool overwrite);

class SplitAssignment {
 public:
  // Draws round(fraction x input_records) records for each held-out split, at least one
  // when its fraction is positive. `what` names the records in messages ("records",
  // "documents", "questions"). Throws std::runtime_error when there are none, or when
  // the drawn splits would leave none for training.
  SplitAssignment(int64_t input_records, double validation_fraction, double test_fraction, uint64_t seed,
                  const std::string& what);

  // The split of --input record `index` (numbered from 0 in input order).
  PrepSplit of(int64_t index) const;
  // Whether some --input records are drawn for `split`.
  bool draws(PrepSplit split) const;
  // The splits the output has: train, and each held-out split given as files or drawn.
  std::vector<PrepSplit> splits(bool validation_files, bool test_files) const;

 private:
  SampleOrder order_;
  int64_t validation_ = 0, test_ = 0;
};

}  // namespace ftrain::data
