#include "launch/checkpoint/tool.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "data/durable_file.h"
#include "data/token_dataset.h"
#include "launch/checkpoint/store.h"
#include "launch/options.h"
#include "launch/task.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {
namespace {

// The files the trainer copies from model.path into final/ beside the weights, so that
// an export is a complete model directory as well.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                                           "generation_config.json"};

// "step_00000012" -> 12, "step_00000012.tmp" -> 12 with suffix ".tmp"; none for other names.
std::optional<std::pair<int64_t, std::string>> parse_step_name(const std::string& name) {
  if (name.rfind("step_", 0) != 0) return std::nullopt;
  const std::size_t dot = name.find('.', 5);
  const std::string digits = name.substr(5, dot == std::string::npos ? std::string::npos : dot - 5);
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::make_pair(std::stoll(digits), dot == std::string::npos ? std::string() : name.substr(dot));
}

// Bytes of every regular file below `dir`; files that vanish meanwhile (a save or a
// removal by `keep` in a running job) count as nothing.
std::uintmax_t disk_bytes(const fs::path& dir) {
  std::uintmax_t total = 0;
  std::error_code error;
  for (fs::recursive_directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    std::error_code size_error;
    if (it->is_regular_file(size_error)) {
      const std::uintmax_t size = it->file_size(size_error);
      if (!size_error) total += size;
    }
  }
  return total;
}

std::string human_bytes(std::uintmax_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  if (unit == 0) std::snprintf(text, sizeof(text), "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(text, sizeof(text), "%.1f %s", value, units[unit]);
  return text;
}

std::optional<std::string> read_latest(const fs::path& directory) {
  std::ifstream in(directory / "latest");
  if (!in) return std::nullopt;
  std::string name;
  std::getline(in, name);
  while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
  return name;
}

// The record in <checkpoints>/best (metric, value, step, checkpoint), when it names a
// committed checkpoint.
std::optional<json> read_best(const fs::path& directory) {
  const auto best = CheckpointStore(directory, 1).best();
  if (!best) return std::nullopt;
  std::ifstream in(directory / "best");
  json record = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!record.is_object()) record = json::object();
  record["checkpoint"] = best->filename().string();
  return record;
}

std::string describe_best(const json& record) {
  std::string text = "best";
  if (record.contains("metric") && record["metric"].is_string() && record.contains("value") &&
      record["value"].is_number()) {
    char value[32];
    std::snprintf(value, sizeof(value), "%.6g", record["value"].get<double>());
    text += " (" + record["metric"].get<std::string>() + " " + value + ")";
  }
  return text;
}

// "out/" and "out" are the same directory; the sibling names below need the latter.
fs::path without_trailing_separator(const fs::path& path) {
  fs::path normal = fs::absolute(path).lexically_normal();
  if (normal.filename().empty() && normal.has_parent_path()) normal = normal.parent_path();
  return normal;
}

// A path of the stored configuration (not one given by a flag) that is not there.
struct StoredPathMissing : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The model a checkpoint was saved from, rebuilt unsplit on the CPU from its stored
// configuration, with fresh weights (every parameter is then loaded from the checkpoint,
// so model.path needs only its config.json).
struct CheckpointModel {
  json meta;
  Config config;
  std::unique_ptr<Task> task;
};

// skeleton: the model built without values (Task::WithoutValues), for a streamed export.
CheckpointModel build_model(const fs::path& checkpoint, const ModelSources& sources, bool skeleton = false) {
  CheckpointModel out;
  out.meta = load_checkpoint(checkpoint, {});
  const std::string where = checkpoint.string();
  if (!out.meta.contains("config") || !out.meta["config"].is_string())
    throw std::runtime_error(where + ": the metadata has no 'config' (the run's resolved configuration), so the "
                                     "model it was saved from is unknown");
  out.config = parse_config_text(out.meta["config"].get<std::string>(), where + " (stored configuration)");
  Config& config = out.config;
  if (!sources.model_path.empty()) config.model.path = sources.model_path;
  if (!sources.data_path.empty()) config.data.path = sources.data_path;

  // What names a path in errors: the stored key, or the flag that replaced it. Stored
  // paths are as the run was given them, so relative ones are taken from the current
  // directory, which may not be the one the run started in.
  auto origin = [&](const std::string& given, const std::string& key, const std::string& flag,
                    const std::string& path) {
    if (!given.empty()) return flag;
    std::string text = key + " of " + where;
    if (fs::path(path).is_relative()) text += ", a relative path: run from the directory the run started in";
    return text;
  };
  // A stored path that is gone is a StoredPathMissing; one given by flag is an error.
  auto require = [](bool found, bool stored, const std::string& what) {
    if (found) return;
    if (stored) throw StoredPathMissing(what);
    throw std::runtime_error(what);
  };
  const fs::path model_dir = config.model.path;
  const bool model_stored = sources.model_path.empty();
  const std::string model_origin = origin(sources.model_path, "model.path", "--model-path", config.model.path);
  require(fs::is_directory(model_dir), model_stored,
          config.model.path + ": model directory not found (" + model_origin +
              "); its config.json and tokenizer are needed: give --model-path DIR");
  require(fs::is_regular_file(model_dir / "config.json"), model_stored,
          (model_dir / "config.json").string() + ": not found (" + model_origin +
              "); give --model-path DIR with the model's config.json and tokenizer");
  const std::string data_origin = origin(sources.data_path, "data.path", "--data-path", config.data.path);
  require(fs::is_regular_file(config.data.path), sources.data_path.empty(),
          config.data.path + ": dataset not found (" + data_origin +
              "); it gives the task and the label names: give --data-path FILE");
  const data::DatasetInfo dataset = data::read_dataset_info(config.data.path);

  const json model_meta = out.meta.value("model", json::object());
  const std::string saved_task = model_meta.value("task", std::string());
  if (!saved_task.empty() && saved_task != dataset.task)
    throw std::runtime_error(config.data.path + ": is a " + dataset.task + " dataset, but " + where +
                             " holds a " + saved_task + " model (" + data_origin + ")");
  config.model.init = ModelInit::random;
  out.task = skeleton ? std::make_unique<Task>(config, dataset, Task::WithoutValues{})
                      : std::make_unique<Task>(config, dataset);
  const std::string saved_family = model_meta.value("family", std::string());
  if (!saved_family.empty() && saved_family != out.task->family())
    throw std::runtime_error(config.model.path + ": is a " + out.task->family() + " model, but " + where +
                             " holds a " + saved_family + " model (" + model_origin + ")");
  return out;
}

// Loads every "model/<param>" tensor into the model's parameters.
void load_parameters(const fs::path& checkpoint, Task& task) {
  NamedTensors into;
  for (auto& item : task.module().named_parameters()) into.emplace_back("model/" + item.key(), item.value());
  load_checkpoint(checkpoint, into);
}

// Removes a directory this process was writing unless it was handed over.
class StagingDirectory {
 public:
  explicit StagingDirectory(fs::path path) : path_(std::move(path)) {}
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;
  ~StagingDirectory() {
    std::error_code ignored;
    if (!released_) fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }
  void release() { released_ = true; }

