#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <unistd.h>
#include <utility>
#include <vector>

#include "launch/telemetry/tensorboard.h"
#include "launch/telemetry/tensorboard.pb.h"

BOOST_AUTO_TEST_SUITE(test_tensorboard)

namespace fs = std::filesystem;
using ftrain::launch::crc32c;
using ftrain::launch::masked_crc32c;
using ftrain::launch::TensorBoardWriter;
using nlohmann::json;
namespace tt = boost::test_tools;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("ftrain_test_tensorboard_" + std::to_string(getpid())) / name;
  fs::remove_all(dir);
  return dir;
}

template <typename T>
T read_little_endian(const std::string& bytes, size_t at) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    value |= static_cast<T>(static_cast<unsigned char>(bytes.at(at + i))) << (8 * i);
  return value;
}

// The data of every record of a TFRecord file, with both CRCs of each checked.
std::vector<std::string> read_records(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records;
  size_t at = 0;
  while (at < bytes.size()) {
    BOOST_REQUIRE(at + 12 <= bytes.size());
    const auto length = read_little_endian<uint64_t>(bytes, at);
    BOOST_TEST(read_little_endian<uint32_t>(bytes, at + 8) == masked_crc32c(bytes.substr(at, 8)));
    BOOST_REQUIRE(at + 12 + length + 4 <= bytes.size());
    std::string data = bytes.substr(at + 12, length);
    BOOST_TEST(read_little_endian<uint32_t>(bytes, at + 12 + length) == masked_crc32c(data));
    records.push_back(std::move(data));
    at += 12 + length + 4;
  }
  return records;
}

std::vector<ftrain::tensorboard::Event> read_events(const fs::path& path) {
  std::vector<ftrain::tensorboard::Event> events;
  for (const auto& data : read_records(path)) {
    BOOST_REQUIRE(events.emplace_back().ParseFromString(data));
  }
  return events;
}

}  // namespace

// Check values of CRC-32C: RFC 3720 appendix B.4 and the common "123456789" check.
BOOST_AUTO_TEST_CASE(crc32c_known_vectors) {
  BOOST_TEST(crc32c("") == 0x00000000u);
  BOOST_TEST(crc32c("a") == 0xC1D04330u);
  BOOST_TEST(crc32c("123456789") == 0xE3069283u);
  BOOST_TEST(crc32c(std::string(32, '\0')) == 0x8A9136AAu);
  BOOST_TEST(crc32c(std::string(32, '\xff')) == 0x62A8AB43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  BOOST_TEST(crc32c(ascending) == 0x46DD794Eu);
  BOOST_TEST(crc32c(descending) == 0x113FDB5Cu);
}

// The mask of TFRecord: rotate right by 15 bits, add 0xa282ead8.
BOOST_AUTO_TEST_CASE(masked_crc_rotates_and_offsets) {
  const uint32_t crc = 0xE3069283u;
  BOOST_TEST(masked_crc32c("123456789") == static_cast<uint32_t>(((crc >> 15) | (crc << 17)) + 0xa282ead8u));
  BOOST_TEST(masked_crc32c("") == 0xa282ead8u);
}

BOOST_AUTO_TEST_CASE(a_written_file_reads_back) {
  const fs::path dir = fresh_dir("written");
  fs::path path;
  {
    TensorBoardWriter writer(dir);
    path = writer.path();
    writer.add_scalar("train/loss", 2.5, 1);
    writer.add_scalar("train/loss", 0.0, 2);  // a zero is written too
    writer.add_scalar("train/lr", 3e-4, 0);
    writer.flush();
  }
  BOOST_TEST(path.parent_path() == dir);
  BOOST_TEST(path.filename().string().starts_with("events.out.tfevents."));

  const auto events = read_events(path);
  BOOST_REQUIRE(events.size() == 4u);
  BOOST_TEST(events[0].file_version() == "brain.Event:2");
  BOOST_TEST(events[0].wall_time() > 1.6e9);
  const std::vector<std::tuple<std::string, float, int64_t>> expected{
      {"train/loss", 2.5f, 1}, {"train/loss", 0.0f, 2}, {"train/lr", 3e-4f, 0}};
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& event = events[i + 1];
    BOOST_TEST_CONTEXT("event " << i + 1) {
      BOOST_TEST(event.has_summary());
      BOOST_REQUIRE(event.summary().value_size() == 1);
      const auto& value = event.summary().value(0);
      BOOST_TEST(value.tag() == std::get<0>(expected[i]));
      BOOST_TEST(value.has_simple_value());
      BOOST_TEST(value.simple_value() == std::get<1>(expected[i]));
      BOOST_TEST(event.step() == std::get<2>(expected[i]));
      BOOST_TEST(event.wall_time() >= events[0].wall_time());
    }
  }
  fs::remove_all(dir.parent_path());
}

