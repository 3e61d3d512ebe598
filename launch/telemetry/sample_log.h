// run.log_samples: the dataset rows each step read, so a run's data order can be
// checked and replayed. One JSON line per step in <run.dir>/samples/dp_<d>.jsonl,
// written by tensor-parallel rank 0 of data-parallel rank d:
//   {"step", "start" (the step this process started from), "dp_rank", "dp_size", "rows"}.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/durable_file.h"
#include "dist/layout.h"

namespace ftrain::launch {

class SampleLog {
 public:
  // Writes nothing unless `enabled` and `rank` is its tensor-parallel group's rank 0;
  // then creates <run_dir>/samples.
  SampleLog(const std::string& run_dir, bool enabled, const dist::Layout& layout, int rank);

  // The rows of one micro-batch of the current step (-1: a filler row).
  void add(const std::vector<int64_t>& rows);
  // Writes the step's line and starts the next step's rows.
  void end_step(int64_t step, int64_t start_step);

 private:
  data::AppendFile file_;
  std::vector<int64_t> rows_;
  int dp_rank_ = 0;
  int dp_size_ = 1;
};

}  // namespace ftrain::launch
