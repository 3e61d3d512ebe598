#include "launch/telemetry/memory.h"

#include <malloc.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ftrain::launch {
namespace {

// A field of /proc/self/status ("VmRSS", "VmHWM"), given there in kB, in bytes.
std::int64_t status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  if (!status) throw std::runtime_error("/proc/self/status: cannot open it to read the process's memory");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::istringstream values(line.substr(field.size() + 1));
    std::int64_t kilobytes = 0;
    if (!(values >> kilobytes)) break;
    return kilobytes * 1024;
  }
  throw std::runtime_error("/proc/self/status: no " + field + " line");
}

}  // namespace

std::int64_t resident_bytes() { return status_bytes("VmRSS"); }
std::int64_t peak_resident_bytes() { return status_bytes("VmHWM"); }

std::int64_t process_read_bytes() {
  std::ifstream io("/proc/self/io");
  std::string key;
  std::int64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

bool reset_peak_resident() {
  std::ofstream clear("/proc/self/clear_refs");
  if (!clear) return false;
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

PhaseMemory::PhaseMemory(DevicePeak device) : device_(std::move(device)) {}

void PhaseMemory::enter(const std::string& phase) {
  close();
  malloc_trim(0);
  per_phase_ = reset_peak_resident() && per_phase_;
  if (device_.reset) device_.reset();
  current_ = phase;
  current_start_ = resident_bytes();
  current_read_start_ = process_read_bytes();
}

void PhaseMemory::close() {
  if (current_.empty()) return;
  const std::int64_t host_peak = peak_resident_bytes();
  const std::int64_t device_peak = device_.read ? device_.read() : -1;
  const std::int64_t read_now = current_read_start_ < 0 ? -1 : process_read_bytes();
  auto [record, added] = records_.try_emplace(current_);
  if (added) {
    record->second.phase = current_;
    record->second.host_start_bytes = current_start_;
    record->second.device_peak_bytes = device_peak;
    order_.push_back(current_);
  }
  PhasePeak& peak = record->second;
  peak.host_peak_bytes = std::max(peak.host_peak_bytes, host_peak);
  peak.device_peak_bytes = std::max(peak.device_peak_bytes, device_peak);
  if (read_now >= 0) peak.read_bytes = std::max<std::int64_t>(peak.read_bytes, 0) + (read_now - current_read_start_);
  ++peak.entries;
  current_.clear();
}

std::vector<PhasePeak> PhaseMemory::peaks() const {
  std::vector<PhasePeak> out;
  for (const std::string& phase : order_) out.push_back(records_.at(phase));
  return out;
}

}  // namespace ftrain::launch
