// The safetensors file format: reading (memory-mapped), writing (atomic), and the
// sharded `model.safetensors.index.json` that Hugging Face writes for large models.
//
// A file is: 8 bytes little-endian u64 N, N bytes of JSON header, then the data region.
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the data region) and may hold "__metadata__": {string: string}.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ftrain::model {

// Tensors in a fixed order; the order is the order of the data in a written file.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// String metadata stored under "__metadata__" (Hugging Face writes {"format": "pt"}).
using SafetensorsMetadata = std::map<std::string, std::string>;

// The safetensors dtype names ("F32", "BF16", ...) and the torch types they map to.
// Supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
at::ScalarType safetensors_dtype_to_scalar_type(const std::string& dtype);  // throws if unknown
std::string scalar_type_to_safetensors_dtype(at::ScalarType type);          // throws if unsupported

// One safetensors file, validated on open and mapped read-only into memory
// (MAP_PRIVATE, so writes to a returned tensor stay private to this process and
// never reach the file).
//
// Tensors returned by tensor() are zero-copy CPU views of the mapping; each holds a
// reference to it, so they stay valid after the reader is destroyed. A tensor whose
// offset in the file is not aligned to its element size is copied instead, because
// kernels may assume natural alignment.
//
// Every error is a std::runtime_error naming the file, and the tensor where there is one.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsMetadata& metadata() const { return metadata_; }

  // Tensor names in the order of their data in the file.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;

  at::ScalarType dtype(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;

  // All tensors in file order.
  NamedTensors tensors() const;

 private:
  struct Entry {
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin;  // offsets into the data region
    uint64_t end;
  };
  struct Mapping;

  const Entry& entry(const std::string& name) const;

  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  uint64_t data_start_ = 0;  // 8 + header length
  std::map<std::string, Entry> entries_;
  std::vector<std::string> file_order_;
  SafetensorsMetadata metadata_;
};

// Gives back the memory pages this process holds of a tensor returned by
// SafetensorsReader::tensor (a view of the mapping, not a copy): the whole pages within
// its bytes leave the resident set, and are read from the file again if touched, so
// reading a checkpoint tensor by tensor does not keep the whole file resident. Changes
// made in place to those pages are lost; call it on tensors that were only read.
// Returns false, doing nothing, for any other tensor.
bool release_mapped_pages(const at::Tensor& tensor);

// Reads every tensor of one file (views of its mapping, see SafetensorsReader).
NamedTensors load_safetensors(const std::filesystem::path& path);

// Reads a sharded checkpoint through its index ({"weight_map": {tensor: shard file}},
// shard paths relative to the index). Each listed tensor must be in the shard the
// index names. Returned in the order of the names (sorted).
NamedTensors load_safetensors_index(const std::filesystem::path& index_path);

// Writes tensors (any device, any layout; copied to contiguous CPU one at a time) in
// the given order, with the header padded to a multiple of 8 bytes.
//
// The file is written as `<path>.tmp`, flushed to disk (fsync), then renamed over
// `path`, and the directory is synced: an existing `path` is either left untouched or
// replaced whole, never half-written. On failure the temporary file is removed.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata = {});

// The values written for a tensor that only describes the file (its name, dtype and
// shape), asked for one at a time in file order while the file is written: so the
// whole set never has to exist at once (a sharded model gathered tensor by tensor).
// The result must have the described shape; it is converted to the described dtype.
using TensorValues = std::function<at::Tensor(const std::string& name, const at::Tensor& described)>;

// As above, the data of each tensor from `values` when it is set.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata, const TensorValues& values);

}  // namespace ftrain::model
