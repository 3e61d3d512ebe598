#include "launch/checkpoint/pieces.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

namespace ftrain::launch {
namespace {

// A block in the 2-D view: global rows [global_row, + height), columns
// [global_col, + width), read from the part's rows [part_row, + height) and columns
// [part_col, + width).
struct Block {
  int64_t global_row, global_col, height, width, part_row, part_col;
};

// A run of consecutive global indices along one dimension of the part: global
// [global_col, + width) at local [part_col, + width).
struct Run {
  int64_t global_col, width, part_col;
};

}  // namespace

HeldTensor HeldTensor::whole(std::string name, const at::Tensor& values, int writers, int writer) {
  HeldTensor held;
  held.name = std::move(name);
  held.values = values.detach();
  held.global_shape = values.sizes().vec();
  held.part_shape = held.global_shape;
  held.writers = writers;
  held.writer = writer;
  return held;
}

std::vector<Piece> pieces_to_write(const HeldTensor& held, PieceCopies copies) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("checkpoint: tensor '" + held.name + "' " + what);
  };
  const auto& global = held.global_shape;
  const auto& part = held.part_shape;
  if (global.empty() || global.size() > 2)
    fail("has " + std::to_string(global.size()) + " dimensions; checkpoints store tensors of 1 or 2");
  if (part.size() != global.size()) fail("has a part of another rank than the global tensor");
  if (held.writers < 1 || held.writer < 0 || held.writer >= held.writers) fail("has writer out of range");

  // The 2-D view: rows x columns; a vector is one row, split along its columns.
  const bool vector = global.size() == 1;
  const int64_t rows = vector ? 1 : part[0];
  const int64_t cols = vector ? part[0] : part[1];
  const int64_t global_rows = vector ? 1 : global[0];
  const int64_t global_cols = vector ? global[0] : global[1];
  int64_t split = held.split_dim;
  if (split >= static_cast<int64_t>(global.size())) fail("is split along a dimension it does not have");
  if (vector && split == 0) split = 1;

  auto indices_of = [&](int64_t view_dim, int64_t extent, int64_t global_extent) {
    std::vector<int64_t> index(extent);
    if (split != view_dim) {
      if (extent != global_extent) fail("has a part whose unsplit dimension differs from the global one");
      for (int64_t i = 0; i < extent; ++i) index[i] = i;
      return index;
    }
    at::Tensor given = held.index.to(at::kCPU).to(at::kLong).contiguous();
    if (given.numel() != extent) fail("has an index of the wrong length");
    std::copy(given.data_ptr<int64_t>(), given.data_ptr<int64_t>() + extent, index.begin());
    for (int64_t g : index)
      if (g >= global_extent) fail("has an index beyond its global shape");
    return index;
  };
  const std::vector<int64_t> row_index = indices_of(0, rows, global_rows);
  const std::vector<int64_t> col_index = indices_of(1, cols, global_cols);

  at::Tensor flat = held.values.contiguous().view(-1);
  const int64_t held_numel = flat.numel();
  if (held.flat_offset < 0 || held.flat_offset + held_numel > rows * cols) fail("holds values beyond its part");

  // This writer's chunk of the held range: whole rows when the whole part is held.
  const bool whole_part = held.flat_offset == 0 && held_numel == rows * cols && cols > 0;
  const int64_t unit = whole_part ? cols : 1;
  const int64_t units = held_numel / unit;
  const int64_t per_writer = (units + held.writers - 1) / held.writers;
  const int64_t begin = held.flat_offset + std::min(units, per_writer * held.writer) * unit;
  const int64_t end = held.flat_offset + std::min(units, per_writer * (held.writer + 1)) * unit;

  // Runs of consecutive global indices over local positions [from, to), padding skipped.
  auto runs_of = [](const std::vector<int64_t>& index, int64_t from, int64_t to) {
    std::vector<Run> runs;
    for (int64_t i = from; i < to; ++i) {
      if (index[i] < 0) continue;
      if (!runs.empty() && runs.back().part_col + runs.back().width == i &&
          runs.back().global_col + runs.back().width == index[i])
        ++runs.back().width;
      else
        runs.push_back({index[i], 1, i});
    }
    return runs;
  };

  // The chunk is a partial first row, whole middle rows and a partial last row. The
  // whole rows are blocks of (runs of rows) x (runs of columns), found in O(rows + cols).
  std::vector<Block> blocks;
  if (begin < end) {
    const int64_t first = begin / cols, last = (end - 1) / cols;
    const int64_t first_col = begin % cols, last_col = (end - 1) % cols + 1;
    auto partial_row = [&](int64_t r, int64_t c0, int64_t c1) {
      if (row_index[r] < 0) return;
      for (const Run& run : runs_of(col_index, c0, c1))
        blocks.push_back({row_index[r], run.global_col, 1, run.width, r, run.part_col});
    };
    int64_t whole_from = first, whole_to = last + 1;  // rows [whole_from, whole_to) are whole
    if (first == last && (first_col != 0 || last_col != cols)) {
      partial_row(first, first_col, last_col);
      whole_to = whole_from;
    } else {
      if (first_col != 0) partial_row(whole_from++, first_col, cols);
      if (last_col != cols) partial_row(--whole_to, 0, last_col);
    }
    if (whole_from < whole_to) {
      const auto column_runs = runs_of(col_index, 0, cols);
      for (const Run& rows_run : runs_of(row_index, whole_from, whole_to))
        for (const Run& run : column_runs)
          blocks.push_back({rows_run.global_col, run.global_col, rows_run.width, run.width, rows_run.part_col,
                            run.part_col});
    }
  }

  std::vector<Piece> pieces;
  pieces.reserve(blocks.size());
  for (const Block& b : blocks) {
    at::Tensor view = flat.as_strided({b.height, b.width}, {cols, 1},
                                      flat.storage_offset() + b.part_row * cols + b.part_col - held.flat_offset);
    Piece piece;
    if (vector) {
      piece.offset = {b.global_col};
      piece.shape = {b.width};
    } else {
      piece.offset = {b.global_row, b.global_col};
      piece.shape = {b.height, b.width};
    }
    if (copies == PieceCopies::where_needed && view.is_cpu() && view.is_contiguous()) {
      piece.data = view.view(piece.shape);
    } else {
      piece.data = torch::empty(piece.shape, flat.options().device(at::kCPU));
      piece.data.view({b.height, b.width}).copy_(view);
    }
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

}  // namespace ftrain::launch
