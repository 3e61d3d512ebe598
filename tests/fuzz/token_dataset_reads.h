// What the trainer's loader does with a token dataset, for the dataset harnesses: list
// the splits, open each, and read the first and last rows of every field.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/token_dataset.h"

namespace ftrain::fuzz {

inline void read_like_the_loader(const std::filesystem::path& path) {
  for (const std::string& split : data::list_splits(path)) {
    const data::TokenDataset dataset(path, split);
    std::vector<int64_t> rows;
    for (int64_t row = 0; row < std::min<int64_t>(dataset.num_rows(), 4); ++row) rows.push_back(row);
    for (int64_t row = std::max<int64_t>(4, dataset.num_rows() - 4); row < dataset.num_rows(); ++row)
      rows.push_back(row);
    const size_t cells = rows.size() * static_cast<size_t>(dataset.seq_len());
    std::vector<int32_t> ids(cells);
    dataset.read_rows(rows, ids.data());
    std::vector<uint8_t> bytes(cells);
    if (dataset.has_loss_mask()) dataset.read_loss_mask(rows, bytes.data());
    if (dataset.has_attention_mask()) dataset.read_attention_mask(rows, bytes.data());
    if (dataset.has_token_type_ids()) dataset.read_token_type_ids(rows, bytes.data());
    if (dataset.labels() != data::LabelKind::kNone) {
      std::vector<int64_t> labels(rows.size() * static_cast<size_t>(dataset.label_width()));
      dataset.read_labels(rows, labels.data());
    }
    if (dataset.has_answer_spans()) {  // question answering's evaluation reads these
      std::vector<int32_t> offsets(2 * cells);
      dataset.read_offset_mapping(rows, offsets.data());
      std::vector<int64_t> examples(rows.size());
      dataset.read_example_index(rows, examples.data());
      (void)dataset.read_examples();
    }
  }
}

}  // namespace ftrain::fuzz
