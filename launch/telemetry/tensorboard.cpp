#include "launch/telemetry/tensorboard.h"

#include <unistd.h>

#include <array>
#include <boost/crc.hpp>
#include <chrono>
#include <ctime>
#include <stdexcept>

#include "launch/telemetry/tensorboard.pb.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {
namespace {

// Boost.CRC with the Castagnoli polynomial, reflected in and out, as in RFC 3720.
using Crc32c = boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;

std::string host_name() {
  std::array<char, 256> name{};
  if (gethostname(name.data(), name.size() - 1) != 0 || name[0] == '\0') return "localhost";
  return name.data();
}

double seconds_since_epoch() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

template <typename T>
std::string little_endian(T value) {
  std::string bytes(sizeof(T), '\0');
  for (size_t i = 0; i < sizeof(T); ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xFF);
  return bytes;
}

void add_number(std::vector<std::pair<std::string, double>>& out, const std::string& tag, const json& value) {
  if (value.is_boolean()) out.emplace_back(tag, value.get<bool>() ? 1.0 : 0.0);
  else if (value.is_number()) out.emplace_back(tag, value.get<double>());
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  Crc32c crc;
  crc.process_bytes(bytes.data(), bytes.size());
  return crc.checksum();
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t crc = crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::vector<std::pair<std::string, double>> tensorboard_scalars(const json& record) {
  std::vector<std::pair<std::string, double>> out;
  if (!record.is_object()) return out;
  if (record.contains("memory")) {
    for (const auto& figures : record["memory"]) {
      if (!figures.is_object() || !figures.contains("rank")) continue;
      const std::string prefix = "memory/rank" + std::to_string(figures["rank"].get<int64_t>()) + "/";
      for (const auto& [key, value] : figures.items())
        if (key != "rank") add_number(out, prefix + key, value);
    }
    return out;
  }
  if (record.contains("memory_phases")) {
    for (const auto& peak : record["memory_phases"]) {
      if (!peak.is_object() || !peak.contains("rank") || !peak.contains("phase")) continue;
      const std::string prefix = "memory/rank" + std::to_string(peak["rank"].get<int64_t>()) + "/" +
                                 peak["phase"].get<std::string>() + "/";
      add_number(out, prefix + "host_peak_bytes", peak.value("host_peak_bytes", json()));
      if (peak.value("device_peak_bytes", int64_t{-1}) >= 0)
        add_number(out, prefix + "device_peak_bytes", peak["device_peak_bytes"]);
    }
    return out;
  }
  bool validation = false;
  for (const auto& [key, value] : record.items()) validation = validation || key.starts_with("val_");
  for (const auto& [key, value] : record.items()) {
    if (key == "step") continue;
    if (validation && key.starts_with("val_")) add_number(out, "validation/" + key.substr(4), value);
    else if (!validation) add_number(out, "train/" + key, value);
  }
  return out;
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error)
    throw std::runtime_error(dir.string() + ": cannot create the TensorBoard directory: " + error.message() +
                             " (run.tensorboard = false turns it off)");
  // Each writing process has its own file: the start time alone is not enough, as a run
  // resumed within the same second would otherwise continue the previous one's file.
  path_ = dir / ("events.out.tfevents." + std::to_string(std::time(nullptr)) + "." + host_name() + "." +
                 std::to_string(::getpid()));
  // Appending all the same: nothing already written is ever truncated.
  out_ = data::AppendFile(path_);
  tensorboard::Event event;
  event.set_wall_time(seconds_since_epoch());
  event.set_file_version("brain.Event:2");
  write_record(event.SerializeAsString());
  flush();
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  tensorboard::Event event;
  event.set_wall_time(seconds_since_epoch());
  event.set_step(step);
  auto* scalar = event.mutable_summary()->add_value();
  scalar->set_tag(tag);
  scalar->set_simple_value(static_cast<float>(value));
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::add_record(const json& record) {
  if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) return;
  const int64_t step = record["step"].get<int64_t>();
  for (const auto& [tag, value] : tensorboard_scalars(record)) add_scalar(tag, value, step);
  flush();
}

void TensorBoardWriter::flush() {
  if (pending_.empty()) return;
  std::string bytes;
  bytes.swap(pending_);
  out_.write(bytes);
}

void TensorBoardWriter::write_record(const std::string& data) {
  const std::string length = little_endian<uint64_t>(data.size());
  pending_ += length;
  pending_ += little_endian<uint32_t>(masked_crc32c(length));
  pending_ += data;
  pending_ += little_endian<uint32_t>(masked_crc32c(data));
}

}  // namespace ftrain::launch
