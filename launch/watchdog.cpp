#include "launch/watchdog.h"

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <cstdio>

#include "dist/mpi_session.h"

namespace ftrain::launch {

Watchdog::Watchdog(double timeout_seconds, int rank) : timeout_seconds_(timeout_seconds), rank_(rank) {
  if (timeout_seconds_ > 0) thread_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::begin(std::string operation) {
  std::lock_guard<std::mutex> lock(mutex_);
  operation_ = std::move(operation);
  started_ = Clock::now();
}

void Watchdog::end() {
  std::lock_guard<std::mutex> lock(mutex_);
  operation_.clear();
}

Watchdog::Scope::Scope(Watchdog& watchdog, std::string operation) : watchdog_(watchdog) {
  std::lock_guard<std::mutex> lock(watchdog_.mutex_);
  outer_ = std::exchange(watchdog_.operation_, std::move(operation));
  watchdog_.started_ = Clock::now();
}

Watchdog::Scope::~Scope() {
  std::lock_guard<std::mutex> lock(watchdog_.mutex_);
  watchdog_.operation_ = std::move(outer_);
  watchdog_.started_ = Clock::now();
}

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  // Checked a few times per timeout, at most once a second.
  const auto period = std::chrono::duration<double>(std::min(1.0, timeout_seconds_ / 4));
  while (!stopping_) {
    wake_.wait_for(lock, period);
    if (stopping_ || operation_.empty()) continue;
    const double elapsed = std::chrono::duration<double>(Clock::now() - started_).count();
    if (elapsed <= timeout_seconds_) continue;
    char message[512];
    std::snprintf(message, sizeof(message),
                  "ftrain: error on rank %d: watchdog: %s has not finished after %.0f s (run.step_timeout = %g); "
                  "another rank may have died or hung; aborting the job\n",
                  rank_, operation_.c_str(), elapsed, timeout_seconds_);
    std::fputs(message, stderr);
    std::fflush(stderr);
    dist::abort_job(3);
  }
}

void hang_if_asked(int rank, const std::string& phase) {
  static const std::string hang = [] {
    const char* text = std::getenv("FTRAIN_TEST_HANG");
    return std::string(text ? text : "");
  }();
  if (!hang.empty() && hang == std::to_string(rank) + ":" + phase)
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace ftrain::launch
