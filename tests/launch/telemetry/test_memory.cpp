// The per-phase peaks are the process's own: memory touched inside a phase raises
// that phase's peak by at least its size, and the next phase starts from what is
// resident then, not from the largest peak so far.
#include <boost/test/unit_test.hpp>

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "launch/telemetry/memory.h"

BOOST_AUTO_TEST_SUITE(test_memory)

using ftrain::launch::PhaseMemory;
using ftrain::launch::PhasePeak;

namespace {

constexpr std::int64_t kMiB = 1 << 20;

// Maps `bytes` of anonymous memory, writes every page so it is resident, and unmaps
// it, so the memory leaves the process at once (the heap might keep it).
void touch_and_free(std::int64_t bytes) {
  void* block = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(block != MAP_FAILED);
  std::memset(block, 1, static_cast<size_t>(bytes));
  munmap(block, static_cast<size_t>(bytes));
}

const PhasePeak& find(const std::vector<PhasePeak>& peaks, const std::string& phase) {
  for (const PhasePeak& peak : peaks)
    if (peak.phase == phase) return peak;
  BOOST_FAIL("no record of phase " + phase);
  return peaks.front();
}

}  // namespace

BOOST_AUTO_TEST_CASE(resident_set_is_read_from_proc) {
  const std::int64_t before = ftrain::launch::resident_bytes();
  BOOST_TEST(before > 0);
  BOOST_TEST(ftrain::launch::peak_resident_bytes() >= before);
}

BOOST_AUTO_TEST_CASE(each_phase_has_its_own_peak) {
  int device_resets = 0;
  std::int64_t device_peak = 0;
  PhaseMemory memory(PhaseMemory::DevicePeak{[&] { return device_peak; }, [&] { ++device_resets; device_peak = 0; }});

  memory.enter("big");
  touch_and_free(96 * kMiB);
  device_peak = 7;
  memory.enter("small");
  touch_and_free(16 * kMiB);
  device_peak = 3;
  memory.enter("big");  // entered again: one record, the larger peak kept
  touch_and_free(8 * kMiB);
  memory.close();

  BOOST_REQUIRE_MESSAGE(memory.per_phase(), "/proc/self/clear_refs did not reset VmHWM, so peaks cannot be per phase");
  const std::vector<PhasePeak> peaks = memory.peaks();
  BOOST_REQUIRE_EQUAL(peaks.size(), 2u);
  BOOST_TEST(peaks[0].phase == "big");  // the order of first entry
  const PhasePeak& big = find(peaks, "big");
  const PhasePeak& small = find(peaks, "small");
  BOOST_TEST(big.entries == 2);
  BOOST_TEST(small.entries == 1);
  // Each peak holds what its phase touched (less a little the kernel may not count yet).
  BOOST_TEST(big.host_peak_bytes - big.host_start_bytes >= 90 * kMiB);
  BOOST_TEST(small.host_peak_bytes - small.host_start_bytes >= 15 * kMiB);
  // ... and no more: the small phase did not inherit the big one's peak.
  BOOST_TEST(small.host_peak_bytes - small.host_start_bytes < 48 * kMiB);
  BOOST_TEST(big.device_peak_bytes == 7);
  BOOST_TEST(small.device_peak_bytes == 3);
  BOOST_TEST(device_resets == 3);
}

BOOST_AUTO_TEST_CASE(without_a_device_the_device_peak_is_minus_one) {
  PhaseMemory memory;
  memory.enter("only");
  memory.close();
  memory.close();  // closing twice changes nothing
  const std::vector<PhasePeak> peaks = memory.peaks();
  BOOST_REQUIRE_EQUAL(peaks.size(), 1u);
  BOOST_TEST(peaks[0].device_peak_bytes == -1);
  BOOST_TEST(peaks[0].entries == 1);
}

BOOST_AUTO_TEST_CASE(a_scope_returns_to_the_phase_before_it) {
  PhaseMemory memory;
  memory.enter("train");
  {
    PhaseMemory::Scope save(memory, "save");
    BOOST_TEST(memory.current() == "save");
  }
  BOOST_TEST(memory.current() == "train");
  memory.close();
  BOOST_TEST(memory.current().empty());
  const std::vector<PhasePeak> peaks = memory.peaks();
  BOOST_REQUIRE_EQUAL(peaks.size(), 2u);
  BOOST_TEST(find(peaks, "train").entries == 2);
  BOOST_TEST(find(peaks, "save").entries == 1);
}

// The bytes a phase read are the process's reads during it (/proc/self/io): reading a
// file of 6 MiB (twice, in two entries of the phase) counts 12 MiB there, and a phase
// that reads nothing counts almost nothing.
BOOST_AUTO_TEST_CASE(each_phase_counts_the_bytes_it_read) {
  const std::string path = "/tmp/ftrain_test_memory_reads.bin";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    const std::string chunk(kMiB, 'x');
    for (int i = 0; i < 6; ++i) out << chunk;
  }
  auto read_file = [&] {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> buffer(kMiB);
    std::int64_t total = 0;
    while (in.read(buffer.data(), kMiB) || in.gcount() > 0) total += in.gcount();
    BOOST_REQUIRE(total == 6 * kMiB);
  };
  BOOST_REQUIRE(ftrain::launch::process_read_bytes() >= 0);
  PhaseMemory memory;
  memory.enter("reading");
  read_file();
  memory.enter("quiet");
  memory.enter("reading");
  read_file();
  memory.close();
  const auto peaks = memory.peaks();
  BOOST_TEST(find(peaks, "reading").read_bytes >= 12 * kMiB);
  BOOST_TEST(find(peaks, "reading").read_bytes < 13 * kMiB);
  BOOST_TEST(find(peaks, "quiet").read_bytes < kMiB / 4);
  std::remove(path.c_str());
}

BOOST_AUTO_TEST_SUITE_END()  // test_memory
