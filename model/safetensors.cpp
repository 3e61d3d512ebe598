#include "model/safetensors.h"

#include <nlohmann/json.hpp>

#include "data/durable_file.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ftrain::model {

// The format stores little-endian values; tensors are handed out without byte swapping.
static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

namespace {

// Headers larger than this are refused before parsing, as a guard against a corrupt
// length field making us parse gigabytes of tensor data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

struct DtypeName {
  const char* name;
  at::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},
};

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw std::runtime_error(path.string() + ": " + what);
}

std::string errno_text() { return std::strerror(errno); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

// A JSON number that is a non-negative integer fitting in int64; nullopt otherwise.
std::optional<uint64_t> json_index(const nlohmann::json& value) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return v;
    return std::nullopt;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) return value.get<int64_t>();
  return std::nullopt;
}

}  // namespace

at::ScalarType safetensors_dtype_to_scalar_type(const std::string& dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.name) return d.type;
  throw std::runtime_error("unknown safetensors dtype '" + dtype +
                           "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
}

std::string scalar_type_to_safetensors_dtype(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return d.name;
  throw std::runtime_error(std::string("torch dtype ") + c10::toString(type) +
                           " has no safetensors equivalent supported by ftrain");
}

// ---------------------------------------------------------------------------------
// Reading

struct SafetensorsReader::Mapping {
  void* address = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (address) ::munmap(address, size);
  }
  const char* bytes() const { return static_cast<const char*>(address); }
};

namespace {

// The context of a tensor that views a mapping.
struct MappedView {
  std::shared_ptr<const void> mapping;
};

void delete_mapped_view(void* context) { delete static_cast<MappedView*>(context); }

}  // namespace

bool release_mapped_pages(const at::Tensor& tensor) {
  if (!tensor.defined() || !tensor.has_storage()) return false;
  const c10::Storage& storage = tensor.storage();
  if (storage.data_ptr().get_deleter() != &delete_mapped_view || storage.nbytes() == 0) return false;
  // Only pages wholly inside the tensor's bytes: a page it shares with a neighbour in
  // the file stays, so no other tensor's pages are dropped.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(storage.data());
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + storage.nbytes()) / page * page;
  if (last <= first) return true;
  ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);  // advice: failure only keeps pages
  return true;
}

