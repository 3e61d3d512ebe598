#include "data/token_dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <stdexcept>
#include <system_error>

#include <nlohmann/json.hpp>

#include "data/durable_file.h"
#include "data/hdf5_handle.h"

namespace ftrain::data {

namespace fs = std::filesystem;

namespace {

std::runtime_error file_error(const fs::path& path, const std::string& what) {
  return std::runtime_error(path.string() + ": " + what);
}

// Appends HDF5's own explanation, when it left one, to an ftrain message.
std::string with_hdf5_detail(std::string what) {
  const std::string detail = hdf5::last_error();
  if (!detail.empty()) what += " (HDF5: " + detail + ")";
  return what;
}

std::string attribute_path(const std::string& object, const char* name) {
  return object == "/" ? "/" + std::string(name) : object + "/" + name;
}

void check_split_name(std::string_view split) {
  if (split.empty() || split.find('/') != std::string_view::npos || split == "." || split == "..") {
    throw std::runtime_error("invalid split name '" + std::string(split) +
                             "': expected a plain group name such as train, validation or test");
  }
}

// ---------------------------------------------------------------------------------------
// Types

struct ElementType {
  H5T_class_t type_class;
  std::size_t size;
  H5T_sign_t sign;
  const char* name;
};

constexpr ElementType kInt32{H5T_INTEGER, 4, H5T_SGN_2, "int32"};
constexpr ElementType kInt64{H5T_INTEGER, 8, H5T_SGN_2, "int64"};
constexpr ElementType kUint8{H5T_INTEGER, 1, H5T_SGN_NONE, "uint8"};

std::string describe_type(hid_t type) {
  const std::size_t bits = H5Tget_size(type) * 8;
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_FLOAT:
      return "float" + std::to_string(bits);
    case H5T_STRING:
      return "string";
    case H5T_ENUM:
      return "enum (h5py writes bool as enum; store uint8)";
    case H5T_COMPOUND:
      return "compound";
    default:
      return "an unsupported type";
  }
}

bool type_matches(hid_t type, const ElementType& expected) {
  if (H5Tget_class(type) != expected.type_class || H5Tget_size(type) != expected.size) return false;
  return expected.type_class != H5T_INTEGER || H5Tget_sign(type) == expected.sign;
}

std::string describe_shape(const std::vector<hsize_t>& dims) {
  std::string text = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(dims[i]);
  }
  return text + (dims.size() == 1 ? ",)" : ")");
}

// ---------------------------------------------------------------------------------------
// Attributes

hdf5::Handle open_attribute(hid_t object, const std::string& object_path, const char* name,
                            const fs::path& path) {
  const std::string full = attribute_path(object_path, name);
  const htri_t exists = H5Aexists(object, name);
  if (exists < 0) throw file_error(path, with_hdf5_detail("cannot look up attribute '" + full + "'"));
  if (exists == 0) throw file_error(path, "attribute '" + full + "' missing");
  hdf5::Handle attribute = hdf5::attribute(H5Aopen(object, name, H5P_DEFAULT));
  if (!attribute.valid()) throw file_error(path, with_hdf5_detail("cannot open attribute '" + full + "'"));
  return attribute;
}

int64_t read_int_attribute(hid_t object, const std::string& object_path, const char* name,
                           const fs::path& path) {
  const std::string full = attribute_path(object_path, name);
  hdf5::Handle attribute = open_attribute(object, object_path, name, path);
  hdf5::Handle type = hdf5::datatype(H5Aget_type(attribute.get()));
  hdf5::Handle space = hdf5::dataspace(H5Aget_space(attribute.get()));
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    throw file_error(path, "attribute '" + full + "' is " + describe_type(type.get()) + ", expected an integer");
  }
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  if (count != 1) {
    throw file_error(path, "attribute '" + full + "' holds " + std::to_string(count) +
                               " values, expected a single integer");
  }
  int64_t value = 0;
  if (H5Aread(attribute.get(), H5T_NATIVE_INT64, &value) < 0) {
    throw file_error(path, with_hdf5_detail("cannot read attribute '" + full + "'"));
  }
  return value;
}

std::string read_string_attribute(hid_t object, const std::string& object_path, const char* name,
                                  const fs::path& path) {
  const std::string full = attribute_path(object_path, name);
  hdf5::Handle attribute = open_attribute(object, object_path, name, path);
  hdf5::Handle type = hdf5::datatype(H5Aget_type(attribute.get()));
  if (H5Tget_class(type.get()) != H5T_STRING) {
    throw file_error(path, "attribute '" + full + "' is " + describe_type(type.get()) + ", expected a string");
  }
  hdf5::Handle space = hdf5::dataspace(H5Aget_space(attribute.get()));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    throw file_error(path, "attribute '" + full + "' holds several values, expected a single string");
  }
  // h5py writes str as variable-length UTF-8, numpy bytes as fixed length; accept both.
  if (H5Tis_variable_str(type.get()) > 0) {
    hdf5::Handle memory_type = hdf5::datatype(H5Tcopy(H5T_C_S1));
    H5Tset_size(memory_type.get(), H5T_VARIABLE);
    H5Tset_cset(memory_type.get(), H5Tget_cset(type.get()));
    char* value = nullptr;
    if (H5Aread(attribute.get(), memory_type.get(), &value) < 0) {
      throw file_error(path, with_hdf5_detail("cannot read attribute '" + full + "'"));
    }
    std::string text = value ? value : "";
    H5free_memory(value);
    return text;
  }
  // The size is the file's word; what the file stores for the attribute bounds it.
  const size_t declared = H5Tget_size(type.get());
  const hsize_t stored = H5Aget_storage_size(attribute.get());
  if (declared > stored) {
    throw file_error(path, "attribute '" + full + "' declares a string of " + std::to_string(declared) +
                               " bytes, but the file stores " + std::to_string(stored) + " for it");
  }
  std::string text(declared, '\0');
  hdf5::Handle memory_type = hdf5::datatype(H5Tcopy(type.get()));
  if (H5Aread(attribute.get(), memory_type.get(), text.data()) < 0) {
    throw file_error(path, with_hdf5_detail("cannot read attribute '" + full + "'"));
  }
  text.resize(std::strlen(text.c_str()));
  return text;
}

