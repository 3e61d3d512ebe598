#include <boost/test/unit_test.hpp>

#include "model/llama_checkpoint.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>

#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_llama_checkpoint)

namespace fs = std::filesystem;
using namespace ftrain::model;
using torch::indexing::Slice;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("ftrain_test_llama_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Four query heads sharing two key/value heads of size 8.
LlamaConfig small_config(bool tied = false) {
  LlamaConfig config;
  config.vocab_size = 50;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.max_position_embeddings = 32;
  config.tie_word_embeddings = tied;
  return config;
}

std::map<std::string, torch::Tensor> parameters_of(Llama& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model->named_parameters()) out.emplace(item.key(), item.value());
  return out;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  BOOST_FAIL("expected a std::runtime_error");
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Saves `model` to dir, then rewrites its model.safetensors through `edit`.
template <class Edit>
void save_edited(Llama& model, const fs::path& dir, Edit&& edit) {
  save_llama(model, dir);
  NamedTensors state = load_safetensors(dir / "model.safetensors");
  for (auto& [name, tensor] : state) tensor = tensor.clone();  // detach from the mapping before overwriting
  edit(state);
  save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}});
}

std::string load_error(const fs::path& dir) {
  return error_of([&] { load_llama(dir); });
}

LlamaAttentionImpl& attention_of(Llama& model, size_t layer) {
  return *model->model->layers[layer]->as<LlamaBlockImpl>()->self_attn;
}

}  // namespace

BOOST_AUTO_TEST_CASE(parameters_carry_hugging_face_names_and_shapes) {
  LlamaConfig config = small_config();
  Llama untied(config);
  auto parameters = parameters_of(untied);
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"model.embed_tokens.weight", {50, 32}},
      {"model.layers.1.input_layernorm.weight", {32}},
      {"model.layers.1.self_attn.q_proj.weight", {32, 32}},
      {"model.layers.1.self_attn.k_proj.weight", {16, 32}},
      {"model.layers.1.self_attn.v_proj.weight", {16, 32}},
      {"model.layers.1.self_attn.o_proj.weight", {32, 32}},
      {"model.layers.1.post_attention_layernorm.weight", {32}},
      {"model.layers.1.mlp.gate_proj.weight", {48, 32}},
      {"model.layers.1.mlp.up_proj.weight", {48, 32}},
      {"model.layers.1.mlp.down_proj.weight", {32, 48}},
      {"model.norm.weight", {32}},
      {"lm_head.weight", {50, 32}},
  };
  for (const auto& [name, shape] : expected) {
    BOOST_TEST_REQUIRE(parameters.count(name), name);
    BOOST_TEST(parameters.at(name).sizes().vec() == shape, name);
  }
  BOOST_TEST(parameters.size() == 1u + 2u * 9u + 1u + 1u);

  config.tie_word_embeddings = true;
  Llama tied(config);
  BOOST_TEST(!parameters_of(tied).count("lm_head.weight"));

  // Biases: Llama's attention_bias on all four projections, mlp_bias on the MLP,
  // Qwen2's on q, k, v only.
  config.attention_bias = true;
  config.mlp_bias = true;
  Llama biased(config);
  auto biases = parameters_of(biased);
  for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj"})
    BOOST_TEST(biases.count(std::string("model.layers.0.self_attn.") + name + ".bias"), name);
  BOOST_TEST(biases.count("model.layers.0.mlp.down_proj.bias"));
  config.model_type = "qwen2";
  config.mlp_bias = false;
  Llama qwen2(config);
  auto qwen2_parameters = parameters_of(qwen2);
  BOOST_TEST(qwen2_parameters.count("model.layers.0.self_attn.k_proj.bias"));
  BOOST_TEST(!qwen2_parameters.count("model.layers.0.self_attn.o_proj.bias"));
}

