// ftrain-generate: continues a prompt with a causal language model loaded from a Hugging
// Face directory (a run's <run.dir>/final export, or any GPT-2, Llama, Mistral or Qwen2
// directory), greedily or by sampling (docs/generation.md). The tokenizer comes from
// the model directory or, for a final/ export, which holds none, from --tokenizer.
//
//   ftrain-generate --model runs/x/final --tokenizer models/base --prompt "Once upon a time" --temperature 0
//
// Prints the prompt followed by the continuation on stdout, and the token counts and
// speed on stderr.

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/causal_lm.h"
#include "model/generation.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;

namespace {

constexpr int kUsageError = 2;

struct GenerateOptions {
  fs::path model;
  fs::path tokenizer;  // directory holding the tokenizer files; defaults to model
  std::string prompt;
  std::string device = "cpu";
  int threads = 0;          // 0: LibTorch's default
  bool ignore_eos = false;  // generate max_new_tokens whatever the model emits
  ftrain::model::GenerationOptions generation;
};

// "max_new_tokens" -> "--max-new-tokens": the flag a GenerationOptions key is set by.
std::string flag_of(std::string_view key) {
  std::string flag = "--" + std::string(key);
  for (char& c : flag)
    if (c == '_') c = '-';
  return flag;
}

std::string read_prompt_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw po::error("--prompt-file: cannot read '" + path.string() + "'");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // An editor's final newline is not part of the prompt.
  if (text.ends_with("\r\n")) text.resize(text.size() - 2);
  else if (text.ends_with('\n')) text.pop_back();
  return text;
}

std::optional<GenerateOptions> parse_options(int argc, char** argv) {
  GenerateOptions options;
  ftrain::model::GenerationOptions& generation = options.generation;
  std::string model, tokenizer, prompt_file;
  po::options_description described(
      "ftrain-generate: continue a prompt with a causal language model (GPT-2, Llama, Mistral, Qwen2)\n\n"
      "Options");
  described.add_options()
      ("help,h", "print this help")
      ("model", po::value(&model)->required(),
       "Hugging Face model directory: config.json and model.safetensors (e.g. <run.dir>/final)")
      ("tokenizer", po::value(&tokenizer),
       "directory with the tokenizer (tokenizer.json, or vocab.json + merges.txt); default --model. A run's "
       "final/ holds no tokenizer: give the model.path the run started from")
      ("prompt", po::value(&options.prompt), "the text to continue")
      ("prompt-file", po::value(&prompt_file), "a file whose whole text (less a final newline) is the prompt")
      ("max-new-tokens", po::value(&generation.max_new_tokens)->default_value(generation.max_new_tokens),
       "tokens to generate at most")
      ("temperature", po::value(&generation.temperature)->default_value(generation.temperature),
       "divide the logits by this before sampling; 0 = greedy (always the most likely token)")
      ("top-k", po::value(&generation.top_k)->default_value(generation.top_k),
       "sample among the k most likely tokens only (0 = off)")
      ("top-p", po::value(&generation.top_p)->default_value(generation.top_p),
       "sample among the fewest most likely tokens whose probabilities add up to at least this (1 = off)")
      ("seed", po::value(&generation.seed)->default_value(generation.seed),
       "seed of the sampler: the same seed gives the same text")
      ("ignore-eos", po::bool_switch(&options.ignore_eos),
       "do not stop at the end-of-sequence token; always generate --max-new-tokens")
      ("device", po::value(&options.device)->default_value(options.device), "cpu, cuda or cuda:<index>")
      ("threads", po::value(&options.threads)->default_value(options.threads),
       "intra-op CPU threads (0 = LibTorch's default)");

  po::variables_map values;
  po::store(po::parse_command_line(argc, argv, described), values);
  if (values.count("help")) {
    std::cout << described << "\n"
              << "Example:\n  ftrain-generate --model runs/tiny/final --tokenizer configs/models/tiny-gpt2 --prompt \"Once upon a time\" "
                 "--temperature 0\n";
    return std::nullopt;
  }
  po::notify(values);

  options.model = model;
  if (!fs::is_directory(options.model)) throw po::error("--model: directory '" + model + "' not found");
  options.tokenizer = values.count("tokenizer") ? fs::path(tokenizer) : options.model;
  if (!fs::is_directory(options.tokenizer))
    throw po::error("--tokenizer: directory '" + options.tokenizer.string() + "' not found");
  if (values.count("prompt") == values.count("prompt-file"))
    throw po::error("give exactly one of --prompt and --prompt-file");
  if (values.count("prompt-file")) options.prompt = read_prompt_file(prompt_file);
  if (options.threads < 0) throw po::error("--threads must be >= 0, got " + std::to_string(options.threads));
  generation.validate(flag_of);
  return options;
}

