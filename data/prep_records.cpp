#include "data/prep_records.h"

#include <set>
#include <sstream>
#include <stdexcept>

namespace ftrain::data {

namespace {

bool is_blank(const std::string& line) { return line.find_first_not_of(" \t\r\f\v") == std::string::npos; }

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  while (true) {
    const std::size_t tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) return fields;
    start = tab + 1;
  }
}

}  // namespace

RecordReader::RecordReader(std::filesystem::path file, RecordReaderOptions options)
    : file_(std::move(file)), options_(std::move(options)) {
  const std::string extension = file_.extension().string();
  if (extension == ".csv") {
    format_ = Format::kCsv;
  } else if (extension == ".tsv") {
    format_ = Format::kTsv;
  } else if (extension == ".jsonl") {
    format_ = Format::kJsonl;
  } else if (extension == ".conll" || (extension == ".txt" && options_.text_is_conll)) {
    format_ = Format::kConll;
  } else {
    throw std::runtime_error(file_.string() + ": unsupported input type '" + extension +
                             "' for this task; expected .csv, .tsv, .jsonl or .conll");
  }
  std::error_code error;
  if (!std::filesystem::exists(file_, error)) throw std::runtime_error(file_.string() + ": no such file");
  if (std::filesystem::is_directory(file_, error)) throw std::runtime_error(file_.string() + ": is a directory");
  stream_.open(file_, std::ios::binary);
  if (!stream_) throw std::runtime_error(file_.string() + ": cannot open for reading");
  if (format_ == Format::kCsv || format_ == Format::kTsv) {
    int64_t line = 0;
    const bool found = format_ == Format::kCsv ? read_csv_row(header_, line) : [&] {
      std::string text;
      while (read_line(text)) {
        if (is_blank(text)) continue;
        header_ = split_tabs(text);
        return true;
      }
      return false;
    }();
    if (!found) throw std::runtime_error(file_.string() + ": empty, expected a header row naming the columns");
    std::set<std::string> seen;
    for (const auto& name : header_) {
      if (!seen.insert(name).second) {
        throw std::runtime_error(where(line_number_) + "the header names column '" + name + "' twice");
      }
    }
  }
}

std::string RecordReader::where(int64_t line) const { return file_.string() + ":" + std::to_string(line) + ": "; }

bool RecordReader::read_line(std::string& line) {
  if (!std::getline(stream_, line)) {
    if (stream_.bad()) throw std::runtime_error(file_.string() + ": read error after line " + std::to_string(line_number_));
    return false;
  }
  ++line_number_;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line_number_ == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);
  return true;
}

// One CSV record, which may span several lines when a quoted field holds line breaks.
bool RecordReader::read_csv_row(std::vector<std::string>& fields, int64_t& first_line) {
  std::string line;
  do {
    if (!read_line(line)) return false;
  } while (is_blank(line));
  first_line = line_number_;
  fields.assign(1, std::string());
  bool quoted = false;     // inside a quoted field
  bool was_quoted = false; // the current field was quoted and its closing quote seen
  std::size_t i = 0;
  while (true) {
    if (i == line.size()) {
      if (!quoted) return true;
      fields.back() += '\n';  // a line break inside quotes belongs to the field
      if (!read_line(line)) {
        throw std::runtime_error(where(first_line) + "a quoted field is never closed (missing '\"')");
      }
      i = 0;
      continue;
    }
    const char c = line[i++];
    if (quoted) {
      if (c != '"') {
        fields.back() += c;
      } else if (i < line.size() && line[i] == '"') {
        fields.back() += '"';
        ++i;
      } else {
        quoted = false;
        was_quoted = true;
      }
    } else if (c == ',') {
      fields.emplace_back();
      was_quoted = false;
    } else if (c == '"' && fields.back().empty() && !was_quoted) {
      quoted = true;
    } else if (was_quoted) {
      throw std::runtime_error(where(line_number_) + "unexpected '" + std::string(1, c) +
                               "' after a closing quote (quote the whole field, doubling inner quotes)");
    } else if (c == '"') {
      throw std::runtime_error(where(line_number_) +
                               "a '\"' inside an unquoted field (quote the whole field, doubling inner quotes)");
    } else {
      fields.back() += c;
    }
  }
}

bool RecordReader::next(Record& record) {
  switch (format_) {
    case Format::kCsv:
    case Format::kTsv: return next_delimited(record);
    case Format::kJsonl: return next_json(record);
    case Format::kConll: return next_conll(record);
  }
  return false;
}