BOOST_AUTO_TEST_CASE(forward_shapes_and_input_checks) {
  Llama model = init_llama(small_config(), 1);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(50, {3, 7}, torch::kLong);
  BOOST_TEST(model->forward(ids).sizes().vec() == (std::vector<int64_t>{3, 7, 50}));
  BOOST_TEST(model->hidden_states(ids).sizes().vec() == (std::vector<int64_t>{3, 7, 32}));
  BOOST_TEST(torch::allclose(model->forward(ids), model->logits(model->hidden_states(ids))));
  // Rotary embeddings extrapolate: longer than max_position_embeddings is allowed.
  BOOST_TEST(model->forward(torch::zeros({1, 40}, torch::kLong)).size(1) == 40);
  // An all-ones mask changes nothing.
  BOOST_TEST(torch::allclose(model->forward(ids, torch::ones({3, 7}, torch::kLong)), model->forward(ids), 1e-5, 1e-5));

  BOOST_TEST(contains(error_of([&] { model->forward(ids.to(torch::kInt)); }), "input_ids must be an int64 tensor"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids[0]); }), "of shape (B, T)"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids, torch::ones({3, 6})); }),
                      "attention_mask must have the shape of input_ids [3, 7], got [3, 6]"));
  KvCache cache;
  BOOST_TEST(contains(error_of([&] { model->forward(ids, torch::ones({3, 7}), &cache); }),
                      "a cached forward takes rows without padding, and no attention_mask"));
}

BOOST_AUTO_TEST_CASE(a_position_sees_only_earlier_tokens_and_its_window) {
  LlamaConfig config = small_config();
  config.model_type = "mistral";
  config.sliding_window = 3;
  Llama model = init_llama(config, 2);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(50, {2, 12}, torch::kLong);
  torch::Tensor changed = ids.clone();
  changed.index_put_({Slice(), 6}, (ids.index({Slice(), 6}) + 1) % 50);
  torch::Tensor a = model->forward(ids), b = model->forward(changed);
  BOOST_TEST(torch::equal(a.index({Slice(), Slice(0, 6)}), b.index({Slice(), Slice(0, 6)})));
  BOOST_TEST(!torch::allclose(a.index({Slice(), Slice(6)}), b.index({Slice(), Slice(6)})));
  // Two layers of window 3: position 6 reaches at most position 6 + 2 * 2 = 10.
  BOOST_TEST(!torch::allclose(a.index({Slice(), 10}), b.index({Slice(), 10})));
  BOOST_TEST(torch::equal(a.index({Slice(), 11}), b.index({Slice(), 11})));
}

BOOST_AUTO_TEST_CASE(tensor_parallel_shards_of_the_heads_sum_to_the_whole) {
  // A shard holding query heads {2h, 2h+1} and their key/value head h, with the
  // matching columns of o_proj, computes those heads; the shards' outputs sum to the
  // full layer's.
  Llama model = init_llama(small_config(), 3);
  model->eval();
  torch::NoGradGuard no_grad;
  LlamaAttentionImpl& full = attention_of(model, 0);
  const int64_t hs = 8, T = 5;
  torch::Tensor x = torch::randn({2, T, 32});
  torch::Tensor angles = torch::randn({1, T, hs / 2}).repeat({1, 1, 2});
  const RotaryAngles rotary{angles.cos(), angles.sin()};
  torch::Tensor expected = full.forward(x, rotary, {});

  torch::Tensor sum = torch::zeros_like(expected);
  for (int64_t shard = 0; shard < 2; ++shard) {
    LlamaAttention part(small_config(), 0);
    auto rows = [&](const torch::Tensor& w, int64_t width) { return w.index({Slice(shard * width, (shard + 1) * width)}); };
    auto linear = [](const torch::Tensor& weight) {
      torch::nn::Linear layer(torch::nn::LinearOptions(weight.size(1), weight.size(0)).bias(false));
      layer->weight.copy_(weight);
      return layer;
    };
    part->q_proj = part->replace_module("q_proj", linear(rows(full.q_proj->weight, 2 * hs)));
    part->k_proj = part->replace_module("k_proj", linear(rows(full.k_proj->weight, hs)));
    part->v_proj = part->replace_module("v_proj", linear(rows(full.v_proj->weight, hs)));
    part->o_proj = part->replace_module(
        "o_proj", linear(full.o_proj->weight.index({Slice(), Slice(shard * 2 * hs, (shard + 1) * 2 * hs)})));
    sum += part->forward(x, rotary, {});
  }
  BOOST_TEST(torch::allclose(sum, expected, 1e-5, 1e-5));
}

BOOST_AUTO_TEST_CASE(training_reaches_every_parameter) {
  LlamaConfig config = small_config();
  config.attention_bias = true;
  config.attention_dropout = 0.5;
  Llama model = init_llama(config, 9);
  torch::Tensor ids = torch::randint(50, {2, 8}, torch::kLong);
  torch::Tensor mask = torch::ones({2, 8}, torch::kLong);
  mask.index_put_({1, Slice(0, 3)}, 0);
  model->train();
  torch::Tensor first = model->forward(ids, mask);
  BOOST_TEST(!torch::allclose(first, model->forward(ids, mask)));  // dropout draws differ
  first.square().mean().backward();
  for (const auto& item : model->named_parameters()) {
    BOOST_TEST_REQUIRE(item.value().grad().defined(), item.key());
    BOOST_TEST(item.value().grad().abs().sum().item<double>() > 0.0, item.key());
  }
  model->eval();
  torch::NoGradGuard no_grad;
  BOOST_TEST(torch::equal(model->forward(ids), model->forward(ids)));
}

