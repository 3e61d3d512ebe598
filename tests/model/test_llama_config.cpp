#include <boost/test/unit_test.hpp>

#include "model/llama.h"

#include <fstream>
#include <optional>
#include <string>

#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_llama_config)

namespace fs = std::filesystem;
using ftrain::model::LlamaConfig;
using ftrain::model::RopeScaling;
using nlohmann::json;

namespace {

// config.json as transformers 5 writes it for LlamaConfig(hidden_size=64,
// num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
// intermediate_size=96, vocab_size=100, rope_parameters=<llama3>).
const char* kHuggingFaceConfig = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "dtype": "float32",
  "eos_token_id": 2,
  "head_dim": 16,
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 96,
  "max_position_embeddings": 2048,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "pad_token_id": null,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 16,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "tie_word_embeddings": false,
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
          ("ftrain_test_llama_config_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
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
    LlamaConfig::from_json_file(file.path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  BOOST_FAIL("expected a std::runtime_error for " << file.path);
  return {};
}

// `config` must be refused with an error naming the file and containing `fragment`
// (which names the key).
void check_refused(const json& config, const std::string& fragment) {
  ConfigFile file;
  file.write(config);
  const std::string message = error_of_file(file);
  BOOST_TEST_CONTEXT("config " << config.dump() << "\nmessage: " << message) {
    BOOST_TEST(message.find(file.path.string() + ": ") == 0);
    BOOST_TEST(message.find(fragment) != std::string::npos);
  }
}

// The base config with one key changed (or removed when `value` is absent).
void check_refused(const std::string& key, const std::optional<json>& value, const std::string& fragment) {
  json config = base();
  if (value) config[key] = *value;
  else config.erase(key);
  check_refused(config, fragment);
}

// The base config with its rotary settings replaced by rope_scaling = `scaling`.
json with_rope_scaling(const json& scaling) {
  json config = base();
  config.erase("rope_parameters");
  config["rope_theta"] = 10000.0;
  config["rope_scaling"] = scaling;
  return config;
}

}  // namespace

BOOST_AUTO_TEST_CASE(reads_a_hugging_face_config) {
  ConfigFile file;
  file.write(std::string(kHuggingFaceConfig));
  const LlamaConfig config = LlamaConfig::from_json_file(file.path);
  BOOST_TEST(config.model_type == "llama");
  BOOST_TEST(config.vocab_size == 100);
  BOOST_TEST(config.hidden_size == 64);
  BOOST_TEST(config.intermediate_size == 96);
  BOOST_TEST(config.num_hidden_layers == 2);
  BOOST_TEST(config.num_attention_heads == 4);
  BOOST_TEST(config.num_key_value_heads == 2);
  BOOST_TEST(config.head_size() == 16);
  BOOST_TEST(config.max_position_embeddings == 2048);
  BOOST_TEST(config.rms_norm_eps == 1e-5);
  BOOST_TEST(config.rope_theta == 500000.0);
  BOOST_REQUIRE(config.rope_scaling.has_value());
  BOOST_TEST(config.rope_scaling->rope_type == "llama3");
  BOOST_TEST(config.rope_scaling->factor == 8.0);
  BOOST_TEST(config.rope_scaling->low_freq_factor == 1.0);
  BOOST_TEST(config.rope_scaling->high_freq_factor == 4.0);
  BOOST_TEST(config.rope_scaling->original_max_position_embeddings.value_or(-1) == 16);
  BOOST_TEST(!config.tie_word_embeddings);
  BOOST_TEST(!config.pad_token_id.has_value());
  BOOST_TEST(!config.qkv_bias());
  BOOST_TEST(!config.o_bias());
  BOOST_TEST(!config.attention_window(0).has_value());
  // Keys that do not describe the architecture are carried unchanged.
  BOOST_TEST(config.extra.at("bos_token_id") == 1);
  BOOST_TEST(config.extra.at("pretraining_tp") == 1);
  BOOST_TEST(config.extra.at("use_cache") == true);
  for (const char* key : {"hidden_size", "rope_parameters", "architectures", "dtype", "pad_token_id"})
    BOOST_TEST(!config.extra.contains(key), key);
}

BOOST_AUTO_TEST_CASE(reads_the_transformers_4_rope_spelling) {
  json config = with_rope_scaling({{"type", "linear"}, {"factor", 2.0}});
  config["rope_theta"] = 20000.0;
  const LlamaConfig linear = LlamaConfig::from_json(config, "v4");
  BOOST_TEST(linear.rope_theta == 20000.0);
  BOOST_REQUIRE(linear.rope_scaling.has_value());
  BOOST_TEST(linear.rope_scaling->rope_type == "linear");
  BOOST_TEST(linear.rope_scaling->factor == 2.0);

  config["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 3.0}};
  const LlamaConfig dynamic = LlamaConfig::from_json(config, "v4");
  BOOST_TEST(dynamic.rope_scaling->rope_type == "dynamic");

  // llama3 without original_max_position_embeddings takes max_position_embeddings.
  config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}};
  const LlamaConfig llama3 = LlamaConfig::from_json(config, "v4");
  BOOST_TEST(llama3.rope_scaling->original_max_position_embeddings.value_or(-1) == 2048);

