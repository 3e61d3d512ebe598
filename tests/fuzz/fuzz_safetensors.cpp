// A .safetensors file: its 8-byte header length, the JSON header (dtypes, shapes,
// offsets, metadata) and the data the offsets point into.
#include "model/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = ftrain::fuzz::write_scratch("model.safetensors", ftrain::fuzz::as_text(data, size));
  ftrain::fuzz::refusals_name(path.string(), [&] {
    // Every tensor is a view of the mapping: summing reads each byte the header claims.
    for (const auto& [name, tensor] : ftrain::model::load_safetensors(path)) (void)tensor.sum().item<double>();
  });
  return 0;
}