BOOST_AUTO_TEST_CASE(init_is_seeded_and_shaped_like_hugging_face) {
  LlamaConfig config = small_config();
  config.hidden_size = 64;
  config.intermediate_size = 128;
  config.attention_bias = true;
  config.pad_token_id = 4;
  Llama a = init_llama(config, 42), b = init_llama(config, 42), c = init_llama(config, 43);
  auto pa = parameters_of(a), pb = parameters_of(b), pc = parameters_of(c);
  for (const auto& [name, value] : pa) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_TEST(torch::equal(value, pb.at(name)));
      if (name.ends_with(".bias")) {
        BOOST_TEST(torch::equal(value, torch::zeros_like(value)));
      } else if (contains(name, "norm")) {
        BOOST_TEST(torch::equal(value, torch::ones_like(value)));
      } else {
        BOOST_TEST(!torch::equal(value, pc.at(name)));
        BOOST_TEST(std::abs(value.std().item<double>() - 0.02) < 0.002);
        BOOST_TEST(std::abs(value.mean().item<double>()) < 0.002);
      }
    }
  }
  BOOST_TEST(torch::equal(pa.at("model.embed_tokens.weight")[4], torch::zeros({64})));
}

BOOST_AUTO_TEST_CASE(save_then_load_gives_the_same_model) {
  for (bool tied : {true, false}) {
    BOOST_TEST_CONTEXT("tied " << tied) {
      TempDir dir;
      LlamaConfig config = small_config(tied);
      config.extra["bos_token_id"] = 3;
      config.rope_scaling = RopeScaling{};
      config.rope_scaling->rope_type = "linear";
      config.rope_scaling->factor = 2.0;
      Llama model = init_llama(config, 5);
      save_llama(model, dir.path);

      SafetensorsReader file(dir.path / "model.safetensors");
      BOOST_TEST(file.metadata().at("format") == "pt");
      BOOST_TEST(file.contains("lm_head.weight") == !tied);
      BOOST_TEST(file.shape("model.layers.0.self_attn.k_proj.weight") == (std::vector<int64_t>{16, 32}));

      Llama loaded = load_llama(dir.path);
      BOOST_TEST(loaded->config().to_json() == config.to_json());
      auto expected = parameters_of(model);
      auto actual = parameters_of(loaded);
      BOOST_TEST_REQUIRE(actual.size() == expected.size());
      for (const auto& [name, value] : expected) BOOST_TEST(torch::equal(actual.at(name), value), name);
      model->eval();
      loaded->eval();
      torch::Tensor ids = torch::randint(50, {2, 9}, torch::kLong);
      BOOST_TEST(torch::equal(model->forward(ids), loaded->forward(ids)));
    }
  }
}

BOOST_AUTO_TEST_CASE(save_refuses_a_non_empty_directory_unless_told) {
  TempDir dir;
  fs::create_directories(dir.path);
  std::ofstream(dir.path / "notes.txt") << "keep me";
  Llama model = init_llama(small_config(), 1);
  std::string message = error_of([&] { save_llama(model, dir.path); });
  BOOST_TEST(contains(message, dir.path.string()));
  BOOST_TEST(contains(message, "not empty"));
  BOOST_TEST(!fs::exists(dir.path / "model.safetensors"));

  save_llama(model, dir.path, ExistingDirectory::overwrite);
  Llama other = init_llama(small_config(), 2);
  save_llama(other, dir.path, ExistingDirectory::overwrite);
  BOOST_TEST(torch::equal(load_llama(dir.path)->model->embed_tokens->weight, other->model->embed_tokens->weight));
  BOOST_TEST(fs::exists(dir.path / "notes.txt"));
}

