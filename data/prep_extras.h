#pragma once
// What ftrain-prep stores beyond TokenDatasetWriter's fields: the optional per-split
// dataset token_type_ids (uint8, (N, seq_len)) and the root attributes label_names (a
// JSON array as a string) and num_labels (int64) of the classification tasks.
//
// It opens the writer's temporary file a second time in this process (HDF5 shares the
// open file), so everything still appears at once when the writer renames the file into
// place. close() must come before TokenDatasetWriter::finish().

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace ftrain::data {

inline constexpr char kTokenTypeIds[] = "token_type_ids";  // uint8 (N, seq_len), segment per position
inline constexpr char kAttrLabelNames[] = "label_names";   // string, JSON array, index = label id
inline constexpr char kAttrNumLabels[] = "num_labels";     // int64

class PrepExtrasWriter {
 public:
  // temporary_file: TokenDatasetWriter::temporary_path(), after the writer created it.
  PrepExtrasWriter(const std::filesystem::path& temporary_file, int64_t seq_len);
  ~PrepExtrasWriter();
  PrepExtrasWriter(const PrepExtrasWriter&) = delete;
  PrepExtrasWriter& operator=(const PrepExtrasWriter&) = delete;

  // The split group must exist (TokenDatasetWriter::create_split).
  void create_token_type_ids(std::string_view split);
  void append_token_type_ids(std::string_view split, int64_t num_rows, std::span<const uint8_t> values);
  void set_root_string(std::string_view name, const std::string& value);
  void set_root_int(std::string_view name, int64_t value);
  void close();

 private:
  struct State;
  std::filesystem::path file_;
  int64_t seq_len_;
  std::unique_ptr<State> state_;
};

}  // namespace ftrain::data
