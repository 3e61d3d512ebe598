#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <hdf5.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "launch/checkpoint/registry.h"
#include "launch/checkpoint/store.h"

BOOST_AUTO_TEST_SUITE(test_checkpoint)

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

namespace {

// A checkpoint of `tensors`, each written by `writers` ranks in consecutive flat chunks.
fs::path save_by_writers(CheckpointStore& store, int64_t step, const NamedTensors& tensors, int writers) {
  const fs::path staging = store.begin(step);
  nlohmann::json pieces = nlohmann::json::array();
  for (int rank = 0; rank < writers; ++rank)
    for (auto& record : write_rank_file(prepare_rank_file(staging, rank, step, held_whole(tensors, writers, rank))))
      pieces.push_back(record);
  return store.commit(step, pieces, {});
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Flips one bit of byte `at` of a file.
void flip_bit_at(const fs::path& file, int64_t at) {
  std::fstream io(file, std::ios::binary | std::ios::in | std::ios::out);
  io.seekg(at);
  char byte = 0;
  io.read(&byte, 1);
  byte ^= 0x10;
  io.seekp(at);
  io.write(&byte, 1);
}

// Where the bytes of `tensor` start in `file` (found by their exact pattern).
int64_t offset_of(const fs::path& file, const at::Tensor& tensor) {
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const size_t at = bytes.find(std::string(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes()));
  BOOST_REQUIRE(at != std::string::npos);
  return static_cast<int64_t>(at);
}

constexpr int64_t kBlockFloats = kCheckpointBlockBytes / 4;

// Rewrites the manifest in a checkpoint's state.h5 as `edit` says, in place: the
// dataset keeps its size, so the edited text must not be longer.
void rewrite_manifest(const fs::path& checkpoint, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path index = checkpoint / "state.h5";
  hid_t file = H5Fopen(index.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  BOOST_REQUIRE(file >= 0);
  hid_t dataset = H5Dopen2(file, "manifest", H5P_DEFAULT);
  hid_t type = H5Dget_type(dataset);
  std::string text(H5Tget_size(type), '\0');
  H5Dread(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data());
  nlohmann::json manifest = nlohmann::json::parse(text.c_str());
  edit(manifest);
  std::string edited = manifest.dump();
  BOOST_REQUIRE(edited.size() <= text.size());
  edited.resize(text.size(), ' ');
  BOOST_REQUIRE(H5Dwrite(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, edited.data()) >= 0);
  H5Tclose(type);
  H5Dclose(dataset);
  H5Fclose(file);
}

}  // namespace

// A ZeRO shard is a flat range of a part: the reader reads only the 1 MiB blocks that
// hold it, so what it reads is the shard, rounded out to blocks, not the piece.
BOOST_AUTO_TEST_CASE(a_shard_reads_only_the_blocks_that_hold_it) {
  CheckpointStore store(fresh_dir("blocks"), 1);
  const at::Tensor global = torch::randn({1024, 1024});  // 4 MiB: one piece of four blocks
  const fs::path saved = save_by_writers(store, 1, {{"model/w", global}}, 1);

  CheckpointReader reader(saved);
  BOOST_TEST(reader.bytes_read() == 0);
  // Elements 1.5 to 2.5 MiB into the tensor: blocks 1 and 2.
  at::Tensor shard = torch::empty({kBlockFloats});
  reader.read_range_into("model/w", shard, {1024, 1024}, kBlockFloats * 3 / 2);
  BOOST_TEST(torch::equal(shard, global.reshape(-1).narrow(0, kBlockFloats * 3 / 2, kBlockFloats)));
  BOOST_TEST(reader.bytes_read() == 2 * kCheckpointBlockBytes);

  // The right half of every row (a row-parallel part), first 256 of its rows: the part's
  // elements lie in the first MiB of the piece, every other 2 KiB.
  const at::Tensor right = torch::arange(512, 1024, torch::kLong);
  at::Tensor rows = torch::empty({256 * 512});
  reader.read_range_into("model/w", rows, {1024, 512}, 0, 1, right);
  BOOST_TEST(torch::equal(rows, global.narrow(1, 512, 512).reshape(-1).narrow(0, 0, 256 * 512)));
  BOOST_TEST(reader.bytes_read() == 3 * kCheckpointBlockBytes);

  // The whole tensor reads every block once more, straight into place.
  at::Tensor whole = torch::empty({1024, 1024});
  reader.read_into("model/w", whole);
  BOOST_TEST(torch::equal(whole, global));
  BOOST_TEST(reader.bytes_read() == 7 * kCheckpointBlockBytes);

  at::Tensor beyond = torch::empty({10});
  BOOST_CHECK_THROW(reader.read_range_into("model/w", beyond, {1024, 1024}, 1024 * 1024 - 5), std::invalid_argument);
}

// Any part (rows or columns, out of order, with padding) and any flat range of it reads
// the same values as indexing the whole tensor, whatever pieces the writers made.
BOOST_AUTO_TEST_CASE(ranges_of_parts_equal_indexing_the_whole_tensor) {
  std::mt19937 random(7);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
  CheckpointStore store(fresh_dir("ranges"), 1);
  for (int trial = 0; trial < 40; ++trial) {
    const bool matrix = trial % 4 != 3;
    // Some tensors span several blocks, so ranges start and end inside them.
    const int64_t rows = matrix ? uniform(1, trial % 5 == 0 ? 700 : 30) : 1;
    const int64_t cols = uniform(1, trial % 5 == 0 ? 900 : 30);
    const at::Tensor global = matrix ? torch::randn({rows, cols}) : torch::randn({cols});
    const int writers = static_cast<int>(uniform(1, 5));
    const fs::path saved = save_by_writers(store, trial + 1, {{"t", global}}, writers);

    const int64_t split_dim = matrix ? uniform(-1, 1) : uniform(-1, 0);
    at::Tensor index;
    at::Tensor part = global;
    if (split_dim >= 0) {
      const int64_t extent = global.size(split_dim);
      const int64_t count = uniform(1, extent);
      index = torch::randperm(extent, torch::kLong).narrow(0, 0, count);
      if (uniform(0, 1) == 1) index = std::get<0>(index.sort());  // contiguous runs, as tp makes
      if (uniform(0, 2) == 0) index = torch::cat({index, torch::full({2}, -1, torch::kLong)});  // padding
      const at::Tensor real = index.clamp_min(0);
      part = global.index_select(split_dim, real).clone();
      part.index_fill_(split_dim, (index < 0).nonzero().reshape(-1), -9.0f);
    }
    const int64_t first = uniform(0, part.numel() - 1);
    const int64_t count = uniform(1, part.numel() - first);
    at::Tensor values = torch::full({count}, -9.0f);
    CheckpointReader reader(saved);
    reader.read_range_into("t", values, part.sizes().vec(), first, split_dim, index);
    BOOST_TEST(torch::equal(values, part.reshape(-1).narrow(0, first, count)),
               "trial " << trial << ": shape " << global.sizes() << ", " << writers << " writers, split " << split_dim
                        << ", elements " << first << " + " << count);
  }
}

// A flipped bit fails the reads that need its block, naming the file and the block, and
// no other read.
BOOST_AUTO_TEST_CASE(a_flipped_bit_fails_the_reads_of_its_block_naming_file_and_block) {
  CheckpointStore store(fresh_dir("flipped"), 1);
  const at::Tensor global = torch::randn({3 * kBlockFloats});
  const fs::path saved = save_by_writers(store, 1, {{"model/w", global}}, 1);
  const fs::path file = saved / "rank_00000.h5";
  flip_bit_at(file, offset_of(file, global) + 2 * kCheckpointBlockBytes + 12345);

  CheckpointReader reader(saved);
  at::Tensor front = torch::empty({2 * kBlockFloats});
  reader.read_range_into("model/w", front, {3 * kBlockFloats}, 0);
  BOOST_TEST(torch::equal(front, global.narrow(0, 0, 2 * kBlockFloats)), "blocks 0 and 1 are intact");
  at::Tensor back = torch::empty({10});
  const std::string error = error_of([&] { reader.read_range_into("model/w", back, {3 * kBlockFloats}, 2 * kBlockFloats + 5000); });
  BOOST_TEST(error.find("rank_00000.h5") != std::string::npos, error);
  BOOST_TEST(error.find("model/w") != std::string::npos, error);
  BOOST_TEST(error.find("block 2 ") != std::string::npos, error);
  BOOST_TEST(error.find("checksum") != std::string::npos, error);
  std::string problem;
  BOOST_TEST(!verify_checkpoint(saved, &problem));
  BOOST_TEST(problem.find("block 2 ") != std::string::npos, problem);
}

// A checkpoint of format 2 (one crc32 per piece) is refused, saying which formats are
// read; the index rewritten as format 2 with its manifest otherwise intact.
BOOST_AUTO_TEST_CASE(an_older_format_is_refused_by_name) {
  CheckpointStore store(fresh_dir("older"), 1);
  const fs::path saved = store.save(1, sample_state(1), {});
  rewrite_manifest(saved, [](nlohmann::json& manifest) { manifest["format_version"] = 2; });
  const std::string error = error_of([&] { CheckpointReader reader(saved); });
  BOOST_TEST(error.find("state.h5") != std::string::npos, error);
  BOOST_TEST(error.find("format_version 2") != std::string::npos, error);
  BOOST_TEST(error.find("reads checkpoint format 3 only") != std::string::npos, error);
  std::string problem;
  BOOST_TEST(!verify_checkpoint(saved, &problem));
  BOOST_TEST(problem == error);
}

// An index whose shapes would size a huge tensor is refused before anything is
// allocated: the manifest rewritten to claim 2^40 x 2^40 elements for a tensor.
BOOST_AUTO_TEST_CASE(an_index_claiming_a_huge_tensor_is_refused_unallocated) {
  CheckpointStore store(fresh_dir("huge"), 1);
  const fs::path saved = store.save(1, sample_state(1), {});
  rewrite_manifest(saved, [](nlohmann::json& manifest) {
    nlohmann::json kept = nlohmann::json::array();  // room in the dataset for the longer shape
    for (auto& tensor : manifest["tensors"]) {
      if (tensor["name"] == "model/w") tensor["shape"] = {int64_t{1} << 40, int64_t{1} << 40};
      if (tensor["name"] != "half") kept.push_back(tensor);
    }
    manifest["tensors"] = kept;
  });
  const std::string error = error_of([&] { read_checkpoint_tensor(saved, "model/w"); });
  BOOST_TEST(error.find("too large") != std::string::npos, error);
  std::string problem;
  BOOST_TEST(!verify_checkpoint(saved, &problem));
}

// The state registry (registry.h): each part's tensors and metadata saved under its own
// key, read back group by group, and handed back to the part that registered them.
BOOST_AUTO_TEST_CASE(the_registry_saves_every_part_and_gives_each_its_own_back) {
  at::Tensor weight = torch::arange(6, torch::kFloat32).reshape({2, 3});
  at::Tensor moment = torch::full({2, 3}, 0.25f);
  int64_t position = 41;
  int model_reads = 0, optim_reads = 0;
  std::vector<std::string> loaded;
  StateRegistry registry;
  registry.add_tensors("model", [&] { return std::vector<HeldTensor>{HeldTensor::whole("model/w", weight)}; },
                       [&] { ++model_reads; });
  registry.add_tensors("optim", [&] { return std::vector<HeldTensor>{HeldTensor::whole("optim/exp_avg/w", moment)}; },
                       [&] { ++optim_reads; });
  registry.add_meta("data", [&] { return nlohmann::json{{"position", position}}; },
                    [&](const nlohmann::json& saved) {
                      loaded.push_back("data");
                      position = saved.at("position").get<int64_t>();
                    });
  registry.add_meta("layout", [] { return nlohmann::json{{"tp", 2}}; });  // for the record only
  registry.add_meta("absent", [] { return nlohmann::json(1); }, [&](const nlohmann::json&) { loaded.push_back("absent"); });
  BOOST_CHECK_THROW(registry.add_meta("data", [] { return nlohmann::json(); }), std::logic_error);

  const auto tensors = registry.tensors();
  BOOST_REQUIRE_EQUAL(tensors.size(), 2u);
  BOOST_TEST(tensors[0].name == "model/w");
  BOOST_TEST(tensors[1].name == "optim/exp_avg/w");
  nlohmann::json meta = registry.meta();
  BOOST_TEST(meta.at("data").at("position") == 41);
  BOOST_TEST(meta.at("layout").at("tp") == 2);
  meta.erase("absent");  // a checkpoint written before that part existed

  CheckpointStore store(fresh_dir("registry"), 2);
  const fs::path saved = store.save(5, {{"model/w", weight.clone()}, {"optim/exp_avg/w", moment.clone()}}, meta);
  const at::Tensor saved_weight = weight.clone();
  weight.zero_();
  moment.zero_();
  position = 0;

  // Only the groups asked for are read; their after_read hooks are the caller's to run.
  const nlohmann::json read = registry.read(saved, {"model"});
  BOOST_TEST(torch::equal(weight, saved_weight));
  BOOST_TEST(torch::equal(moment, torch::zeros({2, 3})));
  registry.after_read({"model"});
  BOOST_TEST(model_reads == 1);
  BOOST_TEST(optim_reads == 0);
  BOOST_TEST(read.at("step") == 5);

  registry.restore(read);
  BOOST_TEST(position == 41);
  BOOST_TEST(loaded == std::vector<std::string>{"data"});  // "layout" has no load, "absent" was not saved

  // A part that names its tensors outside its group is a programming error, caught.
  StateRegistry wrong;
  wrong.add_tensors("model", [&] { return std::vector<HeldTensor>{HeldTensor::whole("optim/w", weight)}; });
  BOOST_CHECK_THROW(wrong.tensors(), std::logic_error);
}

BOOST_AUTO_TEST_SUITE_END()  // test_checkpoint
