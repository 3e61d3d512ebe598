// An HDF5 token dataset as ftrain-prep writes it: the root attributes (format, seq_len,
// vocab_size, task, label names, ...) and each split's datasets, opened and read as the
// trainer's loader reads them.
#include <algorithm>
#include <numeric>
#include <vector>

#include "data/token_dataset.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = ftrain::fuzz::write_scratch("tokens.h5", ftrain::fuzz::as_text(data, size));
  ftrain::fuzz::refusals_name(path.string(), [&] {
    for (const std::string& split : ftrain::data::list_splits(path)) {
      const ftrain::data::TokenDataset dataset(path, split);
      // The first and last few rows, as a loader's first batches would read them.
      std::vector<int64_t> rows;
      for (int64_t row = 0; row < std::min<int64_t>(dataset.num_rows(), 4); ++row) rows.push_back(row);
      for (int64_t row = std::max<int64_t>(4, dataset.num_rows() - 4); row < dataset.num_rows(); ++row) rows.push_back(row);
      const size_t cells = rows.size() * static_cast<size_t>(dataset.seq_len());
      std::vector<int32_t> ids(cells);
      dataset.read_rows(rows, ids.data());
      std::vector<uint8_t> bytes(cells);
      if (dataset.has_loss_mask()) dataset.read_loss_mask(rows, bytes.data());
      if (dataset.has_attention_mask()) dataset.read_attention_mask(rows, bytes.data());
      if (dataset.has_token_type_ids()) dataset.read_token_type_ids(rows, bytes.data());
      if (dataset.labels() != ftrain::data::LabelKind::kNone) {
        std::vector<int64_t> labels(cells);
        dataset.read_labels(rows, labels.data());
      }
    }
  });
  return 0;
}
