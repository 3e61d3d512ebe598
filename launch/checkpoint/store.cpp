#include "launch/checkpoint/store.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>

#include "data/durable_file.h"
#include "data/hdf5_handle.h"
#include "dist/host_memory.h"

namespace fs = std::filesystem;
using nlohmann::json;
namespace hdf5 = ftrain::data::hdf5;

namespace ftrain::launch {
namespace {

constexpr const char* kIndexFile = "state.h5";
constexpr const char* kMarker = "COMMITTED";

const std::vector<at::ScalarType>& stored_dtypes() {
  static const std::vector<at::ScalarType> known = {at::kFloat, at::kDouble, at::kLong, at::kInt,
                                                    at::kByte,  at::kBFloat16, at::kHalf};
  return known;
}

hid_t h5_type(at::ScalarType type, const std::string& where) {
  switch (type) {
    case at::kFloat: return H5T_NATIVE_FLOAT;
    case at::kDouble: return H5T_NATIVE_DOUBLE;
    case at::kLong: return H5T_NATIVE_INT64;
    case at::kInt: return H5T_NATIVE_INT32;
    case at::kByte: return H5T_NATIVE_UINT8;
    // bf16/fp16 are stored as their raw 16-bit patterns with a dtype attribute.
    case at::kBFloat16:
    case at::kHalf: return H5T_NATIVE_UINT16;
    default: throw std::runtime_error(where + ": unsupported dtype " + std::string(c10::toString(type)));
  }
}

at::ScalarType dtype_named(const std::string& name, const std::string& where) {
  for (at::ScalarType t : stored_dtypes())
    if (c10::toString(t) == name) return t;
  throw std::runtime_error(where + " has unknown dtype " + name);
}

// The standard CRC-32 (zlib's, as Python's zlib.crc32 computes it).
uint32_t crc32_of(const void* data, size_t bytes) {
  return static_cast<uint32_t>(crc32_z(0L, static_cast<const Bytef*>(data), bytes));
}

// The elements of a shape from an index, which is not trusted: a negative extent or a
// product beyond 2^50 (a petabyte of fp32) is refused before anything is sized by it.
int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > (int64_t{1} << 50))
      throw std::runtime_error("checkpoint index: shape " + c10::str(at::IntArrayRef(shape)) +
                               " is negative or too large (corrupt index)");
  return n;
}


hdf5::Handle file_access() {
  hdf5::Handle props(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_file_locking(props.get(), false, true);
  return props;
}

hdf5::Handle create_file(const fs::path& path) {
  hdf5::Handle props = file_access();
  hdf5::Handle file(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, props.get()), H5Fclose);
  if (!file.valid()) throw std::runtime_error(path.string() + ": cannot create checkpoint file");
  return file;
}

void close_file(hdf5::Handle& file, const fs::path& path) {
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error(path.string() + ": flush failed (disk full?)");
  if (file.close() < 0) throw std::runtime_error(path.string() + ": close failed (disk full?)");
}

hdf5::Handle intermediate_groups() {
  hdf5::Handle props(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(props.get(), 1);
  return props;
}

void write_string_attribute(hid_t object, const char* name, const std::string& value) {
  hdf5::Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  hdf5::Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  hdf5::Handle attr(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), value.data()) < 0)
    throw std::runtime_error(std::string("cannot write attribute ") + name);
}

void write_int64_attribute(hid_t object, const char* name, const std::vector<int64_t>& values) {
  const hsize_t n = values.size();
  hdf5::Handle space(n == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, &n, nullptr), H5Sclose);
  hdf5::Handle attr(H5Acreate2(object, name, H5T_NATIVE_INT64, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || (n > 0 && H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()) < 0))
    throw std::runtime_error(std::string("cannot write attribute ") + name);
}

// A scalar string dataset: metadata and manifest can outgrow an attribute's 64 KiB.
void write_string_dataset(hid_t file, const char* name, const std::string& value, const std::string& where) {
  hdf5::Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  hdf5::Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  hdf5::Handle dataset(H5Dcreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!dataset.valid() || H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, value.data()) < 0)
    throw std::runtime_error(where + ": cannot write " + name + " (disk full?)");
}

std::string read_string_dataset(hid_t file, const char* name, const std::string& where) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) throw std::runtime_error(where + ": no " + name + " dataset");
  hdf5::Handle dataset(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  hdf5::Handle type(H5Dget_type(dataset.get()), H5Tclose);
  if (!dataset.valid() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    throw std::runtime_error(where + ": " + name + " is not a fixed-length string");
  hdf5::Handle space(H5Dget_space(dataset.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    throw std::runtime_error(where + ": " + name + " holds several values, expected a single string");
  // The size is the file's word: a corrupt one could ask for gigabytes the file does not
  // hold. What it stores for the dataset bounds it.
  const size_t declared = H5Tget_size(type.get());
  const hsize_t stored = H5Dget_storage_size(dataset.get());
  if (declared > stored)
    throw std::runtime_error(where + ": " + name + " declares a string of " + std::to_string(declared) +
                             " bytes, but the file stores " + std::to_string(stored) + " for it (corrupt file?)");
  std::string value(declared, '\0');
  hdf5::Handle mem_type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem_type.get(), value.size());
  if (H5Dread(dataset.get(), mem_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, value.data()) < 0)
    throw std::runtime_error(where + ": " + name + " cannot be read (truncated file?)");
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

std::string rank_file_name(int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "rank_%05d.h5", rank);
  return name;
}

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

int64_t step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("step_", 0) != 0 || name.find('.') != std::string::npos) return -1;
  try {
    return std::stoll(name.substr(5));
  } catch (...) {
    return -1;
  }
}

