// What every fuzz harness shares: one scratch directory per process, into which each
// input is written as the file its parser reads, and the rule that a parser may refuse
// an input only with an exception that says what is wrong. Anything else (a crash, a
// sanitizer report, an allocation past libFuzzer's -malloc_limit_mb) is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <filesystem>
#include <string>
#include <string_view>

namespace ftrain::fuzz {

// A directory of this process's own, created at the first call and removed at exit
// (kept when FTRAIN_FUZZ_KEEP_SCRATCH is set).
const std::filesystem::path& scratch_dir();

// Counts a refusal and keeps its message: the replay driver checks that a seed corpus
// is accepted whole, so that the seeds reach past the first check.
void count_refusal(const std::string& message);
int64_t refusals();
const std::string& last_refusal();

// Prints what went wrong and aborts, which libFuzzer and the replay driver report.
[[noreturn]] void report_finding(const std::string& source, const std::string& what);

// Writes `bytes` to scratch_dir() / name (replacing it) and returns the path.
std::filesystem::path write_scratch(const std::string& name, std::string_view bytes);

// Runs `parse`. It may refuse the input by throwing an exception derived from
// std::exception whose message names `source` (the file, or what stands for it); a
// refusal that does not name it, or std::bad_alloc, aborts: both are findings.
template <typename Parse>
void refusals_name(const std::string& source, Parse&& parse) {
  try {
    parse();
  } catch (const std::bad_alloc&) {
    report_finding(source, "std::bad_alloc: the input made the parser allocate without bound");
  } catch (const std::exception& error) {
    if (std::string_view(error.what()).find(source) == std::string_view::npos)
      report_finding(source, std::string("a refusal that does not name the input: ") + error.what());
    count_refusal(error.what());
  }
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace ftrain::fuzz

// Every harness defines this (libFuzzer's entry point); the replay driver calls it.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