void write_int_attribute(hid_t object, const char* name, int64_t value) {
  if (H5Aexists(object, name) > 0) H5Adelete(object, name);
  hdf5::Handle space = hdf5::dataspace(H5Screate(H5S_SCALAR));
  hdf5::Handle attribute =
      hdf5::attribute(H5Acreate2(object, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attribute.valid() || H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value) < 0) {
    throw std::runtime_error(with_hdf5_detail(std::string("cannot write attribute '") + name + "'"));
  }
}

void write_string_attribute(hid_t object, const char* name, const std::string& value) {
  hdf5::Handle type = hdf5::datatype(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  hdf5::Handle space = hdf5::dataspace(H5Screate(H5S_SCALAR));
  hdf5::Handle attribute =
      hdf5::attribute(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  const char* text = value.c_str();
  if (!attribute.valid() || H5Awrite(attribute.get(), type.get(), &text) < 0) {
    throw std::runtime_error(with_hdf5_detail(std::string("cannot write attribute '") + name + "'"));
  }
}

// ---------------------------------------------------------------------------------------
// Files

hdf5::Handle file_access_without_locking() {
  hdf5::Handle access = hdf5::plist(H5Pcreate(H5P_FILE_ACCESS));
  // Parallel file systems often lack flock(); a dataset is immutable once renamed into
  // place, so locks would only make opens fail there.
  H5Pset_file_locking(access.get(), false, true);
  return access;
}

hdf5::Handle open_file_read_only(const fs::path& path) {
  std::error_code error;
  if (!fs::exists(path, error)) throw file_error(path, "no such file");
  if (fs::is_directory(path, error)) throw file_error(path, "is a directory, expected an HDF5 token dataset");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 <= 0) {
    throw file_error(path, "not an HDF5 file (no HDF5 signature); expected a token dataset written by ftrain-prep");
  }
  hdf5::Handle access = file_access_without_locking();
  hdf5::Handle file = hdf5::file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, access.get()));
  if (!file.valid()) {
    const std::string detail = hdf5::last_error();
    if (detail.find("truncated") != std::string::npos) {
      throw file_error(path, "file is truncated (HDF5: " + detail +
                                 "); it was copied or written incompletely, copy it again or rerun ftrain-prep");
    }
    throw file_error(path, "cannot open as HDF5" + (detail.empty() ? "" : " (HDF5: " + detail + ")") +
                               "; the file may be damaged");
  }
  return file;
}

DatasetInfo read_root_attributes(hid_t file, const fs::path& path) {
  if (H5Aexists(file, format::kAttrFormat) == 0) {
    throw file_error(path, "attribute '/format' missing: not an ftrain token dataset (ftrain-prep writes them)");
  }
  const std::string format_name = read_string_attribute(file, "/", format::kAttrFormat, path);
  if (format_name != format::kName) {
    throw file_error(path, "attribute '/format' is '" + format_name + "', expected '" + std::string(format::kName) +
                               "' (not an ftrain token dataset)");
  }
  DatasetInfo info;
  info.format_version = read_int_attribute(file, "/", format::kAttrFormatVersion, path);
  if (info.format_version > format::kVersion) {
    throw file_error(path, "format_version " + std::to_string(info.format_version) +
                               " is newer than this ftrain reads (" + std::to_string(format::kVersion) +
                               "); use a newer ftrain");
  }
  info.seq_len = read_int_attribute(file, "/", format::kAttrSeqLen, path);
  info.vocab_size = read_int_attribute(file, "/", format::kAttrVocabSize, path);
  info.eos_id = read_int_attribute(file, "/", format::kAttrEosId, path);
  info.pad_id = read_int_attribute(file, "/", format::kAttrPadId, path);
  info.tokenizer = read_string_attribute(file, "/", format::kAttrTokenizer, path);
  info.task = read_string_attribute(file, "/", format::kAttrTask, path);
  if (H5Aexists(file, format::kAttrTargetLen) > 0)
    info.target_len = read_int_attribute(file, "/", format::kAttrTargetLen, path);
  if (H5Aexists(file, format::kAttrLabelNames) > 0) {
    const std::string text = read_string_attribute(file, "/", format::kAttrLabelNames, path);
    const auto names = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!names.is_array() || names.empty() ||
        !std::all_of(names.begin(), names.end(), [](const auto& name) { return name.is_string(); }))
      throw file_error(path, "attribute '/label_names' is not a JSON array of strings: " + text.substr(0, 200));
    for (const auto& name : names) info.label_names.push_back(name.get<std::string>());
    if (H5Aexists(file, format::kAttrNumLabels) > 0) {
      const int64_t num_labels = read_int_attribute(file, "/", format::kAttrNumLabels, path);
      if (num_labels != static_cast<int64_t>(info.label_names.size()))
        throw file_error(path, "attribute '/num_labels' is " + std::to_string(num_labels) + " but '/label_names' has " +
                                   std::to_string(info.label_names.size()) + " names");
    }
  }
  try {
    info.validate();
  } catch (const std::runtime_error& error) {
    throw file_error(path, error.what());
  }
  return info;
}

std::vector<std::string> split_names(hid_t file) {
  std::vector<std::string> names;
  H5Literate(
      file, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t group, const char* name, const H5L_info_t*, void* data) -> herr_t {
        H5O_info_t object{};
        if (H5Oget_info_by_name(group, name, &object, H5P_DEFAULT) >= 0 && object.type == H5O_TYPE_GROUP) {
          static_cast<std::vector<std::string>*>(data)->push_back(name);
        }
        return 0;
      },
      &names);
  std::sort(names.begin(), names.end());
  return names;
}

// Renames without replacing an existing target, where the file system can promise that.
bool rename_no_replace(const fs::path& from, const fs::path& to) {
#ifdef RENAME_NOREPLACE
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return true;
  if (errno == EEXIST) return false;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    throw file_error(to, std::string("cannot rename the finished file into place: ") + std::strerror(errno));
  }
#endif
  std::error_code error;
  if (fs::exists(to, error)) return false;
  fs::rename(from, to);
  return true;
}