 private:
  fs::path path_;
  bool released_ = false;
};

}  // namespace

std::string to_string(CheckpointState state) {
  switch (state) {
    case CheckpointState::valid: return "valid";
    case CheckpointState::committed: return "committed";
    case CheckpointState::corrupt: return "corrupt";
    case CheckpointState::uncommitted: return "uncommitted";
    case CheckpointState::set_aside: return "set_aside";
  }
  return "unknown";
}

fs::path checkpoints_directory(const fs::path& run_or_checkpoints) {
  if (!fs::is_directory(run_or_checkpoints))
    throw std::runtime_error(run_or_checkpoints.string() + ": not a directory (give a run directory or its "
                                                           "checkpoints directory)");
  const fs::path nested = run_or_checkpoints / "checkpoints";
  return fs::is_directory(nested) ? nested : run_or_checkpoints;
}

CheckpointListing list_checkpoints(const fs::path& run_or_checkpoints, bool verify) {
  CheckpointListing listing;
  listing.directory = checkpoints_directory(run_or_checkpoints);
  listing.verified = verify;
  listing.latest = read_latest(listing.directory);
  const auto best = read_best(listing.directory);
  std::set<fs::path> committed;
  for (const auto& path : CheckpointStore(listing.directory, 1).committed()) committed.insert(path);

  std::error_code error;
  for (fs::directory_iterator it(listing.directory, error), end; !error && it != end; it.increment(error)) {
    std::error_code type_error;
    if (!it->is_directory(type_error)) continue;
    const std::string name = it->path().filename().string();
    const auto parsed = parse_step_name(name);
    if (!parsed) continue;
    const auto& [step, suffix] = *parsed;
    CheckpointEntry entry;
    entry.path = it->path();
    entry.step = step;
    if (suffix == ".stale") entry.state = CheckpointState::set_aside;
    else if (suffix == ".tmp") entry.state = CheckpointState::uncommitted;
    else if (!suffix.empty()) continue;  // not a name ftrain gives
    else if (!committed.count(entry.path)) entry.state = CheckpointState::uncommitted;
    else if (!verify) entry.state = CheckpointState::committed;
    else entry.state = verify_checkpoint(entry.path, &entry.problem) ? CheckpointState::valid : CheckpointState::corrupt;
    entry.bytes = disk_bytes(entry.path);
    entry.latest = suffix.empty() && listing.latest == name;
    if (best && suffix.empty() && best->value("checkpoint", std::string()) == name) entry.best = *best;
    listing.entries.push_back(std::move(entry));
  }
  if (error) throw std::runtime_error(listing.directory.string() + ": cannot list: " + error.message());
  std::sort(listing.entries.begin(), listing.entries.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return std::make_pair(a.step, a.path.filename().string()) < std::make_pair(b.step, b.path.filename().string());
  });
  return listing;
}

