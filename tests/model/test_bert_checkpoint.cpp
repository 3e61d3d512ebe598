#include <boost/test/unit_test.hpp>

#include "model/bert_checkpoint.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>

#include <unistd.h>

BOOST_AUTO_TEST_SUITE(test_bert_checkpoint)

namespace fs = std::filesystem;
using namespace ftrain::model;
using torch::indexing::Slice;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("ftrain_test_bert_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

BertConfig small_config() {
  BertConfig config;
  config.vocab_size = 50;
  config.hidden_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.intermediate_size = 48;
  config.max_position_embeddings = 16;
  config.type_vocab_size = 2;
  config.pad_token_id = 0;
  config.initializer_range = 0.2;  // activations of order one
  return config;
}

std::map<std::string, torch::Tensor> parameters_of(Bert& model) {
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
void save_edited(Bert& model, const fs::path& dir, Edit&& edit) {
  save_bert(model, dir);
  NamedTensors state = load_safetensors(dir / "model.safetensors");
  for (auto& [name, tensor] : state) tensor = tensor.clone();  // detach from the mapping before overwriting
  edit(state);
  save_safetensors(dir / "model.safetensors", state, {{"format", "pt"}});
}

std::string load_error(const fs::path& dir) {
  return error_of([&] { load_bert(dir); });
}

void drop(NamedTensors& state, const std::string& name) {
  std::erase_if(state, [&](const auto& item) { return item.first == name; });
}

torch::Tensor& tensor_named(NamedTensors& state, const std::string& name) {
  for (auto& [key, value] : state)
    if (key == name) return value;
  BOOST_FAIL("no tensor " << name);
  throw std::logic_error("unreachable");
}

bool same_parameters(Bert& a, Bert& b) {
  auto pa = parameters_of(a), pb = parameters_of(b);
  if (pa.size() != pb.size()) return false;
  for (const auto& [name, value] : pa)
    if (!pb.count(name) || !torch::equal(value, pb.at(name))) return false;
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(parameters_have_bert_model_names_and_shapes) {
  Bert model(small_config());
  auto parameters = parameters_of(model);
  // BertModel: 5 embedding tensors, 16 per layer, 2 for the pooler.
  BOOST_TEST(parameters.size() == 5u + 2u * 16u + 2u);
  auto shape = [&](const std::string& name) { return parameters.at(name).sizes().vec(); };
  BOOST_TEST(shape("embeddings.word_embeddings.weight") == (std::vector<int64_t>{50, 32}));
  BOOST_TEST(shape("embeddings.position_embeddings.weight") == (std::vector<int64_t>{16, 32}));
  BOOST_TEST(shape("embeddings.token_type_embeddings.weight") == (std::vector<int64_t>{2, 32}));
  BOOST_TEST(shape("embeddings.LayerNorm.weight") == (std::vector<int64_t>{32}));
  BOOST_TEST(shape("encoder.layer.1.attention.self.query.weight") == (std::vector<int64_t>{32, 32}));
  BOOST_TEST(shape("encoder.layer.1.attention.self.value.bias") == (std::vector<int64_t>{32}));
  BOOST_TEST(shape("encoder.layer.0.attention.output.dense.weight") == (std::vector<int64_t>{32, 32}));
  BOOST_TEST(shape("encoder.layer.0.attention.output.LayerNorm.bias") == (std::vector<int64_t>{32}));
  BOOST_TEST(shape("encoder.layer.0.intermediate.dense.weight") == (std::vector<int64_t>{48, 32}));
  BOOST_TEST(shape("encoder.layer.0.output.dense.weight") == (std::vector<int64_t>{32, 48}));
  BOOST_TEST(shape("encoder.layer.0.output.LayerNorm.weight") == (std::vector<int64_t>{32}));
  BOOST_TEST(shape("pooler.dense.weight") == (std::vector<int64_t>{32, 32}));
}

BOOST_AUTO_TEST_CASE(forward_shapes_and_input_checks) {
  Bert model = init_bert(small_config(), 1);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(50, {3, 7}, torch::kLong);
  BertOutput out = model->forward(ids);
  BOOST_TEST(out.last_hidden_state.sizes().vec() == (std::vector<int64_t>{3, 7, 32}));
  BOOST_TEST(out.pooler_output.sizes().vec() == (std::vector<int64_t>{3, 32}));
  // The pooler is tanh(dense(first token)).
  torch::Tensor pooled = torch::tanh(model->pooler->dense(out.last_hidden_state.index({Slice(), 0})));
  BOOST_TEST(torch::allclose(out.pooler_output, pooled));

  BOOST_TEST(contains(error_of([&] { model->forward(torch::zeros({1, 17}, torch::kLong)); }),
                      "sequence length 17 exceeds max_position_embeddings 16"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids.to(torch::kInt)); }), "input_ids must be an int64 tensor"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids[0]); }), "of shape (B, T)"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids, torch::ones({3, 6})); }),
                      "attention_mask must have the shape of input_ids [3, 7]"));
  BOOST_TEST(contains(error_of([&] { model->forward(ids, {}, torch::zeros({3, 7}, torch::kInt)); }),
                      "token_type_ids must be an int64 tensor"));
}