BOOST_AUTO_TEST_CASE(unprefixed_names_rotary_buffers_and_half_precision_load) {
  TempDir dir;
  Llama model = init_llama(small_config(true), 3);
  save_edited(model, dir.path, [](NamedTensors& state) {
    for (auto& [name, tensor] : state) {
      name = name.substr(std::string("model.").size());
      tensor = tensor.to(torch::kBFloat16);
    }
    state.emplace_back("layers.0.self_attn.rotary_emb.inv_freq", torch::ones({4}));
    state.emplace_back("model.rotary_emb.inv_freq", torch::ones({4}));
  });
  Llama loaded = load_llama(dir.path);
  torch::Tensor embedding = loaded->model->embed_tokens->weight;
  BOOST_TEST(embedding.scalar_type() == torch::kFloat);
  BOOST_TEST(torch::equal(embedding, model->model->embed_tokens->weight.to(torch::kBFloat16).to(torch::kFloat)));
}

BOOST_AUTO_TEST_CASE(mismatched_tensors_are_reported_by_name) {
  TempDir dir;
  Llama model = init_llama(small_config(), 6);
  const std::string file = (dir.path / "model.safetensors").string();
  save_edited(model, dir.path, [](NamedTensors& state) {
    std::erase_if(state, [](const auto& entry) { return entry.first == "model.layers.1.mlp.up_proj.weight"; });
    for (auto& [name, tensor] : state)
      if (name == "model.layers.0.self_attn.k_proj.weight") tensor = torch::zeros({32, 32});  // no grouping
    state.emplace_back("model.layers.2.input_layernorm.weight", torch::ones({32}));
    state.emplace_back("layers.0.input_layernorm.weight", torch::ones({32}));
    state.emplace_back("model.layers.0.self_attn.o_proj.bias", torch::ones({32}));
  });
  const std::string message = load_error(dir.path);
  BOOST_TEST_MESSAGE("message: " << message);
  BOOST_TEST(contains(message, file + ": tensors do not match the architecture of config.json (model_type=llama"));
  BOOST_TEST(contains(message, "num_key_value_heads=2"));
  BOOST_TEST(contains(message, "missing 'model.layers.1.mlp.up_proj.weight'"));
  BOOST_TEST(contains(message, "unexpected 'model.layers.2.input_layernorm.weight', 'model.layers.0.self_attn.o_proj.bias'"));
  BOOST_TEST(contains(message, "stored twice 'model.layers.0.input_layernorm.weight' and 'layers.0.input_layernorm.weight'"));
  BOOST_TEST(contains(message, "wrong shape 'model.layers.0.self_attn.k_proj.weight' is [32, 32], expected [16, 32]"));

  save_edited(model, dir.path / "int", [](NamedTensors& state) {
    for (auto& [name, tensor] : state)
      if (name == "model.norm.weight") tensor = tensor.to(torch::kLong);
  });
  BOOST_TEST(contains(load_error(dir.path / "int"), "not floating point 'model.norm.weight' (Long)"));
}

BOOST_AUTO_TEST_CASE(untied_checkpoint_needs_its_head_and_tied_copy_must_match) {
  TempDir dir;
  Llama tied = init_llama(small_config(true), 7);
  save_llama(tied, dir.path / "tied");
  std::ifstream in(dir.path / "tied" / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["tie_word_embeddings"] = false;
  std::ofstream(dir.path / "tied" / "config.json") << config.dump();
  BOOST_TEST(contains(load_error(dir.path / "tied"), "missing 'lm_head.weight'"));

  save_edited(tied, dir.path / "copy", [](NamedTensors& state) {
    torch::Tensor embedding;
    for (auto& [name, tensor] : state)
      if (name == "model.embed_tokens.weight") embedding = tensor;
    state.emplace_back("lm_head.weight", embedding.clone());
  });
  BOOST_TEST(torch::equal(tied->model->embed_tokens->weight, load_llama(dir.path / "copy")->model->embed_tokens->weight));
  save_edited(tied, dir.path / "differs", [](NamedTensors& state) {
    state.emplace_back("lm_head.weight", torch::zeros({50, 32}));
  });
  BOOST_TEST(contains(load_error(dir.path / "differs"), "'lm_head.weight' differs from 'model.embed_tokens.weight'"));
}

BOOST_AUTO_TEST_CASE(directory_problems_are_named) {
  TempDir dir;
  BOOST_TEST(contains(load_error(dir.path), dir.path.string() + ": not a directory"));
  fs::create_directories(dir.path);
  BOOST_TEST(contains(load_error(dir.path), (dir.path / "config.json").string() + ": file not found"));
  std::ofstream(dir.path / "config.json") << small_config().to_json().dump();
  BOOST_TEST(contains(load_error(dir.path), dir.path.string() + ": has neither model.safetensors nor"));
}

BOOST_AUTO_TEST_SUITE_END()  // test_llama_checkpoint