// FTRAIN_TEST_FAULT=<kind>:<rank>:<step>, for fault-injection tests.
struct InjectedFault {
  std::string kind;
  int rank = -1;
  int64_t step = -1;
};

std::optional<InjectedFault> injected_fault() {
  const char* text = std::getenv("FTRAIN_TEST_FAULT");
  if (!text || !*text) return std::nullopt;
  InjectedFault fault;
  const std::string spec = text;
  const size_t a = spec.find(':'), b = spec.find(':', a == std::string::npos ? a : a + 1);
  if (a == std::string::npos || b == std::string::npos)
    throw std::runtime_error("FTRAIN_TEST_FAULT=" + spec + ": expected <enospc|stall>:<rank>:<step>");
  fault.kind = spec.substr(0, a);
  fault.rank = std::stoi(spec.substr(a + 1, b - a - 1));
  fault.step = std::stoll(spec.substr(b + 1));
  if (fault.kind != "enospc" && fault.kind != "stall")
    throw std::runtime_error("FTRAIN_TEST_FAULT=" + spec + ": unknown kind " + fault.kind);
  return fault;
}

void write_all(int fd, const char* data, size_t bytes, off_t offset, const fs::path& path) {
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd, data, bytes, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(path.string() + ": write failed: " + std::strerror(errno));
    }
    data += n;
    bytes -= static_cast<size_t>(n);
    offset += n;
  }
}

// ---------------------------------------------------------------------------------
// Reading: the index of a committed checkpoint and the rank files it names.

struct Index {
  fs::path dir;
  json meta;
  json tensors;                          // array of {name, dtype, shape, pieces}
  std::map<std::string, size_t> by_name;
  int64_t block_bytes = kCheckpointBlockBytes;
};

// The manifest is the file's word: every field a reader uses is checked here, once,
// before anything is sized or indexed by it, so the readers below take its fields as
// given. Each tensor is a 1-D or 2-D tensor of a known dtype; each piece names its file
// and dataset and lies inside its tensor; the pieces hold exactly the tensor's values.
// (Whether a piece's bytes lie in its file is locate_piece's check, made before
// read_checkpoint_tensor allocates.)
void check_manifest(const json& tensors, const std::string& where) {
  std::set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const json& tensor = tensors[i];
    std::string at = where + ": manifest tensors[" + std::to_string(i) + "]";
    auto fail = [&](const std::string& what) { throw std::runtime_error(at + " " + what + " (corrupt)"); };
    auto is_string = [](const json& object, const char* key) {
      return object.contains(key) && object[key].is_string();
    };
    auto is_dims = [](const json& object, const char* key) {
      if (!object.contains(key) || !object[key].is_array()) return false;
      for (const json& d : object[key])
        if (!d.is_number_integer() || d.get<int64_t>() < 0) return false;
      return true;
    };
    if (!tensor.is_object() || !is_string(tensor, "name")) fail("has no \"name\" string");
    at += " ('" + tensor["name"].get<std::string>() + "')";
    if (!names.insert(tensor["name"].get<std::string>()).second) fail("repeats a tensor name");
    if (!is_string(tensor, "dtype")) fail("has no \"dtype\" string");
    dtype_named(tensor["dtype"].get<std::string>(), at);
    if (!is_dims(tensor, "shape") || tensor["shape"].empty() || tensor["shape"].size() > 2)
      fail("has no \"shape\" of 1 or 2 non-negative sizes");
    const auto shape = tensor["shape"].get<std::vector<int64_t>>();
    if (!tensor.contains("pieces") || !tensor["pieces"].is_array()) fail("has no \"pieces\" array");
    int64_t covered = 0;
    for (size_t j = 0; j < tensor["pieces"].size(); ++j) {
      const json& piece = tensor["pieces"][j];
      const std::string piece_at = "pieces[" + std::to_string(j) + "]";
      if (!piece.is_object() || !is_string(piece, "file") || !is_string(piece, "dataset"))
        fail(piece_at + " has no \"file\" and \"dataset\" strings");
      if (!is_dims(piece, "offset") || !is_dims(piece, "shape") || piece["offset"].size() != shape.size() ||
          piece["shape"].size() != shape.size())
        fail(piece_at + " has no \"offset\" and \"shape\" of the tensor's " + std::to_string(shape.size()) +
             " dimensions");
      const auto offset = piece["offset"].get<std::vector<int64_t>>();
      const auto extent = piece["shape"].get<std::vector<int64_t>>();
      for (size_t d = 0; d < shape.size(); ++d)
        if (offset[d] > shape[d] || extent[d] > shape[d] - offset[d]) fail(piece_at + " lies outside the tensor");
      if (!piece.contains("block_crc32") || !piece["block_crc32"].is_array())
        fail(piece_at + " has no block_crc32 array");
      for (const json& crc : piece["block_crc32"])
        if (!crc.is_number_unsigned() || crc.get<uint64_t>() > 0xFFFFFFFFull)
          fail(piece_at + " has a block_crc32 that is not a 32-bit checksum");
      covered += numel_of(extent);
    }
    if (covered != numel_of(shape))
      fail("has pieces holding " + std::to_string(covered) + " of its " + std::to_string(numel_of(shape)) + " values");
  }
}