BOOST_AUTO_TEST_CASE(omitted_mask_and_types_mean_no_padding_and_type_zero) {
  Bert model = init_bert(small_config(), 2);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(1, 50, {2, 9}, torch::kLong);
  BertOutput plain = model->forward(ids);
  BertOutput explicit_ = model->forward(ids, torch::ones({2, 9}, torch::kLong), torch::zeros({2, 9}, torch::kLong));
  BOOST_TEST(torch::allclose(plain.last_hidden_state, explicit_.last_hidden_state, 1e-5, 1e-6));
  BOOST_TEST(torch::allclose(plain.pooler_output, explicit_.pooler_output, 1e-5, 1e-6));
  // A boolean mask means the same as 0/1 integers.
  BertOutput boolean = model->forward(ids, torch::ones({2, 9}, torch::kBool));
  BOOST_TEST(torch::allclose(plain.last_hidden_state, boolean.last_hidden_state, 1e-5, 1e-6));
  // Token types change the result.
  BertOutput typed = model->forward(ids, {}, torch::ones({2, 9}, torch::kLong));
  BOOST_TEST(!torch::allclose(plain.last_hidden_state, typed.last_hidden_state, 1e-3, 1e-3));
}

BOOST_AUTO_TEST_CASE(every_position_sees_every_token_but_not_padding) {
  Bert model = init_bert(small_config(), 3);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(1, 50, {2, 10}, torch::kLong);
  torch::Tensor changed = ids.clone();
  changed.index_put_({Slice(), 6}, ids.index({Slice(), 6}) % 49 + 1);
  // Bidirectional: a later token changes earlier positions.
  torch::Tensor a = model->forward(ids).last_hidden_state, b = model->forward(changed).last_hidden_state;
  BOOST_TEST(!torch::allclose(a.index({Slice(), Slice(0, 6)}), b.index({Slice(), Slice(0, 6)}), 1e-3, 1e-3));

  // Positions 6.. are padding: what they hold does not reach the tokens.
  torch::Tensor mask = torch::ones({2, 10}, torch::kLong);
  mask.index_put_({Slice(), Slice(6)}, 0);
  torch::Tensor pa = model->forward(ids, mask).last_hidden_state.index({Slice(), Slice(0, 6)});
  torch::Tensor pb = model->forward(changed, mask).last_hidden_state.index({Slice(), Slice(0, 6)});
  BOOST_TEST(torch::allclose(pa, pb, 1e-5, 1e-6));
  // ... and the tokens read as if the sequence ended there.
  torch::Tensor alone = model->forward(ids.index({Slice(), Slice(0, 6)})).last_hidden_state;
  BOOST_TEST(torch::allclose(pa, alone, 1e-5, 1e-5));

  // A sequence that is all padding stays finite.
  torch::Tensor none = torch::zeros({2, 10}, torch::kLong);
  BOOST_TEST(torch::isfinite(model->forward(ids, none).last_hidden_state).all().item<bool>());
}

