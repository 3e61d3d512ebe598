#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "launch/options.h"

BOOST_AUTO_TEST_SUITE(test_options)

namespace fs = std::filesystem;
using ftrain::launch::Config;

namespace {

struct Args {
  std::vector<std::string> words;
  std::vector<const char*> argv() const {
    std::vector<const char*> out{"ftrain"};
    for (const auto& w : words) out.push_back(w.c_str());
    return out;
  }
};

bool parse(const std::vector<std::string>& words, Config& config, std::string* help = nullptr) {
  Args args{words};
  auto argv = args.argv();
  std::string help_text;
  bool ok = ftrain::launch::parse_config(static_cast<int>(argv.size()), argv.data(), config, help_text);
  if (help) *help = help_text;
  return ok;
}

fs::path write_ini(const std::string& name, const std::string& text) {
  fs::path path = fs::temp_directory_path() / ("ftrain_test_options_" + name + ".ini");
  std::ofstream(path) << text;
  return path;
}

const std::string kMinimal = "[run]\ndir = /tmp/run\n[model]\npath = /tmp/model\n[data]\npath = /tmp/d.h5\n";

// The error message of parsing `words`, or "" if it parsed.
std::string error_of(const std::vector<std::string>& words) {
  Config config;
  try {
    parse(words, config);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

BOOST_AUTO_TEST_CASE(ini_sections_are_option_prefixes_and_command_line_wins) {
  auto ini = write_ini("prefix", kMinimal + "[optim]\nlr = 1e-3\nwarmup_steps = 5\n[train]\nsteps = 50\n");
  Config config;
  BOOST_REQUIRE(parse({"--config", ini.string(), "--optim.lr=2e-4", "--dist.tp", "1"}, config));
  BOOST_TEST(config.optim.lr == 2e-4);
  BOOST_TEST(config.optim.warmup_steps == 5);
  BOOST_TEST(config.train.steps == 50);
  BOOST_TEST(config.run.dir == "/tmp/run");
  BOOST_TEST(config.data.micro_batch_size == 8);  // default kept
  BOOST_TEST(config.resolved_ini.find("[optim]\nlr = 0.0002\n") != std::string::npos);
  BOOST_TEST(config.resolved_ini.find("warmup_steps = 5") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(unknown_key_is_an_error_naming_the_key_and_file) {
  auto ini = write_ini("unknown", kMinimal + "[optim]\nlrr = 1e-3\n");
  const std::string error = error_of({"--config", ini.string()});
  BOOST_TEST(error.rfind(ini.string() + ": optim.lrr: no such option", 0) == 0, error);
  const std::string cli_error = error_of({"--config", write_ini("ok", kMinimal).string(), "--train.stepz=3"});
  BOOST_TEST(cli_error.rfind("command line: train.stepz: no such option", 0) == 0, cli_error);
}

BOOST_AUTO_TEST_CASE(malformed_value_names_the_key) {
  auto ini = write_ini("malformed", kMinimal + "[optim]\nlr = fast\n");
  const std::string error = error_of({"--config", ini.string()});
  BOOST_TEST(error == ini.string() + ": optim.lr: invalid value 'fast'", error);
  const std::string bool_error = error_of({"--config", write_ini("ok2", kMinimal).string(), "--data.shuffle=maybe"});
  BOOST_TEST(bool_error.rfind("command line: data.shuffle: invalid value 'maybe'. Valid choices", 0) == 0, bool_error);
  const std::string twice = error_of({"--config", write_ini("ok3", kMinimal).string(), "--optim.lr=1", "--optim.lr=2"});
  BOOST_TEST(twice == "command line: optim.lr: given more than once", twice);
}

BOOST_AUTO_TEST_CASE(missing_config_file_and_required_keys) {
  const std::string missing = error_of({"--config", "/nonexistent/x.ini"});
  BOOST_TEST(missing.find("/nonexistent/x.ini") != std::string::npos, missing);
  const std::string no_dir = error_of({"--model.path=/m", "--data.path=/d.h5"});
  BOOST_TEST(no_dir.find("run.dir") != std::string::npos, no_dir);
  const std::string no_model = error_of({"--run.dir=/r", "--data.path=/d.h5"});
  BOOST_TEST(no_model.find("model.path") != std::string::npos, no_model);
}

BOOST_AUTO_TEST_CASE(inconsistent_combinations_name_the_key) {
  const std::string base = write_ini("base", kMinimal).string();
  auto check = [&](const std::vector<std::string>& extra, const std::string& key) {
    std::vector<std::string> words{"--config", base};
    words.insert(words.end(), extra.begin(), extra.end());
    const std::string error = error_of(words);
    BOOST_TEST(error.find(key) != std::string::npos, "expected '" << key << "' in: " << error);
  };
  check({"--optim.min_lr=1", "--optim.lr=1e-3"}, "optim.min_lr");
  check({"--optim.warmup_steps=500", "--train.steps=100"}, "optim.warmup_steps");
  check({"--train.global_batch_size=12", "--data.micro_batch_size=8"}, "train.global_batch_size");
  check({"--model.init=magic"}, "model.init");
  check({"--optim.decay=step"}, "optim.decay");
  check({"--dist.tp=0"}, "dist.tp");
  check({"--dist.device=tpu"}, "dist.device");
  check({"--dist.zero=4"}, "dist.zero");
  check({"--train.precision=fp8"}, "train.precision");
  check({"--data.packing=packed"}, "data.packing");
  check({"--run.host_memory=free"}, "run.host_memory");
  check({"--train.reduce_dtype=fp16"}, "train.reduce_dtype");
  check({"--train.steps=0"}, "train.steps");
  check({"--run.profile_from=-1"}, "run.profile_from");
  check({"--run.profile_from=2", "--run.profile_steps=0"}, "run.profile_steps");

}

namespace {

// The error of validate_for, or "" if the options fit the layout and the dataset.
std::string error_for(const Config& config, int world_size, int tp, const ftrain::data::DatasetInfo& dataset) {
  try {
    ftrain::launch::validate_for(config, ftrain::dist::Layout::make(world_size, tp), dataset);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

ftrain::data::DatasetInfo dataset_of(const std::string& task, std::vector<std::string> labels = {}) {
  ftrain::data::DatasetInfo info;
  info.task = task;
  info.seq_len = 30;
  info.label_names = std::move(labels);
  return info;
}

}  // namespace

// The checks that need the layout or the dataset, in the same error format, naming
// where the key was set.
BOOST_AUTO_TEST_CASE(options_are_checked_against_the_layout_and_the_dataset) {
  const std::string base = write_ini("layout", kMinimal + "[train]\nglobal_batch_size = 16\n").string();
  const auto lm = dataset_of("causal_lm");
  Config config;
  // Each parse starts from the defaults.
  auto parsed = [&](std::vector<std::string> words) {
    words.insert(words.begin(), {"--config", base, "--data.micro_batch_size=4"});
    config = Config();
    return parse(words, config);
  };
  BOOST_REQUIRE(parsed({}));
  BOOST_TEST(error_for(config, 4, 1, lm) == "");
  BOOST_TEST(error_for(config, 8, 2, lm) == "");
  const std::string batch = error_for(config, 3, 1, lm);
  BOOST_TEST(batch.rfind(base + ": train.global_batch_size: (16) must be a multiple of", 0) == 0, batch);

  BOOST_REQUIRE(parsed({"--dist.sequence_parallel=true"}));
  BOOST_TEST(error_for(config, 3, 3, lm) == "");  // 30 tokens split 3 ways
  const std::string sequence = error_for(config, 4, 4, lm);
  BOOST_TEST(sequence.rfind("command line: dist.sequence_parallel: ", 0) == 0, sequence);
  BOOST_TEST(sequence.find("30 tokens") != std::string::npos, sequence);

  // data.packing against what the dataset's attributes say of its rows.
  auto documents = lm, instructions = lm;
  documents.format_version = ftrain::data::format::kVersionPackedDocuments;
  documents.pad_id = instructions.pad_id = 0;  // lm: causal, unpadded, so concatenated
  const auto sentiment_rows = dataset_of("sequence_classification", {"neg", "pos"});
  const std::vector<const ftrain::data::DatasetInfo*> datasets = {&lm, &documents, &instructions, &sentiment_rows};
  for (const auto* dataset : datasets) BOOST_TEST(error_for(config, 4, 1, *dataset) == "");  // auto takes any
  const std::map<std::string, std::vector<const ftrain::data::DatasetInfo*>> fitting = {
      {"documents", {&documents}}, {"concatenate", {&lm}}, {"none", {&instructions, &sentiment_rows}}};
  for (const auto& [packing, fits] : fitting) {
    BOOST_REQUIRE(parsed({"--data.packing=" + packing}));
    for (const auto* dataset : datasets) {
      const std::string error = error_for(config, 4, 1, *dataset);
      if (std::find(fits.begin(), fits.end(), dataset) != fits.end()) {
        BOOST_TEST(error == "", packing + ": " + error);
      } else {
        BOOST_TEST(error.rfind("command line: data.packing: is " + packing + ", but ", 0) == 0, error);
        BOOST_TEST(error.find("ftrain-prep --packing " + packing) != std::string::npos, error);
      }
    }
  }

  BOOST_REQUIRE(parsed({"--train.freeze_base_steps=2"}));
  BOOST_TEST(error_for(config, 1, 1, lm).rfind("command line: train.freeze_base_steps: ", 0) == 0);
  BOOST_TEST(error_for(config, 1, 1, dataset_of("sequence_classification", {"neg", "pos"})) == "");

  const auto sentiment = dataset_of("sequence_classification", {"neg", "pos"});
  const auto bio = dataset_of("token_classification", {"O", "B-PER", "I-PER"});
  const auto pos_tags = dataset_of("token_classification", {"NOUN", "VERB"});
  for (const std::string metric : {"accuracy", "macro_f1", "loss", "perplexity"}) {
    BOOST_REQUIRE(parsed({"--train.eval_metric=" + metric}));
    const bool classification = metric != "perplexity", lm_metric = metric == "loss" || metric == "perplexity";
    BOOST_TEST(error_for(config, 1, 1, sentiment).empty() == classification, metric);
    BOOST_TEST(error_for(config, 1, 1, bio).empty() == classification, metric);
    BOOST_TEST(error_for(config, 1, 1, lm).empty() == lm_metric, metric);
  }
  BOOST_REQUIRE(parsed({"--train.eval_metric=entity_f1"}));
  BOOST_TEST(error_for(config, 1, 1, bio) == "");
  const std::string not_bio = error_for(config, 1, 1, pos_tags);
  BOOST_TEST(not_bio.rfind("command line: train.eval_metric: entity_f1 needs BIO tags", 0) == 0, not_bio);
  const std::string not_tokens = error_for(config, 1, 1, sentiment);
  BOOST_TEST(not_tokens.rfind("command line: train.eval_metric: 'entity_f1' is not measured for sequence_classification",
                              0) == 0, not_tokens);
  BOOST_TEST(not_tokens.find("choose one of loss, accuracy, macro_f1") != std::string::npos, not_tokens);
}

// One error format: "<file or command line>: <section.key>: <what is wrong>", naming
// where the offending value was set.
BOOST_AUTO_TEST_CASE(errors_name_where_the_key_was_set) {
  const fs::path ini = write_ini("where", kMinimal + "[dist]\nzero = 5\n");
  const std::string from_file = error_of({"--config", ini.string()});
  BOOST_TEST(from_file.rfind(ini.string() + ": dist.zero: ", 0) == 0, from_file);
  const std::string from_flag = error_of({"--config", ini.string(), "--dist.zero=0", "--dist.tp=0"});
  BOOST_TEST(from_flag.rfind("command line: dist.tp: ", 0) == 0, from_flag);
  const std::string precision = error_of({"--config", ini.string(), "--dist.zero=1", "--train.precision=fp8"});
  BOOST_TEST(precision.rfind("command line: train.precision: ", 0) == 0, precision);
}

BOOST_AUTO_TEST_CASE(help_lists_every_section_with_defaults) {
  Config config;
  std::string help;
  BOOST_TEST(!parse({"--help"}, config, &help));
  for (const char* expected : {"[run]", "[model]", "[data]", "[train]", "[optim]", "[checkpoint]", "[dist]",
                               "--optim.lr", "(=0.0003)", "--data.micro_batch_size", "per rank",
                               "--train.global_batch_size", "--dist.tp"})
    BOOST_TEST(help.find(expected) != std::string::npos, "help lacks " << expected);
}

BOOST_AUTO_TEST_CASE(resume_shorthand) {
  const std::string base = write_ini("resume", kMinimal).string();
  Config bare;
  BOOST_REQUIRE(parse({"--config", base, "--resume"}, bare));
  BOOST_TEST(bare.run.resume == "auto");
  Config path;
  BOOST_REQUIRE(parse({"--config", base, "--resume=/ckpt/step_00000010"}, path));
  BOOST_TEST(path.run.resume == "/ckpt/step_00000010");
  Config fresh;
  BOOST_REQUIRE(parse({"--config", base}, fresh));
  BOOST_TEST(fresh.run.resume == "none");
  const std::string error = error_of({"--config", base, "--resume", "--run.resume=none"});
  BOOST_TEST(error.find("resume") != std::string::npos, error);
}

// Every shipped configuration parses and validates (paths are not checked here).
BOOST_AUTO_TEST_CASE(shipped_configs_are_valid) {
  const char* source = std::getenv("FTRAIN_SOURCE_DIR");
  BOOST_REQUIRE_MESSAGE(source, "FTRAIN_SOURCE_DIR is set by ctest");
  int seen = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(source) / "configs")) {
    if (entry.path().extension() != ".ini") continue;
    Config config;
    BOOST_CHECK_NO_THROW(parse({"--config", entry.path().string()}, config));
    ++seen;
  }
  BOOST_TEST(seen >= 4);
}

BOOST_AUTO_TEST_CASE(an_empty_value_on_the_command_line_is_an_empty_value) {
  // --train.test_split= turns the test split off, as `test_split =` does in a file.
  auto ini = write_ini("empty", kMinimal);
  Config config;
  BOOST_REQUIRE(parse({"--config", ini.string(), "--train.test_split=", "--train.steps=9"}, config));
  BOOST_TEST(config.train.test_split.empty());
  BOOST_TEST(config.train.steps == 9);
  // An empty number is still refused, naming the key.
  BOOST_TEST(error_of({"--config", ini.string(), "--optim.lr="}).find("optim.lr") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(resolved_ini_reads_back_as_the_same_config) {
  // What a checkpoint stores is enough to rebuild the run's configuration.
  auto ini = write_ini("resolved", kMinimal + "[train]\nsteps = 7\ntest_split =\n[checkpoint]\nexport_hf = false\n");
  Config original;
  BOOST_REQUIRE(parse({"--config", ini.string(), "--optim.lr=2e-4", "--run.host_memory=release"}, original));
  const Config rebuilt = ftrain::launch::parse_config_text(original.resolved_ini, "checkpoint step_7");
  BOOST_TEST(rebuilt.resolved_ini == original.resolved_ini);
  BOOST_TEST((rebuilt.run.host_memory == ftrain::launch::HostMemory::release));
  BOOST_TEST(rebuilt.train.steps == 7);
  BOOST_TEST(rebuilt.train.test_split.empty());
  BOOST_TEST(!rebuilt.checkpoint.export_hf);
  BOOST_TEST(rebuilt.optim.lr == 2e-4);

  std::string error;
  try {
    ftrain::launch::parse_config_text(original.resolved_ini + "[train]\nbogus = 1\n", "checkpoint step_7");
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  BOOST_TEST(error.find("checkpoint step_7") != std::string::npos);
  BOOST_TEST(error.find("train.bogus") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()  // test_options
