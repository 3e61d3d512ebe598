// ftrain-ckpt: lists, verifies and exports the checkpoints of a run, without MPI and
// without a GPU (docs/checkpoint-tool.md).
//
//   ftrain-ckpt list runs/x
//   ftrain-ckpt verify runs/x/checkpoints/step_00000100
//   ftrain-ckpt export runs/x/checkpoints/step_00000100 models/x-step100
//
// Exit status: 0 done, 1 a problem with a checkpoint or a file, 2 a usage error.

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "launch/checkpoint/store.h"
#include "launch/checkpoint/tool.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;
using ftrain::launch::CheckpointState;

namespace {

constexpr int kProblem = 1;
constexpr int kUsageError = 2;

constexpr const char* kOverview =
    "ftrain-ckpt: list, verify and export the checkpoints of an ftrain run\n"
    "\n"
    "usage:\n"
    "  ftrain-ckpt list RUN_DIR|CHECKPOINTS_DIR [--json] [--quick] [--strict]\n"
    "  ftrain-ckpt verify CHECKPOINT_DIR [--model-path DIR] [--data-path FILE]\n"
    "  ftrain-ckpt export CHECKPOINT_DIR OUT_DIR [--model-path DIR] [--data-path FILE] [--force]\n"
    "  ftrain-ckpt COMMAND --help\n"
    "\n"
    "  list    one line per checkpoint directory: step, state (valid, CORRUPT, uncommitted, set aside),\n"
    "          size on disk, and which is latest and best\n"
    "  verify  read a checkpoint whole, check every checksum and that it holds every tensor its model needs\n"
    "  export  write a checkpoint's model as a Hugging Face directory, as the run's final/ is written\n"
    "\n"
    "Exit status: 0 done, 1 a problem with a checkpoint or file, 2 a usage error.\n";

struct Command {
  std::string name;
  std::string usage;  // its first line is the synopsis
  po::options_description options{"Options"};
  po::options_description hidden;
  po::positional_options_description positional;
  std::vector<std::pair<std::string, std::string>> operands;  // hidden option, as the synopsis names it
};

// Parses `args` for one command. Returns false when --help was asked for (printed).
// Throws po::error prefixed by the command and followed by its synopsis.
bool parse(const std::vector<std::string>& args, Command& command, po::variables_map& values) {
  po::options_description all;
  all.add(command.options).add(command.hidden);
  try {
    po::store(po::command_line_parser(args).options(all).positional(command.positional).run(), values);
    if (values.count("help")) {
      std::cout << command.usage << "\n\n" << command.options << "\n";
      return false;
    }
    for (const auto& [option, operand] : command.operands)
      if (!values.count(option)) throw po::error("missing " + operand);
    po::notify(values);
  } catch (const po::error& error) {
    throw po::error(command.name + ": " + error.what() + "\n" + command.usage.substr(0, command.usage.find('\n')));
  }
  return true;
}

int list(const std::vector<std::string>& args) {
  std::string dir;
  bool as_json = false, quick = false, strict = false;
  Command command;
  command.usage =
      "usage: ftrain-ckpt list RUN_DIR|CHECKPOINTS_DIR [options]\n\n"
      "One line per checkpoint directory (step_XXXXXXXX, and .tmp ones being written or left by a save that never\n"
      "finished, and .stale ones set aside by a resume): its step, state, size on disk, and marks: latest (named\n"
      "by the `latest` file) and best (with its validation metric). Committed checkpoints are read whole and\n"
      "their checksums checked: valid or CORRUPT with the problem. Exits 0 whatever the states, unless --strict.";
  command.options.add_options()
      ("help,h", "print this help")
      ("json", po::bool_switch(&as_json), "print the listing as JSON")
      ("quick", po::bool_switch(&quick), "do not read committed checkpoints (state 'committed', not verified)")
      ("strict", po::bool_switch(&strict), "exit 1 unless the latest checkpoint is committed and valid");
  command.name = "list";
  command.hidden.add_options()("dir", po::value(&dir), "run or checkpoints directory");
  command.positional.add("dir", 1);
  command.operands = {{"dir", "RUN_DIR|CHECKPOINTS_DIR"}};
  po::variables_map values;
  if (!parse(args, command, values)) return 0;

  const auto listing = ftrain::launch::list_checkpoints(dir, !quick);
  if (as_json) std::cout << ftrain::launch::listing_json(listing).dump(2) << "\n";
  else std::cout << ftrain::launch::format_listing(listing);
  if (!strict) return 0;

  const auto latest = std::find_if(listing.entries.begin(), listing.entries.end(),
                                   [](const auto& entry) { return entry.latest; });
  std::string problem;
  if (latest == listing.entries.end())
    problem = listing.latest ? "'latest' names " + *listing.latest + ", which is not a committed checkpoint"
                             : "there is no committed checkpoint ('latest' is missing)";
  else if (latest->state == CheckpointState::corrupt)
    problem = latest->path.filename().string() + " is CORRUPT: " + latest->problem;
  else if (latest->state == CheckpointState::committed && !ftrain::launch::verify_checkpoint(latest->path, &problem))
    problem = latest->path.filename().string() + " is CORRUPT: " + problem;
  if (problem.empty()) return 0;
  std::cerr << "ftrain-ckpt: --strict: in " << listing.directory.string() << ", " << problem << "\n";
  return kProblem;
}

void add_model_sources(Command& command, ftrain::launch::ModelSources& sources) {
  command.options.add_options()
      ("model-path", po::value(&sources.model_path),
       "Hugging Face model directory with the model's config.json and tokenizer (default: model.path of the "
       "checkpoint's stored configuration; only config.json and the tokenizer are read)")
      ("data-path", po::value(&sources.data_path),
       "dataset the run trained on, for its task and label names (default: data.path of the stored configuration)");
}

int verify(const std::vector<std::string>& args) {
  std::string checkpoint;
  ftrain::launch::ModelSources sources;
  Command command;
  command.usage =
      "usage: ftrain-ckpt verify CHECKPOINT_DIR [options]\n\n"
      "Reads the whole checkpoint and checks every checksum; then, when the model it was saved from can be built\n"
      "(model.path and data.path of its stored configuration), loads every tensor that model needs (parameters\n"
      "and AdamW moments) in its global shape. Prints 'ok: step N, T tensors, B bytes' and exits 0, or names the\n"
      "file and tensor at fault and exits 1.";
  command.options.add_options()("help,h", "print this help");
  add_model_sources(command, sources);
  command.name = "verify";
  command.hidden.add_options()("checkpoint", po::value(&checkpoint), "checkpoint directory");
  command.positional.add("checkpoint", 1);
  command.operands = {{"checkpoint", "CHECKPOINT_DIR"}};
  po::variables_map values;
  if (!parse(args, command, values)) return 0;

  const auto report = ftrain::launch::verify_checkpoint_fully(checkpoint, sources);
  if (!report.ok) {
    std::cerr << "ftrain-ckpt: " << checkpoint << " is not valid: " << report.problem << "\n";
    return kProblem;
  }
  if (report.tensors)
    std::cout << "ok: step " << report.step << ", " << *report.tensors << " tensors, " << report.tensor_bytes
              << " bytes\n";
  else
    std::cout << "ok: step " << report.step << ", every checksum matches, " << report.disk_bytes
              << " bytes on disk; tensors not matched against the model: " << report.unmatched_reason << "\n";
  return 0;
}

int export_model(const std::vector<std::string>& args) {
  std::string checkpoint, out;
  bool force = false;
  ftrain::launch::ModelSources sources;
  Command command;
  command.usage =
      "usage: ftrain-ckpt export CHECKPOINT_DIR OUT_DIR [options]\n\n"
      "Writes the checkpoint's model to OUT_DIR as a Hugging Face directory, as the run writes its final/:\n"
      "config.json, model.safetensors (label names in config.json for classifiers) and the tokenizer files of\n"
      "model.path. The model is rebuilt from the checkpoint's stored configuration on the CPU, unsplit, whatever\n"
      "layout the run had. OUT_DIR appears complete or not at all; a non-empty one is replaced only with --force.";
  command.options.add_options()("help,h", "print this help")(
      "force", po::bool_switch(&force), "replace OUT_DIR if it exists and is not empty");
  add_model_sources(command, sources);
  command.name = "export";
  command.hidden.add_options()("checkpoint", po::value(&checkpoint), "checkpoint directory")(
      "out", po::value(&out), "output directory");
  command.positional.add("checkpoint", 1).add("out", 1);
  command.operands = {{"checkpoint", "CHECKPOINT_DIR"}, {"out", "OUT_DIR"}};
  po::variables_map values;
  if (!parse(args, command, values)) return 0;

  const auto report = ftrain::launch::export_checkpoint(checkpoint, out, sources, force);
  std::cout << "exported step " << report.step << " (" << report.family << " " << report.task << ") from "
            << checkpoint << " to " << out;
  if (report.tokenizer_files.empty()) {
    std::cout << "; model.path has no tokenizer files to copy\n";
  } else {
    std::cout << " with";
    for (const auto& file : report.tokenizer_files) std::cout << " " << file;
    std::cout << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << kOverview;
    return kUsageError;
  }
  const std::string command = args.front();
  args.erase(args.begin());
  try {
    if (command == "--help" || command == "-h" || command == "help") {
      std::cout << kOverview;
      return 0;
    }
    if (command == "list") return list(args);
    if (command == "verify") return verify(args);
    if (command == "export") return export_model(args);
    throw po::error("unknown command '" + command + "' (list, verify or export)");
  } catch (const po::error& error) {
    std::cerr << "ftrain-ckpt: " << error.what() << "\nRun ftrain-ckpt --help for the commands, or ftrain-ckpt "
              << "COMMAND --help for a command's options.\n";
    return kUsageError;
  } catch (const std::exception& error) {
    std::cerr << "ftrain-ckpt: error: " << error.what() << "\n";
    return kProblem;
  }
}