SafetensorsReader::SafetensorsReader(const std::filesystem::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) fail(path, "file not found");
    fail(path, "cannot open: " + errno_text());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string reason = errno_text();
    ::close(fd);
    fail(path, "cannot stat: " + reason);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail(path, "file is " + std::to_string(file_size) +
                   " bytes, shorter than the 8-byte header length that starts a safetensors file");
  }

  mapping_ = std::make_shared<Mapping>();
  // Private and writable: a tensor modified in place gets its own copy of the page
  // (copy-on-write) instead of faulting, and the file itself is never modified.
  void* address = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  std::string map_error = address == MAP_FAILED ? errno_text() : "";
  ::close(fd);  // the mapping keeps the file contents reachable
  if (address == MAP_FAILED) fail(path, "mmap failed: " + map_error);
  mapping_->address = address;
  mapping_->size = file_size;

  uint64_t header_len = 0;
  std::memcpy(&header_len, mapping_->bytes(), 8);
  if (header_len > file_size - 8)
    fail(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(file_size) + " bytes)");
  if (header_len > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(header_len) + " exceeds the " +
                   std::to_string(kMaxHeaderBytes) + "-byte limit");
  data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - data_start_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(mapping_->bytes() + 8, mapping_->bytes() + data_start_);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header is JSON but not an object");

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail(path, "'__metadata__' must be an object of strings");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) fail(path, "'__metadata__' key '" + key + "' is not a string");
        metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!value.is_object()) fail(path, where + ": header entry is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string())
      fail(path, where + ": missing string 'dtype'");
    if (!value.contains("shape") || !value["shape"].is_array())
      fail(path, where + ": missing array 'shape'");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2)
      fail(path, where + ": 'data_offsets' must be an array [begin, end]");

    Entry entry{};
    const std::string dtype_name = value["dtype"].get<std::string>();
    try {
      entry.dtype = safetensors_dtype_to_scalar_type(dtype_name);
    } catch (const std::runtime_error& e) {
      fail(path, where + ": " + e.what());
    }
    for (const auto& dim : value["shape"]) {
      auto size = json_index(dim);
      if (!size) fail(path, where + ": shape " + value["shape"].dump() + " has an entry that is not a non-negative integer");
      entry.shape.push_back(static_cast<int64_t>(*size));
    }
    auto begin = json_index(value["data_offsets"][0]);
    auto end = json_index(value["data_offsets"][1]);
    if (!begin || !end || *begin > *end)
      fail(path, where + ": data_offsets " + value["data_offsets"].dump() +
                     " must be non-negative integers with begin <= end");
    entry.begin = *begin;
    entry.end = *end;

    uint64_t bytes = at::elementSize(entry.dtype);
    for (int64_t dim : entry.shape)
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes))
        fail(path, where + ": shape " + shape_text(entry.shape) + " is too large");
    if (bytes != entry.end - entry.begin)
      fail(path, where + " (" + dtype_name + " " + shape_text(entry.shape) + ") needs " +
                     std::to_string(bytes) + " bytes but its offsets span " +
                     std::to_string(entry.end - entry.begin));
    if (entry.end > data_size)
      fail(path, where + ": data_offsets [" + std::to_string(entry.begin) + ", " +
                     std::to_string(entry.end) + "] lie outside the data region (" +
                     std::to_string(data_size) + " bytes)");
    entries_.emplace(name, std::move(entry));
    file_order_.push_back(name);
  }

  std::stable_sort(file_order_.begin(), file_order_.end(), [&](const auto& a, const auto& b) {
    const Entry& x = entries_.at(a);
    const Entry& y = entries_.at(b);
    return std::tie(x.begin, x.end) < std::tie(y.begin, y.end);
  });
  // Sorted by begin, two non-empty ranges overlap iff one starts before the furthest
  // end seen so far.
  const std::string* furthest = nullptr;
  for (const auto& name : file_order_) {
    const Entry& entry = entries_.at(name);
    if (entry.begin == entry.end) continue;
    if (furthest) {
      const Entry& previous = entries_.at(*furthest);
      if (entry.begin < previous.end)
        fail(path, "tensors '" + *furthest + "' [" + std::to_string(previous.begin) + ", " +
                       std::to_string(previous.end) + ") and '" + name + "' [" +
                       std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                       ") have overlapping data_offsets");
      if (entry.end <= previous.end) continue;
    }
    furthest = &name;
  }
}

const SafetensorsReader::Entry& SafetensorsReader::entry(const std::string& name) const {
  auto found = entries_.find(name);
  if (found == entries_.end()) fail(path_, "no tensor named '" + name + "'");
  return found->second;
}

std::vector<std::string> SafetensorsReader::names() const { return file_order_; }

bool SafetensorsReader::contains(const std::string& name) const { return entries_.count(name) > 0; }

at::ScalarType SafetensorsReader::dtype(const std::string& name) const { return entry(name).dtype; }

std::vector<int64_t> SafetensorsReader::shape(const std::string& name) const { return entry(name).shape; }

at::Tensor SafetensorsReader::tensor(const std::string& name) const {
  const Entry& e = entry(name);
  const auto options = at::TensorOptions().dtype(e.dtype).device(at::kCPU);
  if (e.begin == e.end) return at::empty(e.shape, options);
  char* data = static_cast<char*>(mapping_->address) + data_start_ + e.begin;
  if (reinterpret_cast<uintptr_t>(data) % at::elementSize(e.dtype) != 0) {
    at::Tensor copy = at::empty(e.shape, options);
    std::memcpy(copy.data_ptr(), data, e.end - e.begin);
    return copy;
  }
  // The context keeps the mapping alive and marks the tensor as a view of it, which is
  // how release_mapped_pages recognises it.
  return at::for_blob(data, e.shape)
      .options(options)
      .context(new MappedView{mapping_}, &delete_mapped_view)
      .make_tensor();
}

