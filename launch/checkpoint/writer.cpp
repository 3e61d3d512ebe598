#include "launch/checkpoint/writer.h"

#include <chrono>
#include <exception>
#include <stdexcept>
#include <thread>

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {

struct CheckpointWriter::InFlight {
  int64_t step = 0;
  json meta;
  std::shared_ptr<PreparedRankFile> file;  // the host copies the writing thread reads
  std::future<json> written;               // the pieces' manifest records
};

CheckpointWriter::CheckpointWriter(CheckpointStore& store, dist::Group& world, bool async)
    : store_(store), world_(world), async_(async) {}

CheckpointWriter::~CheckpointWriter() = default;

void CheckpointWriter::agree(bool ok, const std::string& error, const std::string& what, int64_t step) {
  const int64_t failed = world_.all_reduce(static_cast<int64_t>(ok ? 0 : 1), dist::ReduceOp::Sum);
  if (failed == 0) return;
  const auto errors = world_.gather(ok ? std::string() : error, 0);
  std::string message;
  if (world_.rank() == 0) {
    store_.abandon(step);
    message = what + " of step " + std::to_string(step) + " failed on " + std::to_string(failed) + " rank(s):";
    for (size_t r = 0; r < errors.size(); ++r)
      if (!errors[r].empty()) message += "\n  rank " + std::to_string(r) + ": " + errors[r];
    message += "\n  (earlier checkpoints in " + store_.directory().string() + " are untouched)";
  }
  throw std::runtime_error(world_.broadcast(message, 0));
}

void CheckpointWriter::start(int64_t step, const std::vector<HeldTensor>& held, json meta) {
  if (pending()) poll(/*wait=*/true);
  const auto started = std::chrono::steady_clock::now();

  std::string error;
  try {
    if (world_.rank() == 0) store_.begin(step);
  } catch (const std::exception& e) {
    error = e.what();
  }
  agree(error.empty(), error, "creating the checkpoint directory", step);

  auto in_flight = std::make_unique<InFlight>();
  in_flight->step = step;
  in_flight->meta = std::move(meta);
  try {
    in_flight->file =
        // A save written before training goes on needs no copy of what is on the host.
        std::make_shared<PreparedRankFile>(prepare_rank_file(store_.staging_directory(step), world_.rank(), step, held,
                                                             async_ ? PieceCopies::always : PieceCopies::where_needed));
  } catch (const std::exception& e) {
    error = e.what();
  }
  agree(error.empty(), error, "laying out the checkpoint", step);
  last_bytes_ = in_flight->file->bytes();

  auto file = in_flight->file;
  if (async_) {
    // Detached, so that a job failing for another reason is not held up by a write
    // that hangs (a stuck filesystem); the thread owns the host copies it reads.
    std::packaged_task<json()> write([file] { return write_rank_file(*file); });
    in_flight->written = write.get_future();
    std::thread(std::move(write)).detach();
  } else {
    std::promise<json> done;
    try {
      done.set_value(write_rank_file(*file));
    } catch (...) {
      done.set_exception(std::current_exception());
    }
    in_flight->written = done.get_future();
  }
  in_flight_ = std::move(in_flight);
  last_blocking_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

std::optional<fs::path> CheckpointWriter::poll(bool wait) {
  if (!in_flight_) return std::nullopt;
  InFlight& save = *in_flight_;
  if (wait) save.written.wait();
  const bool written_here = save.written.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  if (world_.all_reduce(static_cast<int64_t>(written_here ? 0 : 1), dist::ReduceOp::Max) != 0) return std::nullopt;

  const int64_t step = save.step;
  json records;
  std::string error;
  try {
    records = save.written.get();
  } catch (const std::exception& e) {
    error = e.what();
  }
  save.file.reset();  // the host copies
  std::unique_ptr<InFlight> done = std::move(in_flight_);
  agree(error.empty(), error, "writing the checkpoint", step);

  // Rank 0 joins every rank's records into the index and commits.
  const auto all_records = world_.gather(records.dump(), 0);
  std::string committed;
  try {
    if (world_.rank() == 0) {
      json pieces = json::array();
      for (const auto& text : all_records)
        for (auto& record : json::parse(text)) pieces.push_back(std::move(record));
      committed = store_.commit(step, pieces, done->meta).string();
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  agree(error.empty(), error, "committing the checkpoint", step);
  return fs::path(world_.broadcast(committed, 0));
}

}  // namespace ftrain::launch