// ---------------------------------------------------------------------------------------
// Datasets

hdf5::Handle create_extendable(hid_t group, const char* name, hid_t file_type, int rank, hsize_t width,
                               hsize_t chunk_rows) {
  const hsize_t dims[2] = {0, width};
  const hsize_t max_dims[2] = {H5S_UNLIMITED, width};
  const hsize_t chunk[2] = {chunk_rows, width};
  hdf5::Handle space = hdf5::dataspace(H5Screate_simple(rank, dims, max_dims));
  hdf5::Handle creation = hdf5::plist(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(creation.get(), rank, chunk);
  hdf5::Handle dataset =
      hdf5::dataset(H5Dcreate2(group, name, file_type, space.get(), H5P_DEFAULT, creation.get(), H5P_DEFAULT));
  if (!dataset.valid()) throw std::runtime_error(with_hdf5_detail(std::string("cannot create dataset '") + name + "'"));
  return dataset;
}

void append_block(hid_t dataset, int rank, hsize_t width, hsize_t old_rows, hsize_t new_rows, hid_t memory_type,
                  const void* data, const std::string& name) {
  if (new_rows == 0) return;
  const hsize_t dims[2] = {old_rows + new_rows, width};
  const hsize_t start[2] = {old_rows, 0};
  const hsize_t count[2] = {new_rows, width};
  if (H5Dset_extent(dataset, dims) < 0) {
    throw std::runtime_error(with_hdf5_detail("cannot extend dataset '" + name + "'"));
  }
  hdf5::Handle file_space = hdf5::dataspace(H5Dget_space(dataset));
  hdf5::Handle memory_space = hdf5::dataspace(H5Screate_simple(rank, count, nullptr));
  if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dwrite(dataset, memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, data) < 0) {
    throw std::runtime_error(with_hdf5_detail("cannot write rows to dataset '" + name + "'"));
  }
}

// An opened dataset of a split with its shape, as validated.
struct Column {
  hdf5::Handle dataset;
  std::string name;  // "/train/input_ids", for messages
  std::vector<hsize_t> dims;
};

hdf5::Handle chunk_cache(std::size_t bytes) {
  hdf5::Handle access = hdf5::plist(H5Pcreate(H5P_DATASET_ACCESS));
  // 12421 is a prime well above the number of chunks the cache can hold, as HDF5 advises
  // for its hash table.
  H5Pset_chunk_cache(access.get(), 12421, bytes, H5D_CHUNK_CACHE_W0_DEFAULT);
  return access;
}

std::optional<Column> open_column(hid_t group, const std::string& split, const char* name, const ElementType& type,
                                  std::size_t chunk_cache_bytes, const fs::path& path, bool required) {
  Column column;
  column.name = "/" + split + "/" + name;
  const htri_t exists = H5Lexists(group, name, H5P_DEFAULT);
  if (exists <= 0) {
    if (!required) return std::nullopt;
    throw file_error(path, "dataset '" + column.name + "' missing");
  }
  // Without a cache HDF5 reads just the selected rows of an unfiltered chunk; with one it
  // loads whole chunks, 64 times the bytes of a random row. Only compressed chunks,
  // which must be decoded whole anyway, are worth caching.
  column.dataset = hdf5::dataset(H5Dopen2(group, name, chunk_cache(0).get()));
  if (!column.dataset.valid()) {
    throw file_error(path, with_hdf5_detail("'" + column.name + "' cannot be opened as a dataset"));
  }
  hdf5::Handle creation = hdf5::plist(H5Dget_create_plist(column.dataset.get()));
  if (creation.valid() && H5Pget_nfilters(creation.get()) > 0) {
    column.dataset = hdf5::dataset(H5Dopen2(group, name, chunk_cache(chunk_cache_bytes).get()));
    if (!column.dataset.valid()) {
      throw file_error(path, with_hdf5_detail("'" + column.name + "' cannot be opened as a dataset"));
    }
  }
  hdf5::Handle file_type = hdf5::datatype(H5Dget_type(column.dataset.get()));
  if (!type_matches(file_type.get(), type)) {
    throw file_error(path, "dataset '" + column.name + "' has dtype " + describe_type(file_type.get()) +
                               ", expected " + type.name);
  }
  hdf5::Handle space = hdf5::dataspace(H5Dget_space(column.dataset.get()));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 1 || rank > 2) {
    throw file_error(path, "dataset '" + column.name + "' has " + std::to_string(rank) +
                               " dimensions, expected 1 or 2");
  }
  column.dims.resize(rank);
  H5Sget_simple_extent_dims(space.get(), column.dims.data(), nullptr);
  // The shape is the file's word, and readers size buffers and sample orders by it: a
  // dataset may not declare more than the bytes the file stores for it could hold,
  // decompressed (format::kMaxExpansion), plus 1 MiB of unwritten fill.
  const long double declared = static_cast<long double>(H5Sget_simple_extent_npoints(space.get())) * type.size;
  const auto stored = static_cast<long double>(H5Dget_storage_size(column.dataset.get()));
  if (declared > stored * format::kMaxExpansion + (1 << 20)) {
    throw file_error(path, "dataset '" + column.name + "' has shape " + describe_shape(column.dims) + ", " +
                               std::to_string(static_cast<uint64_t>(declared)) + " bytes, but the file stores " +
                               std::to_string(static_cast<uint64_t>(stored)) + " for it (corrupt or truncated)");
  }
  return column;
}

