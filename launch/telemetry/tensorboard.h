// TensorBoard event files: rank 0's metrics as scalars that TensorBoard plots while a
// run goes on (run.tensorboard; docs/tensorboard.md).
//
// An event file is a TFRecord file: each record is
//   uint64 length | uint32 masked CRC-32C of the length | data | uint32 masked CRC-32C of the data
// (little-endian), and each record's data is a serialized Event (launch/telemetry/tensorboard.proto).
// The first record holds the file version, every later one a scalar.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/durable_file.h"

namespace ftrain::launch {

// CRC-32C (Castagnoli), the checksum of TFRecord framing.
uint32_t crc32c(std::string_view bytes);
// The CRC as TFRecord stores it: rotated and offset, so that a CRC of data that holds
// CRCs stays well distributed.
uint32_t masked_crc32c(std::string_view bytes);

// The scalars of one metrics.jsonl record, as (tag, value): a training step's numbers
// as train/<key>, a validation's val_<key> as validation/<key>, and each rank's figures
// of a memory record as memory/rank<r>/<key>, and of a memory_phases record as
// memory/rank<r>/<phase>/host_peak_bytes (and device_peak_bytes on a GPU). Booleans count as 0 or 1; other fields
// and the step itself are not scalars.
std::vector<std::pair<std::string, double>> tensorboard_scalars(const nlohmann::json& record);

// Writes one new event file, events.out.tfevents.<unix time>.<hostname>, in a directory
// (created if missing). A resumed run writes a new file beside the old ones and
// TensorBoard reads them all.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::filesystem::path& dir);

  void add_scalar(const std::string& tag, double value, int64_t step);
  // The scalars of a metrics.jsonl record (tensorboard_scalars) at its "step", then a
  // flush, so that TensorBoard shows the step at once. A record without a step is skipped.
  void add_record(const nlohmann::json& record);
  // Writes what add_scalar() buffered; throws "<path>: write failed: <reason>" if it
  // cannot (a full disk, for one).
  void flush();

  const std::filesystem::path& path() const { return path_; }

 private:
  void write_record(const std::string& data);

  std::filesystem::path path_;
  data::AppendFile out_;
  std::string pending_;  // records not yet written
};

}  // namespace ftrain::launch
