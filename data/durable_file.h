#pragma once

// Files that survive a crash: written whole or not at all, and on disk before anyone
// is told they exist. Every writer of durable files (datasets, checkpoints, exported
// models, run records) goes through these.

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace ftrain::data {

// fsync of a file, or of a directory (its entries). File systems that cannot fsync a
// directory (EINVAL, ENOTSUP) are accepted: the file's own fsync already happened.
// Throws "<path>: ..." on failure.
void fsync_path(const std::filesystem::path& path, bool directory);

// Writes `<path>.tmp`; commit() fsyncs it, renames it over `path` and fsyncs the
// directory, so an existing `path` is either untouched or replaced whole. Destroying an
// uncommitted AtomicFile removes the temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  void write(const void* data, size_t size);
  void commit();

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// A log that only grows (metrics.jsonl, TensorBoard event files, the supervisor's
// attempts): opened for appending, created if missing, never truncated. Each write()
// reaches the kernel before it returns, and a failure throws "<path>: ...: <reason>",
// so a full disk is named as such.
class AppendFile {
 public:
  AppendFile() = default;
  explicit AppendFile(std::filesystem::path path);
  AppendFile(AppendFile&& other) noexcept;
  AppendFile& operator=(AppendFile&& other) noexcept;
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  ~AppendFile();

  bool is_open() const { return fd_ >= 0; }
  const std::filesystem::path& path() const { return path_; }
  void write(std::string_view bytes);

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// Replaces `path` with `contents` through an AtomicFile. For small files such as
// config.json.
void write_file_atomically(const std::filesystem::path& path, const std::string& contents);

}  // namespace ftrain::data
