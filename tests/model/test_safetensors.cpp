#include <boost/test/unit_test.hpp>

#include "model/safetensors.h"

#include <nlohmann/json.hpp>

#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include <sys/resource.h>
#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_safetensors)

namespace fs = std::filesystem;
using namespace ftrain::model;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("ftrain_test_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file laid out by hand: length prefix, the given header text, then `data`.
void write_raw(const fs::path& path, const std::string& header, const std::string& data) {
  uint64_t length = header.size();
  std::string bytes(reinterpret_cast<const char*>(&length), 8);
  write_bytes(path, bytes + header + data);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  BOOST_FAIL("expected a std::runtime_error");
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The error names the file and says what is wrong.
void check_malformed(const fs::path& path, const std::string& fragment) {
  std::string message = error_of([&] { SafetensorsReader reader(path); });
  BOOST_TEST_INFO("message: " << message);
  BOOST_TEST(contains(message, path.string()));
  BOOST_TEST(contains(message, fragment));
}

NamedTensors one_of_each_dtype() {
  at::manual_seed(7);
  return {
      {"f64", at::arange(6, at::kDouble).reshape({2, 3}) / 3.0},
      {"f32", at::randn({3, 4}, at::kFloat)},
      {"f16", at::randn({5}, at::kFloat).to(at::kHalf)},
      {"bf16", at::randn({2, 2, 2}, at::kFloat).to(at::kBFloat16)},
      {"i64", at::tensor({int64_t{1} << 40, int64_t{-3}, int64_t{0}}, at::kLong)},
      {"i32", at::tensor({-2147483647, 5}, at::kInt)},
      {"i16", at::tensor({-32768, 32767}, at::kShort)},
      {"i8", at::tensor({-128, 127, 0}, at::kChar)},
      {"u8", at::tensor({0, 255, 17}, at::kByte)},
      {"bool", at::tensor({1, 0, 1, 1}, at::kByte).to(at::kBool)},
      {"scalar", at::full({}, 2.5, at::kFloat)},
      {"empty", at::empty({0, 3}, at::kFloat)},
      {"transposed", at::arange(12, at::kFloat).reshape({3, 4}).t()},
  };
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_of_every_dtype) {
  TempDir dir;
  const fs::path path = dir.path / "all.safetensors";
  const NamedTensors written = one_of_each_dtype();
  save_safetensors(path, written, {{"format", "pt"}, {"note", "round trip"}});

  SafetensorsReader reader(path);
  BOOST_TEST((reader.metadata() == SafetensorsMetadata{{"format", "pt"}, {"note", "round trip"}}));
  std::vector<std::string> names = reader.names();
  BOOST_TEST_REQUIRE(names.size() == written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    const auto& [name, expected] = written[i];
    BOOST_TEST_CONTEXT("tensor " << name) {
      BOOST_TEST(names[i] == name);  // file order is the order given
      at::Tensor read = reader.tensor(name);
      BOOST_TEST(read.scalar_type() == expected.scalar_type());
      BOOST_TEST(read.sizes().vec() == expected.sizes().vec());
      BOOST_TEST(reader.shape(name) == expected.sizes().vec());
      BOOST_TEST(at::equal(read, expected));
    }
  }

  // The layout itself: 8-aligned header, data packed in order from offset 0.
  const std::string bytes = read_bytes(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  BOOST_TEST(header_length % 8 == 0);
  auto header = nlohmann::json::parse(bytes.substr(8, header_length));
  BOOST_TEST(header["f32"]["dtype"] == "F32");
  BOOST_TEST(header["bf16"]["dtype"] == "BF16");
  BOOST_TEST(header["bool"]["dtype"] == "BOOL");
  uint64_t offset = 0;
  for (const auto& [name, tensor] : written) {
    const uint64_t size = tensor.numel() * tensor.element_size();
    BOOST_TEST(header[name]["data_offsets"] == nlohmann::json::array({offset, offset + size}));
    offset += size;
  }
  BOOST_TEST(bytes.size() == 8 + header_length + offset);
}

BOOST_AUTO_TEST_CASE(tensors_outlive_the_reader_and_do_not_write_to_the_file) {
  TempDir dir;
  const fs::path path = dir.path / "t.safetensors";
  at::Tensor original = at::arange(16, at::kFloat);
  save_safetensors(path, {{"x", original}});
  const std::string before = read_bytes(path);

  at::Tensor view;
  {
    SafetensorsReader reader(path);
    view = reader.tensor("x");
  }
  BOOST_TEST(at::equal(view, original));
  view.mul_(-1);  // private mapping: the change stays in this process
  BOOST_TEST(at::equal(view, -original));
  BOOST_TEST(read_bytes(path) == before);
  BOOST_TEST(at::equal(load_safetensors(path).at(0).second, original));
}

BOOST_AUTO_TEST_CASE(misaligned_tensor_reads_correctly) {
  TempDir dir;
  const fs::path path = dir.path / "odd.safetensors";
  // A 1-byte tensor first puts the F32 tensor at an odd address.
  float values[2] = {1.5f, -2.25f};
  std::string data(1, '\x09');
  data.append(reinterpret_cast<const char*>(values), sizeof values);
  write_raw(path,
            R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
            R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})",
            data);
  SafetensorsReader reader(path);
  BOOST_TEST(reader.tensor("b").item<uint8_t>() == 9);
  BOOST_TEST(at::equal(reader.tensor("f"), at::tensor({1.5f, -2.25f})));
  BOOST_TEST((reader.names() == std::vector<std::string>{"b", "f"}));
}

BOOST_AUTO_TEST_CASE(malformed_files_are_reported_with_their_name) {
  TempDir dir;
  const std::string eight(8, '\0');

  check_malformed(dir.path / "absent.safetensors", "file not found");

  write_bytes(dir.path / "short.safetensors", "abcde");
  check_malformed(dir.path / "short.safetensors", "shorter than the 8-byte header length");

  uint64_t too_long = 1000;
  write_bytes(dir.path / "long.safetensors", std::string(reinterpret_cast<const char*>(&too_long), 8) + "{}");
  check_malformed(dir.path / "long.safetensors", "header length 1000 runs past the end of the file (10 bytes)");

  write_raw(dir.path / "notjson.safetensors", "{\"a\": [1, 2", "");
  check_malformed(dir.path / "notjson.safetensors", "header is not valid JSON");

  write_raw(dir.path / "array.safetensors", "[1, 2]", "");
  check_malformed(dir.path / "array.safetensors", "not an object");

  write_raw(dir.path / "dtype.safetensors", R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", eight);
  check_malformed(dir.path / "dtype.safetensors", "tensor 'w': unknown safetensors dtype 'Q4'");

  write_raw(dir.path / "size.safetensors", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
            std::string(20, '\0'));
  check_malformed(dir.path / "size.safetensors", "tensor 'w' (F32 [2, 3]) needs 24 bytes but its offsets span 20");

  write_raw(dir.path / "outside.safetensors", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
            std::string(4, '\0'));
  check_malformed(dir.path / "outside.safetensors", "tensor 'w': data_offsets [0, 8] lie outside the data region (4 bytes)");

  write_raw(dir.path / "overlap.safetensors",
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, '\0'));
  check_malformed(dir.path / "overlap.safetensors", "tensors 'a' [0, 8) and 'b' [4, 12) have overlapping data_offsets");

  write_raw(dir.path / "reversed.safetensors", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", eight);
  check_malformed(dir.path / "reversed.safetensors", "tensor 'w': data_offsets [4,0] must be non-negative integers");

  write_raw(dir.path / "negative.safetensors", R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", "");
  check_malformed(dir.path / "negative.safetensors", "tensor 'w': shape [-1] has an entry that is not a non-negative integer");

  write_raw(dir.path / "nodtype.safetensors", R"({"w":{"shape":[1],"data_offsets":[0,1]}})", eight);
  check_malformed(dir.path / "nodtype.safetensors", "tensor 'w': missing string 'dtype'");

  write_raw(dir.path / "metadata.safetensors", R"({"__metadata__":{"format":1}})", "");
  check_malformed(dir.path / "metadata.safetensors", "'__metadata__' key 'format' is not a string");

  fs::create_directory(dir.path / "dir.safetensors");
  check_malformed(dir.path / "dir.safetensors", "not a regular file");

  // Asking for a tensor that is not there names it and the file.
  save_safetensors(dir.path / "ok.safetensors", {{"x", at::ones({1})}});
  SafetensorsReader ok(dir.path / "ok.safetensors");
  std::string message = error_of([&] { ok.tensor("y"); });
  BOOST_TEST(contains(message, (dir.path / "ok.safetensors").string()));
  BOOST_TEST(contains(message, "no tensor named 'y'"));
}

BOOST_AUTO_TEST_CASE(writer_rejects_bad_input_without_touching_the_target) {
  TempDir dir;
  const fs::path path = dir.path / "w.safetensors";
  save_safetensors(path, {{"old", at::ones({4})}});
  const std::string before = read_bytes(path);

  std::string message = error_of([&] { save_safetensors(path, {{"a", at::ones({1})}, {"a", at::ones({1})}}); });
  BOOST_TEST(contains(message, path.string()));
  BOOST_TEST(contains(message, "tensor 'a' is given twice"));
  message = error_of([&] { save_safetensors(path, {{"c", at::ones({1}, at::kComplexFloat)}}); });
  BOOST_TEST(contains(message, "tensor 'c'"));
  message = error_of([&] { save_safetensors(path, {{"u", at::Tensor()}}); });
  BOOST_TEST(contains(message, "tensor 'u' is undefined"));

  BOOST_TEST(read_bytes(path) == before);
  BOOST_TEST(!fs::exists(path.string() + ".tmp"));
}

BOOST_AUTO_TEST_CASE(writer_replaces_an_existing_file_whole) {
  TempDir dir;
  const fs::path path = dir.path / "w.safetensors";
  save_safetensors(path, {{"old", at::ones({1000})}});
  at::Tensor replacement = at::arange(3, at::kLong);
  save_safetensors(path, {{"new", replacement}});
  NamedTensors read = load_safetensors(path);
  BOOST_TEST_REQUIRE(read.size() == 1u);
  BOOST_TEST(read[0].first == "new");
  BOOST_TEST(at::equal(read[0].second, replacement));
  BOOST_TEST(!fs::exists(path.string() + ".tmp"));
}

BOOST_AUTO_TEST_CASE(writer_failing_midway_leaves_the_old_file) {
  TempDir dir;
  const fs::path path = dir.path / "w.safetensors";
  save_safetensors(path, {{"old", at::arange(10, at::kFloat)}});
  const std::string before = read_bytes(path);

  // Cap the size of files this process may write, so the write of a 4 MB tensor
  // fails part way through (EFBIG) as it would on a full disk.
  struct rlimit saved {};
  BOOST_TEST_REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit capped = saved;
  capped.rlim_cur = 64 * 1024;
  BOOST_TEST_REQUIRE(::setrlimit(RLIMIT_FSIZE, &capped) == 0);
  std::string message = error_of([&] { save_safetensors(path, {{"big", at::zeros({1 << 20})}}); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, saved_handler);

  BOOST_TEST_INFO("message: " << message);
  BOOST_TEST(contains(message, path.string()));
  BOOST_TEST(contains(message, "write to"));
  BOOST_TEST(read_bytes(path) == before);
  BOOST_TEST(!fs::exists(path.string() + ".tmp"));
}

BOOST_AUTO_TEST_CASE(writer_that_cannot_create_its_temporary_file_leaves_the_old_file) {
  TempDir dir;
  const fs::path path = dir.path / "w.safetensors";
  save_safetensors(path, {{"old", at::ones({2})}});
  const std::string before = read_bytes(path);
  fs::create_directory(path.string() + ".tmp");  // occupies the temporary name
  std::string message = error_of([&] { save_safetensors(path, {{"new", at::ones({3})}}); });
  BOOST_TEST(contains(message, path.string()));
  BOOST_TEST(contains(message, "cannot create temporary file"));
  BOOST_TEST(read_bytes(path) == before);
  BOOST_TEST(fs::is_directory(path.string() + ".tmp"));
}

BOOST_AUTO_TEST_CASE(sharded_index_reads_each_tensor_from_its_shard) {
  TempDir dir;
  at::Tensor a = at::arange(4, at::kFloat), b = at::ones({2, 2}, at::kHalf), c = at::tensor({7}, at::kLong);
  save_safetensors(dir.path / "model-00001-of-00002.safetensors", {{"a", a}, {"b", b}});
  save_safetensors(dir.path / "model-00002-of-00002.safetensors", {{"c", c}});
  const fs::path index = dir.path / "model.safetensors.index.json";
  write_bytes(index, R"({"metadata": {"total_size": 28}, "weight_map": {)"
                     R"("c": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors",)"
                     R"("b": "model-00001-of-00002.safetensors"}})");
  NamedTensors read = load_safetensors_index(index);
  BOOST_TEST_REQUIRE(read.size() == 3u);
  BOOST_TEST(read[0].first == "a");
  BOOST_TEST(at::equal(read[0].second, a));
  BOOST_TEST(read[1].first == "b");
  BOOST_TEST(at::equal(read[1].second, b));
  BOOST_TEST(read[2].first == "c");
  BOOST_TEST(at::equal(read[2].second, c));

  write_bytes(index, R"({"weight_map": {"c": "model-00001-of-00002.safetensors"}})");
  std::string message = error_of([&] { load_safetensors_index(index); });
  BOOST_TEST(contains(message, index.string()));
  BOOST_TEST(contains(message, "tensor 'c' is mapped to shard 'model-00001-of-00002.safetensors', which does not contain it"));

  write_bytes(index, R"({"weight_map": {"c": "model-00003-of-00003.safetensors"}})");
  message = error_of([&] { load_safetensors_index(index); });
  BOOST_TEST(contains(message, (dir.path / "model-00003-of-00003.safetensors").string()));
  BOOST_TEST(contains(message, "file not found"));

  write_bytes(index, R"({"metadata": {}})");
  message = error_of([&] { load_safetensors_index(index); });
  BOOST_TEST(contains(message, index.string()));
  BOOST_TEST(contains(message, "weight_map"));
}

BOOST_AUTO_TEST_CASE(streamed_values_are_asked_for_one_at_a_time_in_file_order) {
  TempDir dir;
  const fs::path path = dir.path / "streamed.safetensors";
  // The described tensors are placeholders (never read); the values arrive one by one,
  // in another dtype where the source has one, and are converted to the described one.
  const NamedTensors described = {{"b", at::empty({2, 3})}, {"a", at::empty({4}, at::kBFloat16)}};
  std::vector<std::string> asked;
  save_safetensors(path, described, {{"format", "pt"}}, [&](const std::string& name, const at::Tensor& tensor) {
    asked.push_back(name);
    BOOST_TEST(tensor.sizes() == (name == "b" ? at::IntArrayRef{2, 3} : at::IntArrayRef{4}));
    return name == "b" ? at::arange(6, at::kDouble).view({3, 2}).t() : at::full({4}, 1.5);
  });
  BOOST_TEST((asked == std::vector<std::string>{"b", "a"}));
  const SafetensorsReader reader(path);
  BOOST_TEST((reader.names() == std::vector<std::string>{"b", "a"}));
  BOOST_TEST(reader.dtype("b") == at::kFloat);
  BOOST_TEST(at::equal(reader.tensor("b"), at::arange(6, at::kFloat).view({3, 2}).t()));
  BOOST_TEST(reader.dtype("a") == at::kBFloat16);
  BOOST_TEST(at::equal(reader.tensor("a"), at::full({4}, 1.5, at::kBFloat16)));

  // Values of another shape are refused, naming the file and the tensor; the old file stays.
  const std::string before = read_bytes(path);
  const std::string message = error_of([&] {
    save_safetensors(path, described, {}, [](const std::string&, const at::Tensor&) { return at::zeros({5}); });
  });
  BOOST_TEST(message.find(path.string()) != std::string::npos, message);
  BOOST_TEST(message.find("tensor 'b'") != std::string::npos, message);
  BOOST_TEST(read_bytes(path) == before);
  BOOST_TEST(!fs::exists(path.string() + ".tmp"));
}

BOOST_AUTO_TEST_SUITE_END()  // test_safetensors