BOOST_AUTO_TEST_CASE(an_attention_shard_computes_its_own_heads) {
  // Projections holding heads 1 and 2 of 4 (as a tensor-parallel shard would) give
  // those heads' columns of the full attention.
  BertConfig config = small_config();
  torch::manual_seed(4);
  BertSelfAttention full(config), shard(config);
  full->eval(), shard->eval();
  const int64_t hs = config.head_dim();
  torch::NoGradGuard no_grad;
  auto heads_1_and_2 = [&](const ftrain::model::Linear& projection) {
    torch::nn::Linear part(config.hidden_size, 2 * hs);
    part->weight.copy_(projection->weight.index({Slice(hs, 3 * hs)}));
    part->bias.copy_(projection->bias.index({Slice(hs, 3 * hs)}));
    return part;
  };
  shard->query = shard->replace_module("query", heads_1_and_2(full->query));
  shard->key = shard->replace_module("key", heads_1_and_2(full->key));
  shard->value = shard->replace_module("value", heads_1_and_2(full->value));
  torch::Tensor x = torch::randn({2, 5, config.hidden_size});
  torch::Tensor mask = torch::ones({2, 5});
  mask.index_put_({1, Slice(3)}, 0);
  torch::Tensor bias = torch::zeros({2, 1, 1, 5}).masked_fill(mask.eq(0).view({2, 1, 1, 5}), -1e30);
  torch::Tensor expected = full(x, bias).index({"...", Slice(hs, 3 * hs)});
  torch::Tensor got = shard(x, bias);
  BOOST_TEST(got.sizes().vec() == (std::vector<int64_t>{2, 5, 2 * hs}));
  BOOST_TEST(torch::allclose(got, expected, 1e-5, 1e-6));
}

BOOST_AUTO_TEST_CASE(training_reaches_every_parameter_and_applies_dropout) {
  BertConfig config = small_config();
  config.hidden_dropout_prob = 0.3;
  config.attention_probs_dropout_prob = 0.3;
  Bert model = init_bert(config, 5);
  torch::Tensor ids = torch::randint(1, 50, {2, 8}, torch::kLong);
  ids.index_put_({1, Slice(6)}, 0);  // the pad token
  torch::Tensor mask = ids.ne(0).to(torch::kLong);
  torch::Tensor types = torch::zeros({2, 8}, torch::kLong);
  types.index_put_({Slice(), Slice(4)}, 1);

  model->train();
  BertOutput out = model->forward(ids, mask, types);
  (out.last_hidden_state.pow(2).sum() + out.pooler_output.sum()).backward();
  for (const auto& item : model->named_parameters()) {
    BOOST_TEST_CONTEXT(item.key()) {
      BOOST_TEST(item.value().grad().defined());
      BOOST_TEST(item.value().grad().abs().sum().item<double>() > 0.0);
    }
  }
  // As in Hugging Face, the padding row of the word embeddings is not trained.
  torch::Tensor word_grad = model->embeddings->word_embeddings->weight.grad();
  BOOST_TEST(word_grad[0].abs().sum().item<double>() == 0.0);

  torch::NoGradGuard no_grad;
  torch::Tensor first = model->forward(ids, mask, types).last_hidden_state;
  torch::Tensor second = model->forward(ids, mask, types).last_hidden_state;
  BOOST_TEST(!torch::allclose(first, second));
  model->eval();
  BOOST_TEST(torch::equal(model->forward(ids, mask, types).last_hidden_state,
                          model->forward(ids, mask, types).last_hidden_state));
}

BOOST_AUTO_TEST_CASE(activations_follow_hidden_act) {
  BertConfig config = small_config();
  config.intermediate_size = config.hidden_size;
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::linspace(-3, 3, config.hidden_size);
  const torch::Tensor erf_gelu = 0.5 * x * (1 + torch::erf(x / std::sqrt(2.0)));
  const torch::Tensor tanh_gelu = 0.5 * x * (1 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3))));
  const std::map<std::string, torch::Tensor> expected = {
      {"gelu", erf_gelu}, {"gelu_new", tanh_gelu}, {"gelu_pytorch_tanh", tanh_gelu}, {"relu", torch::relu(x)}};
  for (const auto& [act, values] : expected) {
    config.hidden_act = act;
    // With an identity dense layer the intermediate is the activation alone.
    BertIntermediate intermediate(config);
    intermediate->dense->weight.copy_(torch::eye(config.hidden_size));
    intermediate->dense->bias.zero_();
    BOOST_TEST(torch::allclose(intermediate(x), values, 1e-5, 1e-6), act);
  }
  BOOST_TEST(!torch::allclose(erf_gelu, tanh_gelu, 1e-4, 1e-5));  // the check tells the two apart
}

