// An HDF5 token dataset described field by field: the input is JSON naming the root
// attributes, the splits, their attributes and their datasets (dtype, shape, chunks,
// written or only declared, and the values' range). The harness writes a well-formed
// HDF5 file from it with the C API and reads it as the loader does, so what varies is
// what ftrain itself must check: attribute types and values, shapes, dtypes, sizes.
//
//   {"attrs": {"format": "ftrain.tokens", "seq_len": 8, ...},
//    "splits": {"train": {"attrs": {"num_documents": 3},
//                         "datasets": {"input_ids": {"dtype": "int32", "shape": [4, 8],
//                                                    "chunk": [2, 8], "written": true,
//                                                    "offset": 0, "modulus": 100}}}}}
#include <hdf5.h>
#include <nlohmann/json.hpp>

#include <map>
#include <type_traits>
#include <vector>

#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/token_dataset_reads.h"

using nlohmann::json;

namespace {

constexpr hsize_t kMaxWritten = hsize_t{1} << 20;  // elements the harness itself writes
constexpr hsize_t kMaxDim = hsize_t{1} << 40;

// spec[key] when it has the type of `fallback`, else fallback: the description is
// fuzzed too, and a field of another type just means the default.
template <typename T>
T field(const json& spec, const char* key, T fallback) {
  if (!spec.contains(key)) return fallback;
  const json& value = spec[key];
  if constexpr (std::is_same_v<T, bool>) return value.is_boolean() ? value.get<bool>() : fallback;
  else if constexpr (std::is_same_v<T, std::string>) return value.is_string() ? value.get<std::string>() : fallback;
  else return value.is_number_integer() ? value.get<T>() : fallback;
}

const std::map<std::string, hid_t>& dtypes() {
  static const std::map<std::string, hid_t> types = {
      {"int32", H5T_STD_I32LE}, {"int64", H5T_STD_I64LE},   {"uint8", H5T_STD_U8LE},
      {"uint32", H5T_STD_U32LE}, {"float32", H5T_IEEE_F32LE}, {"float64", H5T_IEEE_F64LE}};
  return types;
}

void write_attribute(hid_t object, const std::string& name, const json& value) {
  hid_t space = H5Screate(H5S_SCALAR);
  if (value.is_string()) {
    const std::string text = value.get<std::string>();
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, text.size() + 1);
    hid_t attribute = H5Acreate2(object, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, type, text.c_str());
    H5Aclose(attribute), H5Tclose(type);
  } else if (value.is_number_float()) {
    const double real = value.get<double>();
    hid_t attribute = H5Acreate2(object, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_DOUBLE, &real);
    H5Aclose(attribute);
  } else if (value.is_number_integer() || value.is_boolean()) {
    const int64_t integer = value.is_boolean() ? value.get<bool>() : value.get<int64_t>();
    hid_t attribute = H5Acreate2(object, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_INT64, &integer);
    H5Aclose(attribute);
  } else if (value.is_array() && !value.empty() && value.size() <= 64) {
    std::vector<int64_t> integers;
    for (const json& item : value) integers.push_back(item.is_number() ? item.get<int64_t>() : 0);
    const hsize_t n = integers.size();
    H5Sclose(space);
    space = H5Screate_simple(1, &n, nullptr);
    hid_t attribute = H5Acreate2(object, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_INT64, integers.data());
    H5Aclose(attribute);
  }
  H5Sclose(space);
}

void write_dataset(hid_t group, const std::string& name, const json& spec) {
  if (!spec.is_object()) return;
  const auto type = dtypes().find(field(spec, "dtype", std::string("int32")));
  if (type == dtypes().end() || !spec.contains("shape") || !spec["shape"].is_array()) return;
  std::vector<hsize_t> dims;
  for (const json& d : spec["shape"])
    if (d.is_number_unsigned() && d.get<uint64_t>() <= kMaxDim) dims.push_back(d.get<uint64_t>());
  if (dims.empty() || dims.size() > 3 || dims.size() != spec["shape"].size()) return;
  hsize_t count = 1;
  for (hsize_t d : dims) count = d == 0 ? 0 : (count > kMaxDim / d ? kMaxDim : count * d);
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t creation = H5Pcreate(H5P_DATASET_CREATE);
  if (spec.contains("chunk") && spec["chunk"].is_array() && spec["chunk"].size() == dims.size()) {
    std::vector<hsize_t> chunk;
    for (size_t i = 0; i < dims.size(); ++i) {
      const json& c = spec["chunk"][i];
      chunk.push_back(c.is_number_unsigned() ? std::clamp<hsize_t>(c.get<uint64_t>(), 1, 1 << 16) : 1);
    }
    H5Pset_chunk(creation, static_cast<int>(chunk.size()), chunk.data());
    if (field(spec, "deflate", false)) H5Pset_deflate(creation, 1);
  }
  hid_t dataset = H5Dcreate2(group, name.c_str(), type->second, space, H5P_DEFAULT, creation, H5P_DEFAULT);
  if (dataset >= 0 && field(spec, "written", true) && count <= kMaxWritten) {
    const int64_t offset = field(spec, "offset", int64_t{0});
    const int64_t modulus = std::max<int64_t>(1, field(spec, "modulus", int64_t{100}));
    std::vector<int64_t> values(count);
    for (hsize_t i = 0; i < count; ++i) values[i] = offset + static_cast<int64_t>(i % static_cast<hsize_t>(modulus));
    H5Dwrite(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
  }
  if (dataset >= 0) H5Dclose(dataset);
  H5Pclose(creation), H5Sclose(space);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const json spec = json::parse(ftrain::fuzz::as_text(data, size), nullptr, /*allow_exceptions=*/false);
  if (spec.is_discarded() || !spec.is_object()) return 0;  // describes no file
  const auto path = ftrain::fuzz::scratch_dir() / "fields.h5";
  {
    H5E_auto2_t handler = nullptr;
    void* handler_data = nullptr;
    H5Eget_auto2(H5E_DEFAULT, &handler, &handler_data);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // a description HDF5 refuses just leaves that part out
    hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (spec.contains("attrs") && spec["attrs"].is_object())
      for (const auto& [name, value] : spec["attrs"].items()) write_attribute(file, name, value);
    if (spec.contains("splits") && spec["splits"].is_object()) {
      for (const auto& [split, content] : spec["splits"].items()) {
        if (!content.is_object() || split.empty() || split.find('/') != std::string::npos) continue;
        hid_t group = H5Gcreate2(file, split.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (group < 0) continue;
        if (content.contains("attrs") && content["attrs"].is_object())
          for (const auto& [name, value] : content["attrs"].items()) write_attribute(group, name, value);
        if (content.contains("datasets") && content["datasets"].is_object())
          for (const auto& [name, dataset] : content["datasets"].items())
            if (!name.empty() && name.find('/') == std::string::npos) write_dataset(group, name, dataset);
        H5Gclose(group);
      }
    }
    H5Fclose(file);
    H5Eset_auto2(H5E_DEFAULT, handler, handler_data);
  }
  ftrain::fuzz::refusals_name(path.string(), [&] { ftrain::fuzz::read_like_the_loader(path); });
  return 0;
}
