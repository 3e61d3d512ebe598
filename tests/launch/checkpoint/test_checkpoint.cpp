#define BOOST_TEST_MODULE launch_checkpoint
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "launch/checkpoint/store.h"

namespace fs = std::filesystem;
using namespace ftrain::launch;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("ftrain_test_checkpoint_" + name);
  fs::remove_all(dir);
  return dir;
}

NamedTensors sample_state(float scale) {
  return {{"model/w", torch::arange(12, torch::kFloat32).reshape({3, 4}) * scale},
          {"model/b", torch::full({4}, scale)},
          {"optim/exp_avg/w", torch::ones({3, 4}) * scale * 2},
          {"rng/cpu", torch::arange(10, torch::kUInt8).reshape({2, 5})},
          {"half", torch::full({2}, scale, torch::kBFloat16)}};
}

// Flips one bit inside the stored bytes of `tensor`, found by searching the file for
// its exact byte pattern, so the damage lands in tensor data and not in HDF5 metadata.
void flip_bit_in_tensor_data(const fs::path& file, const at::Tensor& tensor) {
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string pattern(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
  const size_t at = bytes.find(pattern);
  BOOST_REQUIRE(at != std::string::npos);
  bytes[at + pattern.size() / 2] ^= 0x04;
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}

// Every tensor held whole by `writers` ranks, of which this is `writer`.
std::vector<HeldTensor> held_whole(const NamedTensors& tensors, int writers, int writer) {
  std::vector<HeldTensor> held;
  for (const auto& [name, tensor] : tensors) held.push_back(HeldTensor::whole(name, tensor, writers, writer));
  return held;
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_with_metadata) {
  CheckpointStore store(fresh_dir("roundtrip"), 3);
  auto saved = store.save(7, sample_state(1.5f), {{"tokens_seen", 123}});
  BOOST_TEST(fs::exists(saved / "COMMITTED"));
  BOOST_TEST(!fs::exists(saved.string() + ".tmp"));

  NamedTensors into = sample_state(0.0f);
  auto meta = load_checkpoint(saved, into);
  BOOST_TEST(meta.at("step").get<int>() == 7);
  BOOST_TEST(meta.at("tokens_seen").get<int>() == 123);
  const NamedTensors expected = sample_state(1.5f);
  for (size_t i = 0; i < into.size(); ++i) BOOST_TEST(torch::equal(into[i].second, expected[i].second), into[i].first);
  std::string latest;
  std::ifstream(store.directory() / "latest") >> latest;
  BOOST_TEST(latest == "step_00000007");
}

BOOST_AUTO_TEST_CASE(keeps_the_newest_k_and_ignores_uncommitted) {
  CheckpointStore store(fresh_dir("keep"), 2);
  for (int step : {10, 20, 30}) store.save(step, sample_state(step), {});
  auto committed = store.committed();
  BOOST_REQUIRE(committed.size() == 2u);
  BOOST_TEST(committed[0].filename() == "step_00000020");
  BOOST_TEST(committed[1].filename() == "step_00000030");

  // A checkpoint whose marker was never written (the writer died) does not exist.
  fs::remove(committed[1] / "COMMITTED");
  BOOST_TEST(store.latest_valid()->filename() == "step_00000020");
  // Nor does a half-written temporary directory.
  fs::create_directories(store.directory() / "step_00000040.tmp");
  BOOST_TEST(store.latest_valid()->filename() == "step_00000020");
}

// The best checkpoint survives `keep`; the newest `keep` others are kept beside it.
BOOST_AUTO_TEST_CASE(the_best_checkpoint_is_kept_beyond_keep) {
  CheckpointStore store(fresh_dir("best"), 2);
  BOOST_TEST(!store.best().has_value());
  const fs::path second = store.save(20, sample_state(20), {});
  store.mark_best(second, {{"metric", "accuracy"}, {"value", 0.9}});
  for (int step : {30, 40, 50}) store.save(step, sample_state(step), {});
  std::vector<std::string> names;
  for (const auto& path : store.committed()) names.push_back(path.filename().string());
  BOOST_TEST((names == std::vector<std::string>{"step_00000020", "step_00000040", "step_00000050"}));
  BOOST_REQUIRE(store.best().has_value());
  BOOST_TEST(store.best()->filename() == "step_00000020");

  // A newer best releases the old one to the ordinary rule.
  store.mark_best(store.committed().back(), {{"metric", "accuracy"}, {"value", 0.95}});
  names.clear();
  for (const auto& path : store.committed()) names.push_back(path.filename().string());
  BOOST_TEST((names == std::vector<std::string>{"step_00000040", "step_00000050"}));
  // A best record pointing at a checkpoint that is gone is no best.
  fs::remove(store.directory() / "step_00000050" / "COMMITTED");
  BOOST_TEST(!store.best().has_value());
}

BOOST_AUTO_TEST_CASE(corrupt_checkpoint_is_detected_and_skipped) {
  CheckpointStore store(fresh_dir("corrupt"), 3);
  store.save(1, sample_state(1), {});
  auto newest = store.save(2, sample_state(2), {});
  flip_bit_in_tensor_data(newest / "rank_00000.h5", sample_state(2)[0].second.contiguous());
  std::string problem;
  BOOST_TEST(!verify_checkpoint(newest, &problem));
  BOOST_TEST(problem.find("rank_00000.h5") != std::string::npos, problem);
  BOOST_TEST(problem.find("model/w") != std::string::npos, problem);
  BOOST_TEST(problem.find("checksum") != std::string::npos, problem);
  BOOST_TEST(store.latest_valid()->filename() == "step_00000001");

  // A truncated file is refused with its name.
  auto older = store.committed().front();
  fs::resize_file(older / "rank_00000.h5", fs::file_size(older / "rank_00000.h5") / 2);
  BOOST_TEST(!verify_checkpoint(older, &problem));
  BOOST_TEST(problem.find("rank_00000.h5") != std::string::npos, problem);
  BOOST_TEST(!store.latest_valid().has_value());

  // So is a checkpoint whose index is gone.
  auto third = store.save(3, sample_state(3), {});
  fs::remove(third / "state.h5");
  BOOST_TEST(!verify_checkpoint(third, &problem));
  BOOST_TEST(problem.find("state.h5") != std::string::npos, problem);
}

BOOST_AUTO_TEST_CASE(shape_mismatch_names_the_tensor) {
  CheckpointStore store(fresh_dir("shape"), 1);
  auto dir = store.save(1, sample_state(1), {});
  NamedTensors wrong = {{"model/w", torch::zeros({4, 3})}};
  try {
    load_checkpoint(dir, wrong);
    BOOST_FAIL("a (3, 4) tensor loaded into (4, 3)");
  } catch (const std::exception& e) {
    BOOST_TEST(std::string(e.what()).find("model/w") != std::string::npos, e.what());
  }
  NamedTensors missing = {{"model/absent", torch::zeros({1})}};
  BOOST_CHECK_THROW(load_checkpoint(dir, missing), std::runtime_error);
}

// Two ranks, each writing half of every tensor into its own file, committed by one:
// the loader assembles the halves, and a save missing a rank's pieces is refused.
BOOST_AUTO_TEST_CASE(pieces_from_several_ranks_assemble_into_global_tensors) {
  CheckpointStore store(fresh_dir("ranks"), 2);
  const NamedTensors state = sample_state(3.0f);
  auto held_by = [&](int rank) { return held_whole(state, 2, rank); };
  const fs::path staging = store.begin(5);
  nlohmann::json pieces = nlohmann::json::array();
  for (int rank : {0, 1})
    for (auto& record : write_rank_file(prepare_rank_file(staging, rank, 5, held_by(rank)))) pieces.push_back(record);
  BOOST_TEST(fs::exists(staging / "rank_00001.h5"));
  const fs::path saved = store.commit(5, pieces, {{"tokens_seen", 9}});
  BOOST_TEST(verify_checkpoint(saved));
  NamedTensors into = sample_state(0.0f);
  BOOST_TEST(load_checkpoint(saved, into).at("tokens_seen").get<int>() == 9);
  for (size_t i = 0; i < into.size(); ++i) BOOST_TEST(torch::equal(into[i].second, state[i].second), into[i].first);
  BOOST_TEST(torch::equal(read_checkpoint_tensor(saved, "model/w"), state[0].second));
  BOOST_TEST(checkpoint_tensor_names(saved).size() == state.size());

  // Rank 1's pieces missing: nothing is committed, and the earlier checkpoint stays.
  const fs::path retry = store.begin(6);
  const auto only_rank0 = write_rank_file(prepare_rank_file(retry, 0, 6, held_by(0)));
  try {
    store.commit(6, only_rank0, {});
    BOOST_FAIL("a checkpoint missing half of its values was committed");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("of the") != std::string::npos, e.what());
  }
  store.abandon(6);
  BOOST_TEST(!fs::exists(retry));
  BOOST_TEST(store.committed().size() == 1u);
  BOOST_TEST((store.latest_valid() == saved));
}