// The tokens that end a sequence, as transformers' generate() finds them:
// generation_config.json's eos_token_id, else config.json's, else the tokenizer's.
// Each may be one id or a list (Llama 3 has several).
std::vector<int64_t> eos_ids_of(const fs::path& model_dir, const ftrain::data::Tokenizer& tokenizer) {
  for (const char* name : {"generation_config.json", "config.json"}) {
    const fs::path file = model_dir / name;
    std::ifstream in(file);
    if (!in) continue;
    nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!config.is_object() || !config.contains("eos_token_id") || config["eos_token_id"].is_null()) continue;
    const nlohmann::json& eos = config["eos_token_id"];
    std::vector<int64_t> ids;
    for (const nlohmann::json& id : eos.is_array() ? eos : nlohmann::json::array({eos})) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0)
        throw std::runtime_error(file.string() + ": key 'eos_token_id' must be a token id or a list of them, got " +
                                 eos.dump());
      ids.push_back(id.get<int64_t>());
    }
    return ids;
  }
  if (tokenizer.special_ids().eos) return {*tokenizer.special_ids().eos};
  return {};
}

int run(const GenerateOptions& options) {
  using namespace ftrain;
  if (options.threads > 0) torch::set_num_threads(options.threads);
  std::optional<torch::Device> device;
  try {
    device = torch::Device(options.device);
  } catch (const c10::Error&) {
    throw po::error("--device must be cpu, cuda or cuda:<index>, got '" + options.device + "'");
  }
  if (device->is_cuda() && !torch::cuda::is_available())
    throw po::error("--device " + options.device + ": CUDA is not available on this machine");

  std::unique_ptr<data::Tokenizer> tokenizer;
  try {
    tokenizer = data::load_tokenizer(options.tokenizer);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) +
                             (options.tokenizer == options.model
                                  ? " (a run's final/ has no tokenizer: give --tokenizer <the directory it started from>)"
                                  : ""));
  }
  model::CausalLm model = model::CausalLm::load(model::CausalLmOptions{.path = options.model, .split = {}});
  model.module().to(*device);

  model::GenerationOptions generation = options.generation;
  if (!options.ignore_eos) generation.eos_ids = eos_ids_of(options.model, *tokenizer);

  // The model's special tokens around the prompt as in training (<s> first for Llama).
  const std::vector<int32_t> prompt_ids = tokenizer->encode_with_specials(options.prompt).ids;
  if (prompt_ids.empty()) throw po::error("--prompt: the prompt is empty after tokenizing; give some text");
  const torch::Tensor prompt = torch::tensor(std::vector<int64_t>(prompt_ids.begin(), prompt_ids.end())).view({1, -1});

  const auto start = std::chrono::steady_clock::now();
  const torch::Tensor new_ids = model::generate(model, prompt, generation);  // (1, N)
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Decoding prompt and continuation together keeps characters whose bytes straddle the
  // two whole; the continuation is what follows the decoded prompt.
  std::vector<int32_t> all_ids = prompt_ids;
  for (int64_t i = 0; i < new_ids.size(1); ++i) all_ids.push_back(static_cast<int32_t>(new_ids[0][i].item<int64_t>()));
  const std::string prompt_text = tokenizer->decode(prompt_ids, /*skip_special_tokens=*/true);
  const std::string all_text = tokenizer->decode(all_ids, /*skip_special_tokens=*/true);
  const std::string continuation =
      all_text.starts_with(prompt_text)
          ? all_text.substr(prompt_text.size())
          : tokenizer->decode(std::span<const int32_t>(all_ids).subspan(prompt_ids.size()), true);

  std::cout << options.prompt << continuation << "\n" << std::flush;
  std::ostringstream summary;
  summary.precision(3);
  summary << "ftrain-generate: " << prompt_ids.size() << " prompt tokens, " << new_ids.size(1) << " new tokens in "
          << seconds << " s (" << static_cast<double>(new_ids.size(1)) / std::max(seconds, 1e-9) << " tokens/s)\n";
  std::cerr << summary.str();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<GenerateOptions> options;
  try {
    options = parse_options(argc, argv);
    if (!options) return 0;  // --help
  } catch (const std::exception& error) {  // po::error, and option values GenerationOptions refuses
    std::cerr << "ftrain-generate: " << error.what() << "\nRun ftrain-generate --help for the options.\n";
    return kUsageError;
  }
  try {
    return run(*options);
  } catch (const po::error& error) {
    std::cerr << "ftrain-generate: " << error.what() << "\nRun ftrain-generate --help for the options.\n";
    return kUsageError;
  } catch (const std::exception& error) {
    std::cerr << "ftrain-generate: error: " << error.what() << "\n";
    return 1;
  }
}