Index read_index(const fs::path& checkpoint) {
  const hdf5::QuietErrors quiet;  // failures become exceptions naming the file
  if (!fs::exists(checkpoint / kMarker))
    throw std::runtime_error(checkpoint.string() + ": not a committed checkpoint (no " + kMarker + " marker)");
  const fs::path path = checkpoint / kIndexFile;
  const std::string where = path.string();
  const std::string only = "; this ftrain reads checkpoint format " + std::to_string(kCheckpointFormatVersion) +
                           " only (resume or export it with the ftrain that wrote it)";
  if (!fs::is_regular_file(path)) throw std::runtime_error(where + ": missing");
  hdf5::Handle props = file_access();
  hdf5::Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, props.get()), H5Fclose);
  if (!file.valid()) throw std::runtime_error(where + ": not a readable HDF5 file (truncated or corrupt)");
  if (H5Lexists(file.get(), "manifest", H5P_DEFAULT) <= 0)
    throw std::runtime_error(where + ": no manifest: written by an ftrain older than checkpoint format 2" + only);
  Index index;
  index.dir = checkpoint;
  index.meta = json::parse(read_string_dataset(file.get(), "meta", where), nullptr, false);
  json manifest = json::parse(read_string_dataset(file.get(), "manifest", where), nullptr, false);
  if (index.meta.is_discarded() || manifest.is_discarded() || !manifest.is_object() || !manifest.contains("tensors") ||
      !manifest["tensors"].is_array())
    throw std::runtime_error(where + ": metadata or manifest is not valid JSON (corrupt)");
  const json version = manifest.value("format_version", json());
  if (!version.is_number_integer() || version.get<int64_t>() != kCheckpointFormatVersion)
    throw std::runtime_error(where + ": checkpoint format_version " + version.dump() +
                             (version.is_number_integer() && version.get<int64_t>() < kCheckpointFormatVersion
                                  ? " (an older ftrain wrote it, with one crc32 per piece)"
                                  : "") +
                             only);
  const json block_bytes = manifest.value("block_bytes", json());
  if (!block_bytes.is_number_integer() || block_bytes.get<int64_t>() < 4096 || block_bytes.get<int64_t>() > (64 << 20))
    throw std::runtime_error(where + ": manifest block_bytes " + block_bytes.dump() +
                             " is not between 4096 and 64 MiB (corrupt)");
  index.block_bytes = block_bytes.get<int64_t>();
  check_manifest(manifest["tensors"], where);
  index.tensors = manifest["tensors"];
  for (size_t i = 0; i < index.tensors.size(); ++i) index.by_name[index.tensors[i].at("name")] = i;
  return index;
}

// The rank files of one checkpoint, each opened once: through HDF5 to find where a
// piece's bytes lie, and as a plain file to read them.
class RankFiles {
 public:
  struct File {
    hdf5::Handle h5;
    int fd = -1;
    int64_t size = 0;
  };
  explicit RankFiles(fs::path dir) : dir_(std::move(dir)) {}
  ~RankFiles() {
    for (auto& [name, file] : files_) ::close(file.fd);
  }
  RankFiles(const RankFiles&) = delete;
  RankFiles& operator=(const RankFiles&) = delete;

  const File& open(const std::string& name) {
    auto found = files_.find(name);
    if (found != files_.end()) return found->second;
    const fs::path path = dir_ / name;
    if (name.find('/') != std::string::npos || !fs::is_regular_file(path))
      throw std::runtime_error(path.string() + ": missing");
    const hdf5::QuietErrors quiet;  // failures become exceptions naming the file
    File file;
    hdf5::Handle props = file_access();
    file.h5 = hdf5::Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, props.get()), H5Fclose);
    if (!file.h5.valid()) throw std::runtime_error(path.string() + ": not a readable HDF5 file (truncated or corrupt)");
    file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat info {};
    if (file.fd < 0 || ::fstat(file.fd, &info) != 0) {
      if (file.fd >= 0) ::close(file.fd);
      throw std::runtime_error(path.string() + ": cannot open: " + std::strerror(errno));
    }
    file.size = static_cast<int64_t>(info.st_size);
    return files_.emplace(name, std::move(file)).first->second;
  }

 private:
  fs::path dir_;
  std::map<std::string, File> files_;
};

// Where one piece's bytes lie, and the crc32 of each of its blocks.
struct StoredPiece {
  std::string what;  // "<file>: piece '<dataset>' of tensor '<name>'", for errors
  int fd = -1;
  int64_t address = 0;  // of the piece's first byte in the file
  int64_t bytes = 0;
  std::vector<uint32_t> block_crcs;
};