  config["rope_scaling"] = nullptr;
  const LlamaConfig plain = LlamaConfig::from_json(config, "v4");
  BOOST_TEST(!plain.rope_scaling.has_value());
  BOOST_TEST(plain.rope_theta == 20000.0);

  // Neither spelling: theta 10000, no scaling.
  config.erase("rope_scaling");
  config.erase("rope_theta");
  const LlamaConfig defaults = LlamaConfig::from_json(config, "none");
  BOOST_TEST(defaults.rope_theta == 10000.0);
  BOOST_TEST(!defaults.rope_scaling.has_value());
}

BOOST_AUTO_TEST_CASE(to_json_round_trips_and_writes_both_rope_spellings) {
  json input = base();
  input["tie_word_embeddings"] = true;
  input["attention_bias"] = true;
  input["pad_token_id"] = 0;
  const LlamaConfig config = LlamaConfig::from_json(input, "input");
  const json output = config.to_json();
  BOOST_TEST(output.at("model_type") == "llama");
  BOOST_TEST(output.at("architectures") == json::array({"LlamaForCausalLM"}));
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "tie_word_embeddings", "attention_bias", "mlp_bias",
                          "pad_token_id", "bos_token_id", "rms_norm_eps", "max_position_embeddings", "use_cache"})
    BOOST_TEST(output.at(key) == input.at(key), "key " << key);
  BOOST_TEST(output.at("rope_parameters") == input.at("rope_parameters"));
  BOOST_TEST(output.at("rope_theta") == 500000.0);
  json scaling = input.at("rope_parameters");
  scaling.erase("rope_theta");
  BOOST_TEST(output.at("rope_scaling") == scaling);

  const LlamaConfig again = LlamaConfig::from_json(output, "output");
  BOOST_TEST(again.to_json() == output);
  for (const LlamaConfig& fresh : {LlamaConfig{}, [] {
                                     LlamaConfig c;
                                     c.model_type = "qwen2";
                                     c.layer_types.assign(32, "full_attention");
                                     return c;
                                   }()})
    BOOST_TEST(LlamaConfig::from_json(fresh.to_json(), "defaults").to_json() == fresh.to_json());
}

BOOST_AUTO_TEST_CASE(mistral_and_qwen2_take_their_own_defaults) {
  json minimal = {{"vocab_size", 10}, {"hidden_size", 64}, {"intermediate_size", 32},
                  {"num_hidden_layers", 3}, {"num_attention_heads", 32}};
  minimal["model_type"] = "mistral";
  const LlamaConfig mistral = LlamaConfig::from_json(minimal, "mistral");
  BOOST_TEST(mistral.num_key_value_heads == 8);
  BOOST_TEST(mistral.max_position_embeddings == 131072);
  BOOST_TEST(mistral.attention_window(2).value_or(-1) == 4096);
  BOOST_TEST(!mistral.qkv_bias());
  BOOST_TEST(mistral.to_json().at("architectures") == json::array({"MistralForCausalLM"}));

  minimal["model_type"] = "qwen2";
  const LlamaConfig qwen2 = LlamaConfig::from_json(minimal, "qwen2");
  BOOST_TEST(qwen2.num_key_value_heads == 32);
  BOOST_TEST(qwen2.max_position_embeddings == 32768);
  BOOST_TEST(qwen2.qkv_bias());
  BOOST_TEST(!qwen2.o_bias());
  BOOST_TEST(!qwen2.attention_window(2).has_value());  // use_sliding_window is false

  minimal["use_sliding_window"] = true;
  minimal["sliding_window"] = 8;
  minimal["max_window_layers"] = 1;
  const LlamaConfig windowed = LlamaConfig::from_json(minimal, "qwen2");
  BOOST_TEST(!windowed.attention_window(0).has_value());
  BOOST_TEST(windowed.attention_window(1).value_or(-1) == 8);
  minimal["layer_types"] = {"sliding_attention", "full_attention", "full_attention"};
  const LlamaConfig listed = LlamaConfig::from_json(minimal, "qwen2");
  BOOST_TEST(listed.attention_window(0).value_or(-1) == 8);
  BOOST_TEST(!listed.attention_window(1).has_value());

  // Llama defaults: as many key/value heads as query heads, no window.
  minimal = {{"model_type", "llama"}, {"vocab_size", 10}, {"hidden_size", 64}, {"intermediate_size", 32},
             {"num_hidden_layers", 1}, {"num_attention_heads", 4}, {"num_key_value_heads", nullptr},
             {"sliding_window", 4}};
  const LlamaConfig llama = LlamaConfig::from_json(minimal, "llama");
  BOOST_TEST(llama.num_key_value_heads == 4);
  BOOST_TEST(!llama.attention_window(0).has_value());
  BOOST_TEST(llama.extra.at("sliding_window") == 4);  // not a Llama key: carried, unused
  BOOST_TEST(llama.rms_norm_eps == 1e-6);
  BOOST_TEST(llama.hidden_act == "silu");
}

