#include "launch/telemetry/sample_log.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace ftrain::launch {

SampleLog::SampleLog(const std::string& run_dir, bool enabled, const dist::Layout& layout, int rank)
    : dp_rank_(layout.dp_rank(rank)), dp_size_(layout.dp_size) {
  if (!enabled || layout.tp_rank(rank) != 0) return;
  const std::filesystem::path dir = std::filesystem::path(run_dir) / "samples";
  std::filesystem::create_directories(dir);
  file_ = data::AppendFile(dir / ("dp_" + std::to_string(dp_rank_) + ".jsonl"));
}

void SampleLog::add(const std::vector<int64_t>& rows) {
  if (file_.is_open()) rows_.insert(rows_.end(), rows.begin(), rows.end());
}

void SampleLog::end_step(int64_t step, int64_t start_step) {
  if (!file_.is_open()) return;
  file_.write(nlohmann::json{{"step", step}, {"start", start_step}, {"dp_rank", dp_rank_}, {"dp_size", dp_size_},
                             {"rows", rows_}}
                  .dump() +
              "\n");
  rows_.clear();
}

}  // namespace ftrain::launch
