#pragma once
// Reading raw documents for ftrain-prep, one at a time, from the input formats it
// accepts:
//   .txt    one document per line (TextMode::kLine), or documents separated by blank
//           lines (TextMode::kParagraph, the lines of a paragraph joined with "\n");
//   .jsonl  one JSON object per line, the document in the string field text_key.
// Blank lines (only spaces, tabs, CR) and empty documents are skipped. Line endings may
// be LF or CRLF; a UTF-8 byte-order mark at the start of a file is ignored.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace ftrain::data {

enum class TextMode { kLine, kParagraph };

struct DocumentReaderOptions {
  TextMode text_mode = TextMode::kLine;
  std::string text_key = "text";
};

struct Document {
  std::string text;
  int64_t line = 0;  // 1-based line where the document starts
};

class DocumentReader {
 public:
  // Throws std::runtime_error naming the file if it is missing, unreadable or of an
  // unsupported type.
  DocumentReader(std::filesystem::path file, DocumentReaderOptions options = {});

  // The next document; false at the end of the file. Throws std::runtime_error as
  // "<file>:<line>: <what is wrong>" for a malformed JSON line, a line that is not an
  // object, or a missing or non-string text field.
  bool next(Document& document);

  const std::filesystem::path& file() const { return file_; }
  int64_t skipped_empty() const { return skipped_empty_; }  // empty JSON texts

 private:
  bool read_line(std::string& line);
  bool next_json(Document& document);
  bool next_text_line(Document& document);
  bool next_paragraph(Document& document);

  std::filesystem::path file_;
  DocumentReaderOptions options_;
  bool jsonl_ = false;
  std::ifstream stream_;
  int64_t line_number_ = 0;
  int64_t skipped_empty_ = 0;
};

}  // namespace ftrain::data
