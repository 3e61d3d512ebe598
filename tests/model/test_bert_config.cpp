#include <boost/test/unit_test.hpp>

#include "model/bert.h"

#include <fstream>
#include <optional>
#include <string>

#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_bert_config)

namespace fs = std::filesystem;
using ftrain::model::BertConfig;
using nlohmann::json;

namespace {

// config.json as transformers 5 writes it for BertConfig(vocab_size=100,
// hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
// max_position_embeddings=32), with "architectures" as save_pretrained of a
// BertForSequenceClassification adds it.
const char* kHuggingFaceConfig = R"({
  "add_cross_attention": false,
  "architectures": ["BertForSequenceClassification"],
  "attention_probs_dropout_prob": 0.1,
  "bos_token_id": null,
  "classifier_dropout": null,
  "dtype": "float32",
  "eos_token_id": null,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 96,
  "is_decoder": false,
  "layer_norm_eps": 1e-12,
  "max_position_embeddings": 32,
  "model_type": "bert",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "pad_token_id": 0,
  "tie_word_embeddings": true,
  "transformers_version": "5.23.0",
  "type_vocab_size": 2,
  "use_cache": true,
  "vocab_size": 100
})";

struct ConfigFile {
  fs::path dir;
  fs::path path;
  ConfigFile() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("ftrain_test_bert_config_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
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
    BertConfig::from_json_file(file.path);
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
    BOOST_TEST(message.find(file.path.string() + ": ") == 0u);
    BOOST_TEST(message.find(fragment) != std::string::npos);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(reads_a_hugging_face_config) {
  ConfigFile file;
  file.write(std::string(kHuggingFaceConfig));
  const BertConfig config = BertConfig::from_json_file(file.path);
  BOOST_TEST(config.vocab_size == 100);
  BOOST_TEST(config.hidden_size == 64);
  BOOST_TEST(config.num_hidden_layers == 2);
  BOOST_TEST(config.num_attention_heads == 4);
  BOOST_TEST(config.head_dim() == 16);
  BOOST_TEST(config.intermediate_size == 96);
  BOOST_TEST(config.max_position_embeddings == 32);
  BOOST_TEST(config.type_vocab_size == 2);
  BOOST_TEST(config.hidden_act == "gelu");
  BOOST_TEST(config.layer_norm_eps == 1e-12);
  BOOST_TEST(config.pad_token_id.value_or(-1) == 0);
  BOOST_TEST(config.position_embedding_type == "absolute");
  // Keys that do not describe the encoder are carried unchanged.
  BOOST_TEST(config.extra.at("use_cache") == true);
  BOOST_TEST(config.extra.at("classifier_dropout").is_null());
  BOOST_TEST(config.extra.at("transformers_version") == "5.23.0");
  BOOST_TEST(!config.extra.contains("hidden_size"));
  BOOST_TEST(!config.extra.contains("is_decoder"));
  BOOST_TEST(!config.extra.contains("architectures"));  // rewritten on save
  BOOST_TEST(!config.extra.contains("dtype"));          // describes a file, written afresh on save
}

BOOST_AUTO_TEST_CASE(reads_an_older_config_with_position_embedding_type) {
  // transformers 4 wrote position_embedding_type and gradient_checkpointing.
  json older = base();
  older["position_embedding_type"] = "absolute";
  older["gradient_checkpointing"] = false;
  older["hidden_act"] = "gelu_new";
  older["pad_token_id"] = nullptr;
  const BertConfig config = BertConfig::from_json(older, "older");
  BOOST_TEST(config.position_embedding_type == "absolute");
  BOOST_TEST(config.hidden_act == "gelu_new");
  BOOST_TEST(!config.pad_token_id.has_value());
  BOOST_TEST(config.extra.at("gradient_checkpointing") == false);
  BOOST_TEST(config.to_json().at("pad_token_id").is_null());
}

BOOST_AUTO_TEST_CASE(to_json_round_trips) {
  json input = base();
  input["hidden_act"] = "relu";
  input["type_vocab_size"] = 3;
  input["layer_norm_eps"] = 1e-5;
  input["initializer_range"] = 0.05;
  input["pad_token_id"] = 7;
  const BertConfig config = BertConfig::from_json(input, "input");
  const json output = config.to_json();
  BOOST_TEST(output.at("model_type") == "bert");
  BOOST_TEST(output.at("architectures") == json::array({"BertModel"}));
  BOOST_TEST(output.at("position_embedding_type") == "absolute");
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                          "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "initializer_range",
                          "pad_token_id", "is_decoder", "add_cross_attention", "use_cache", "classifier_dropout"})
    BOOST_TEST(output.at(key) == input.at(key), "key " << key);

  const BertConfig again = BertConfig::from_json(output, "output");
  BOOST_TEST(again.to_json() == output);
  BOOST_TEST(BertConfig::from_json(BertConfig{}.to_json(), "defaults").to_json() == BertConfig{}.to_json());
}