void read_selected_rows(const Column& column, hid_t memory_type, std::size_t element_size, int64_t num_rows,
                        std::span<const int64_t> rows, void* out, const fs::path& path) {
  if (rows.empty()) return;
  const int rank = static_cast<int>(column.dims.size());
  const hsize_t width = rank == 2 ? column.dims[1] : 1;
  const std::size_t row_bytes = width * element_size;
  for (const int64_t row : rows) {
    if (row < 0 || row >= num_rows) {
      throw file_error(path, "row " + std::to_string(row) + " is outside [0, " + std::to_string(num_rows) +
                                 ") of dataset '" + column.name + "'");
    }
  }
  // HDF5 returns a selection in file order, so reading happens over the sorted distinct
  // rows, one hyperslab per run of consecutive rows, then is placed in request order.
  const bool in_file_order = std::adjacent_find(rows.begin(), rows.end(), std::greater_equal<>()) == rows.end();
  std::vector<int64_t> distinct;
  std::vector<std::byte> staging;
  std::span<const int64_t> to_read = rows;
  auto* destination = static_cast<std::byte*>(out);
  if (!in_file_order) {
    distinct.assign(rows.begin(), rows.end());
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    staging.resize(distinct.size() * row_bytes);
    to_read = distinct;
    destination = staging.data();
  }
  hdf5::Handle file_space = hdf5::dataspace(H5Dget_space(column.dataset.get()));
  std::size_t begin = 0;
  while (begin < to_read.size()) {
    std::size_t end = begin + 1;
    while (end < to_read.size() && to_read[end] == to_read[end - 1] + 1) ++end;
    const hsize_t start[2] = {static_cast<hsize_t>(to_read[begin]), 0};
    const hsize_t count[2] = {static_cast<hsize_t>(end - begin), width};
    hdf5::Handle memory_space = hdf5::dataspace(H5Screate_simple(rank, count, nullptr));
    if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dread(column.dataset.get(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT,
                destination + begin * row_bytes) < 0) {
      throw file_error(path, with_hdf5_detail("cannot read rows [" + std::to_string(to_read[begin]) + ", " +
                                              std::to_string(to_read[end - 1] + 1) + ") of dataset '" +
                                              column.name + "'"));
    }
    begin = end;
  }
  if (!in_file_order) {
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto at = std::lower_bound(distinct.begin(), distinct.end(), rows[i]) - distinct.begin();
      std::memcpy(static_cast<std::byte*>(out) + i * row_bytes, staging.data() + at * row_bytes, row_bytes);
    }
  }
}

}  // namespace

// =======================================================================================
// Writer

namespace {

struct SplitWriter {
  std::string name;
  SplitFields fields;
  hdf5::Handle group;
  hdf5::Handle input_ids, loss_mask, attention_mask, token_type_ids, labels, document_index;
  hdf5::Handle offset_mapping, example_index, examples;
  int64_t rows = 0;
  int64_t example_bytes = 0;
  int64_t indexed_documents = 0;
  std::optional<int64_t> num_documents;
};

}  // namespace

struct TokenDatasetWriter::State {
  hdf5::Handle file;  // declared first: closed after every object inside it
  std::vector<std::unique_ptr<SplitWriter>> splits;
  bool finished = false;

  SplitWriter& find(std::string_view split, const fs::path& path) {
    for (auto& writer : splits) {
      if (writer->name == split) return *writer;
    }
    throw file_error(path, "split '" + std::string(split) + "' was not created (call create_split first)");
  }
};

void WriterOptions::validate() const {
  if (rows_per_chunk < 1) {
    throw std::runtime_error("writer option rows_per_chunk must be >= 1, got " + std::to_string(rows_per_chunk));
  }
}

TokenDatasetWriter::TokenDatasetWriter(fs::path output, DatasetInfo info, WriterOptions options)
    : output_(std::move(output)), info_(std::move(info)), options_(options) {
  options_.validate();
  try {
    info_.validate();
  } catch (const std::runtime_error& error) {
    throw file_error(output_, error.what());
  }
  std::error_code error;
  if (fs::exists(output_, error) && !options_.overwrite) {
    throw file_error(output_, "already exists; refusing to replace it (ftrain-prep: pass --overwrite)");
  }
  if (fs::is_directory(output_, error)) throw file_error(output_, "is a directory, expected a file name");
  const fs::path parent = output_.has_parent_path() ? output_.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, error)) throw file_error(output_, "directory " + parent.string() + " does not exist");

  hdf5::QuietErrors quiet;
  state_ = std::make_unique<State>();
  hdf5::Handle access = file_access_without_locking();
  state_->file = hdf5::file(H5Fcreate(temporary_path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()));
  if (!state_->file.valid()) throw file_error(temporary_path(), with_hdf5_detail("cannot create file"));
  try {
    const hid_t root = state_->file.get();
    write_string_attribute(root, format::kAttrFormat, std::string(format::kName));
    write_int_attribute(root, format::kAttrFormatVersion, info_.format_version);
    write_int_attribute(root, format::kAttrSeqLen, info_.seq_len);
    write_int_attribute(root, format::kAttrVocabSize, info_.vocab_size);
    write_int_attribute(root, format::kAttrEosId, info_.eos_id);
    write_int_attribute(root, format::kAttrPadId, info_.pad_id);
    write_string_attribute(root, format::kAttrTokenizer, info_.tokenizer);
    write_string_attribute(root, format::kAttrTask, info_.task);
    if (info_.target_len > 0) write_int_attribute(root, format::kAttrTargetLen, info_.target_len);
    if (!info_.label_names.empty()) {
      write_string_attribute(root, format::kAttrLabelNames, nlohmann::json(info_.label_names).dump());
      write_int_attribute(root, format::kAttrNumLabels, static_cast<int64_t>(info_.label_names.size()));
    }
  } catch (const std::runtime_error& failure) {
    state_.reset();
    fs::remove(temporary_path(), error);
    throw file_error(temporary_path(), failure.what());
  }
}

TokenDatasetWriter::~TokenDatasetWriter() {
  if (!state_ || state_->finished) return;
  hdf5::QuietErrors quiet;
  state_.reset();
  std::error_code ignored;
  fs::remove(temporary_path(), ignored);
}

fs::path TokenDatasetWriter::temporary_path() const {
  fs::path tmp = output_;
  tmp += ".tmp";
  return tmp;
}

