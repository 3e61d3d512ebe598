#include "launch/checkpoint.h"

#include <fcntl.h>
#include <cerrno>
#include <cstring>
#include <hdf5.h>
#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <boost/crc.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace ftrain::launch {
namespace {

constexpr const char* kStateFile = "state.h5";
constexpr const char* kMarker = "COMMITTED";

// Owns one HDF5 identifier and closes it with the matching function.
class H5Handle {
 public:
  H5Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  ~H5Handle() {
    if (id_ >= 0) close_(id_);
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// HDF5 prints its own error stack by default; ftrain reports errors itself.
struct QuietHdf5 {
  QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};
const QuietHdf5 quiet_hdf5;

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

uint32_t crc32_of(const void* data, size_t bytes) {
  boost::crc_32_type crc;
  crc.process_bytes(data, bytes);
  return crc.checksum();
}

void fsync_path(const fs::path& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot open to fsync");
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // Some filesystems cannot fsync a directory (EINVAL); the rename is still ordered
  // after the file's own fsync, which is what matters for the commit.
  if (rc != 0 && !(directory && (error == EINVAL || error == ENOTSUP)))
    throw std::runtime_error(path.string() + ": fsync failed: " + std::strerror(error));
}

void write_file_durably(const fs::path& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw std::runtime_error(path.string() + ": write failed (disk full?)");
  }
  fsync_path(path, false);
}

void write_string_attribute(hid_t object, const char* name, const std::string& value) {
  H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle attr(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok() || H5Awrite(attr.get(), type.get(), value.data()) < 0)
    throw std::runtime_error(std::string("cannot write attribute ") + name);
}

std::optional<std::string> read_string_attribute(hid_t object, const char* name) {
  if (H5Aexists(object, name) <= 0) return std::nullopt;
  H5Handle attr(H5Aopen(object, name, H5P_DEFAULT), H5Aclose);
  H5Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING) return std::nullopt;
  std::string value(H5Tget_size(type.get()), '\0');
  H5Handle mem_type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem_type.get(), value.size());
  if (H5Aread(attr.get(), mem_type.get(), value.data()) < 0) return std::nullopt;
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

void write_tensor(hid_t file, const std::string& name, const at::Tensor& tensor, const std::string& where) {
  at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
  const hid_t type = h5_type(cpu.scalar_type(), where + ": tensor '" + name + "'");
  std::vector<hsize_t> dims(cpu.sizes().begin(), cpu.sizes().end());
  H5Handle space(cpu.dim() == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(cpu.dim(), dims.data(), nullptr),
                 H5Sclose);
  H5Handle link_props(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(link_props.get(), 1);
  H5Handle dataset(H5Dcreate2(file, name.c_str(), type, space.get(), link_props.get(), H5P_DEFAULT, H5P_DEFAULT),
                   H5Dclose);
  if (!dataset.ok() || H5Dwrite(dataset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, cpu.data_ptr()) < 0)
    throw std::runtime_error(where + ": cannot write tensor '" + name + "' (disk full?)");
  const uint32_t crc = crc32_of(cpu.data_ptr(), cpu.nbytes());
  H5Handle attr_space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle attr(H5Acreate2(dataset.get(), "crc32", H5T_NATIVE_UINT32, attr_space.get(), H5P_DEFAULT, H5P_DEFAULT),
                H5Aclose);
  H5Awrite(attr.get(), H5T_NATIVE_UINT32, &crc);
  write_string_attribute(dataset.get(), "dtype", std::string(c10::toString(cpu.scalar_type())));
}

// Reads dataset `name` into a new CPU tensor, checking its checksum.
at::Tensor read_tensor(hid_t file, const std::string& name, const std::string& where) {
  const std::string what = where + ": tensor '" + name + "'";
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0) throw std::runtime_error(what + " is missing");
  H5Handle dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.ok()) throw std::runtime_error(what + " cannot be opened");
  H5Handle space(H5Dget_space(dataset.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(std::max(rank, 0));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  auto dtype_name = read_string_attribute(dataset.get(), "dtype");
  if (!dtype_name) throw std::runtime_error(what + " has no dtype attribute");
  static const std::vector<at::ScalarType> known = {at::kFloat, at::kDouble, at::kLong, at::kInt,
                                                    at::kByte, at::kBFloat16, at::kHalf};
  auto found = std::find_if(known.begin(), known.end(),
                            [&](at::ScalarType t) { return c10::toString(t) == *dtype_name; });
  if (found == known.end()) throw std::runtime_error(what + " has unknown dtype " + *dtype_name);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  at::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(*found));
  if (H5Dread(dataset.get(), h5_type(*found, what), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data_ptr()) < 0)
    throw std::runtime_error(what + " cannot be read (truncated file?)");
  uint32_t stored = 0;
  if (H5Aexists(dataset.get(), "crc32") <= 0) throw std::runtime_error(what + " has no checksum");
  H5Handle attr(H5Aopen(dataset.get(), "crc32", H5P_DEFAULT), H5Aclose);
  H5Aread(attr.get(), H5T_NATIVE_UINT32, &stored);
  if (crc32_of(out.data_ptr(), out.nbytes()) != stored)
    throw std::runtime_error(what + " fails its checksum (corrupt checkpoint)");
  return out;
}

H5Handle open_state(const fs::path& checkpoint) {
  const fs::path file = checkpoint / kStateFile;
  if (!fs::exists(checkpoint / kMarker))
    throw std::runtime_error(checkpoint.string() + ": not a committed checkpoint (no " + kMarker + " marker)");
  if (!fs::is_regular_file(file)) throw std::runtime_error(file.string() + ": missing");
  H5Handle props(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_file_locking(props.get(), false, true);
  const hid_t id = H5Fopen(file.c_str(), H5F_ACC_RDONLY, props.get());
  if (id < 0) throw std::runtime_error(file.string() + ": not a readable HDF5 file (truncated or corrupt)");
  return H5Handle(id, H5Fclose);
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

}  // namespace

CheckpointStore::CheckpointStore(fs::path directory, int64_t keep) : directory_(std::move(directory)), keep_(keep) {}

fs::path CheckpointStore::save(int64_t step, const NamedTensors& tensors, const nlohmann::json& meta) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  const fs::path final_dir = directory_ / name;
  const fs::path tmp_dir = directory_ / (std::string(name) + ".tmp");
  fs::create_directories(directory_);
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);
  const fs::path state = tmp_dir / kStateFile;
  {
    H5Handle props(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_file_locking(props.get(), false, true);
    H5Handle file(H5Fcreate(state.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, props.get()), H5Fclose);
    if (!file.ok()) throw std::runtime_error(state.string() + ": cannot create checkpoint file");
    for (const auto& [tensor_name, tensor] : tensors) write_tensor(file.get(), tensor_name, tensor, state.string());
    nlohmann::json full = meta;
    full["format_version"] = kCheckpointFormatVersion;
    full["step"] = step;
    write_string_attribute(file.get(), "meta", full.dump());
    if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0)
      throw std::runtime_error(state.string() + ": flush failed (disk full?)");
    if (H5Fclose(file.release()) < 0) throw std::runtime_error(state.string() + ": close failed (disk full?)");
  }
  fsync_path(state, false);
  fsync_path(tmp_dir, true);