BOOST_AUTO_TEST_CASE(init_follows_hugging_face) {
  BertConfig config = small_config();
  config.vocab_size = 400;
  config.hidden_size = 64;
  config.intermediate_size = 256;
  config.initializer_range = 0.02;
  Bert model = init_bert(config, 7);
  for (const auto& [name, value] : parameters_of(model)) {
    BOOST_TEST_CONTEXT(name) {
      const bool layer_norm = contains(name, "LayerNorm");
      const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
      if (layer_norm && !bias) BOOST_TEST(torch::equal(value, torch::ones_like(value)));
      else if (bias) BOOST_TEST(torch::equal(value, torch::zeros_like(value)));
      else if (value.numel() >= 4096) {
        torch::Tensor drawn = name == "embeddings.word_embeddings.weight" ? value.index({Slice(1)}) : value;
        BOOST_TEST(std::abs(drawn.std().item<double>() / 0.02 - 1.0) < 0.05);
        BOOST_TEST(std::abs(drawn.mean().item<double>()) < 0.002);
      }
    }
  }
  // The padding row is zero.
  BOOST_TEST(model->embeddings->word_embeddings->weight[0].abs().sum().item<double>() == 0.0);

  Bert again = init_bert(config, 7), other = init_bert(config, 8);
  BOOST_TEST(same_parameters(model, again));
  BOOST_TEST(!same_parameters(model, other));
}

BOOST_AUTO_TEST_CASE(save_and_load_round_trip) {
  TempDir dir;
  Bert model = init_bert(small_config(), 9);
  save_bert(model, dir.path);
  BOOST_TEST(fs::exists(dir.path / "config.json"));
  SafetensorsReader saved(dir.path / "model.safetensors");
  BOOST_TEST(saved.metadata().at("format") == "pt");
  BOOST_TEST(saved.names().size() == parameters_of(model).size());
  BOOST_TEST(saved.contains("encoder.layer.1.attention.self.key.weight"));
  BOOST_TEST(saved.contains("pooler.dense.bias"));

  BertLoadReport report;
  Bert loaded = load_bert(dir.path, &report);
  BOOST_TEST(same_parameters(model, loaded));
  BOOST_TEST(!report.pooler_initialised);
  BOOST_TEST(report.ignored_heads.empty());
  BOOST_TEST(report.warnings.empty());
  BOOST_TEST(loaded->config().to_json() == model->config().to_json());

  BOOST_TEST(contains(error_of([&] { save_bert(model, dir.path); }), "refusing to overwrite"));
  save_bert(loaded, dir.path, ExistingDirectory::overwrite);
}

BOOST_AUTO_TEST_CASE(task_model_layouts_load) {
  // BertFor* checkpoints: the encoder under `bert.`, heads beside it, old index
  // buffers and TensorFlow's gamma/beta names.
  TempDir dir;
  Bert model = init_bert(small_config(), 10);
  save_edited(model, dir.path, [](NamedTensors& state) {
    for (auto& [name, value] : state) {
      name = "bert." + name;
      if (name == "bert.embeddings.LayerNorm.weight") name = "bert.embeddings.LayerNorm.gamma";
      if (name == "bert.embeddings.LayerNorm.bias") name = "bert.embeddings.LayerNorm.beta";
    }
    state.emplace_back("bert.embeddings.position_ids", torch::arange(16).unsqueeze(0));
    state.emplace_back("classifier.weight", torch::zeros({3, 32}));
    state.emplace_back("classifier.bias", torch::zeros({3}));
    state.emplace_back("cls.predictions.bias", torch::zeros({50}));
  });
  BertLoadReport report;
  Bert loaded = load_bert(dir.path, &report);
  BOOST_TEST(same_parameters(model, loaded));
  BOOST_TEST(!report.pooler_initialised);
  BOOST_TEST(report.ignored_heads ==
                 (std::vector<std::string>{"classifier.weight", "classifier.bias", "cls.predictions.bias"}),
             boost::test_tools::per_element());
  BOOST_TEST(report.warnings.size() == 1u);
  BOOST_TEST(contains(report.warnings.at(0), "'classifier.weight'"));
}

BOOST_AUTO_TEST_CASE(a_missing_pooler_is_initialised_and_reported) {
  TempDir dir;
  Bert model = init_bert(small_config(), 11);
  save_edited(model, dir.path, [](NamedTensors& state) {
    drop(state, "pooler.dense.weight");
    drop(state, "pooler.dense.bias");
  });
  BertLoadReport report, again_report;
  Bert loaded = load_bert(dir.path, &report, 5);
  Bert again = load_bert(dir.path, &again_report, 5);
  BOOST_TEST(report.pooler_initialised);
  BOOST_TEST(report.warnings.size() == 1u);
  BOOST_TEST(contains(report.warnings.at(0), "pooler is randomly initialised"));
  BOOST_TEST(contains(report.warnings.at(0), (dir.path / "model.safetensors").string()));
  BOOST_TEST(same_parameters(loaded, again));  // the seed decides the pooler
  torch::Tensor pooler = loaded->pooler->dense->weight;
  BOOST_TEST(!torch::equal(pooler, model->pooler->dense->weight));
  BOOST_TEST(std::abs(pooler.std().item<double>() / 0.2 - 1.0) < 0.15);
  BOOST_TEST(torch::equal(loaded->pooler->dense->bias, torch::zeros({32})));
  BOOST_TEST(torch::equal(loaded->encoder->layer[1]->as<BertLayerImpl>()->output->dense->weight,
                          model->encoder->layer[1]->as<BertLayerImpl>()->output->dense->weight));

  // Half a pooler is a broken file.
  TempDir half;
  save_edited(model, half.path, [](NamedTensors& state) { drop(state, "pooler.dense.bias"); });
  BOOST_TEST(contains(load_error(half.path), "missing 'pooler.dense.bias'"));
}

