// An INI configuration, as `ftrain --config` reads it: every key, its value and the
// checks across keys.
#include "launch/options.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source = "fuzz/run.ini";
  ftrain::fuzz::refusals_name(source, [&] {
    (void)ftrain::launch::parse_config_text(std::string(ftrain::fuzz::as_text(data, size)), source);
  });
  return 0;
}
