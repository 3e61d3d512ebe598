// Reading Hugging Face config.json files, shared by the model families: typed
// reads that keep the default when a key is absent, errors that name the file and
// key, and the keys left over (carried through as a config's `extra`).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace ftrain::model {

// "<source>: key '<key>' <what>"
[[noreturn]] inline void config_error(const std::string& source, const std::string& key, const std::string& what) {
  throw std::runtime_error(source + ": key '" + key + "' " + what);
}

// Parses a JSON file, naming it when it is missing, unreadable or not JSON.
inline nlohmann::json read_config_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    if (!std::filesystem::exists(path)) throw std::runtime_error(path.string() + ": file not found");
    throw std::runtime_error(path.string() + ": cannot be opened for reading");
  }
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number past double
    throw std::runtime_error(path.string() + ": not valid JSON: " + e.what());
  }
}

// Reads the keys of one JSON object (config.json, or a nested rope object whose
// keys are named "<prefix><key>" in errors), remembering which were read.
class ConfigFields {
 public:
  ConfigFields(const nlohmann::json& json, const std::string& source, std::string prefix = "")
      : json_(json), source_(source), prefix_(std::move(prefix)) {}

  std::string name(const std::string& key) const { return prefix_ + key; }

  const nlohmann::json* find(const std::string& key) {
    used_.insert(key);
    auto it = json_.find(key);
    return it == json_.end() ? nullptr : &*it;
  }

  const nlohmann::json& require(const std::string& key) {
    const nlohmann::json* value = find(key);
    if (!value) config_error(source_, name(key), "is missing");
    return *value;
  }

  int64_t integer(const std::string& key, const nlohmann::json& value) const {
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      config_error(source_, name(key), "is too large: " + value.dump());
    if (!value.is_number_integer()) config_error(source_, name(key), "must be an integer, got " + value.dump());
    return value.get<int64_t>();
  }
  double number(const std::string& key, const nlohmann::json& value) const {
    if (!value.is_number()) config_error(source_, name(key), "must be a number, got " + value.dump());
    return value.get<double>();
  }

  // Each read leaves `out` unchanged when the key is absent and says whether it was present.
  bool read(const std::string& key, int64_t& out, bool required = false) {
    const nlohmann::json* value = required ? &require(key) : find(key);
    if (value) out = integer(key, *value);
    return value != nullptr;
  }
  bool read(const std::string& key, double& out, bool required = false) {
    const nlohmann::json* value = required ? &require(key) : find(key);
    if (value) out = number(key, *value);
    return value != nullptr;
  }
  bool read(const std::string& key, bool& out) {
    const nlohmann::json* value = find(key);
    if (value && !value->is_boolean()) config_error(source_, name(key), "must be true or false, got " + value->dump());
    if (value) out = value->get<bool>();
    return value != nullptr;
  }
  bool read(const std::string& key, std::string& out) {
    const nlohmann::json* value = find(key);
    if (value && !value->is_string()) config_error(source_, name(key), "must be a string, got " + value->dump());
    if (value) out = value->get<std::string>();
    return value != nullptr;
  }
  // null clears `out`.
  bool read(const std::string& key, std::optional<int64_t>& out) {
    const nlohmann::json* value = find(key);
    if (value) out = value->is_null() ? std::nullopt : std::optional<int64_t>(integer(key, *value));
    return value != nullptr;
  }
  // null clears `out`.
  bool read(const std::string& key, std::vector<std::string>& out) {
    const nlohmann::json* value = find(key);
    if (!value) return false;
    out.clear();
    if (value->is_null()) return true;
    if (!value->is_array()) config_error(source_, name(key), "must be a list of strings or null, got " + value->dump());
    for (const auto& item : *value) {
      if (!item.is_string()) config_error(source_, name(key), "must be a list of strings, has " + item.dump());
      out.push_back(item.get<std::string>());
    }
    return true;
  }

  // The end of every family's from_json: the keys the family rewrites on save (the class
  // name, the dtype of the file written) are read, every key not read is kept in
  // config.extra so that a saved config.json keeps it, and config.validate()'s error is
  // prefixed with the source.
  template <typename Config>
  Config finish(Config config) {
    for (const char* key : {"architectures", "dtype", "torch_dtype"}) find(key);
    config.extra = unused();
    try {
      config.validate();
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(source_ + ": " + e.what());
    }
    return config;
  }

  // Keys not read above.
  nlohmann::json unused() const {
    nlohmann::json rest = nlohmann::json::object();
    for (const auto& [key, value] : json_.items())
      if (!used_.count(key)) rest[key] = value;
    return rest;
  }

 private:
  const nlohmann::json& json_;
  const std::string& source_;
  std::string prefix_;
  std::set<std::string> used_;
};

}  // namespace ftrain::model
