#include "data/document_reader.h"

#include <nlohmann/json.hpp>

#include <stdexcept>

namespace ftrain::data {

namespace {

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string::npos;
}

}  // namespace

DocumentReader::DocumentReader(std::filesystem::path file, DocumentReaderOptions options)
    : file_(std::move(file)), options_(std::move(options)) {
  const std::string extension = file_.extension().string();
  if (extension == ".jsonl") {
    jsonl_ = true;
  } else if (extension != ".txt") {
    throw std::runtime_error(file_.string() + ": unsupported input type '" + extension +
                             "'; expected .txt (plain text) or .jsonl (JSON lines)");
  }
  std::error_code error;
  if (!std::filesystem::exists(file_, error)) throw std::runtime_error(file_.string() + ": no such file");
  if (std::filesystem::is_directory(file_, error)) {
    throw std::runtime_error(file_.string() + ": is a directory, expected a .txt or .jsonl file");
  }
  stream_.open(file_, std::ios::binary);
  if (!stream_) throw std::runtime_error(file_.string() + ": cannot open for reading");
}

bool DocumentReader::read_line(std::string& line) {
  if (!std::getline(stream_, line)) {
    if (stream_.bad()) throw std::runtime_error(file_.string() + ": read error after line " + std::to_string(line_number_));
    return false;
  }
  ++line_number_;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line_number_ == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);
  return true;
}

bool DocumentReader::next(Document& document) {
  if (jsonl_) return next_json(document);
  return options_.text_mode == TextMode::kLine ? next_text_line(document) : next_paragraph(document);
}

bool DocumentReader::next_text_line(Document& document) {
  std::string line;
  while (read_line(line)) {
    if (is_blank(line)) continue;
    document.text = std::move(line);
    document.line = line_number_;
    return true;
  }
  return false;
}

bool DocumentReader::next_paragraph(Document& document) {
  std::string line;
  document.text.clear();
  document.line = 0;
  while (read_line(line)) {
    if (is_blank(line)) {
      if (document.line != 0) return true;
      continue;
    }
    if (document.line == 0) {
      document.line = line_number_;
    } else {
      document.text += '\n';
    }
    document.text += line;
  }
  return document.line != 0;
}

bool DocumentReader::next_json(Document& document) {
  std::string line;
  while (read_line(line)) {
    if (is_blank(line)) continue;
    const std::string where = file_.string() + ":" + std::to_string(line_number_) + ": ";
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& error) {  // parse_error, or out_of_range for a number past double
      throw std::runtime_error(where + "malformed JSON (" + error.what() + ")");
    }
    if (!object.is_object()) {
      throw std::runtime_error(where + "expected a JSON object, found " + std::string(object.type_name()));
    }
    const auto field = object.find(options_.text_key);
    if (field == object.end()) {
      throw std::runtime_error(where + "key '" + options_.text_key + "' missing (choose the field with --text-key)");
    }
    if (!field->is_string()) {
      throw std::runtime_error(where + "key '" + options_.text_key + "' is " + std::string(field->type_name()) +
                               ", expected a string");
    }
    std::string text = field->get<std::string>();
    if (text.empty()) {
      ++skipped_empty_;
      continue;
    }
    document.text = std::move(text);
    document.line = line_number_;
    return true;
  }
  return false;
}

}  // namespace ftrain::data