BOOST_AUTO_TEST_CASE(unreadable_files_are_named) {
  ConfigFile file;
  std::string message = error_of_file(file);
  BOOST_TEST(message.find(file.path.string() + ": file not found") != std::string::npos);

  file.write(std::string("{\"hidden_size\": 64,"));
  message = error_of_file(file);
  BOOST_TEST(message.find(file.path.string() + ": not valid JSON") != std::string::npos);

  file.write(std::string("[1, 2]"));
  message = error_of_file(file);
  BOOST_TEST(message.find(file.path.string() + ": expected a JSON object") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(missing_keys_are_named) {
  for (const char* key :
       {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"})
    check_refused(key, std::nullopt, std::string("key '") + key + "' is missing");
}

BOOST_AUTO_TEST_CASE(wrongly_typed_keys_are_named) {
  check_refused("num_attention_heads", json("4"), "key 'num_attention_heads' must be an integer, got \"4\"");
  check_refused("num_hidden_layers", json(2.5), "key 'num_hidden_layers' must be an integer, got 2.5");
  check_refused("vocab_size", json(18446744073709551615ull), "key 'vocab_size' is too large");
  check_refused("head_dim", json("wide"), "key 'head_dim' must be an integer");
  check_refused("rms_norm_eps", json("small"), "key 'rms_norm_eps' must be a number");
  check_refused("rope_theta", json("big"), "key 'rope_theta' must be a number");
  check_refused("tie_word_embeddings", json("yes"), "key 'tie_word_embeddings' must be true or false");
  check_refused("attention_bias", json(1), "key 'attention_bias' must be true or false");
  check_refused("hidden_act", json(3), "key 'hidden_act' must be a string");
  check_refused("rope_parameters", json("llama3"), "key 'rope_parameters' must be an object or null");
  check_refused(with_rope_scaling(json::array({1})), "key 'rope_scaling' must be an object or null");
  check_refused(with_rope_scaling({{"rope_type", "linear"}, {"factor", "2"}}), "key 'rope_scaling.factor' must be a number");
  json qwen2 = base();
  qwen2["model_type"] = "qwen2";
  qwen2["layer_types"] = "full_attention";
  check_refused(qwen2, "key 'layer_types' must be a list of strings or null");
}

BOOST_AUTO_TEST_CASE(invalid_values_are_named) {
  check_refused("model_type", json("gpt2"), "key 'model_type' is \"gpt2\"");
  check_refused("num_key_value_heads", json(3), "key 'num_key_value_heads' must divide num_attention_heads");
  check_refused("num_key_value_heads", json(0), "key 'num_key_value_heads' must be positive");
  check_refused("num_attention_heads", json(0), "key 'num_attention_heads' must be positive");
  check_refused("vocab_size", json(-1), "key 'vocab_size' must be positive");
  check_refused("intermediate_size", json(0), "key 'intermediate_size' must be positive");
  check_refused("head_dim", json(15), "key 'head_dim' must be even");
  check_refused("hidden_act", json("gelu"), "key 'hidden_act' is 'gelu'; supported: silu");
  check_refused("rms_norm_eps", json(0.0), "key 'rms_norm_eps' must be a positive number");
  check_refused("attention_dropout", json(1.0), "key 'attention_dropout' must be in [0, 1)");
  check_refused("pad_token_id", json(100), "key 'pad_token_id' must be a token id below vocab_size 100");
  check_refused("max_position_embeddings", json(0), "key 'max_position_embeddings' must be positive");
  check_refused("partial_rotary_factor", json(0.5), "key 'partial_rotary_factor' is 0.5");

  // hidden_size must split into heads only when head_dim does not say the head size.
  json config = base();
  config["num_attention_heads"] = 6;
  config["num_key_value_heads"] = 6;
  BOOST_TEST(LlamaConfig::from_json(config, "explicit head_dim").head_size() == 16);
  config.erase("head_dim");
  check_refused(config, "key 'num_attention_heads' must divide hidden_size when head_dim is not given");
  config["num_attention_heads"] = 8;
  config["num_key_value_heads"] = 8;
  config["hidden_size"] = 40;
  check_refused(config, "key 'num_attention_heads' gives an odd head size");

  json mistral = base();
  mistral["model_type"] = "mistral";
  mistral["sliding_window"] = 0;
  check_refused(mistral, "key 'sliding_window' must be positive or null");
  json qwen2 = base();
  qwen2["model_type"] = "qwen2";
  qwen2["layer_types"] = {"full_attention"};
  check_refused(qwen2, "key 'layer_types' has 1 entries for num_hidden_layers 2");
  qwen2["layer_types"] = {"full_attention", "chunked_attention"};
  check_refused(qwen2, "key 'layer_types' has 'chunked_attention'");
}

BOOST_AUTO_TEST_CASE(bad_rope_settings_are_named) {
  check_refused(with_rope_scaling({{"rope_type", "yarn"}, {"factor", 4.0}}),
                "key 'rope_scaling.rope_type' is 'yarn'; supported: default, linear, dynamic, llama3");
  check_refused(with_rope_scaling({{"type", "longrope"}, {"factor", 4.0}}), "key 'rope_scaling.type' is 'longrope'");
  json config = base();
  config["rope_parameters"]["rope_type"] = "su";
  check_refused(config, "key 'rope_parameters.rope_type' is 'su'");
  check_refused(with_rope_scaling({{"rope_type", "linear"}, {"type", "dynamic"}, {"factor", 2.0}}),
                "key 'rope_scaling.type' is 'dynamic' but rope_type is 'linear'");
  check_refused(with_rope_scaling({{"rope_type", "linear"}}), "key 'rope_scaling.factor' is missing");
  check_refused(with_rope_scaling({{"rope_type", "dynamic"}, {"factor", 0.0}}),
                "key 'rope_scaling.factor' must be a positive number");
  check_refused(with_rope_scaling({{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}}),
                "key 'rope_scaling.low_freq_factor' is missing");
  config = base();
  config["rope_parameters"]["high_freq_factor"] = 1.0;
  check_refused(config, "key 'rope_parameters.high_freq_factor' must be greater than low_freq_factor 1.0");
  check_refused(with_rope_scaling({{"rope_type", "linear"}, {"factor", 2.0}, {"beta_fast", 32}}),
                "key 'rope_scaling.beta_fast' is not a setting of rope type 'linear'");
  check_refused(with_rope_scaling({{"rope_type", "linear"}, {"factor", 2.0}, {"partial_rotary_factor", 0.5}}),
                "key 'rope_scaling.partial_rotary_factor' is 0.5");

  // Both spellings present: they must describe the same rotation.
  config = base();
  config["rope_theta"] = 500000.0;
  config["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  check_refused(config, "key 'rope_parameters' disagrees with rope_scaling and rope_theta");
  config = base();
  config["rope_theta"] = 10000.0;
  check_refused(config, "key 'rope_parameters.rope_theta' is 500000.0 but rope_theta is 10000.0");
}

BOOST_AUTO_TEST_CASE(the_model_validates_its_config) {
  LlamaConfig small;
  small.vocab_size = 10;
  small.hidden_size = 16;
  small.intermediate_size = 8;
  small.num_hidden_layers = 1;
  small.num_attention_heads = 4;
  small.num_key_value_heads = 4;
  LlamaConfig config = small;
  config.num_key_value_heads = 3;
  try {
    ftrain::model::Llama model(config);
    BOOST_FAIL("expected the model to refuse num_attention_heads % num_key_value_heads != 0");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("key 'num_key_value_heads'") != std::string::npos);
  }
  BOOST_CHECK_NO_THROW(ftrain::model::Llama{small});
  config = small;
  config.rope_scaling = RopeScaling{};
  config.rope_scaling->rope_type = "ntk";
  try {
    ftrain::model::Llama model(config);
    BOOST_FAIL("expected the model to refuse rope type 'ntk'");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("key 'rope_scaling.rope_type' is 'ntk'") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()  // test_llama_config
