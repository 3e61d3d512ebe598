#include "data/prep_extras.h"

#include <map>
#include <stdexcept>

#include "data/hdf5_handle.h"

namespace ftrain::data {

struct PrepExtrasWriter::State {
  hdf5::Handle file;
  std::map<std::string, std::pair<hdf5::Handle, int64_t>, std::less<>> token_types;  // dataset, rows
};

namespace {

std::runtime_error failure(const std::filesystem::path& file, const std::string& what) {
  const std::string detail = hdf5::last_error();
  return std::runtime_error(file.string() + ": " + what + (detail.empty() ? "" : " (" + detail + ")"));
}

}  // namespace

PrepExtrasWriter::PrepExtrasWriter(const std::filesystem::path& temporary_file, int64_t seq_len)
    : file_(temporary_file), seq_len_(seq_len), state_(std::make_unique<State>()) {
  hdf5::QuietErrors quiet;
  hdf5::Handle access = hdf5::plist(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_file_locking(access.get(), false, true);
  state_->file = hdf5::file(H5Fopen(file_.c_str(), H5F_ACC_RDWR, access.get()));
  if (!state_->file.valid()) throw failure(file_, "cannot reopen the file being written");
}

PrepExtrasWriter::~PrepExtrasWriter() {
  hdf5::QuietErrors quiet;
  state_.reset();
}

void PrepExtrasWriter::create_token_type_ids(std::string_view split) {
  hdf5::QuietErrors quiet;
  const std::string path = "/" + std::string(split) + "/" + kTokenTypeIds;
  const auto width = static_cast<hsize_t>(seq_len_);
  const hsize_t dims[2] = {0, width};
  const hsize_t max_dims[2] = {H5S_UNLIMITED, width};
  const hsize_t chunk[2] = {64, width};
  hdf5::Handle space = hdf5::dataspace(H5Screate_simple(2, dims, max_dims));
  hdf5::Handle creation = hdf5::plist(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(creation.get(), 2, chunk);
  hdf5::Handle dataset = hdf5::dataset(
      H5Dcreate2(state_->file.get(), path.c_str(), H5T_STD_U8LE, space.get(), H5P_DEFAULT, creation.get(), H5P_DEFAULT));
  if (!dataset.valid()) throw failure(file_, "cannot create dataset '" + path + "'");
  state_->token_types.emplace(std::string(split), std::make_pair(std::move(dataset), int64_t{0}));
}

void PrepExtrasWriter::append_token_type_ids(std::string_view split, int64_t num_rows, std::span<const uint8_t> values) {
  const auto found = state_->token_types.find(split);
  if (found == state_->token_types.end()) {
    throw std::logic_error("PrepExtrasWriter: token_type_ids of split '" + std::string(split) + "' not created");
  }
  if (values.size() != static_cast<std::size_t>(num_rows * seq_len_)) {
    throw std::invalid_argument("PrepExtrasWriter: token_type_ids block of the wrong size");
  }
  if (num_rows == 0) return;
  hdf5::QuietErrors quiet;
  auto& [dataset, rows] = found->second;
  const auto width = static_cast<hsize_t>(seq_len_);
  const hsize_t dims[2] = {static_cast<hsize_t>(rows + num_rows), width};
  const hsize_t start[2] = {static_cast<hsize_t>(rows), 0};
  const hsize_t count[2] = {static_cast<hsize_t>(num_rows), width};
  if (H5Dset_extent(dataset.get(), dims) < 0) throw failure(file_, "cannot extend token_type_ids");
  hdf5::Handle file_space = hdf5::dataspace(H5Dget_space(dataset.get()));
  hdf5::Handle memory_space = hdf5::dataspace(H5Screate_simple(2, count, nullptr));
  if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dwrite(dataset.get(), H5T_NATIVE_UINT8, memory_space.get(), file_space.get(), H5P_DEFAULT, values.data()) < 0) {
    throw failure(file_, "cannot write token_type_ids of split '" + std::string(split) + "'");
  }
  rows += num_rows;
}

void PrepExtrasWriter::set_root_string(std::string_view name, const std::string& value) {
  hdf5::QuietErrors quiet;
  hdf5::Handle type = hdf5::datatype(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  hdf5::Handle space = hdf5::dataspace(H5Screate(H5S_SCALAR));
  const std::string key(name);
  hdf5::Handle attribute =
      hdf5::attribute(H5Acreate2(state_->file.get(), key.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  const char* text = value.c_str();
  if (!attribute.valid() || H5Awrite(attribute.get(), type.get(), &text) < 0) {
    throw failure(file_, "cannot write attribute '" + key + "'");
  }
}

void PrepExtrasWriter::set_root_int(std::string_view name, int64_t value) {
  hdf5::QuietErrors quiet;
  hdf5::Handle space = hdf5::dataspace(H5Screate(H5S_SCALAR));
  const std::string key(name);
  hdf5::Handle attribute = hdf5::attribute(
      H5Acreate2(state_->file.get(), key.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attribute.valid() || H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value) < 0) {
    throw failure(file_, "cannot write attribute '" + key + "'");
  }
}

void PrepExtrasWriter::close() {
  hdf5::QuietErrors quiet;
  state_->token_types.clear();
  if (state_->file.valid() && H5Fflush(state_->file.get(), H5F_SCOPE_LOCAL) < 0) {
    throw failure(file_, "cannot flush");
  }
  if (state_->file.close() < 0) throw failure(file_, "cannot close");
}

}  // namespace ftrain::data
