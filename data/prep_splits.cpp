#include "data/prep_splits.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "data/dataset_format.h"

namespace ftrain::data {
namespace {

int64_t drawn_count(double fraction, int64_t records) {
  if (fraction <= 0) return 0;
  return std::max<int64_t>(1, std::llround(fraction * static_cast<double>(records)));
}

int64_t checked_records(int64_t records, const std::string& what) {
  if (records <= 0) throw std::runtime_error("no " + what + " in --input");
  return records;
}

}  // namespace

const char* split_name(PrepSplit split) {
  switch (split) {
    case PrepSplit::kTrain: return format::kSplitTrain;
    case PrepSplit::kValidation: return format::kSplitValidation;
    case PrepSplit::kTest: return format::kSplitTest;
  }
  return format::kSplitTrain;
}

void check_output_free(const std::filesystem::path& output, bool overwrite) {
  std::error_code error;
  if (std::filesystem::exists(output, error) && !overwrite)
    throw std::runtime_error(output.string() + ": already exists; pass --overwrite to replace it");
}

SplitAssignment::SplitAssignment(int64_t input_records, double validation_fraction, double test_fraction,
                                 uint64_t seed, const std::string& what)
    : order_(checked_records(input_records, what), seed),
      validation_(drawn_count(validation_fraction, input_records)),
      test_(drawn_count(test_fraction, input_records)) {
  if (validation_ + test_ >= input_records) {
    throw std::runtime_error("--input has " + std::to_string(input_records) + " " + what + "; " +
                             std::to_string(validation_) + " for validation and " + std::to_string(test_) +
                             " for test would leave none for training");
  }
}

PrepSplit SplitAssignment::of(int64_t index) const {
  const int64_t position = order_.position_of(index, 0);
  if (position < validation_) return PrepSplit::kValidation;
  if (position < validation_ + test_) return PrepSplit::kTest;
  return PrepSplit::kTrain;
}

bool SplitAssignment::draws(PrepSplit split) const {
  return split == PrepSplit::kValidation ? validation_ > 0 : split == PrepSplit::kTest ? test_ > 0 : true;
}

std::vector<PrepSplit> SplitAssignment::splits(bool validation_files, bool test_files) const {
  std::vector<PrepSplit> out = {PrepSplit::kTrain};
  if (validation_files || draws(PrepSplit::kValidation)) out.push_back(PrepSplit::kValidation);
  if (test_files || draws(PrepSplit::kTest)) out.push_back(PrepSplit::kTest);
  return out;
}

}  // namespace ftrain::data
