#include "tests/fuzz/fuzz_support.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace ftrain::fuzz {

namespace {

struct Scratch {
  Scratch() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base ? base : "/tmp") + "/ftrain-fuzz-XXXXXX";
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
    path = pattern;
  }
  ~Scratch() {
    if (std::getenv("FTRAIN_FUZZ_KEEP_SCRATCH")) return;  // to look at what a harness wrote
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::filesystem::path path;
};

}  // namespace

const std::filesystem::path& scratch_dir() {
  static const Scratch scratch;
  return scratch.path;
}

namespace {
int64_t refusal_count = 0;
std::string refusal_message;
}  // namespace

void count_refusal(const std::string& message) {
  ++refusal_count;
  refusal_message = message;
}
int64_t refusals() { return refusal_count; }
const std::string& last_refusal() { return refusal_message; }

void report_finding(const std::string& source, const std::string& what) {
  std::fprintf(stderr, "fuzz finding in %s: %s\n", source.c_str(), what.c_str());
  std::abort();
}

std::filesystem::path write_scratch(const std::string& name, std::string_view bytes) {
  const std::filesystem::path path = scratch_dir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error(path.string() + ": cannot write the fuzz input");
  return path;
}

}  // namespace ftrain::fuzz
