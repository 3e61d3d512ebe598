// A tokenizer.json, BPE, Unigram or WordPiece (load_tokenizer picks by model.type), then one
// encode and decode through whatever it describes.
#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = ftrain::fuzz::write_scratch("tokenizer.json", ftrain::fuzz::as_text(data, size));
  ftrain::fuzz::refusals_name(file.parent_path().string(), [&] {
    const auto tokenizer = ftrain::data::load_tokenizer(file.parent_path());
    const std::vector<int32_t> ids = tokenizer->encode("Hello, world! Don't café 日本 <|endoftext|> [SEP]\n\t 42");
    (void)tokenizer->decode(ids, /*skip_special_tokens=*/false);
    (void)tokenizer->decode(ids, /*skip_special_tokens=*/true);
  });
  return 0;
}