BOOST_AUTO_TEST_CASE(optional_keys_take_hugging_face_defaults) {
  json minimal = {{"model_type", "bert"},         {"vocab_size", 10},         {"hidden_size", 8},
                  {"num_hidden_layers", 1},       {"num_attention_heads", 2}, {"intermediate_size", 16}};
  const BertConfig config = BertConfig::from_json(minimal, "minimal");
  const BertConfig defaults;
  BOOST_TEST(config.hidden_act == "gelu");
  BOOST_TEST(config.max_position_embeddings == 512);
  BOOST_TEST(config.type_vocab_size == 2);
  BOOST_TEST(config.layer_norm_eps == 1e-12);
  BOOST_TEST(config.initializer_range == 0.02);
  BOOST_TEST(config.hidden_dropout_prob == defaults.hidden_dropout_prob);
  BOOST_TEST(config.attention_probs_dropout_prob == defaults.attention_probs_dropout_prob);
  BOOST_TEST(config.pad_token_id.value_or(-1) == 0);
  BOOST_TEST(config.extra.empty());
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
       {"model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"})
    check_refused(key, std::nullopt, std::string("key '") + key + "' is missing");
}

BOOST_AUTO_TEST_CASE(wrongly_typed_keys_are_named) {
  check_refused("num_attention_heads", json("4"), "key 'num_attention_heads' must be an integer, got \"4\"");
  check_refused("num_hidden_layers", json(2.5), "key 'num_hidden_layers' must be an integer, got 2.5");
  check_refused("max_position_embeddings", json(1e20), "key 'max_position_embeddings' must be an integer");
  check_refused("vocab_size", json(18446744073709551615ull), "key 'vocab_size' is too large");
  check_refused("type_vocab_size", json(nullptr), "key 'type_vocab_size' must be an integer");
  check_refused("pad_token_id", json("[PAD]"), "key 'pad_token_id' must be an integer");
  check_refused("layer_norm_eps", json("small"), "key 'layer_norm_eps' must be a number");
  check_refused("hidden_dropout_prob", json(false), "key 'hidden_dropout_prob' must be a number");
  check_refused("hidden_act", json(3), "key 'hidden_act' must be a string");
  check_refused("position_embedding_type", json(1), "key 'position_embedding_type' must be a string");
  check_refused("is_decoder", json("no"), "key 'is_decoder' must be true or false");
}

BOOST_AUTO_TEST_CASE(invalid_values_are_named) {
  check_refused("model_type", json("roberta"), "key 'model_type' is \"roberta\"");
  check_refused("num_attention_heads", json(5),
                "key 'num_attention_heads' must divide hidden_size: hidden_size 64 is not a multiple of "
                "num_attention_heads 5");
  check_refused("num_attention_heads", json(0), "key 'num_attention_heads' must be positive");
  check_refused("vocab_size", json(-1), "key 'vocab_size' must be positive");
  check_refused("hidden_size", json(0), "key 'hidden_size' must be positive");
  check_refused("num_hidden_layers", json(0), "key 'num_hidden_layers' must be positive");
  check_refused("intermediate_size", json(-4), "key 'intermediate_size' must be positive");
  check_refused("max_position_embeddings", json(0), "key 'max_position_embeddings' must be positive");
  check_refused("type_vocab_size", json(0), "key 'type_vocab_size' must be positive");
  check_refused("hidden_act", json("swish"), "key 'hidden_act' is 'swish'; supported: gelu, gelu_new");
  check_refused("hidden_dropout_prob", json(1.0), "key 'hidden_dropout_prob' must be in [0, 1)");
  check_refused("attention_probs_dropout_prob", json(-0.1), "key 'attention_probs_dropout_prob' must be in [0, 1)");
  check_refused("layer_norm_eps", json(0.0), "key 'layer_norm_eps' must be a finite positive number");
  check_refused("initializer_range", json(-0.02), "key 'initializer_range' must be a finite non-negative");
  check_refused("pad_token_id", json(100), "key 'pad_token_id' must be null or a token id below vocab_size 100");
  check_refused("pad_token_id", json(-1), "key 'pad_token_id' must be null or a token id");
  check_refused("position_embedding_type", json("relative_key"),
                "key 'position_embedding_type' is 'relative_key'; only \"absolute\"");
  check_refused("position_embedding_type", json("relative_key_query"), "key 'position_embedding_type'");
  check_refused("is_decoder", json(true), "key 'is_decoder' is true");
  check_refused("add_cross_attention", json(true), "key 'add_cross_attention' is true");
}

BOOST_AUTO_TEST_CASE(the_model_validates_its_config) {
  BertConfig config;
  config.hidden_size = 30;
  config.num_attention_heads = 4;
  try {
    ftrain::model::Bert model(config);
    BOOST_FAIL("expected the model to refuse hidden_size % num_attention_heads != 0");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("key 'num_attention_heads'") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()  // test_bert_config
