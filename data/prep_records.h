#pragma once
// Reading labelled examples for ftrain-prep's fine-tuning tasks, one record at a time.
// A record is a JSON object whatever the input format:
//   .csv    RFC 4180: a header row naming the columns, fields separated by commas, a
//           field in double quotes may hold commas, quotes (doubled) and line breaks;
//   .tsv    a header row, fields separated by tabs, no quoting;
//   .jsonl  one JSON object per line;
//   .conll  (also .txt with RecordFormat::kConll) one "token<TAB>tag" per line, a blank
//           line between sentences; a sentence becomes {tokens_key: [...], tags_key: [...]}.
// CSV/TSV fields are strings. Blank lines outside quotes are skipped; CRLF line ends and
// a UTF-8 byte-order mark are accepted.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace ftrain::data {

struct RecordReaderOptions {
  bool text_is_conll = false;     // read .txt inputs as CoNLL sentences
  std::string tokens_key = "tokens";  // names the CoNLL columns in the record
  std::string tags_key = "tags";
};

struct Record {
  nlohmann::json fields;  // an object
  int64_t line = 0;       // 1-based line where the record starts
};

class RecordReader {
 public:
  // Throws std::runtime_error naming the file if it is missing, of an unsupported type,
  // or (CSV/TSV) has no header row or a header naming a column twice.
  RecordReader(std::filesystem::path file, RecordReaderOptions options = {});

  // The next record; false at the end. Throws std::runtime_error "<file>:<line>: <what>"
  // for malformed JSON, a row with another number of fields than the header, an
  // unterminated quote, or a CoNLL line without a tab.
  bool next(Record& record);

  const std::filesystem::path& file() const { return file_; }
  // The columns of a CSV/TSV file, empty for the other formats.
  const std::vector<std::string>& header() const { return header_; }

 private:
  enum class Format { kCsv, kTsv, kJsonl, kConll };
  bool read_line(std::string& line);
  bool read_csv_row(std::vector<std::string>& fields, int64_t& first_line);
  bool next_delimited(Record& record);
  bool next_json(Record& record);
  bool next_conll(Record& record);
  std::string where(int64_t line) const;

  std::filesystem::path file_;
  RecordReaderOptions options_;
  Format format_ = Format::kJsonl;
  std::ifstream stream_;
  int64_t line_number_ = 0;
  std::vector<std::string> header_;
};

// The field `key` of a record as text: a string as is, a number or boolean as JSON
// writes it. Throws "<file>:<line>: ..." naming the key (and `option`, the command-line
// flag that chooses it) when it is missing or of another type.
std::string field_text(const Record& record, const std::filesystem::path& file, const std::string& key,
                       const std::string& option);
// The field `key` as a list of strings (a JSON array of strings, or for CSV/TSV a JSON
// array written in the cell, or space-separated words).
std::vector<std::string> field_list(const Record& record, const std::filesystem::path& file, const std::string& key,
                                    const std::string& option);

}  // namespace ftrain::data