// Checks one piece against its rank file (dataset present, of the manifest's shape and
// element size, stored contiguously and wholly inside the file) and against the index's
// block size. Reads no data.
StoredPiece locate_piece(RankFiles& files, const Index& index, const json& piece, at::ScalarType dtype,
                         const std::string& tensor) {
  const std::string file_name = piece.at("file");
  const std::string dataset_name = piece.at("dataset");
  StoredPiece out;
  out.what = (index.dir / file_name).string() + ": piece '" + dataset_name + "' of tensor '" + tensor + "'";
  const RankFiles::File& file = files.open(file_name);
  const hdf5::QuietErrors quiet;
  if (H5Lexists(file.h5.get(), dataset_name.c_str(), H5P_DEFAULT) <= 0) throw std::runtime_error(out.what + " is missing");
  hdf5::Handle dataset(H5Dopen2(file.h5.get(), dataset_name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) throw std::runtime_error(out.what + " cannot be opened");
  const auto shape = piece.at("shape").get<std::vector<int64_t>>();
  hdf5::Handle space(H5Dget_space(dataset.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(std::max(rank, 0));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  if (std::vector<int64_t>(dims.begin(), dims.end()) != shape)
    throw std::runtime_error(out.what + " has another shape than the manifest says");
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
  hdf5::Handle type(H5Dget_type(dataset.get()), H5Tclose);
  if (static_cast<int64_t>(H5Tget_size(type.get())) != element)
    throw std::runtime_error(out.what + " is stored with another element size than its dtype's");
  const haddr_t address = H5Dget_offset(dataset.get());
  out.bytes = numel_of(shape) * element;
  if (address == HADDR_UNDEF && out.bytes > 0)
    throw std::runtime_error(out.what + " is not stored contiguously (not written by ftrain?)");
  out.address = address == HADDR_UNDEF ? 0 : static_cast<int64_t>(address);
  out.fd = file.fd;
  if (out.address + out.bytes > file.size)
    throw std::runtime_error(out.what + " lies beyond the end of the file (truncated file)");
  const json& crcs = piece.at("block_crc32");
  const int64_t blocks = (out.bytes + index.block_bytes - 1) / index.block_bytes;
  if (!crcs.is_array() || static_cast<int64_t>(crcs.size()) != blocks)
    throw std::runtime_error(out.what + ": the manifest has " + std::to_string(crcs.is_array() ? crcs.size() : 0) +
                             " block checksums for its " + std::to_string(blocks) + " blocks (corrupt index)");
  for (const json& crc : crcs) out.block_crcs.push_back(crc.get<uint32_t>());
  return out;
}

// Copies byte ranges of pieces out of their files, a block at a time: each block that
// holds wanted bytes is read once and checked against its crc32 before any of it is
// used. Blocks wanted whole are read straight into place; the block a range begins or
// ends inside is read into a buffer and kept for the next range.
class BlockReader {
 public:
  explicit BlockReader(int64_t block_bytes) : block_bytes_(block_bytes) {}

  void copy(const StoredPiece& piece, int64_t begin, int64_t end, char* out) {
    while (begin < end) {
      const int64_t block = begin / block_bytes_;
      const int64_t block_begin = block * block_bytes_;
      const int64_t block_end = std::min(block_begin + block_bytes_, piece.bytes);
      const int64_t until = std::min(end, block_end);
      if (begin == block_begin && until == block_end) {
        read_block(piece, block, out);
      } else {
        if (cached_fd_ != piece.fd || cached_address_ != piece.address || cached_block_ != block) {
          buffer_.resize(static_cast<size_t>(block_bytes_));
          read_block(piece, block, buffer_.data());
          cached_fd_ = piece.fd, cached_address_ = piece.address, cached_block_ = block;
        }
        std::memcpy(out, buffer_.data() + (begin - block_begin), static_cast<size_t>(until - begin));
      }
      out += until - begin;
      begin = until;
    }
  }

  // Reads every block of `piece`, checking each, and keeps none.
  void verify(const StoredPiece& piece) {
    buffer_.resize(static_cast<size_t>(block_bytes_));
    cached_block_ = -1;
    for (int64_t block = 0; block * block_bytes_ < piece.bytes; ++block) read_block(piece, block, buffer_.data());
  }

  int64_t bytes_read() const { return bytes_read_; }

 private:
  void read_block(const StoredPiece& piece, int64_t block, char* into) {
    const int64_t begin = block * block_bytes_;
    const int64_t size = std::min(block_bytes_, piece.bytes - begin);
    const std::string which = piece.what + ": block " + std::to_string(block) + " (bytes " + std::to_string(begin) +
                              " to " + std::to_string(begin + size) + " of the piece)";
    int64_t done = 0;
    while (done < size) {
      const ssize_t n = ::pread(piece.fd, into + done, static_cast<size_t>(size - done),
                                static_cast<off_t>(piece.address + begin + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::runtime_error(which + " cannot be read: " + std::strerror(errno));
      if (n == 0) throw std::runtime_error(which + " cannot be read (truncated file)");
      done += n;
    }
    bytes_read_ += size;
    if (crc32_of(into, static_cast<size_t>(size)) != piece.block_crcs[static_cast<size_t>(block)])
      throw std::runtime_error(which + " fails its checksum (corrupt checkpoint)");
  }

  int64_t block_bytes_;
  std::vector<char> buffer_;
  int cached_fd_ = -1;
  int64_t cached_address_ = -1, cached_block_ = -1;
  int64_t bytes_read_ = 0;
};

// A stored tensor seen as a matrix (a vector is one row), and which of its elements a
// rank's part holds: part row r is global row rows[r], part column c global column
// cols[c]; -1 is padding, empty is the identity.
struct PartMap {
  int64_t global_rows = 1, global_cols = 1;
  int64_t part_rows = 1, part_cols = 1;
  std::vector<int64_t> rows, cols;
  int64_t row(int64_t r) const { return rows.empty() ? r : rows[static_cast<size_t>(r)]; }
  int64_t col(int64_t c) const { return cols.empty() ? c : cols[static_cast<size_t>(c)]; }
};

// A piece's rectangle in the matrix view, and where its bytes lie once located.
struct PieceBox {
  const json* record = nullptr;
  int64_t row = 0, col = 0, rows = 1, cols = 1;
  std::optional<StoredPiece> stored;
};

// The pieces of tensor `entry`, in the matrix view (check_manifest placed them inside it).
std::vector<PieceBox> piece_boxes(const json& entry, const std::vector<int64_t>& shape) {
  std::vector<PieceBox> boxes;
  for (const json& piece : entry.at("pieces")) {
    const auto offset = piece.at("offset").get<std::vector<int64_t>>();
    const auto extent = piece.at("shape").get<std::vector<int64_t>>();
    PieceBox box;
    box.record = &piece;
    if (shape.size() == 2) box.row = offset[0], box.rows = extent[0], box.col = offset[1], box.cols = extent[1];
    else box.col = offset[0], box.cols = extent[0];
    boxes.push_back(std::move(box));
  }
  return boxes;
}

// Copies the part's flat elements [first, first + count) of tensor `entry` into `out`,
// reading only the blocks that hold them. Adjacent ranges of one piece are joined, so a
// range that covers whole blocks reads them straight into `out`.
void read_range(RankFiles& files, BlockReader& reader, const Index& index, const json& entry, const PartMap& map,
                int64_t first, int64_t count, char* out) {
  const std::string name = entry.at("name");
  const std::string where = (index.dir / kIndexFile).string() + ": tensor '" + name + "'";
  const at::ScalarType dtype = dtype_named(entry.at("dtype"), where);
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  std::vector<PieceBox> boxes = piece_boxes(entry, shape);

  struct Pending {
    PieceBox* box = nullptr;
    int64_t begin = 0, end = 0;
    char* out = nullptr;
  } pending;
  auto flush = [&] {
    if (pending.box) reader.copy(*pending.box->stored, pending.begin, pending.end, pending.out);
    pending.box = nullptr;
  };
  auto copy = [&](PieceBox& box, int64_t begin, int64_t end, char* to) {
    if (pending.box == &box && pending.end == begin && pending.out + (pending.end - pending.begin) == to) {
      pending.end = end;
      return;
    }
    flush();
    if (!box.stored) box.stored = locate_piece(files, index, *box.record, dtype, name);
    pending = {&box, begin, end, to};
  };

  int64_t wanted = 0, copied = 0;
  for (int64_t f = first; f < first + count;) {
    const int64_t r = f / map.part_cols, c0 = f % map.part_cols;
    const int64_t n = std::min(map.part_cols - c0, first + count - f);
    const int64_t g_row = map.row(r);
    for (int64_t j = c0; g_row >= 0 && j < c0 + n;) {
      const int64_t g_col = map.col(j);
      if (g_col < 0) {
        ++j;
        continue;
      }
      int64_t k = j + 1;  // the run of consecutive global columns from j
      if (map.cols.empty()) k = c0 + n;  // whole rows: one run, no column to look at
      while (k < c0 + n && map.col(k) == g_col + (k - j)) ++k;
      wanted += k - j;
      char* run_out = out + (f - first + (j - c0)) * element;
      for (PieceBox& box : boxes) {
        if (g_row < box.row || g_row >= box.row + box.rows) continue;
        const int64_t lo = std::max(g_col, box.col), hi = std::min(g_col + (k - j), box.col + box.cols);
        if (lo >= hi) continue;
        const int64_t begin = ((g_row - box.row) * box.cols + (lo - box.col)) * element;
        copy(box, begin, begin + (hi - lo) * element, run_out + (lo - g_col) * element);
        copied += hi - lo;
      }
      j = k;
    }
    f += n;
  }
  flush();
  if (copied != wanted)
    throw std::runtime_error(where + ": its pieces hold " + std::to_string(copied) + " of the " +
                             std::to_string(wanted) + " values asked for (incomplete checkpoint)");
}

// The matrix view of tensor `entry` with the part a rank holds: split_dim -1 the whole
// tensor, else the global indices `index` along split_dim. Checks `part_shape` fits.
PartMap part_map(const json& entry, const std::vector<int64_t>& part_shape, int64_t split_dim, const at::Tensor& index,
                 const std::string& where) {
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  const int64_t dims = static_cast<int64_t>(shape.size());  // 1 or 2 (check_manifest)
  bool fits = static_cast<int64_t>(part_shape.size()) == dims && split_dim < dims &&
              (split_dim < 0 || index.defined());
  for (int64_t d = 0; fits && d < dims; ++d)
    fits = d == split_dim ? part_shape[d] == index.numel() : part_shape[d] == shape[d];
  if (!fits)
    throw std::runtime_error(where + " of shape " + c10::str(at::IntArrayRef(shape)) + " cannot fill a part of shape " +
                             c10::str(at::IntArrayRef(part_shape)) +
                             (split_dim < 0 ? std::string() : " split along dimension " + std::to_string(split_dim)));
  PartMap map;
  map.global_rows = dims == 2 ? shape[0] : 1;
  map.global_cols = shape[dims - 1];
  map.part_rows = dims == 2 ? part_shape[0] : 1;
  map.part_cols = part_shape[dims - 1];
  if (split_dim >= 0) {
    const at::Tensor wanted = index.to(at::kCPU).to(at::kLong).contiguous();
    std::vector<int64_t> global(wanted.data_ptr<int64_t>(), wanted.data_ptr<int64_t>() + wanted.numel());
    const int64_t limit = shape[split_dim];
    for (int64_t g : global)
      if (g >= limit || g < -1) throw std::runtime_error(where + ": an index lies beyond its shape");
    (dims == 2 && split_dim == 0 ? map.rows : map.cols) = std::move(global);
  }
  return map;
}

// Reads every piece of `entry`, checking every block (check_manifest checked that the
// pieces hold the tensor's values).
void verify_tensor(RankFiles& files, BlockReader& reader, const Index& index, const json& entry) {
  const std::string name = entry.at("name");
  const std::string where = (index.dir / kIndexFile).string() + ": tensor '" + name + "'";
  const at::ScalarType dtype = dtype_named(entry.at("dtype"), where);
  for (const json& piece : entry.at("pieces")) reader.verify(locate_piece(files, index, piece, dtype, name));
}

}  // namespace

// ---------------------------------------------------------------------------------
// Writing

int64_t PreparedRankFile::bytes() const {
  int64_t total = 0;
  for (const auto& entry : entries) total += entry.piece.data.nbytes();
  return total;
}

PreparedRankFile prepare_rank_file(const fs::path& dir, int rank, int64_t step, const std::vector<HeldTensor>& held,
                                   PieceCopies copies) {
  const hdf5::QuietErrors quiet;  // failures become exceptions naming the file
  PreparedRankFile out;
  out.path = dir / rank_file_name(rank);
  out.rank = rank;
  out.step = step;
  for (const HeldTensor& tensor : held) {
    auto pieces = pieces_to_write(tensor, copies);
    for (size_t k = 0; k < pieces.size(); ++k) {
      PreparedRankFile::Entry entry;
      entry.tensor = tensor.name;
      entry.dataset = tensor.name + "/" + std::to_string(k);
      entry.dtype = c10::toString(tensor.values.scalar_type());
      entry.global_shape = tensor.global_shape;
      entry.piece = std::move(pieces[k]);
      out.entries.push_back(std::move(entry));
    }
  }
  // The layout only: contiguous datasets placed now, never filled, so the bytes can be
  // written later at their offsets without HDF5.
  const std::string where = out.path.string();
  hdf5::Handle file = create_file(out.path);
  hdf5::Handle links = intermediate_groups();
  hdf5::Handle layout(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_layout(layout.get(), H5D_CONTIGUOUS);
  H5Pset_alloc_time(layout.get(), H5D_ALLOC_TIME_EARLY);
  H5Pset_fill_time(layout.get(), H5D_FILL_TIME_NEVER);
  for (auto& entry : out.entries) {
    const at::Tensor& data = entry.piece.data;
    const std::string what = where + ": piece '" + entry.dataset + "'";
    std::vector<hsize_t> dims(entry.piece.shape.begin(), entry.piece.shape.end());
    hdf5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    hdf5::Handle dataset(H5Dcreate2(file.get(), entry.dataset.c_str(), h5_type(data.scalar_type(), what), space.get(),
                                links.get(), layout.get(), H5P_DEFAULT),
                     H5Dclose);
    if (!dataset.valid()) throw std::runtime_error(what + ": cannot be created (disk full?)");
    write_string_attribute(dataset.get(), "dtype", entry.dtype);
    write_int64_attribute(dataset.get(), "offset", entry.piece.offset);
    write_int64_attribute(dataset.get(), "global_shape", entry.global_shape);
    const haddr_t address = H5Dget_offset(dataset.get());
    if (address == HADDR_UNDEF) throw std::runtime_error(what + ": has no place in the file");
    entry.file_offset = static_cast<int64_t>(address);
  }
  close_file(file, out.path);
  return out;
}

json write_rank_file(const PreparedRankFile& file) {
  static const std::optional<InjectedFault> fault = injected_fault();
  const bool faulty = fault && fault->rank == file.rank && fault->step == file.step;
  const int fd = ::open(file.path.c_str(), O_WRONLY);
  if (fd < 0) throw std::runtime_error(file.path.string() + ": cannot open for writing: " + std::strerror(errno));
  json records = json::array();
  try {
    for (size_t i = 0; i < file.entries.size(); ++i) {
      const auto& entry = file.entries[i];
      if (faulty && i == file.entries.size() / 2) {
        if (fault->kind == "stall") std::this_thread::sleep_for(std::chrono::hours(1));
        throw std::runtime_error(file.path.string() + ": write failed: " + std::strerror(ENOSPC) +
                                 " (injected by FTRAIN_TEST_FAULT)");
      }
      const auto* bytes = static_cast<const char*>(entry.piece.data.data_ptr());
      const size_t size = entry.piece.data.nbytes();
      write_all(fd, bytes, size, static_cast<off_t>(entry.file_offset), file.path);
      json block_crcs = json::array();
      for (size_t at = 0; at < size; at += static_cast<size_t>(kCheckpointBlockBytes))
        block_crcs.push_back(crc32_of(bytes + at, std::min(size - at, static_cast<size_t>(kCheckpointBlockBytes))));
      records.push_back({{"tensor", entry.tensor},
                         {"dtype", entry.dtype},
                         {"global_shape", entry.global_shape},
                         {"file", file.path.filename().string()},
                         {"dataset", entry.dataset},
                         {"offset", entry.piece.offset},
                         {"shape", entry.piece.shape},
                         {"block_crc32", std::move(block_crcs)}});
    }
    if (::fsync(fd) != 0) throw std::runtime_error(file.path.string() + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) throw std::runtime_error(file.path.string() + ": close failed: " + std::strerror(errno));
  return records;
}

// ---------------------------------------------------------------------------------
// The store

CheckpointStore::CheckpointStore(fs::path directory, int64_t keep) : directory_(std::move(directory)), keep_(keep) {}

fs::path CheckpointStore::staging_directory(int64_t step) const { return directory_ / (step_name(step) + ".tmp"); }
fs::path CheckpointStore::final_directory(int64_t step) const { return directory_ / step_name(step); }

fs::path CheckpointStore::begin(int64_t step) {
  const fs::path staging = staging_directory(step);
  fs::create_directories(directory_);
  // Staging directories left by saves that never committed (the job died) are removed.
  for (const auto& entry : fs::directory_iterator(directory_)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step_", 0) == 0 && entry.path().extension() == ".tmp")
      fs::remove_all(entry.path());
  }
  fs::create_directories(staging);
  return staging;
}

void CheckpointStore::abandon(int64_t step) {
  std::error_code ignored;
  fs::remove_all(staging_directory(step), ignored);
}

fs::path CheckpointStore::commit(int64_t step, const json& pieces, const json& meta) {
  const hdf5::QuietErrors quiet;  // failures become exceptions naming the file
  const fs::path staging = staging_directory(step);
  const fs::path final_dir = final_directory(step);
  const fs::path index_path = staging / kIndexFile;
  const std::string where = index_path.string();

  // Group the pieces by tensor, in the order they first appear (rank 0's order).
  json tensors = json::array();
  std::map<std::string, size_t> position;
  for (const json& record : pieces) {
    const std::string name = record.at("tensor");
    auto [it, fresh] = position.emplace(name, tensors.size());
    if (fresh)
      tensors.push_back(
          {{"name", name}, {"dtype", record.at("dtype")}, {"shape", record.at("global_shape")}, {"pieces", json::array()}});
    json& tensor = tensors[it->second];
    if (tensor["dtype"] != record.at("dtype") || tensor["shape"] != record.at("global_shape"))
      throw std::runtime_error(where + ": ranks disagree on the dtype or shape of tensor '" + name + "'");
    tensor["pieces"].push_back({{"file", record.at("file")},
                                {"dataset", record.at("dataset")},
                                {"offset", record.at("offset")},
                                {"shape", record.at("shape")},
                                {"block_crc32", record.at("block_crc32")}});
  }
  for (const json& tensor : tensors) {
    int64_t covered = 0;
    for (const json& piece : tensor["pieces"]) covered += numel_of(piece["shape"].get<std::vector<int64_t>>());
    const int64_t total = numel_of(tensor["shape"].get<std::vector<int64_t>>());
    if (covered != total)
      throw std::runtime_error(where + ": the ranks wrote " + std::to_string(covered) + " of the " +
                               std::to_string(total) + " values of tensor '" + tensor["name"].get<std::string>() + "'");
  }

  {
    hdf5::Handle file = create_file(index_path);
    json full = meta;
    full["format_version"] = kCheckpointFormatVersion;
    full["step"] = step;
    write_string_dataset(file.get(), "meta", full.dump(), where);
    write_string_dataset(file.get(), "manifest",
                         json{{"format_version", kCheckpointFormatVersion},
                              {"block_bytes", kCheckpointBlockBytes},
                              {"tensors", tensors}}
                             .dump(), where);
    // Each tensor as a virtual dataset of its global shape over the rank files' pieces,
    // for readers such as h5py; ftrain itself reads the pieces and their checksums.
    hdf5::Handle links = intermediate_groups();
    for (const json& tensor : tensors) {
      const std::string name = tensor["name"];
      const at::ScalarType dtype = dtype_named(tensor["dtype"], where + ": tensor '" + name + "'");
      const auto shape = tensor["shape"].get<std::vector<hsize_t>>();
      hdf5::Handle space(H5Screate_simple(static_cast<int>(shape.size()), shape.data(), nullptr), H5Sclose);
      hdf5::Handle mapping(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
      for (const json& piece : tensor["pieces"]) {
        const auto offset = piece["offset"].get<std::vector<hsize_t>>();
        const auto extent = piece["shape"].get<std::vector<hsize_t>>();
        const std::vector<hsize_t> one(extent.size(), 1);
        hdf5::Handle selection(H5Scopy(space.get()), H5Sclose);
        H5Sselect_hyperslab(selection.get(), H5S_SELECT_SET, offset.data(), nullptr, one.data(), extent.data());
        hdf5::Handle source(H5Screate_simple(static_cast<int>(extent.size()), extent.data(), nullptr), H5Sclose);
        if (H5Pset_virtual(mapping.get(), selection.get(), piece["file"].get<std::string>().c_str(),
                           piece["dataset"].get<std::string>().c_str(), source.get()) < 0)
          throw std::runtime_error(where + ": cannot map a piece of tensor '" + name + "'");
      }
      hdf5::Handle dataset(H5Dcreate2(file.get(), name.c_str(), h5_type(dtype, where), space.get(), links.get(),
                                  mapping.get(), H5P_DEFAULT),
                       H5Dclose);
      if (!dataset.valid()) throw std::runtime_error(where + ": cannot create tensor '" + name + "' (disk full?)");
      write_string_attribute(dataset.get(), "dtype", tensor["dtype"].get<std::string>());
    }
    close_file(file, index_path);
  }
  data::fsync_path(index_path, false);
  data::fsync_path(staging, true);

  // A checkpoint of the same step left by an earlier, interrupted run is replaced only
  // now that the new one is durable.
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(staging, final_dir);
  data::fsync_path(directory_, true);
  data::write_file_atomically(final_dir / kMarker, json{{"step", step}}.dump() + "\n");
  data::write_file_atomically(directory_ / "latest", step_name(step) + "\n");

  remove_beyond_keep();
  return final_dir;
}

fs::path CheckpointStore::save(int64_t step, const NamedTensors& tensors, const json& meta) {
  std::vector<HeldTensor> held;
  for (const auto& [name, tensor] : tensors) held.push_back(HeldTensor::whole(name, tensor));
  const fs::path staging = begin(step);
  try {
    return commit(step, write_rank_file(prepare_rank_file(staging, 0, step, held)), meta);
  } catch (...) {
    abandon(step);
    throw;
  }
}

void CheckpointStore::remove_beyond_keep() {
  const auto all = committed();
  const auto kept_best = best();
  for (size_t i = 0; i + keep_ < all.size(); ++i)
    if (!kept_best || all[i] != *kept_best) fs::remove_all(all[i]);
}

void CheckpointStore::mark_best(const fs::path& checkpoint, json record) {
  record["checkpoint"] = checkpoint.filename().string();
  data::write_file_atomically(directory_ / "best", record.dump() + "\n");
  remove_beyond_keep();
}

std::optional<fs::path> CheckpointStore::best() const {
  std::ifstream in(directory_ / "best");
  if (!in) return std::nullopt;
  const auto record = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!record.is_object() || !record.contains("checkpoint") || !record["checkpoint"].is_string()) return std::nullopt;
  const fs::path path = directory_ / record["checkpoint"].get<std::string>();
  if (!fs::exists(path / kMarker)) return std::nullopt;
  return path;
}

std::vector<fs::path> CheckpointStore::committed() const {
  std::vector<std::pair<int64_t, fs::path>> found;
  if (!fs::is_directory(directory_)) return {};
  for (const auto& entry : fs::directory_iterator(directory_)) {
    const int64_t step = step_of(entry.path());
    if (step >= 0 && entry.is_directory() && fs::exists(entry.path() / kMarker)) found.emplace_back(step, entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [step, path] : found) out.push_back(path);
  return out;
}

std::optional<fs::path> CheckpointStore::latest_valid() const {
  auto all = committed();
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    std::string problem;
    if (verify_checkpoint(*it, &problem)) return *it;
    std::cerr << "ftrain: skipping checkpoint " << it->string() << ": " << problem << "\n";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------
// Reading

struct CheckpointReader::State {
  Index index;
  RankFiles files;
  BlockReader blocks;
  explicit State(const fs::path& checkpoint)
      : index(read_index(checkpoint)), files(checkpoint), blocks(index.block_bytes) {}
};

CheckpointReader::CheckpointReader(const fs::path& checkpoint) : state_(std::make_unique<State>(checkpoint)) {}
CheckpointReader::~CheckpointReader() = default;

const json& CheckpointReader::meta() const { return state_->index.meta; }

bool CheckpointReader::contains(const std::string& name) const { return state_->index.by_name.count(name) > 0; }

int64_t CheckpointReader::bytes_read() const { return state_->blocks.bytes_read(); }

void CheckpointReader::read_into(const std::string& name, at::Tensor& part, int64_t split_dim, const at::Tensor& index) {
  read_range_into(name, part, part.sizes().vec(), 0, split_dim, index);
}

void CheckpointReader::read_range_into(const std::string& name, at::Tensor& values,
                                       const std::vector<int64_t>& part_shape, int64_t flat_offset, int64_t split_dim,
                                       const at::Tensor& index) {
  const Index& checkpoint = state_->index;
  const std::string where = (checkpoint.dir / kIndexFile).string() + ": tensor '" + name + "'";
  auto found = checkpoint.by_name.find(name);
  if (found == checkpoint.by_name.end()) throw std::runtime_error(where + " is missing");
  const json& entry = checkpoint.tensors[found->second];
  const at::ScalarType stored = dtype_named(entry.at("dtype"), where);
  if (!values.device().is_cpu() || !values.is_contiguous())
    throw std::invalid_argument(where + ": read into a contiguous CPU tensor");
  if (stored != values.scalar_type())
    throw std::runtime_error(where + " is stored as " + c10::toString(stored) + ", the model expects " +
                             c10::toString(values.scalar_type()));
  if (split_dim < 0 && part_shape != entry.at("shape").get<std::vector<int64_t>>())
    throw std::runtime_error(where + " has shape " + entry.at("shape").dump() + ", the model expects " +
                             c10::str(at::IntArrayRef(part_shape)));
  const PartMap map = part_map(entry, part_shape, split_dim, index, where);
  if (flat_offset < 0 || flat_offset + values.numel() > numel_of(part_shape))
    throw std::invalid_argument(where + ": elements " + std::to_string(flat_offset) + " to " +
                                std::to_string(flat_offset + values.numel()) + " lie outside a part of " +
                                std::to_string(numel_of(part_shape)));
  read_range(state_->files, state_->blocks, checkpoint, entry, map, flat_offset, values.numel(),
             static_cast<char*>(values.data_ptr()));
}

void CheckpointReader::read_into(const HeldTensor& held) {
  torch::NoGradGuard no_grad;
  at::Tensor values = held.values;
  if (values.is_cpu() && values.is_contiguous()) {  // straight into place
    values.zero_();
    read_range_into(held.name, values, held.part_shape, held.flat_offset, held.split_dim, held.index);
    return;
  }
  at::Tensor staged = dist::mapped_zeros(values.sizes(), values.scalar_type());  // freed at once
  read_range_into(held.name, staged, held.part_shape, held.flat_offset, held.split_dim, held.index);
  values.copy_(staged);
}

bool verify_checkpoint(const fs::path& checkpoint, std::string* problem) {
  try {
    const Index index = read_index(checkpoint);
    RankFiles files(checkpoint);
    BlockReader blocks(index.block_bytes);
    for (const json& entry : index.tensors) verify_tensor(files, blocks, index, entry);
    return true;
  } catch (const std::exception& e) {
    if (problem) *problem = e.what();
    return false;
  }
}

json load_checkpoint(const fs::path& checkpoint, const NamedTensors& into) {
  CheckpointReader reader(checkpoint);
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : into) {
    at::Tensor destination = target;
    if (destination.is_contiguous() && destination.device().is_cpu()) {
      reader.read_into(name, destination);
    } else {
      at::Tensor staged = torch::empty(destination.sizes(), destination.options().device(at::kCPU));
      reader.read_into(name, staged);
      destination.copy_(staged);
    }
  }
  return reader.meta();
}

at::Tensor read_checkpoint_tensor(const fs::path& checkpoint, const std::string& name) {
  const Index index = read_index(checkpoint);
  const std::string where = (checkpoint / kIndexFile).string() + ": tensor '" + name + "'";
  auto found = index.by_name.find(name);
  if (found == index.by_name.end()) throw std::runtime_error(where + " is missing");
  const json& entry = index.tensors[found->second];
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  const at::ScalarType dtype = dtype_named(entry.at("dtype"), where);
  // The index is not trusted with the allocation: its pieces, which hold the tensor's
  // values (check_manifest), must lie in the files before a tensor of its shape is made.
  RankFiles files(checkpoint);
  for (const json& piece : entry.at("pieces")) locate_piece(files, index, piece, dtype, name);
  at::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  BlockReader blocks(index.block_bytes);
  read_range(files, blocks, index, entry, part_map(entry, shape, -1, {}, where), 0, out.numel(),
             static_cast<char*>(out.data_ptr()));
  return out;
}

std::vector<std::string> checkpoint_tensor_names(const fs::path& checkpoint) {
  const Index index = read_index(checkpoint);
  std::vector<std::string> names;
  for (const json& entry : index.tensors) names.push_back(entry.at("name"));
  return names;
}

}  // namespace ftrain::launch
