#include <boost/test/unit_test.hpp>

#include "model/gpt2.h"

#include <fstream>
#include <optional>
#include <string>

#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_gpt2_config)

namespace fs = std::filesystem;
using ftrain::model::Gpt2Config;
using nlohmann::json;

namespace {

// config.json as transformers 5 writes it for GPT2Config(n_layer=2, n_embd=64,
// n_head=4, vocab_size=100, n_positions=32).
const char* kHuggingFaceConfig = R"({
  "activation_function": "gelu_new",
  "add_cross_attention": false,
  "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "dtype": "float32",
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_embd": 64,
  "n_head": 4,
  "n_inner": null,
  "n_layer": 2,
  "n_positions": 32,
  "pad_token_id": null,
  "reorder_and_upcast_attn": false,
  "resid_pdrop": 0.1,
  "scale_attn_by_inverse_layer_idx": false,
  "scale_attn_weights": true,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "tie_word_embeddings": true,
  "transformers_version": "5.23.0",
  "use_cache": true,
  "vocab_size": 100
})";

struct ConfigFile {
  fs::path dir;
  fs::path path;
  ConfigFile() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("ftrain_test_gpt2_config_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
    path = dir / "config.json";
  }
  ~ConfigFile() { fs::remove_all(dir); }

  void write(const std::string& text) const { std::ofstream(path) << text; }
  void write(const json& value) const { write(value.dump(2)); }
};

json base() { return json::parse(kHuggingFaceConfig); }

