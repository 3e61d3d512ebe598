// Which pieces each rank writes (launch/checkpoint/pieces.h), checked by simulating
// every rank of a layout and assembling their pieces: each element of the global
// tensor must be written exactly once, with its value.
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <vector>

#include "launch/checkpoint/pieces.h"

BOOST_AUTO_TEST_SUITE(test_checkpoint_pieces)

using namespace ftrain::launch;

namespace {

at::Tensor reference(std::vector<int64_t> shape) {
  return torch::arange(c10::multiply_integers(shape), torch::kFloat32).reshape(shape) + 1;
}

// The tensor-parallel part with global indices `index` along `dim` (-1: a zero row).
at::Tensor part_of(const at::Tensor& global, int64_t dim, const std::vector<int64_t>& index) {
  std::vector<at::Tensor> slices;
  for (int64_t g : index)
    slices.push_back(g < 0 ? torch::zeros_like(global.select(dim, 0)) : global.select(dim, g));
  return torch::stack(slices, dim);
}

// Assembles the pieces of all simulated ranks; every element must come exactly once.
void check_assembles(const at::Tensor& global, const std::vector<HeldTensor>& ranks) {
  at::Tensor assembled = torch::zeros_like(global);
  at::Tensor count = torch::zeros(global.sizes(), torch::kInt32);
  for (const HeldTensor& held : ranks) {
    for (const Piece& piece : pieces_to_write(held)) {
      BOOST_TEST(piece.data.device().is_cpu());
      BOOST_TEST(piece.data.sizes().vec() == piece.shape);
      at::Tensor place = assembled, seen = count;
      for (size_t d = 0; d < piece.shape.size(); ++d) {
        place = place.narrow(d, piece.offset[d], piece.shape[d]);
        seen = seen.narrow(d, piece.offset[d], piece.shape[d]);
      }
      place.copy_(piece.data);
      seen.add_(1);
    }
  }
  BOOST_TEST(torch::equal(count, torch::ones_like(count)), "elements written other than once:\n" << count);
  BOOST_TEST(torch::equal(assembled, global));
}

HeldTensor whole(const at::Tensor& values, int writers, int writer) {
  return HeldTensor::whole("w", values, writers, writer);
}

// Flat ranges of `part` over `shards` ranks as ZeRO cuts them: the numel padded up to a
// multiple of shards, each rank taking one chunk (possibly short or empty).
std::vector<std::pair<int64_t, at::Tensor>> zero_ranges(const at::Tensor& part, int shards) {
  const int64_t numel = part.numel();
  const int64_t chunk = (numel + shards - 1) / shards;
  std::vector<std::pair<int64_t, at::Tensor>> out;
  for (int s = 0; s < shards; ++s) {
    const int64_t begin = std::min(numel, s * chunk), end = std::min(numel, (s + 1) * chunk);
    out.emplace_back(begin, part.reshape(-1).slice(0, begin, end).clone());
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_replicated_tensor_is_shared_by_its_writers) {
  for (int writers : {1, 2, 3, 4, 7}) {
    const at::Tensor global = reference({5, 3});
    std::vector<HeldTensor> ranks;
    for (int w = 0; w < writers; ++w) ranks.push_back(whole(global, writers, w));
    check_assembles(global, ranks);
    // Whole rows: each writer's pieces are one block.
    for (const auto& held : ranks) BOOST_TEST(pieces_to_write(held).size() <= 1u);
  }
  const at::Tensor vector = reference({10});
  check_assembles(vector, {whole(vector, 3, 0), whole(vector, 3, 1), whole(vector, 3, 2)});
}

// Column-parallel rows picked out of order (fused q/k/v heads) with vocabulary-style
// padding rows, each part replicated over two data-parallel ranks.
BOOST_AUTO_TEST_CASE(rows_split_out_of_order_with_padding_over_data_parallel_replicas) {
  const at::Tensor global = reference({6, 4});
  const std::vector<std::vector<int64_t>> index = {{0, 1, 4, 5}, {2, 3, -1, -1}};
  std::vector<HeldTensor> ranks;
  for (int tp = 0; tp < 2; ++tp)
    for (int dp = 0; dp < 2; ++dp) {
      HeldTensor held = whole(part_of(global, 0, index[tp]), 2, dp);
      held.global_shape = {6, 4};
      held.split_dim = 0;
      held.index = torch::tensor(index[tp], torch::kLong);
      ranks.push_back(held);
    }
  check_assembles(global, ranks);
}

// Row-parallel weights (split along columns) with ZeRO flat ranges that cut rows.
BOOST_AUTO_TEST_CASE(columns_split_with_zero_flat_ranges) {
  for (int shards : {1, 2, 3, 5}) {
    const at::Tensor global = reference({4, 6});
    std::vector<HeldTensor> ranks;
    for (int tp = 0; tp < 2; ++tp) {
      const std::vector<int64_t> index = tp == 0 ? std::vector<int64_t>{0, 1, 2} : std::vector<int64_t>{3, 4, 5};
      const at::Tensor part = part_of(global, 1, index);
      for (auto& [offset, values] : zero_ranges(part, shards)) {
        if (values.numel() == 0) continue;
        HeldTensor held = whole(values, 1, 0);
        held.global_shape = {4, 6};
        held.part_shape = {4, 3};
        held.flat_offset = offset;
        held.split_dim = 1;
        held.index = torch::tensor(index, torch::kLong);
        ranks.push_back(held);
      }
    }
    check_assembles(global, ranks);
  }
}

// Grouped-query key/value heads: four tensor-parallel ranks, two copies of each head.
BOOST_AUTO_TEST_CASE(replicated_key_value_heads_are_written_once) {
  const at::Tensor global = reference({4, 3});
  std::vector<HeldTensor> ranks;
  for (int tp = 0; tp < 4; ++tp) {
    const std::vector<int64_t> index = tp < 2 ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{2, 3};
    HeldTensor held = whole(part_of(global, 0, index), 2, tp % 2);
    held.global_shape = {4, 3};
    held.split_dim = 0;
    held.index = torch::tensor(index, torch::kLong);
    ranks.push_back(held);
  }
  check_assembles(global, ranks);
}

// A split vector (a column-parallel bias) under ZeRO with the vocabulary padding.
BOOST_AUTO_TEST_CASE(a_split_vector_under_zero) {
  const at::Tensor global = reference({7});
  std::vector<HeldTensor> ranks;
  const std::vector<std::vector<int64_t>> index = {{0, 1, 2, 3}, {4, 5, 6, -1}};
  for (int tp = 0; tp < 2; ++tp) {
    const at::Tensor part = part_of(global, 0, index[tp]);
    for (auto& [offset, values] : zero_ranges(part, 3)) {
      if (values.numel() == 0) continue;
      HeldTensor held = whole(values, 1, 0);
      held.global_shape = {7};
      held.part_shape = {4};
      held.flat_offset = offset;
      held.split_dim = 0;
      held.index = torch::tensor(index[tp], torch::kLong);
      ranks.push_back(held);
    }
  }
  check_assembles(global, ranks);
}

BOOST_AUTO_TEST_CASE(shapes_the_format_cannot_take_are_refused_by_name) {
  HeldTensor scalar = whole(torch::tensor(1.0f), 1, 0);
  scalar.name = "model/scale";
  try {
    pieces_to_write(scalar);
    BOOST_FAIL("a 0-d tensor was accepted");
  } catch (const std::invalid_argument& e) {
    BOOST_TEST(std::string(e.what()).find("model/scale") != std::string::npos, e.what());
  }
  HeldTensor wrong_index = whole(reference({2, 3}), 1, 0);
  wrong_index.global_shape = {4, 3};
  wrong_index.split_dim = 0;
  wrong_index.index = torch::tensor({0, 1, 2}, torch::kLong);
  BOOST_CHECK_THROW(pieces_to_write(wrong_index), std::invalid_argument);
  HeldTensor bad_writer = whole(reference({2, 3}), 2, 2);
  BOOST_CHECK_THROW(pieces_to_write(bad_writer), std::invalid_argument);
}

// A save written before training goes on reads host blocks where they lie: contiguous
// ones (whole rows, a row's run) are views of the held values, sharing their memory;
// a block of runs inside rows, which no view covers contiguously, is still copied. The
// default copies every block.
BOOST_AUTO_TEST_CASE(a_save_that_waits_reads_contiguous_host_blocks_in_place) {
  const at::Tensor global = reference({4, 6});
  const HeldTensor rows = whole(global, 1, 0);
  const auto in_place = pieces_to_write(rows, PieceCopies::where_needed);
  BOOST_REQUIRE(in_place.size() == 1u);
  BOOST_TEST(in_place[0].data.data_ptr() == global.data_ptr());
  BOOST_TEST(torch::equal(in_place[0].data, global));
  const auto copied = pieces_to_write(rows);
  BOOST_REQUIRE(copied.size() == 1u);
  BOOST_TEST(copied[0].data.data_ptr() != global.data_ptr());
  BOOST_TEST(torch::equal(copied[0].data, global));

  // Columns 0-2 and 4-5 of a part that pads column 3: blocks of rows x runs, strided.
  HeldTensor padded = whole(part_of(global, 1, {0, 1, 2, -1, 4, 5}), 1, 0);
  padded.split_dim = 1;
  padded.index = torch::tensor({0, 1, 2, -1, 4, 5}, torch::kLong);
  padded.global_shape = {4, 6};
  const auto blocks = pieces_to_write(padded, PieceCopies::where_needed);
  BOOST_TEST(blocks.size() == 2u);
  at::Tensor assembled = torch::zeros_like(global);
  for (const Piece& piece : blocks) {
    BOOST_TEST(piece.data.is_contiguous());
    BOOST_TEST(piece.data.data_ptr() != padded.values.data_ptr());
    assembled.narrow(0, piece.offset[0], piece.shape[0]).narrow(1, piece.offset[1], piece.shape[1]).copy_(piece.data);
  }
  at::Tensor expected = global.clone();
  expected.select(1, 3).zero_();
  BOOST_TEST(torch::equal(assembled, expected));
}

BOOST_AUTO_TEST_SUITE_END()  // test_checkpoint_pieces