  // A checkpoint of the same step left by an earlier, interrupted run is replaced only
  // now that the new one is durable.
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_path(directory_, true);
  write_file_durably(final_dir / kMarker, nlohmann::json{{"step", step}}.dump() + "\n");
  fsync_path(final_dir, true);

  const fs::path latest_tmp = directory_ / "latest.tmp";
  write_file_durably(latest_tmp, std::string(name) + "\n");
  fs::rename(latest_tmp, directory_ / "latest");
  fsync_path(directory_, true);

  remove_beyond_keep();
  return final_dir;
}

void CheckpointStore::remove_beyond_keep() {
  const auto all = committed();
  const auto kept_best = best();
  for (size_t i = 0; i + keep_ < all.size(); ++i)
    if (!kept_best || all[i] != *kept_best) fs::remove_all(all[i]);
}

void CheckpointStore::mark_best(const fs::path& checkpoint, nlohmann::json record) {
  record["checkpoint"] = checkpoint.filename().string();
  const fs::path tmp = directory_ / "best.tmp";
  write_file_durably(tmp, record.dump() + "\n");
  fs::rename(tmp, directory_ / "best");
  fsync_path(directory_, true);
  remove_beyond_keep();
}

std::optional<fs::path> CheckpointStore::best() const {
  std::ifstream in(directory_ / "best");
  if (!in) return std::nullopt;
  const auto record = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
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

bool verify_checkpoint(const fs::path& checkpoint, std::string* problem) {
  try {
    H5Handle file = open_state(checkpoint);
    const std::string where = (checkpoint / kStateFile).string();
    if (!read_string_attribute(file.get(), "meta")) throw std::runtime_error(where + ": no metadata");
    std::vector<std::string> names;
    H5Ovisit(
        file.get(), H5_INDEX_NAME, H5_ITER_NATIVE,
        [](hid_t, const char* name, const H5O_info_t* info, void* data) -> herr_t {
          if (info->type == H5O_TYPE_DATASET) static_cast<std::vector<std::string>*>(data)->push_back(name);
          return 0;
        },
        &names);
    for (const auto& name : names) read_tensor(file.get(), name, where);
    return true;
  } catch (const std::exception& e) {
    if (problem) *problem = e.what();
    return false;
  }
}

nlohmann::json load_checkpoint(const fs::path& checkpoint, const NamedTensors& into) {
  H5Handle file = open_state(checkpoint);
  const std::string where = (checkpoint / kStateFile).string();
  auto meta_text = read_string_attribute(file.get(), "meta");
  if (!meta_text) throw std::runtime_error(where + ": no metadata attribute");
  nlohmann::json meta = nlohmann::json::parse(*meta_text);
  if (meta.value("format_version", 0) > kCheckpointFormatVersion)
    throw std::runtime_error(where + ": format_version " + std::to_string(meta.value("format_version", 0)) +
                             " is newer than this ftrain reads (" + std::to_string(kCheckpointFormatVersion) + ")");
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : into) {
    at::Tensor stored = read_tensor(file.get(), name, where);
    if (stored.scalar_type() != target.scalar_type())
      throw std::runtime_error(where + ": tensor '" + name + "' is stored as " + c10::toString(stored.scalar_type()) +
                               ", the model expects " + c10::toString(target.scalar_type()));
    if (stored.sizes() != target.sizes())
      throw std::runtime_error(where + ": tensor '" + name + "' has shape " + c10::str(stored.sizes()) +
                               ", the model expects " + c10::str(target.sizes()));
    at::Tensor destination = target;
    destination.copy_(stored);
  }
  return meta;
}

at::Tensor read_checkpoint_tensor(const fs::path& checkpoint, const std::string& name) {
  H5Handle file = open_state(checkpoint);
  return read_tensor(file.get(), name, (checkpoint / kStateFile).string());
}

}  // namespace ftrain::launch
