// Peak memory of a process, measured from the process itself, phase by phase.
//
// Host memory is the resident set: /proc/self/status's VmRSS now and VmHWM, its peak.
// Writing "5" to /proc/self/clear_refs resets VmHWM to the resident set of the moment
// (Linux 4.0 and later), so each phase's peak is its own, not the largest since the
// process started. Pages of memory-mapped files that are resident count, as they take
// memory too. Device memory is the caching allocator's peak of allocated bytes, reset
// per phase the same way, when a function to read and reset it is given.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace ftrain::launch {

// The process's resident set now, and its peak since the process started or the last
// reset_peak_resident(). Throws std::runtime_error when /proc/self/status cannot be read.
std::int64_t resident_bytes();
std::int64_t peak_resident_bytes();
// Bytes the process has read through system calls (read, pread and the like: files,
// pipes, sockets; not pages of memory-mapped files) since it started: /proc/self/io's
// rchar. -1 where the kernel does not report it.
std::int64_t process_read_bytes();
// Resets the peak to the resident set of the moment. False where the kernel does not
// allow it (the peak then keeps counting from the process's start).
bool reset_peak_resident();

// The peak of one phase on this rank.
struct PhasePeak {
  std::string phase;
  std::int64_t host_start_bytes = 0;  // resident when the phase first began
  std::int64_t host_peak_bytes = 0;   // the largest resident set during it
  std::int64_t device_peak_bytes = -1;  // the device allocator's peak; -1 without a device
  int entries = 0;                      // how often the phase was entered (saves: one per save)
  std::int64_t read_bytes = -1;         // process_read_bytes() during it, summed over entries
};

// Attributes the process's peaks to named phases: enter(phase) closes the phase in
// progress (its peak is read and merged into its record, the maximum over every time
// it was entered) and resets the peaks for the next one. A phase entered again keeps
// one record, so periodic saves between training steps give one "save" and one "train".
//
// enter() first gives the heap's free memory back to the system (malloc_trim). ftrain
// keeps freed memory in its heap between steps (launch/main.cpp), so without it a
// phase would be charged for what an earlier one freed, and a transient whole-model
// buffer would stay resident for the rest of the run. So enter a phase when it
// begins, not every step of it: each trim costs the next step its page faults.
class PhaseMemory {
 public:
  // Read and reset the device's peak allocated bytes; empty without a device.
  struct DevicePeak {
    std::function<std::int64_t()> read;
    std::function<void()> reset;
  };
  explicit PhaseMemory(DevicePeak device = {});

  void enter(const std::string& phase);
  // Closes the phase in progress; enter() opens the next.
  void close();
  // The phases closed so far, in the order they were first entered.
  std::vector<PhasePeak> peaks() const;
  // The phase in progress; empty when none is.
  const std::string& current() const { return current_; }

  // Enters a phase for its lifetime, then the one that was in progress again.
  class Scope {
   public:
    Scope(PhaseMemory& memory, const std::string& phase) : memory_(memory), previous_(memory.current()) {
      memory_.enter(phase);
    }
    ~Scope() {
      if (previous_.empty()) memory_.close();
      else memory_.enter(previous_);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    PhaseMemory& memory_;
    std::string previous_;
  };

  // Whether the host peaks are per phase (reset_peak_resident() works here); when not,
  // each is the largest since the process started.
  bool per_phase() const { return per_phase_; }

 private:
  DevicePeak device_;
  bool per_phase_ = true;
  std::string current_;
  std::int64_t current_start_ = 0;
  std::int64_t current_read_start_ = -1;
  std::map<std::string, PhasePeak> records_;
  std::vector<std::string> order_;
};

}  // namespace ftrain::launch
