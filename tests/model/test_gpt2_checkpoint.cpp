#include <boost/test/unit_test.hpp>

#include "model/gpt2_checkpoint.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>

#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_gpt2_checkpoint)

namespace fs = std::filesystem;
using namespace ftrain::model;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("ftrain_test_gpt2_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

Gpt2Config small_config(bool tied = true) {
  Gpt2Config config;
  config.vocab_size = 50;
  config.n_positions = 16;
  config.n_embd = 32;
  config.n_layer = 2;
  config.n_head = 4;
  config.tie_word_embeddings = tied;
  return config;
}

std::map<std::string, torch::Tensor> parameters_of(Gpt2& model) {
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
void save_edited(Gpt2& model, const fs::path& dir, Edit&& edit) {
  save_gpt2(model, dir);
  NamedTensors state = load_safetensors(dir / "model.safetensors");
  for (auto& [name, tensor] : state) tensor = tensor.clone();  // detach from the mapping before overwriting
  edit(state);
  save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}});
}

std::string load_error(const fs::path& dir) {
  return error_of([&] { load_gpt2(dir); });
}

}  // namespace

BOOST_AUTO_TEST_CASE(tied_model_lists_each_tensor_once) {
  Gpt2 tied(small_config(true));
  auto parameters = parameters_of(tied);
  BOOST_TEST(!parameters.count("lm_head.weight"));
  BOOST_TEST(parameters.count("transformer.wte.weight"));
  BOOST_TEST(parameters.at("transformer.h.1.attn.c_attn.weight").sizes().vec() == (std::vector<int64_t>{96, 32}));
  BOOST_TEST(parameters.at("transformer.h.0.mlp.c_fc.weight").sizes().vec() == (std::vector<int64_t>{128, 32}));
  BOOST_TEST(parameters.size() == 2u + 2u * 12u + 2u);

  Gpt2 untied(small_config(false));
  auto untied_parameters = parameters_of(untied);
  BOOST_TEST(untied_parameters.size() == parameters.size() + 1);
  BOOST_TEST(untied_parameters.at("lm_head.weight").sizes().vec() == (std::vector<int64_t>{50, 32}));
  BOOST_TEST(!untied_parameters.count("lm_head.bias"));
}

BOOST_AUTO_TEST_CASE(forward_shapes_and_input_checks) {
  Gpt2 model = init_gpt2(small_config(), 1);
  model->eval();
  torch::Tensor ids = torch::randint(50, {3, 7}, torch::kLong);
  BOOST_TEST(model->forward(ids).sizes().vec() == (std::vector<int64_t>{3, 7, 50}));
  BOOST_TEST(model->hidden_states(ids).sizes().vec() == (std::vector<int64_t>{3, 7, 32}));
  BOOST_TEST(torch::allclose(model->forward(ids), model->logits(model->hidden_states(ids))));

  BOOST_TEST(contains(error_of([&] { model->forward(torch::zeros({1, 17}, torch::kLong)); }),
                      "sequence length 17 exceeds n_positions 16"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids.to(torch::kInt)); }), "input_ids must be an int64 tensor"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids[0]); }), "of shape (B, T)"));
}

BOOST_AUTO_TEST_CASE(a_cache_belongs_to_one_model_and_batch) {
  Gpt2 model = init_gpt2(small_config(), 1);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(50, {3, 12}, torch::kLong);
  KvCache cache;
  torch::Tensor first = model->forward(ids.narrow(1, 0, 9), &cache);
  BOOST_TEST(cache.length() == 9);
  BOOST_TEST(cache.keys.size() == 2u);
  // Cached positions then new ones equal one forward over them all.
  torch::Tensor rest = model->forward(ids.narrow(1, 9, 3), &cache);
  BOOST_TEST(torch::allclose(torch::cat({first, rest}, 1), model->forward(ids), 1e-5, 1e-5));
  BOOST_TEST(contains(error_of([&] { model->forward(ids.narrow(1, 0, 5), &cache); }),
                      "sequence length 17 exceeds n_positions 16 (12 cached + 5 new tokens)"));
  BOOST_TEST(contains(error_of([&] { model->forward(torch::zeros({2, 1}, torch::kLong), &cache); }),
                      "the KvCache holds 3 sequences, input_ids 2"));
  KvCache three_layers;
  three_layers.keys.resize(3), three_layers.values.resize(3);
  BOOST_TEST(contains(error_of([&] { model->forward(ids, &three_layers); }), "the KvCache holds 3 layers, the model has 2"));
}