std::string error_of_file(const ConfigFile& file) {
  try {
    Gpt2Config::from_json_file(file.path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  BOOST_FAIL("expected a std::runtime_error for " << file.path);
  return {};
}

// A config.json with one key changed (or removed when `value` is absent) must be
// refused with an error naming the file and that key.
void check_refused(const std::string& key, const std::optional<json>& value, const std::string& fragment) {
  ConfigFile file;
  json config = base();
  if (value) config[key] = *value;
  else config.erase(key);
  file.write(config);
  const std::string message = error_of_file(file);
  BOOST_TEST_CONTEXT("key " << key << ", message: " << message) {
    BOOST_TEST(message.find(file.path.string()) != std::string::npos);
    BOOST_TEST(message.find(fragment) != std::string::npos);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(reads_a_hugging_face_config) {
  ConfigFile file;
  file.write(std::string(kHuggingFaceConfig));
  const Gpt2Config config = Gpt2Config::from_json_file(file.path);
  BOOST_TEST(config.vocab_size == 100);
  BOOST_TEST(config.n_positions == 32);
  BOOST_TEST(config.n_embd == 64);
  BOOST_TEST(config.n_layer == 2);
  BOOST_TEST(config.n_head == 4);
  BOOST_TEST(!config.n_inner.has_value());
  BOOST_TEST(config.inner_dim() == 256);
  BOOST_TEST(config.head_dim() == 16);
  BOOST_TEST(config.activation_function == "gelu_new");
  BOOST_TEST(config.layer_norm_epsilon == 1e-5);
  BOOST_TEST(config.tie_word_embeddings);
  // Keys that do not describe the architecture are carried unchanged.
  BOOST_TEST(config.extra.at("bos_token_id") == 50256);
  BOOST_TEST(config.extra.at("summary_type") == "cls_index");
  BOOST_TEST(!config.extra.contains("n_embd"));
  BOOST_TEST(!config.extra.contains("architectures"));
  BOOST_TEST(!config.extra.contains("dtype"));  // describes a file, written afresh on save
}

BOOST_AUTO_TEST_CASE(to_json_round_trips) {
  json input = base();
  input["n_inner"] = 96;
  input["tie_word_embeddings"] = false;
  input["activation_function"] = "gelu";
  input["scale_attn_by_inverse_layer_idx"] = true;
  const Gpt2Config config = Gpt2Config::from_json(input, "input");
  const json output = config.to_json();
  BOOST_TEST(output.at("model_type") == "gpt2");
  BOOST_TEST(output.at("architectures") == json::array({"GPT2LMHeadModel"}));
  for (const char* key : {"n_inner", "tie_word_embeddings", "activation_function", "scale_attn_by_inverse_layer_idx",
                          "vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "bos_token_id",
                          "layer_norm_epsilon", "resid_pdrop"})
    BOOST_TEST(output.at(key) == input.at(key), "key " << key);

  const Gpt2Config again = Gpt2Config::from_json(output, "output");
  BOOST_TEST(again.to_json() == output);
  BOOST_TEST(Gpt2Config::from_json(Gpt2Config{}.to_json(), "defaults").to_json() == Gpt2Config{}.to_json());
}

BOOST_AUTO_TEST_CASE(optional_keys_take_hugging_face_defaults) {
  json minimal = {{"model_type", "gpt2"}, {"vocab_size", 10}, {"n_positions", 8},
                  {"n_embd", 8},          {"n_layer", 1},     {"n_head", 2}};
  const Gpt2Config config = Gpt2Config::from_json(minimal, "minimal");
  const Gpt2Config defaults;
  BOOST_TEST(config.activation_function == defaults.activation_function);
  BOOST_TEST(config.layer_norm_epsilon == defaults.layer_norm_epsilon);
  BOOST_TEST(config.initializer_range == defaults.initializer_range);
  BOOST_TEST(config.attn_pdrop == defaults.attn_pdrop);
  BOOST_TEST(config.tie_word_embeddings);
  BOOST_TEST(config.scale_attn_weights);
  BOOST_TEST(config.extra.empty());
}

BOOST_AUTO_TEST_CASE(unreadable_files_are_named) {
  ConfigFile file;
  std::string message = error_of_file(file);
  BOOST_TEST(message.find(file.path.string() + ": file not found") != std::string::npos);

  file.write(std::string("{\"n_embd\": 64,"));
  message = error_of_file(file);
  BOOST_TEST(message.find(file.path.string() + ": not valid JSON") != std::string::npos);

  file.write(std::string("[1, 2]"));
  message = error_of_file(file);
  BOOST_TEST(message.find(file.path.string() + ": expected a JSON object") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(missing_keys_are_named) {
  for (const char* key : {"model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head"})
    check_refused(key, std::nullopt, std::string("key '") + key + "' is missing");
}

BOOST_AUTO_TEST_CASE(wrongly_typed_keys_are_named) {
  check_refused("n_head", json("4"), "key 'n_head' must be an integer, got \"4\"");
  check_refused("n_layer", json(2.5), "key 'n_layer' must be an integer, got 2.5");
  check_refused("n_positions", json(1e20), "key 'n_positions' must be an integer");
  check_refused("vocab_size", json(18446744073709551615ull), "key 'vocab_size' is too large");
  check_refused("n_inner", json("wide"), "key 'n_inner' must be an integer");
  check_refused("layer_norm_epsilon", json("small"), "key 'layer_norm_epsilon' must be a number");
  check_refused("tie_word_embeddings", json("yes"), "key 'tie_word_embeddings' must be true or false");
  check_refused("scale_attn_weights", json(1), "key 'scale_attn_weights' must be true or false");
  check_refused("activation_function", json(3), "key 'activation_function' must be a string");
}

BOOST_AUTO_TEST_CASE(invalid_values_are_named) {
  check_refused("model_type", json("llama"), "key 'model_type' is \"llama\"");
  check_refused("n_head", json(5), "key 'n_head' must divide n_embd: n_embd 64 is not a multiple of n_head 5");
  check_refused("n_head", json(0), "key 'n_head' must be positive");
  check_refused("vocab_size", json(-1), "key 'vocab_size' must be positive");
  check_refused("n_layer", json(0), "key 'n_layer' must be positive");
  check_refused("n_inner", json(0), "key 'n_inner' must be positive or null");
  check_refused("activation_function", json("relu"), "key 'activation_function' is 'relu'");
  check_refused("resid_pdrop", json(1.5), "key 'resid_pdrop' must be in [0, 1)");
  check_refused("attn_pdrop", json(-0.1), "key 'attn_pdrop' must be in [0, 1)");
  check_refused("layer_norm_epsilon", json(0.0), "key 'layer_norm_epsilon' must be positive");
  check_refused("add_cross_attention", json(true), "key 'add_cross_attention' is true");
}

BOOST_AUTO_TEST_CASE(the_model_validates_its_config) {
  Gpt2Config config;
  config.n_embd = 30;
  config.n_head = 4;
  try {
    ftrain::model::Gpt2 model(config);
    BOOST_FAIL("expected the model to refuse n_embd % n_head != 0");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("key 'n_head'") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()  // test_gpt2_config