BOOST_AUTO_TEST_CASE(metrics_records_become_tagged_scalars) {
  using Scalars = std::vector<std::pair<std::string, double>>;
  const auto sorted = [](Scalars scalars) {
    std::sort(scalars.begin(), scalars.end());
    return scalars;
  };
  BOOST_TEST(sorted(ftrain::launch::tensorboard_scalars(
                 json{{"step", 3}, {"loss", 2.5}, {"lr", 1e-3}, {"tokens_seen", 96}, {"skipped", true}})) ==
             sorted({{"train/loss", 2.5}, {"train/lr", 1e-3}, {"train/skipped", 1.0}, {"train/tokens_seen", 96.0}}));
  BOOST_TEST(sorted(ftrain::launch::tensorboard_scalars(
                 json{{"step", 10}, {"val_loss", 1.5}, {"val_perplexity", 4.48}, {"val_targets", 512}})) ==
             sorted({{"validation/loss", 1.5}, {"validation/perplexity", 4.48}, {"validation/targets", 512.0}}));
  const json memory = {{"step", 1},
                       {"memory", json::array({{{"rank", 0}, {"parameter_bytes", 100}, {"gradient_bytes", 50}},
                                               {{"rank", 1}, {"parameter_bytes", 200}, {"gradient_bytes", 60}}})}};
  BOOST_TEST(sorted(ftrain::launch::tensorboard_scalars(memory)) ==
             sorted({{"memory/rank0/parameter_bytes", 100.0},
                     {"memory/rank0/gradient_bytes", 50.0},
                     {"memory/rank1/parameter_bytes", 200.0},
                     {"memory/rank1/gradient_bytes", 60.0}}));
  // A phase's peaks: the device's only where there is one (-1 on the CPU).
  const json phases = {{"step", 2},
                       {"memory_phases", json::array({{{"rank", 0}, {"phase", "load"}, {"host_start_bytes", 10},
                                                       {"host_peak_bytes", 300}, {"device_peak_bytes", -1}},
                                                      {{"rank", 1}, {"phase", "save"}, {"host_start_bytes", 10},
                                                       {"host_peak_bytes", 400}, {"device_peak_bytes", 70}}})}};
  BOOST_TEST(sorted(ftrain::launch::tensorboard_scalars(phases)) ==
             sorted({{"memory/rank0/load/host_peak_bytes", 300.0},
                     {"memory/rank1/save/host_peak_bytes", 400.0},
                     {"memory/rank1/save/device_peak_bytes", 70.0}}));
  // Text is not a scalar.
  BOOST_TEST(ftrain::launch::tensorboard_scalars(json{{"step", 1}, {"note", "text"}}).empty());
}

BOOST_AUTO_TEST_CASE(a_record_is_written_at_its_step) {
  const fs::path dir = fresh_dir("record");
  fs::path path;
  {
    TensorBoardWriter writer(dir);
    path = writer.path();
    writer.add_record(json{{"step", 7}, {"val_loss", 1.25}});
    writer.add_record(json{{"loss", 9.0}});  // no step: nothing
  }
  const auto events = read_events(path);
  BOOST_REQUIRE(events.size() == 2u);
  BOOST_TEST(events[1].step() == 7);
  BOOST_TEST(events[1].summary().value(0).tag() == "validation/loss");
  BOOST_TEST(events[1].summary().value(0).simple_value() == 1.25f);
  fs::remove_all(dir.parent_path());
}

BOOST_AUTO_TEST_CASE(an_unwritable_directory_names_the_option) {
  const fs::path dir = fresh_dir("blocked");
  fs::create_directories(dir.parent_path());
  std::ofstream(dir) << "a file where the directory should be";
  try {
    TensorBoardWriter writer(dir / "tensorboard");
    BOOST_FAIL("expected an error");
  } catch (const std::runtime_error& error) {
    BOOST_TEST(std::string(error.what()).find("run.tensorboard") != std::string::npos, error.what());
  }
  fs::remove_all(dir.parent_path());
}

BOOST_AUTO_TEST_SUITE_END()  // test_tensorboard