void TokenDatasetWriter::create_split(std::string_view split, SplitFields fields) {
  check_split_name(split);
  if (state_->finished) throw std::logic_error("TokenDatasetWriter: create_split after finish()");
  for (const auto& writer : state_->splits) {
    if (writer->name == split) throw file_error(output_, "split '" + std::string(split) + "' created twice");
  }
  hdf5::QuietErrors quiet;
  auto writer = std::make_unique<SplitWriter>();
  writer->name = std::string(split);
  writer->fields = fields;
  writer->group = hdf5::group(H5Gcreate2(state_->file.get(), writer->name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!writer->group.valid()) throw file_error(temporary_path(), with_hdf5_detail("cannot create group '/" + writer->name + "'"));
  const hid_t group = writer->group.get();
  const auto seq_len = static_cast<hsize_t>(info_.seq_len);
  const auto chunk_rows = static_cast<hsize_t>(options_.rows_per_chunk);
  // Per-row vectors are tiny, so they get long chunks to keep their index small.
  const hsize_t vector_chunk = 4096;
  try {
    writer->input_ids = create_extendable(group, format::kInputIds, H5T_STD_I32LE, 2, seq_len, chunk_rows);
    if (fields.loss_mask) {
      writer->loss_mask = create_extendable(group, format::kLossMask, H5T_STD_U8LE, 2, seq_len, chunk_rows);
    }
    if (fields.attention_mask) {
      writer->attention_mask = create_extendable(group, format::kAttentionMask, H5T_STD_U8LE, 2, seq_len, chunk_rows);
    }
    if (fields.token_type_ids) {
      writer->token_type_ids = create_extendable(group, format::kTokenTypeIds, H5T_STD_U8LE, 2, seq_len, chunk_rows);
    }
    if (fields.labels == LabelKind::kPerRow) {
      writer->labels = create_extendable(group, format::kLabels, H5T_STD_I64LE, 1, 1, vector_chunk);
    } else if (fields.labels == LabelKind::kPerPosition) {
      writer->labels = create_extendable(group, format::kLabels, H5T_STD_I64LE, 2, seq_len, chunk_rows);
    } else if (fields.labels == LabelKind::kSpan) {
      writer->labels = create_extendable(group, format::kLabels, H5T_STD_I64LE, 2, 2, vector_chunk);
    } else if (fields.labels == LabelKind::kTarget) {
      writer->labels = create_extendable(group, format::kLabels, H5T_STD_I64LE, 2,
                                         static_cast<hsize_t>(info_.target_len), chunk_rows);
    }
    if (fields.answer_spans) {
      writer->offset_mapping =
          create_extendable(group, format::kOffsetMapping, H5T_STD_I32LE, 2, 2 * seq_len, chunk_rows);
      writer->example_index = create_extendable(group, format::kExampleIndex, H5T_STD_I64LE, 1, 1, vector_chunk);
      writer->examples = create_extendable(group, format::kExamples, H5T_STD_U8LE, 1, 1, hsize_t{1} << 16);
    }
    if (fields.document_index) {
      writer->document_index = create_extendable(group, format::kDocumentIndex, H5T_STD_I64LE, 1, 1, vector_chunk);
    }
  } catch (const std::runtime_error& failure) {
    throw file_error(temporary_path(), "split '/" + writer->name + "': " + failure.what());
  }
  state_->splits.push_back(std::move(writer));
}

void TokenDatasetWriter::append_rows(std::string_view split, const RowBlock& rows) {
  SplitWriter& writer = state_->find(split, output_);
  const std::string where = output_.string() + ": split '/" + writer.name + "': ";
  const int64_t seq_len = info_.seq_len;
  const auto cells = static_cast<std::size_t>(rows.num_rows * seq_len);
  if (rows.num_rows < 0 || rows.input_ids.size() != cells) {
    throw std::invalid_argument(where + "input_ids holds " + std::to_string(rows.input_ids.size()) +
                                " values, expected num_rows * seq_len = " + std::to_string(cells));
  }
  auto check_field = [&](bool present, std::size_t size, std::size_t expected, const char* name) {
    if (present ? size != expected : size != 0) {
      throw std::invalid_argument(where + name + " holds " + std::to_string(size) + " values, expected " +
                                  std::to_string(present ? expected : 0) +
                                  (present ? "" : " (the split was created without it)"));
    }
  };
  check_field(writer.fields.loss_mask, rows.loss_mask.size(), cells, format::kLossMask);
  check_field(writer.fields.attention_mask, rows.attention_mask.size(), cells, format::kAttentionMask);
  check_field(writer.fields.token_type_ids, rows.token_type_ids.size(), cells, format::kTokenTypeIds);
  const std::size_t label_values =
      writer.fields.labels == LabelKind::kPerPosition ? cells
      : writer.fields.labels == LabelKind::kSpan      ? 2 * static_cast<std::size_t>(rows.num_rows)
      : writer.fields.labels == LabelKind::kTarget    ? static_cast<std::size_t>(rows.num_rows * info_.target_len)
                                                      : static_cast<std::size_t>(rows.num_rows);
  check_field(writer.fields.labels != LabelKind::kNone, rows.labels.size(), label_values, format::kLabels);
  check_field(writer.fields.answer_spans, rows.offset_mapping.size(), 2 * cells, format::kOffsetMapping);
  check_field(writer.fields.answer_spans, rows.example_index.size(), static_cast<std::size_t>(rows.num_rows),
              format::kExampleIndex);
  for (std::size_t i = 0; i < cells; ++i) {
    const int32_t token = rows.input_ids[i];
    if (token < 0 || token >= info_.vocab_size) {
      throw std::invalid_argument(where + "token id " + std::to_string(token) + " in row " +
                                  std::to_string(writer.rows + static_cast<int64_t>(i) / seq_len) +
                                  " is outside [0, vocab_size = " + std::to_string(info_.vocab_size) + ")");
    }
  }

  hdf5::QuietErrors quiet;
  const auto old_rows = static_cast<hsize_t>(writer.rows);
  const auto new_rows = static_cast<hsize_t>(rows.num_rows);
  const auto width = static_cast<hsize_t>(seq_len);
  const std::string prefix = "/" + writer.name + "/";
  try {
    append_block(writer.input_ids.get(), 2, width, old_rows, new_rows, H5T_NATIVE_INT32, rows.input_ids.data(),
                 prefix + format::kInputIds);
    if (writer.fields.loss_mask) {
      append_block(writer.loss_mask.get(), 2, width, old_rows, new_rows, H5T_NATIVE_UINT8, rows.loss_mask.data(),
                   prefix + format::kLossMask);
    }
    if (writer.fields.attention_mask) {
      append_block(writer.attention_mask.get(), 2, width, old_rows, new_rows, H5T_NATIVE_UINT8,
                   rows.attention_mask.data(), prefix + format::kAttentionMask);
    }
    if (writer.fields.token_type_ids) {
      append_block(writer.token_type_ids.get(), 2, width, old_rows, new_rows, H5T_NATIVE_UINT8,
                   rows.token_type_ids.data(), prefix + format::kTokenTypeIds);
    }
    if (writer.fields.labels == LabelKind::kPerRow) {
      append_block(writer.labels.get(), 1, 1, old_rows, new_rows, H5T_NATIVE_INT64, rows.labels.data(),
                   prefix + format::kLabels);
    } else if (writer.fields.labels == LabelKind::kPerPosition) {
      append_block(writer.labels.get(), 2, width, old_rows, new_rows, H5T_NATIVE_INT64, rows.labels.data(),
                   prefix + format::kLabels);
    } else if (writer.fields.labels == LabelKind::kSpan) {
      append_block(writer.labels.get(), 2, 2, old_rows, new_rows, H5T_NATIVE_INT64, rows.labels.data(),
                   prefix + format::kLabels);
    } else if (writer.fields.labels == LabelKind::kTarget) {
      append_block(writer.labels.get(), 2, static_cast<hsize_t>(info_.target_len), old_rows, new_rows,
                   H5T_NATIVE_INT64, rows.labels.data(), prefix + format::kLabels);
    }
    if (writer.fields.answer_spans) {
      append_block(writer.offset_mapping.get(), 2, 2 * width, old_rows, new_rows, H5T_NATIVE_INT32,
                   rows.offset_mapping.data(), prefix + format::kOffsetMapping);
      append_block(writer.example_index.get(), 1, 1, old_rows, new_rows, H5T_NATIVE_INT64, rows.example_index.data(),
                   prefix + format::kExampleIndex);
    }
  } catch (const std::runtime_error& failure) {
    throw file_error(temporary_path(), failure.what());
  }
  writer.rows += rows.num_rows;
}

void TokenDatasetWriter::append_document_index(std::string_view split, std::span<const int64_t> indices) {
  SplitWriter& writer = state_->find(split, output_);
  if (!writer.fields.document_index) {
    throw std::invalid_argument(output_.string() + ": split '/" + writer.name +
                                "' was created without document_index");
  }
  hdf5::QuietErrors quiet;
  try {
    append_block(writer.document_index.get(), 1, 1, static_cast<hsize_t>(writer.indexed_documents), indices.size(),
                 H5T_NATIVE_INT64, indices.data(), "/" + writer.name + "/" + format::kDocumentIndex);
  } catch (const std::runtime_error& failure) {
    throw file_error(temporary_path(), failure.what());
  }
  writer.indexed_documents += static_cast<int64_t>(indices.size());
}

void TokenDatasetWriter::append_examples(std::string_view split, std::string_view json_lines) {
  SplitWriter& writer = state_->find(split, output_);
  if (!writer.fields.answer_spans) {
    throw std::invalid_argument(output_.string() + ": split '/" + writer.name + "' was created without examples");
  }
  if (writer.example_bytes + static_cast<int64_t>(json_lines.size()) > format::kMaxExamplesBytes) {
    throw std::invalid_argument(output_.string() + ": split '/" + writer.name + "': the examples' text passes " +
                                std::to_string(format::kMaxExamplesBytes) + " bytes; split the input");
  }
  hdf5::QuietErrors quiet;
  try {
    append_block(writer.examples.get(), 1, 1, static_cast<hsize_t>(writer.example_bytes), json_lines.size(),
                 H5T_NATIVE_UINT8, json_lines.data(), "/" + writer.name + "/" + format::kExamples);
  } catch (const std::runtime_error& failure) {
    throw file_error(temporary_path(), failure.what());
  }
  writer.example_bytes += static_cast<int64_t>(json_lines.size());
}

void TokenDatasetWriter::set_split_attribute(std::string_view split, std::string_view name, int64_t value) {
  SplitWriter& writer = state_->find(split, output_);
  const std::string attribute(name);
  if (attribute == format::kAttrNumDocuments) {
    if (value < 0) {
      throw std::invalid_argument(output_.string() + ": split '/" + writer.name +
                                  "': num_documents must be >= 0, got " + std::to_string(value));
    }
    writer.num_documents = value;
  }
  hdf5::QuietErrors quiet;
  try {
    write_int_attribute(writer.group.get(), attribute.c_str(), value);
  } catch (const std::runtime_error& failure) {
    throw file_error(temporary_path(), "split '/" + writer.name + "': " + failure.what());
  }
}

int64_t TokenDatasetWriter::num_rows(std::string_view split) const { return state_->find(split, output_).rows; }

void TokenDatasetWriter::finish() {
  if (!state_ || state_->finished) throw std::logic_error("TokenDatasetWriter::finish called twice");
  for (const auto& writer : state_->splits) {
    if (!writer->num_documents) {
      throw file_error(output_, "split '/" + writer->name + "' has no num_documents attribute; readers require it");
    }
    if (writer->fields.document_index && writer->indexed_documents != *writer->num_documents) {
      throw file_error(output_, "split '/" + writer->name + "' indexes " + std::to_string(writer->indexed_documents) +
                                    " documents but num_documents is " + std::to_string(*writer->num_documents));
    }
  }
  {
    hdf5::QuietErrors quiet;
    // Objects first, so that closing the file really closes (and flushes) it; the split
    // records stay for num_rows().
    for (auto& writer : state_->splits) {
      for (hdf5::Handle* handle : {&writer->input_ids, &writer->loss_mask, &writer->attention_mask,
                                   &writer->token_type_ids, &writer->labels, &writer->document_index,
                                   &writer->offset_mapping, &writer->example_index, &writer->examples,
                                   &writer->group}) {
        handle->reset();
      }
    }
    if (state_->file.close() < 0) throw file_error(temporary_path(), with_hdf5_detail("closing (flushing) the file failed"));
  }
  fsync_path(temporary_path(), false);
  if (options_.overwrite) {
    fs::rename(temporary_path(), output_);
  } else if (!rename_no_replace(temporary_path(), output_)) {
    throw file_error(output_, "appeared while it was being written; refusing to replace it (pass --overwrite)");
  }
  state_->finished = true;
  const fs::path parent = output_.has_parent_path() ? output_.parent_path() : fs::path(".");
  fsync_path(parent, true);
}

// =======================================================================================
// Reader

struct TokenDataset::Handles {
  hdf5::Handle file;  // declared first: closed after the objects inside it
  hdf5::Handle group;
  Column input_ids;
  std::optional<Column> loss_mask, attention_mask, labels, token_type_ids;
  std::optional<Column> offset_mapping, example_index, examples;
  LabelKind label_kind = LabelKind::kNone;
};

DatasetInfo read_dataset_info(const fs::path& path) {
  hdf5::QuietErrors quiet;
  hdf5::Handle file = open_file_read_only(path);
  return read_root_attributes(file.get(), path);
}

std::vector<std::string> list_splits(const fs::path& path) {
  hdf5::QuietErrors quiet;
  hdf5::Handle file = open_file_read_only(path);
  return split_names(file.get());
}

TokenDataset::TokenDataset(const fs::path& path, std::string_view split, ReaderOptions options)
    : path_(path), split_(split), handles_(std::make_unique<Handles>()) {
  check_split_name(split);
  hdf5::QuietErrors quiet;
  handles_->file = open_file_read_only(path_);
  const hid_t file = handles_->file.get();
  info_ = read_root_attributes(file, path_);

  const std::string group_path = "/" + split_;
  if (H5Lexists(file, split_.c_str(), H5P_DEFAULT) <= 0) {
    std::string present;
    for (const auto& name : split_names(file)) present += (present.empty() ? "" : ", ") + name;
    throw file_error(path_, "split '" + group_path + "' missing (splits in the file: " +
                                (present.empty() ? "none" : present) + ")");
  }
  handles_->group = hdf5::group(H5Gopen2(file, split_.c_str(), H5P_DEFAULT));
  if (!handles_->group.valid()) throw file_error(path_, with_hdf5_detail("'" + group_path + "' is not a group"));
  const hid_t group = handles_->group.get();
  num_documents_ = read_int_attribute(group, group_path, format::kAttrNumDocuments, path_);
  if (num_documents_ < 0) {
    throw file_error(path_, "attribute '" + group_path + "/num_documents' is " + std::to_string(num_documents_) +
                                ", expected >= 0");
  }

  const std::size_t cache = options.chunk_cache_bytes;
  handles_->input_ids = *open_column(group, split_, format::kInputIds, kInt32, cache, path_, true);
  const Column& ids = handles_->input_ids;
  if (ids.dims.size() != 2) {
    throw file_error(path_, "dataset '" + ids.name + "' has " + std::to_string(ids.dims.size()) +
                                " dimension, expected 2 (rows, seq_len)");
  }
  if (static_cast<int64_t>(ids.dims[1]) != info_.seq_len) {
    throw file_error(path_, "dataset '" + ids.name + "' has rows of " + std::to_string(ids.dims[1]) +
                                " tokens, but attribute '/seq_len' is " + std::to_string(info_.seq_len));
  }
  num_rows_ = static_cast<int64_t>(ids.dims[0]);

  auto check_same_shape = [&](const std::optional<Column>& column) {
    if (column && column->dims != ids.dims) {
      throw file_error(path_, "dataset '" + column->name + "' has shape " + describe_shape(column->dims) +
                                  ", expected " + describe_shape(ids.dims) + " like '" + ids.name + "'");
    }
  };
  handles_->loss_mask = open_column(group, split_, format::kLossMask, kUint8, cache, path_, false);
  check_same_shape(handles_->loss_mask);
  handles_->attention_mask = open_column(group, split_, format::kAttentionMask, kUint8, cache, path_, false);
  check_same_shape(handles_->attention_mask);
  handles_->token_type_ids = open_column(group, split_, format::kTokenTypeIds, kUint8, cache, path_, false);
  check_same_shape(handles_->token_type_ids);
  handles_->labels = open_column(group, split_, format::kLabels, kInt64, cache, path_, false);
  if (handles_->labels) {
    const auto& dims = handles_->labels->dims;
    if (info_.target_len > 0) {  // seq2seq: exactly (N, target_len)
      if (dims != std::vector<hsize_t>{ids.dims[0], static_cast<hsize_t>(info_.target_len)})
        throw file_error(path_, "dataset '" + handles_->labels->name + "' has shape " + describe_shape(dims) +
                                    ", expected (" + std::to_string(ids.dims[0]) + ", " +
                                    std::to_string(info_.target_len) + ") (attribute '/target_len')");
      handles_->label_kind = LabelKind::kTarget;
    } else if (dims.size() == 1 && dims[0] == ids.dims[0]) {
      handles_->label_kind = LabelKind::kPerRow;
    } else if (dims == ids.dims) {
      handles_->label_kind = LabelKind::kPerPosition;
    } else if (dims.size() == 2 && dims[0] == ids.dims[0] && dims[1] == 2) {
      handles_->label_kind = LabelKind::kSpan;
    } else {
      throw file_error(path_, "dataset '" + handles_->labels->name + "' has shape " + describe_shape(dims) +
                                  ", expected (" + std::to_string(ids.dims[0]) + ",), (" +
                                  std::to_string(ids.dims[0]) + ", 2) or " + describe_shape(ids.dims));
    }
  }
  // Question answering's three go together, each of its shape.
  handles_->offset_mapping = open_column(group, split_, format::kOffsetMapping, kInt32, cache, path_, false);
  handles_->example_index = open_column(group, split_, format::kExampleIndex, kInt64, cache, path_, false);
  handles_->examples = open_column(group, split_, format::kExamples, kUint8, cache, path_, false);
  const int present = static_cast<int>(handles_->offset_mapping.has_value()) +
                      static_cast<int>(handles_->example_index.has_value()) +
                      static_cast<int>(handles_->examples.has_value());
  if (present != 0 && present != 3) {
    throw file_error(path_, "split '" + group_path + "' has only some of offset_mapping, example_index and examples");
  }
  if (present == 3) {
    const std::vector<hsize_t> offsets_shape = {ids.dims[0], 2 * ids.dims[1]};
    if (handles_->offset_mapping->dims != offsets_shape) {
      throw file_error(path_, "dataset '" + handles_->offset_mapping->name + "' has shape " +
                                  describe_shape(handles_->offset_mapping->dims) + ", expected " +
                                  describe_shape(offsets_shape));
    }
    if (handles_->example_index->dims != std::vector<hsize_t>{ids.dims[0]}) {
      throw file_error(path_, "dataset '" + handles_->example_index->name + "' has shape " +
                                  describe_shape(handles_->example_index->dims) + ", expected (" +
                                  std::to_string(ids.dims[0]) + ",)");
    }
    if (handles_->examples->dims.size() != 1 ||
        static_cast<int64_t>(handles_->examples->dims[0]) > format::kMaxExamplesBytes) {
      throw file_error(path_, "dataset '" + handles_->examples->name + "' has shape " +
                                  describe_shape(handles_->examples->dims) + ", expected (bytes,) of at most " +
                                  std::to_string(format::kMaxExamplesBytes));
    }
  }
}

TokenDataset::~TokenDataset() {
  if (!handles_) return;
  hdf5::QuietErrors quiet;
  handles_.reset();
}

TokenDataset::TokenDataset(TokenDataset&&) noexcept = default;
TokenDataset& TokenDataset::operator=(TokenDataset&&) noexcept = default;

bool TokenDataset::has_loss_mask() const { return handles_->loss_mask.has_value(); }
bool TokenDataset::has_attention_mask() const { return handles_->attention_mask.has_value(); }
bool TokenDataset::has_token_type_ids() const { return handles_->token_type_ids.has_value(); }
LabelKind TokenDataset::labels() const { return handles_->label_kind; }

void TokenDataset::read_rows(std::span<const int64_t> rows, int32_t* out) const {
  hdf5::QuietErrors quiet;
  read_selected_rows(handles_->input_ids, H5T_NATIVE_INT32, sizeof(int32_t), num_rows_, rows, out, path_);
}

void TokenDataset::read_loss_mask(std::span<const int64_t> rows, uint8_t* out) const {
  if (!handles_->loss_mask) throw file_error(path_, "split '/" + split_ + "' has no loss_mask");
  hdf5::QuietErrors quiet;
  read_selected_rows(*handles_->loss_mask, H5T_NATIVE_UINT8, 1, num_rows_, rows, out, path_);
}

void TokenDataset::read_attention_mask(std::span<const int64_t> rows, uint8_t* out) const {
  if (!handles_->attention_mask) throw file_error(path_, "split '/" + split_ + "' has no attention_mask");
  hdf5::QuietErrors quiet;
  read_selected_rows(*handles_->attention_mask, H5T_NATIVE_UINT8, 1, num_rows_, rows, out, path_);
}

void TokenDataset::read_token_type_ids(std::span<const int64_t> rows, uint8_t* out) const {
  if (!handles_->token_type_ids) throw file_error(path_, "split '/" + split_ + "' has no token_type_ids");
  hdf5::QuietErrors quiet;
  read_selected_rows(*handles_->token_type_ids, H5T_NATIVE_UINT8, 1, num_rows_, rows, out, path_);
}

void TokenDataset::read_labels(std::span<const int64_t> rows, int64_t* out) const {
  if (!handles_->labels) throw file_error(path_, "split '/" + split_ + "' has no labels");
  hdf5::QuietErrors quiet;
  read_selected_rows(*handles_->labels, H5T_NATIVE_INT64, sizeof(int64_t), num_rows_, rows, out, path_);
}

int64_t TokenDataset::label_width() const {
  switch (handles_->label_kind) {
    case LabelKind::kNone: return 0;
    case LabelKind::kPerRow: return 1;
    case LabelKind::kSpan: return 2;
    case LabelKind::kTarget: return info_.target_len;
    case LabelKind::kPerPosition: return info_.seq_len;
  }
  return 0;
}

bool TokenDataset::has_answer_spans() const { return handles_->examples.has_value(); }

void TokenDataset::read_offset_mapping(std::span<const int64_t> rows, int32_t* out) const {
  if (!handles_->offset_mapping) throw file_error(path_, "split '/" + split_ + "' has no offset_mapping");
  hdf5::QuietErrors quiet;
  read_selected_rows(*handles_->offset_mapping, H5T_NATIVE_INT32, sizeof(int32_t), num_rows_, rows, out, path_);
}

void TokenDataset::read_example_index(std::span<const int64_t> rows, int64_t* out) const {
  if (!handles_->example_index) throw file_error(path_, "split '/" + split_ + "' has no example_index");
  hdf5::QuietErrors quiet;
  read_selected_rows(*handles_->example_index, H5T_NATIVE_INT64, sizeof(int64_t), num_rows_, rows, out, path_);
}

std::string TokenDataset::read_examples() const {
  if (!handles_->examples) throw file_error(path_, "split '/" + split_ + "' has no examples");
  const auto bytes = static_cast<int64_t>(handles_->examples->dims[0]);
  std::string text(static_cast<std::size_t>(bytes), '\0');
  if (bytes == 0) return text;
  hdf5::QuietErrors quiet;
  // One "row" of `bytes` bytes: the dataset is read in a single hyperslab.
  hdf5::Handle file_space = hdf5::dataspace(H5Dget_space(handles_->examples->dataset.get()));
  const hsize_t count[1] = {static_cast<hsize_t>(bytes)};
  hdf5::Handle memory_space = hdf5::dataspace(H5Screate_simple(1, count, nullptr));
  if (H5Dread(handles_->examples->dataset.get(), H5T_NATIVE_UINT8, memory_space.get(), file_space.get(), H5P_DEFAULT,
              text.data()) < 0) {
    throw file_error(path_, with_hdf5_detail("cannot read dataset '" + handles_->examples->name + "'"));
  }
  return text;
}

}  // namespace ftrain::data