BOOST_AUTO_TEST_CASE(a_position_sees_only_earlier_tokens) {
  Gpt2 model = init_gpt2(small_config(), 2);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(50, {2, 10}, torch::kLong);
  torch::Tensor changed = ids.clone();
  changed.index_put_({torch::indexing::Slice(), 6}, (ids.index({torch::indexing::Slice(), 6}) + 1) % 50);
  torch::Tensor a = model->forward(ids), b = model->forward(changed);
  using torch::indexing::Slice;
  BOOST_TEST(torch::equal(a.index({Slice(), Slice(0, 6)}), b.index({Slice(), Slice(0, 6)})));
  BOOST_TEST(!torch::allclose(a.index({Slice(), Slice(6)}), b.index({Slice(), Slice(6)})));
}

BOOST_AUTO_TEST_CASE(training_reaches_every_parameter_and_applies_dropout) {
  Gpt2 model = init_gpt2(small_config(true), 9);
  torch::Tensor ids = torch::randint(50, {2, 8}, torch::kLong);
  model->train();
  torch::Tensor first = model->forward(ids);
  BOOST_TEST(!torch::allclose(first, model->forward(ids)));  // dropout draws differ
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
  Gpt2Config config = small_config(false);
  config.n_embd = 64;
  config.n_layer = 4;
  Gpt2 a = init_gpt2(config, 42), b = init_gpt2(config, 42), c = init_gpt2(config, 43);
  auto pa = parameters_of(a), pb = parameters_of(b), pc = parameters_of(c);
  for (const auto& [name, value] : pa) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_TEST(torch::equal(value, pb.at(name)));
      if (name.ends_with(".bias")) {
        BOOST_TEST(torch::equal(value, torch::zeros_like(value)));
      } else if (contains(name, "ln_")) {
        BOOST_TEST(torch::equal(value, torch::ones_like(value)));
      } else {
        BOOST_TEST(!torch::equal(value, pc.at(name)));
        const double expected = contains(name, "c_proj") ? 0.02 / std::sqrt(2.0 * config.n_layer) : 0.02;
        BOOST_TEST(std::abs(value.std().item<double>() - expected) < 0.1 * expected);
        BOOST_TEST(std::abs(value.mean().item<double>()) < 0.1 * expected);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(save_then_load_gives_the_same_model) {
  for (bool tied : {true, false}) {
    BOOST_TEST_CONTEXT("tied " << tied) {
      TempDir dir;
      Gpt2Config config = small_config(tied);
      config.n_inner = 40;
      config.extra["bos_token_id"] = 3;
      Gpt2 model = init_gpt2(config, 5);
      save_gpt2(model, dir.path);

      SafetensorsReader file(dir.path / "model.safetensors");
      BOOST_TEST(file.metadata().at("format") == "pt");
      BOOST_TEST(file.contains("lm_head.weight") == !tied);
      // Hugging Face's Conv1D layout: (in, out).
      BOOST_TEST(file.shape("transformer.h.0.attn.c_attn.weight") == (std::vector<int64_t>{32, 96}));
      BOOST_TEST(file.shape("transformer.h.0.mlp.c_fc.weight") == (std::vector<int64_t>{32, 40}));
      BOOST_TEST(torch::equal(file.tensor("transformer.h.1.mlp.c_proj.weight"),
                              model->transformer->h[1]->as<BlockImpl>()->mlp->c_proj->weight.t()));

      Gpt2 loaded = load_gpt2(dir.path);
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
  Gpt2 model = init_gpt2(small_config(), 1);
  std::string message = error_of([&] { save_gpt2(model, dir.path); });
  BOOST_TEST(contains(message, dir.path.string()));
  BOOST_TEST(contains(message, "not empty"));
  BOOST_TEST(!fs::exists(dir.path / "model.safetensors"));

  save_gpt2(model, dir.path, ExistingDirectory::overwrite);
  Gpt2 other = init_gpt2(small_config(), 2);
  save_gpt2(other, dir.path, ExistingDirectory::overwrite);
  Gpt2 reloaded = load_gpt2(dir.path);
  BOOST_TEST(torch::equal(parameters_of(reloaded).at("transformer.wte.weight"),
                          parameters_of(other).at("transformer.wte.weight")));
  BOOST_TEST(fs::exists(dir.path / "notes.txt"));
  BOOST_TEST(!fs::exists(dir.path / "model.safetensors.tmp"));
}

BOOST_AUTO_TEST_CASE(names_without_the_transformer_prefix_and_mask_buffers_are_accepted) {
  TempDir dir;
  Gpt2 model = init_gpt2(small_config(), 3);
  save_edited(model, dir.path, [](NamedTensors& state) {
    for (auto& [name, tensor] : state) name = name.substr(std::string("transformer.").size());
    state.emplace_back("h.0.attn.bias", torch::ones({1, 1, 16, 16}));
    state.emplace_back("h.1.attn.masked_bias", torch::tensor(-1e4));
  });
  Gpt2 loaded = load_gpt2(dir.path);
  BOOST_TEST(torch::equal(parameters_of(loaded).at("transformer.h.1.attn.c_attn.weight"),
                          parameters_of(model).at("transformer.h.1.attn.c_attn.weight")));
}

BOOST_AUTO_TEST_CASE(half_precision_weights_are_widened) {
  TempDir dir;
  Gpt2 model = init_gpt2(small_config(), 4);
  save_edited(model, dir.path, [](NamedTensors& state) {
    for (auto& [name, tensor] : state) tensor = tensor.to(torch::kHalf);
  });
  Gpt2 loaded = load_gpt2(dir.path);
  torch::Tensor wte = parameters_of(loaded).at("transformer.wte.weight");
  BOOST_TEST(wte.scalar_type() == torch::kFloat);
  BOOST_TEST(torch::equal(wte, parameters_of(model).at("transformer.wte.weight").to(torch::kHalf).to(torch::kFloat)));
}

BOOST_AUTO_TEST_CASE(mismatched_tensors_are_reported_by_name) {
  TempDir dir;
  Gpt2 model = init_gpt2(small_config(), 6);
  const std::string file = (dir.path / "model.safetensors").string();
  save_edited(model, dir.path, [](NamedTensors& state) {
    std::erase_if(state, [](const auto& entry) { return entry.first == "transformer.h.1.ln_2.bias"; });
    for (auto& [name, tensor] : state)
      if (name == "transformer.h.0.attn.c_attn.weight") tensor = tensor.t().contiguous();  // Linear layout
    state.emplace_back("transformer.h.2.ln_1.weight", torch::ones({32}));
    state.emplace_back("h.0.ln_1.weight", torch::ones({32}));
    state.emplace_back("transformer.wpe.bias", torch::ones({32}, torch::kLong));
  });
  const std::string message = load_error(dir.path);
  BOOST_TEST_MESSAGE("message: " << message);
  BOOST_TEST(contains(message, file + ": tensors do not match the GPT-2 architecture of config.json"));
  BOOST_TEST(contains(message, "missing 'transformer.h.1.ln_2.bias'"));
  BOOST_TEST(contains(message, "unexpected 'transformer.h.2.ln_1.weight', 'transformer.wpe.bias'"));
  BOOST_TEST(contains(message, "stored twice 'transformer.h.0.ln_1.weight' and 'h.0.ln_1.weight'"));
  BOOST_TEST(contains(message, "wrong shape 'transformer.h.0.attn.c_attn.weight' is [96, 32], expected [32, 96]"));

  save_edited(model, dir.path / "int", [](NamedTensors& state) {
    for (auto& [name, tensor] : state)
      if (name == "transformer.ln_f.weight") tensor = tensor.to(torch::kLong);
  });
  BOOST_TEST(contains(load_error(dir.path / "int"), "not floating point 'transformer.ln_f.weight' (Long)"));
}

BOOST_AUTO_TEST_CASE(untied_checkpoint_needs_its_head_and_tied_copy_must_match) {
  TempDir dir;
  Gpt2 tied = init_gpt2(small_config(true), 7);
  save_gpt2(tied, dir.path / "tied");
  std::ifstream in(dir.path / "tied" / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["tie_word_embeddings"] = false;
  std::ofstream(dir.path / "tied" / "config.json") << config.dump();
  BOOST_TEST(contains(load_error(dir.path / "tied"), "missing 'lm_head.weight'"));

  // A tied checkpoint that also stores the head loads when the copy equals wte ...
  save_edited(tied, dir.path / "copy", [](NamedTensors& state) {
    torch::Tensor wte;
    for (auto& [name, tensor] : state)
      if (name == "transformer.wte.weight") wte = tensor;
    state.emplace_back("lm_head.weight", wte.clone());
  });
  BOOST_TEST(torch::equal(parameters_of(tied).at("transformer.wte.weight"),
                          load_gpt2(dir.path / "copy")->transformer->wte->weight));
  // ... and is refused when it does not.
  save_edited(tied, dir.path / "differs", [](NamedTensors& state) {
    state.emplace_back("lm_head.weight", torch::zeros({50, 32}));
  });
  BOOST_TEST(contains(load_error(dir.path / "differs"), "'lm_head.weight' differs from 'transformer.wte.weight'"));
}

BOOST_AUTO_TEST_CASE(directory_problems_are_named) {
  TempDir dir;
  BOOST_TEST(contains(load_error(dir.path), dir.path.string() + ": not a directory"));
  fs::create_directories(dir.path);
  BOOST_TEST(contains(load_error(dir.path), (dir.path / "config.json").string() + ": file not found"));
  std::ofstream(dir.path / "config.json") << small_config().to_json().dump();
  BOOST_TEST(contains(load_error(dir.path), dir.path.string() + ": has neither model.safetensors nor"));
  std::ofstream(dir.path / "model.safetensors") << "abc";
  BOOST_TEST(contains(load_error(dir.path), (dir.path / "model.safetensors").string() + ": file is 3 bytes"));
}

BOOST_AUTO_TEST_CASE(sharded_checkpoint_loads) {
  TempDir dir;
  Gpt2 model = init_gpt2(small_config(false), 8);
  save_gpt2(model, dir.path);
  // Split model.safetensors into two shards with an index, as Hugging Face does.
  NamedTensors state = load_safetensors(dir.path / "model.safetensors");
  NamedTensors first(state.begin(), state.begin() + 10), second(state.begin() + 10, state.end());
  save_safetensors(dir.path / "model-00001-of-00002.safetensors", first);
  save_safetensors(dir.path / "model-00002-of-00002.safetensors", second);
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  for (const auto& [name, tensor] : first) index["weight_map"][name] = "model-00001-of-00002.safetensors";
  for (const auto& [name, tensor] : second) index["weight_map"][name] = "model-00002-of-00002.safetensors";
  state.clear();
  fs::remove(dir.path / "model.safetensors");
  std::ofstream(dir.path / "model.safetensors.index.json") << index.dump();

  Gpt2 loaded = load_gpt2(dir.path);
  auto expected = parameters_of(model);
  for (const auto& [name, value] : parameters_of(loaded)) BOOST_TEST(torch::equal(value, expected.at(name)), name);
}

// model/parameter_init.h: each element's initial value depends on (seed, name, index)
// alone. The counter-based normal has the standard normal's moments and mass within one
// and two standard deviations; values asked at any indices equal the whole tensor's
// there; an embedding's padding row is 0.
BOOST_AUTO_TEST_CASE(counter_based_initial_values_are_normal_and_independent_of_what_is_drawn) {
  const uint64_t key = parameter_key(7, "transformer.h.0.mlp.c_fc.weight");
  BOOST_TEST(key != parameter_key(8, "transformer.h.0.mlp.c_fc.weight"));
  BOOST_TEST(key != parameter_key(7, "transformer.h.1.mlp.c_fc.weight"));
  const int64_t n = 400000;
  double sum = 0, square_sum = 0, fourth = 0;
  int64_t within_one = 0, within_two = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = counter_normal(key, static_cast<uint64_t>(i));
    sum += x;
    square_sum += x * x;
    fourth += x * x * x * x;
    within_one += std::abs(x) < 1.0;
    within_two += std::abs(x) < 2.0;
  }
  // Standard errors at n = 400000: mean 0.0016, variance 0.0022, kurtosis 0.008.
  BOOST_TEST(std::abs(sum / n) < 0.008);
  BOOST_TEST(std::abs(square_sum / n - 1.0) < 0.01);
  BOOST_TEST(std::abs(fourth / n - 3.0) < 0.05);
  BOOST_TEST(std::abs(double(within_one) / n - 0.682689) < 0.004);
  BOOST_TEST(std::abs(double(within_two) / n - 0.954500) < 0.002);

  ParameterInit init;
  init.kind = ParameterInit::Kind::normal;
  init.std = 0.02;
  init.zero_row = 3;
  at::Tensor whole = torch::empty({10, 7});
  fill_initial_values(init, key, whole);
  BOOST_TEST(torch::equal(whole[3], torch::zeros({7})));
  BOOST_TEST(whole[4][2].item<float>() == static_cast<float>(0.02 * counter_normal(key, 4 * 7 + 2)));
  // Any indices, in any order and shape, read the same values.
  const at::Tensor indices = torch::tensor({{69, 0, 21}, {22, 40, 5}}, torch::kLong);
  const at::Tensor some = initial_values_at(init, key, {10, 7}, indices);
  BOOST_TEST(torch::equal(some, whole.reshape({-1}).index_select(0, indices.reshape({-1})).reshape({2, 3})));
  ParameterInit ones;
  ones.value = 1.0;
  BOOST_TEST(torch::equal(initial_values_at(ones, key, {4}, torch::arange(4)), torch::ones({4})));
  BOOST_CHECK_THROW(initial_values_at(init, key, {10, 7}, torch::arange(3).to(torch::kInt)), std::invalid_argument);
}

BOOST_AUTO_TEST_SUITE_END()  // test_gpt2_checkpoint
