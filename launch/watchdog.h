// A rank that waits forever in a collective for a rank that hangs (a stuck GPU, a
// deadlocked file system, a stopped process) would hold the whole job until the
// scheduler's time limit. The watchdog bounds that: the training loop names each long
// operation as it starts it, and a background thread aborts the whole job, naming
// this rank and the operation, once one has run longer than the timeout.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace ftrain::launch {

class Watchdog {
 public:
  // timeout_seconds <= 0: never fires (no thread is started). `rank` is the world rank
  // named in the message.
  Watchdog(double timeout_seconds, int rank);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // The operation now running, e.g. "step 12"; replaces the previous one and restarts
  // the clock.
  void begin(std::string operation);
  // Nothing is running (between operations, or waiting on purpose).
  void end();

  // An operation inside another (a save or an evaluation within a step): watched on
  // its own clock, then the outer one is watched again, its clock restarted.
  class Scope {
   public:
    Scope(Watchdog& watchdog, std::string operation);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Watchdog& watchdog_;
    std::string outer_;
  };

 private:
  void watch();

  using Clock = std::chrono::steady_clock;
  const double timeout_seconds_;
  const int rank_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::string operation_;  // empty: nothing running
  Clock::time_point started_;
  bool stopping_ = false;
  std::thread thread_;
};

// For the watchdog's tests: with FTRAIN_TEST_HANG=<rank>:<phase>, that rank stops for
// good here, as a hung process would, when it enters that phase.
void hang_if_asked(int rank, const std::string& phase);

}  // namespace ftrain::launch
