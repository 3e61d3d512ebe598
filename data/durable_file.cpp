#include "data/durable_file.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <unistd.h>

namespace ftrain::data {

namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw std::runtime_error(path.string() + ": " + what + ": " + std::strerror(errno));
}

// A short write is continued; one that cannot go on (ENOSPC, EIO) throws.
void write_all(int fd, const void* data, size_t size, const std::filesystem::path& path, const std::string& what) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      fail(path, what);
    }
    bytes += written;
    size -= static_cast<size_t>(written);
  }
}

}  // namespace

void fsync_path(const std::filesystem::path& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open to fsync");
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  errno = error;
  if (rc != 0 && !(directory && (error == EINVAL || error == ENOTSUP || error == EBADF))) fail(path, "fsync failed");
}

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)), tmp_path_(path_.string() + ".tmp") {
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_, "cannot create temporary file " + tmp_path_.string());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  write_all(fd_, data, size, path_, "write to " + tmp_path_.string() + " failed");
}

// Data reaches the disk before the rename, and the rename before we return, so a crash
// leaves either the old file or the complete new one.
void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail(path_, "fsync of " + tmp_path_.string() + " failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(path_, "close of " + tmp_path_.string() + " failed");
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) fail(path_, "cannot rename " + tmp_path_.string() + " over it");
  committed_ = true;
  std::filesystem::path dir = path_.parent_path();
  fsync_path(dir.empty() ? "." : dir, true);
}

AppendFile::AppendFile(std::filesystem::path path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_, "cannot open for appending");
}

AppendFile::AppendFile(AppendFile&& other) noexcept : path_(std::move(other.path_)), fd_(other.fd_) { other.fd_ = -1; }

AppendFile& AppendFile::operator=(AppendFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::write(std::string_view bytes) {
  if (fd_ < 0) throw std::logic_error("AppendFile::write: no file is open");
  write_all(fd_, bytes.data(), bytes.size(), path_, "write failed");
}

void write_file_atomically(const std::filesystem::path& path, const std::string& contents) {
  AtomicFile file(path);
  file.write(contents.data(), contents.size());
  file.commit();
}

}  // namespace ftrain::data