bool RecordReader::next_delimited(Record& record) {
  std::vector<std::string> fields;
  int64_t line = 0;
  if (format_ == Format::kCsv) {
    if (!read_csv_row(fields, line)) return false;
  } else {
    std::string text;
    do {
      if (!read_line(text)) return false;
    } while (is_blank(text));
    line = line_number_;
    fields = split_tabs(text);
  }
  if (fields.size() != header_.size()) {
    throw std::runtime_error(where(line) + "has " + std::to_string(fields.size()) + " fields, the header has " +
                             std::to_string(header_.size()));
  }
  record.fields = nlohmann::json::object();
  for (std::size_t i = 0; i < fields.size(); ++i) record.fields[header_[i]] = std::move(fields[i]);
  record.line = line;
  return true;
}

bool RecordReader::next_json(Record& record) {
  std::string line;
  while (read_line(line)) {
    if (is_blank(line)) continue;
    try {
      record.fields = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& error) {  // parse_error, or out_of_range for a number past double
      throw std::runtime_error(where(line_number_) + "malformed JSON (" + error.what() + ")");
    }
    if (!record.fields.is_object()) {
      throw std::runtime_error(where(line_number_) + "expected a JSON object, found " +
                               std::string(record.fields.type_name()));
    }
    record.line = line_number_;
    return true;
  }
  return false;
}

bool RecordReader::next_conll(Record& record) {
  std::string line;
  auto tokens = nlohmann::json::array();
  auto tags = nlohmann::json::array();
  record.line = 0;
  while (read_line(line)) {
    if (is_blank(line)) {
      if (record.line != 0) break;
      continue;
    }
    if (record.line == 0) record.line = line_number_;
    const std::size_t tab = line.rfind('\t');
    if (tab == std::string::npos || tab == 0) {
      throw std::runtime_error(where(line_number_) + "expected 'token<TAB>tag', found no tab");
    }
    // Extra columns between token and tag (as in CoNLL-2003) are ignored.
    const std::size_t token_end = line.find('\t');
    tokens.push_back(line.substr(0, token_end));
    tags.push_back(line.substr(tab + 1));
  }
  if (record.line == 0) return false;
  record.fields = nlohmann::json::object();
  record.fields[options_.tokens_key] = std::move(tokens);
  record.fields[options_.tags_key] = std::move(tags);
  return true;
}

namespace {

const nlohmann::json& field_of(const Record& record, const std::filesystem::path& file, const std::string& key,
                               const std::string& option) {
  const auto found = record.fields.find(key);
  if (found == record.fields.end()) {
    throw std::runtime_error(file.string() + ":" + std::to_string(record.line) + ": column '" + key +
                             "' missing (choose it with " + option + ")");
  }
  return *found;
}

std::string scalar_text(const nlohmann::json& value, const std::string& where) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer() || value.is_boolean()) return value.dump();
  throw std::runtime_error(where + "is " + std::string(value.type_name()) + ", expected a string or an integer");
}

}  // namespace

std::string field_text(const Record& record, const std::filesystem::path& file, const std::string& key,
                       const std::string& option) {
  const nlohmann::json& value = field_of(record, file, key, option);
  return scalar_text(value, file.string() + ":" + std::to_string(record.line) + ": column '" + key + "' ");
}

std::vector<std::string> field_list(const Record& record, const std::filesystem::path& file, const std::string& key,
                                    const std::string& option) {
  const std::string where = file.string() + ":" + std::to_string(record.line) + ": column '" + key + "' ";
  nlohmann::json value = field_of(record, file, key, option);
  if (value.is_string()) {
    const std::string text = value.get<std::string>();
    if (text.find_first_not_of(" \t") != std::string::npos && text[text.find_first_not_of(" \t")] == '[') {
      try {
        value = nlohmann::json::parse(text);
      } catch (const nlohmann::json::exception& error) {  // parse_error, or out_of_range for a number past double
        throw std::runtime_error(where + "is not a JSON array (" + error.what() + ")");
      }
    } else {
      std::vector<std::string> words;
      std::istringstream stream(text);
      for (std::string word; stream >> word;) words.push_back(word);
      return words;
    }
  }
  if (!value.is_array()) throw std::runtime_error(where + "is " + std::string(value.type_name()) + ", expected a list");
  std::vector<std::string> items;
  for (const auto& item : value) items.push_back(scalar_text(item, where + "item " + std::to_string(items.size()) + " "));
  return items;
}

}  // namespace ftrain::data