NamedTensors SafetensorsReader::tensors() const {
  NamedTensors out;
  out.reserve(file_order_.size());
  for (const auto& name : file_order_) out.emplace_back(name, tensor(name));
  return out;
}

NamedTensors load_safetensors(const std::filesystem::path& path) {
  return SafetensorsReader(path).tensors();
}

NamedTensors load_safetensors_index(const std::filesystem::path& index_path) {
  std::string text;
  {
    int fd = ::open(index_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) fail(index_path, "file not found");
      fail(index_path, "cannot open: " + errno_text());
    }
    char buffer[65536];
    for (;;) {
      ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        std::string reason = errno_text();
        ::close(fd);
        fail(index_path, "read failed: " + reason);
      }
      if (n == 0) break;
      text.append(buffer, static_cast<size_t>(n));
    }
    ::close(fd);
  }
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail(index_path, std::string("not valid JSON: ") + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_path, "missing object 'weight_map' (tensor name -> shard file)");

  std::map<std::string, std::unique_ptr<SafetensorsReader>> shards;
  NamedTensors out;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail(index_path, "weight_map entry for tensor '" + name + "' is not a string");
    const std::string file = shard.get<std::string>();
    const std::filesystem::path relative(file);
    if (relative.is_absolute() || relative.has_parent_path())
      fail(index_path, "weight_map entry for tensor '" + name + "' names '" + file +
                           "'; shards must be plain file names beside the index");
    auto& reader = shards[file];
    if (!reader) reader = std::make_unique<SafetensorsReader>(index_path.parent_path() / relative);
    if (!reader->contains(name))
      fail(index_path, "tensor '" + name + "' is mapped to shard '" + file +
                           "', which does not contain it");
    out.emplace_back(name, reader->tensor(name));
  }
  return out;
}

// ---------------------------------------------------------------------------------
// Writing

void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata) {
  save_safetensors(path, tensors, metadata, {});
}

void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata, const TensorValues& values) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) header["__metadata__"][key] = value;
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::string where = "tensor '" + name + "'";
    if (name.empty() || name == "__metadata__") fail(path, "invalid tensor name '" + name + "'");
    if (!seen.insert(name).second) fail(path, where + " is given twice");
    if (!tensor.defined()) fail(path, where + " is undefined");
    if (tensor.layout() != at::kStrided) fail(path, where + " is not a dense tensor");
    std::string dtype;
    try {
      dtype = scalar_type_to_safetensors_dtype(tensor.scalar_type());
    } catch (const std::runtime_error& e) {
      fail(path, where + ": " + e.what());
    }
    const uint64_t bytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype;
    entry["shape"] = tensor.sizes().vec();
    entry["data_offsets"] = nlohmann::ordered_json::array({offset, offset + bytes});
    header[name] = std::move(entry);
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-aligned
  const uint64_t header_len = header_text.size();

  data::AtomicFile file(path);
  file.write(&header_len, 8);
  file.write(header_text.data(), header_text.size());
  for (const auto& [name, tensor] : tensors) {
    // One tensor at a time, so a large GPU model never needs a full CPU copy.
    at::Tensor value = tensor.detach();
    if (values) {
      value = values(name, tensor).detach();
      if (value.sizes() != tensor.sizes())
        fail(path, "tensor '" + name + "': the values given are " + c10::str(value.sizes()) + ", the file says " +
                       c10::str(tensor.sizes()));
      value = value.to(tensor.scalar_type());
    }
    at::Tensor cpu = value.to(at::kCPU).contiguous();
    file.write(cpu.data_ptr(), static_cast<size_t>(cpu.numel()) * cpu.element_size());
  }
  file.commit();
}

}  // namespace ftrain::model