BOOST_AUTO_TEST_CASE(mismatched_tensors_are_named) {
  Bert model = init_bert(small_config(), 12);
  {
    TempDir dir;
    save_edited(model, dir.path, [](NamedTensors& state) {
      drop(state, "encoder.layer.1.intermediate.dense.bias");
      state.emplace_back("encoder.layer.2.output.dense.weight", torch::zeros({32, 48}));
      state.emplace_back("qa_outputs.weight", torch::zeros({2, 32}));
      tensor_named(state, "encoder.layer.0.attention.self.query.weight") = torch::zeros({32, 16});
      tensor_named(state, "embeddings.token_type_embeddings.weight") = torch::zeros({2, 32}, torch::kLong);
    });
    const std::string message = load_error(dir.path);
    BOOST_TEST_CONTEXT(message) {
      BOOST_TEST(message.find((dir.path / "model.safetensors").string() + ": ") == 0u);
      BOOST_TEST(contains(message, "num_hidden_layers=2 hidden_size=32"));
      BOOST_TEST(contains(message, "missing 'encoder.layer.1.intermediate.dense.bias'"));
      BOOST_TEST(contains(message, "unexpected 'encoder.layer.2.output.dense.weight', 'qa_outputs.weight'"));
      BOOST_TEST(contains(message, "wrong shape 'encoder.layer.0.attention.self.query.weight' is [32, 16], "
                                   "expected [32, 32]"));
      BOOST_TEST(contains(message, "not floating point 'embeddings.token_type_embeddings.weight' (Long)"));
      // Present but unusable tensors are not also reported missing.
      BOOST_TEST(!contains(message, "missing 'encoder.layer.0.attention.self.query.weight'"));
    }
  }
  {
    TempDir dir;
    save_edited(model, dir.path, [](NamedTensors& state) {
      state.emplace_back("bert.pooler.dense.bias", tensor_named(state, "pooler.dense.bias").clone());
    });
    BOOST_TEST(contains(load_error(dir.path), "stored twice 'pooler.dense.bias' and 'bert.pooler.dense.bias'"));
  }
  {
    TempDir dir;
    fs::create_directories(dir.path);
    BOOST_TEST(contains(load_error(dir.path), "config.json: file not found"));
    std::ofstream(dir.path / "config.json") << model->config().to_json().dump();
    BOOST_TEST(contains(load_error(dir.path), "has neither model.safetensors nor model.safetensors.index.json"));
  }
  BOOST_TEST(contains(load_error("/nonexistent/ftrain_bert"), "not a directory"));
}

BOOST_AUTO_TEST_CASE(sharded_checkpoints_load) {
  TempDir dir;
  Bert model = init_bert(small_config(), 13);
  fs::create_directories(dir.path);
  std::ofstream(dir.path / "config.json") << model->config().to_json().dump();
  NamedTensors state = to_hf_state(model);
  NamedTensors first(state.begin(), state.begin() + 10), second(state.begin() + 10, state.end());
  save_safetensors(dir.path / "model-00001-of-00002.safetensors", first);
  save_safetensors(dir.path / "model-00002-of-00002.safetensors", second);
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  for (const auto& [name, value] : first) index["weight_map"][name] = "model-00001-of-00002.safetensors";
  for (const auto& [name, value] : second) index["weight_map"][name] = "model-00002-of-00002.safetensors";
  std::ofstream(dir.path / "model.safetensors.index.json") << index.dump();
  Bert loaded = load_bert(dir.path);
  BOOST_TEST(same_parameters(model, loaded));
}

BOOST_AUTO_TEST_SUITE_END()  // test_bert_checkpoint
