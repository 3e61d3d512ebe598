#include "launch/checkpoint/checkpointer.h"

#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {

Checkpointer::Checkpointer(const fs::path& directory, int64_t keep, bool async, dist::Group& world,
                           const StateRegistry& registry)
    : world_(world), registry_(registry), store_(directory, keep), async_(async) {
  writer_ = std::make_unique<CheckpointWriter>(store_, world_, async);
}

void Checkpointer::save(int64_t step) {
  writer_->start(step, registry_.tensors(), world_.rank() == 0 ? registry_.meta() : json());
  last_saved_step_ = step;
  if (async_ && world_.rank() == 0)
    std::printf("ftrain: saving the checkpoint of step %lld in the background (training paused %.3f s)\n",
                static_cast<long long>(step), writer_->last_blocking_seconds());
}

std::optional<fs::path> Checkpointer::commit(bool wait) {
  if (!writer_->pending()) return std::nullopt;
  auto committed = writer_->poll(wait);
  if (committed && world_.rank() == 0) std::cout << "ftrain: saved checkpoint " << committed->string() << std::endl;
  return committed;
}

std::optional<json> Checkpointer::load(const fs::path& checkpoint, const std::vector<std::string>& groups,
                                       std::string& problem) {
  json meta;
  std::string error;
  try {
    meta = registry_.read(checkpoint, groups);
  } catch (const std::exception& e) {
    error = e.what();
  }
  const int64_t failed = world_.all_reduce(static_cast<int64_t>(error.empty() ? 0 : 1), dist::ReduceOp::Sum);
  if (failed == 0) {
    registry_.after_read(groups);
    return meta;
  }
  const auto errors = world_.gather(error, 0);
  std::string message;
  for (size_t r = 0; r < errors.size(); ++r)
    if (!errors[r].empty()) message += (message.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": " + errors[r]);
  problem = world_.broadcast(message, 0);
  return std::nullopt;
}

std::vector<fs::path> Checkpointer::candidates(const std::string& resume) {
  std::string listed;
  if (world_.rank() == 0) {
    if (resume == "auto") {
      const auto all = store_.committed();
      for (auto it = all.rbegin(); it != all.rend(); ++it) listed += it->string() + "\n";
    } else {
      listed = resume + "\n";
    }
  }
  listed = world_.broadcast(listed, 0);
  std::vector<fs::path> out;
  std::istringstream lines(listed);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) out.emplace_back(line);
  return out;
}

std::optional<Checkpointer::Loaded> Checkpointer::resume(const std::string& resume) {
  const auto tried = candidates(resume);
  if (tried.empty()) return std::nullopt;
  std::vector<std::string> problems;
  for (const auto& candidate : tried) {
    std::string problem;
    if (auto meta = load(candidate, {"model", "optim"}, problem)) {
      try {
        registry_.restore(*meta);
      } catch (const std::exception& e) {
        throw std::runtime_error(candidate.string() + ": " + e.what());
      }
      if (world_.rank() == 0) set_aside_after(candidate);
      last_saved_step_ = meta->at("step").get<int64_t>();
      return Loaded{candidate, std::move(*meta)};
    }
    problems.push_back(candidate.string() + ": " + problem);
    if (world_.rank() == 0) std::cerr << "ftrain: skipping checkpoint " << problems.back() << "\n";
  }
  std::string all;
  for (const auto& problem : problems) all += "\n  " + problem;
  throw std::runtime_error("no checkpoint could be loaded (run.resume = " + resume + "):" + all);
}

void Checkpointer::set_aside_after(const fs::path& resumed) {
  for (const auto& dir : store_.committed()) {
    if (dir.filename().string() <= resumed.filename().string()) continue;
    fs::path aside = dir;
    aside += ".stale";
    fs::remove_all(aside);
    fs::rename(dir, aside);
    std::cout << "ftrain: set aside " << dir.string() << " (newer than the checkpoint resumed from)\n";
  }
}

void Checkpointer::mark_best(int64_t step, const json& record) {
  if (world_.rank() == 0) store_.mark_best(store_.final_directory(step), record);
  world_.barrier();
}

std::optional<fs::path> Checkpointer::best() {
  std::string chosen;
  if (world_.rank() == 0)
    if (auto found = store_.best()) chosen = found->string();
  chosen = world_.broadcast(chosen, 0);
  if (chosen.empty()) return std::nullopt;
  return fs::path(chosen);
}

}  // namespace ftrain::launch