std::string format_listing(const CheckpointListing& listing) {
  std::ostringstream out;
  out << "checkpoints in " << listing.directory.string() << "\n";
  if (listing.entries.empty()) {
    out << "(none)\n";
    return out.str();
  }
  char line[256];
  std::snprintf(line, sizeof(line), "%8s  %-20s  %-11s  %10s  %s\n", "STEP", "NAME", "STATE", "SIZE", "MARKS");
  out << line;
  bool latest_found = false;
  for (const auto& entry : listing.entries) {
    std::string state = to_string(entry.state);
    if (entry.state == CheckpointState::corrupt) state = "CORRUPT";
    if (entry.state == CheckpointState::set_aside) state = "set aside";
    std::string marks;
    if (entry.latest) marks = "latest";
    if (entry.best) marks += (marks.empty() ? "" : ", ") + describe_best(*entry.best);
    latest_found = latest_found || entry.latest;
    std::snprintf(line, sizeof(line), "%8lld  %-20s  %-11s  %10s  ", static_cast<long long>(entry.step),
                  entry.path.filename().string().c_str(), state.c_str(), human_bytes(entry.bytes).c_str());
    std::string text = line + marks;
    while (!text.empty() && text.back() == ' ') text.pop_back();
    out << text << "\n";
    if (!entry.problem.empty()) out << "          problem: " << entry.problem << "\n";
  }
  if (!listing.latest) out << "no 'latest' file: no checkpoint was committed here\n";
  else if (!latest_found) out << "'latest' names " << *listing.latest << ", which is not a committed checkpoint here\n";
  if (!listing.verified) out << "(not verified: committed checkpoints were not read; run without --quick)\n";
  return out.str();
}

json listing_json(const CheckpointListing& listing) {
  json entries = json::array();
  json best = nullptr;
  for (const auto& entry : listing.entries) {
    json item = {{"name", entry.path.filename().string()},
                 {"path", entry.path.string()},
                 {"step", entry.step},
                 {"state", to_string(entry.state)},
                 {"bytes", entry.bytes},
                 {"latest", entry.latest},
                 {"best", entry.best.has_value()}};
    if (!entry.problem.empty()) item["problem"] = entry.problem;
    if (entry.best) best = *entry.best;
    entries.push_back(std::move(item));
  }
  return {{"directory", listing.directory.string()},
          {"latest", listing.latest ? json(*listing.latest) : json(nullptr)},
          {"best", best},
          {"verified", listing.verified},
          {"checkpoints", entries}};
}