// A rank reads only its tensor-parallel part: the pieces that overlap it, whatever the
// pieces the writers made. A damaged piece fails exactly the parts that need it.
BOOST_AUTO_TEST_CASE(a_part_reads_only_the_pieces_it_overlaps) {
  CheckpointStore store(fresh_dir("parts"), 2);
  const at::Tensor global = torch::arange(48, torch::kFloat32).reshape({8, 6});
  const at::Tensor bias = torch::arange(8, torch::kFloat32);
  // Four writers of whole rows: rows 0-1, 2-3, 4-5, 6-7 are four pieces.
  const fs::path staging = store.begin(1);
  nlohmann::json pieces = nlohmann::json::array();
  for (int rank = 0; rank < 4; ++rank) {
    const auto held = held_whole({{"model/w", global}, {"model/b", bias}}, 4, rank);
    for (auto& record : write_rank_file(prepare_rank_file(staging, rank, 1, held))) pieces.push_back(record);
  }
  const fs::path saved = store.commit(1, pieces, {});

  CheckpointReader reader(saved);
  // Rows out of order with a padding entry, as a column-parallel part with vocabulary padding.
  const at::Tensor rows = torch::tensor({5, 0, 1, -1}, torch::kLong);
  at::Tensor part = torch::full({4, 6}, -7.0f);
  reader.read_into("model/w", part, 0, rows);
  BOOST_TEST(torch::equal(part.narrow(0, 0, 3), global.index_select(0, rows.narrow(0, 0, 3))));
  BOOST_TEST(torch::equal(part[3], torch::full({6}, -7.0f)), "padding entries are left alone");
  // Columns, as a row-parallel part.
  at::Tensor columns = torch::zeros({8, 2});
  reader.read_into("model/w", columns, 1, torch::tensor({4, 5}, torch::kLong));
  BOOST_TEST(torch::equal(columns, global.narrow(1, 4, 2)));
  at::Tensor bias_part = torch::zeros({3});
  reader.read_into("model/b", bias_part, 0, torch::tensor({2, 3, 4}, torch::kLong));
  BOOST_TEST(torch::equal(bias_part, bias.narrow(0, 2, 3)));
  at::Tensor wrong = torch::zeros({4, 5});
  BOOST_CHECK_THROW(reader.read_into("model/w", wrong, 0, rows), std::runtime_error);

  // Damage rank 3's piece (rows 6-7): parts that avoid it still read, the others fail.
  flip_bit_in_tensor_data(saved / "rank_00003.h5", global.narrow(0, 6, 2).contiguous());
  CheckpointReader damaged(saved);
  at::Tensor low = torch::zeros({4, 6});
  damaged.read_into("model/w", low, 0, torch::tensor({0, 1, 2, 3}, torch::kLong));
  BOOST_TEST(torch::equal(low, global.narrow(0, 0, 4)));
  at::Tensor high = torch::zeros({2, 6});
  try {
    damaged.read_into("model/w", high, 0, torch::tensor({6, 7}, torch::kLong));
    BOOST_FAIL("a damaged piece was read without complaint");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("rank_00003.h5") != std::string::npos, e.what());
  }
}
