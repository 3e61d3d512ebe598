// An HDF5 token dataset as ftrain-prep writes it, as raw bytes: whatever HDF5 makes of
// them, then the root attributes, each split's datasets and their first and last rows,
// as the trainer's loader reads them. Mutated bytes mostly exercise libhdf5's own
// parser; fuzz_token_dataset_fields varies the values ftrain checks instead.
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/token_dataset_reads.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = ftrain::fuzz::write_scratch("tokens.h5", ftrain::fuzz::as_text(data, size));
  ftrain::fuzz::refusals_name(path.string(), [&] { ftrain::fuzz::read_like_the_loader(path); });
  return 0;
}