VerifyReport verify_checkpoint_fully(const fs::path& checkpoint, const ModelSources& sources) {
  VerifyReport report;
  if (!fs::is_directory(checkpoint)) {
    report.problem = checkpoint.string() + ": not a directory (give a checkpoint directory, step_XXXXXXXX)";
    return report;
  }
  report.disk_bytes = disk_bytes(checkpoint);
  if (!verify_checkpoint(checkpoint, &report.problem)) return report;
  json meta;
  try {
    meta = load_checkpoint(checkpoint, {});
  } catch (const std::exception& e) {
    report.problem = e.what();
    return report;
  }
  report.step = meta.value("step", int64_t{0});
  report.ok = true;

  // The checksums say the files are whole; the model says whether they are complete.
  CheckpointModel model;
  try {
    model = build_model(checkpoint, sources);
  } catch (const StoredPathMissing& e) {
    // Without the model's files the checksums still stand.
    report.unmatched_reason = e.what();
    return report;
  } catch (const std::exception& e) {
    // Files asked for by flag must fit the checkpoint.
    if (!sources.model_path.empty() || !sources.data_path.empty()) {
      report.ok = false;
      report.problem = e.what();
    }
    report.unmatched_reason = e.what();
    return report;
  }
  try {
    torch::NoGradGuard no_grad;
    load_parameters(checkpoint, *model.task);
    int64_t tensors = 0, bytes = 0;
    for (auto& item : model.task->module().named_parameters()) {
      const at::Tensor& param = item.value();
      // The optimizer's moments, one parameter at a time: memory stays at the model's size.
      const auto options = param.options().dtype(torch::kFloat32).requires_grad(false);
      NamedTensors moments = {{"optim/exp_avg/" + item.key(), torch::empty(param.sizes(), options)},
                              {"optim/exp_avg_sq/" + item.key(), torch::empty(param.sizes(), options)}};
      load_checkpoint(checkpoint, moments);
      tensors += 3;
      bytes += static_cast<int64_t>(param.nbytes()) + 2 * static_cast<int64_t>(moments[0].second.nbytes());
    }
    report.tensors = tensors;
    report.tensor_bytes = bytes;
  } catch (const std::exception& e) {
    report.ok = false;
    report.problem = std::string(e.what()) + " (the model of " + model.config.model.path + ", " +
                     model.task->name() + ")";
  }
  return report;
}

ExportReport export_checkpoint(const fs::path& checkpoint, const fs::path& out_arg, const ModelSources& sources,
                               bool force) {
  const fs::path out = without_trailing_separator(out_arg);
  if (fs::exists(out)) {
    if (!fs::is_directory(out)) throw std::runtime_error(out.string() + ": exists and is not a directory");
    if (!fs::is_empty(out) && !force)
      throw std::runtime_error(out.string() + ": directory exists and is not empty; choose another or pass --force "
                                              "to replace it");
  }
  if (!fs::is_directory(checkpoint))
    throw std::runtime_error(checkpoint.string() + ": not a directory (give a checkpoint directory, step_XXXXXXXX)");

  // Streamed: each stored tensor read from the checkpoint as the file is written, so
  // the whole model is never in memory.
  CheckpointModel model = build_model(checkpoint, sources, /*skeleton=*/true);

  ExportReport report;
  report.step = model.meta.value("step", int64_t{0});
  report.family = model.task->family();
  report.task = model.task->name();

  // Written beside `out` (the same filesystem, so the rename is atomic), then renamed.
  fs::create_directories(out.parent_path());
  fs::path staging_path = out;
  staging_path += ".export.tmp";
  fs::remove_all(staging_path);  // left by an export that was killed
  StagingDirectory staging(staging_path);
  model.task->save_streamed(staging.path(), model::ExistingDirectory::refuse, [&](const std::string& name) {
    return read_checkpoint_tensor(checkpoint, "model/" + name);
  });
  for (const char* file : kTokenizerFiles) {
    const fs::path source = fs::path(model.config.model.path) / file;
    if (!fs::exists(source)) continue;
    fs::copy_file(source, staging.path() / file, fs::copy_options::overwrite_existing);
    data::fsync_path(staging.path() / file, false);
    report.tokenizer_files.push_back(file);
  }
  data::fsync_path(staging.path(), true);

  if (fs::exists(out) && !fs::is_empty(out)) {
    // A directory cannot be renamed over a non-empty one: the old one steps aside first,
    // so `out` is at every moment either the old export or the new one, or briefly absent.
    fs::path old = out;
    old += ".export.old";
    fs::remove_all(old);
    fs::rename(out, old);
    fs::rename(staging.path(), out);
    staging.release();
    fs::remove_all(old);
  } else {
    fs::rename(staging.path(), out);  // over an empty directory, or where there was none
    staging.release();
  }
  data::fsync_path(out.parent_path(), true);
  return report;
}

}  // namespace ftrain::launch
