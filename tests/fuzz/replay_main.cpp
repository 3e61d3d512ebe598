// Runs a fuzz harness over files instead of under libFuzzer: every file named on the
// command line, or found below a named directory, is one input. `make test` replays
// each harness's seed corpus this way (tests/fuzz/corpus/<harness>/), with the
// ordinary compiler and no sanitizer, and with --accept-all, which fails unless the
// parser accepted every seed. The inputs fuzzing found (tests/fuzz/regressions/<harness>/)
// replay with --refuse-all: each must be refused with a clear error, never crash.
// `make fuzz` builds the libFuzzer form.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_support.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  bool accept_all = false, refuse_all = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--accept-all" || std::string(argv[i]) == "--refuse-all") {
      (std::string(argv[i]) == "--accept-all" ? accept_all : refuse_all) = true;
      continue;
    }
    const fs::path arg = argv[i];
    if (fs::is_directory(arg)) {
      for (const auto& entry : fs::recursive_directory_iterator(arg))
        if (entry.is_regular_file()) inputs.push_back(entry.path());
    } else if (fs::is_regular_file(arg)) {
      inputs.push_back(arg);
    } else {
      std::cerr << arg.string() << ": no such file or directory\n";
      return 2;
    }
  }
  if (inputs.empty()) {
    std::cerr << "no inputs to replay (pass corpus files or directories)\n";
    return 2;
  }
  std::sort(inputs.begin(), inputs.end());
  for (const fs::path& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::cout << "replaying " << path.string() << " (" << bytes.size() << " bytes)" << std::endl;
    const int64_t before = ftrain::fuzz::refusals();
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (accept_all && ftrain::fuzz::refusals() != before) {
      std::cerr << path.string() << ": refused, but every seed should be accepted: " << ftrain::fuzz::last_refusal()
                << "\n";
      return 1;
    }
    if (refuse_all && ftrain::fuzz::refusals() == before) {
      std::cerr << path.string() << ": accepted, but every input here should be refused\n";
      return 1;
    }
  }
  std::cout << inputs.size() << " inputs replayed, none crashed, " << ftrain::fuzz::refusals() << " refused\n";
  return 0;
}
