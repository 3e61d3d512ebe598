// Sharded loading (dist::load_tensor_parallel) under mpirun: the whole world is one
// tensor-parallel group of 2 or 4.
//
// Rank 0 writes small Hugging Face directories; every rank then reads each twice, the
// old way (the whole model, then apply_tensor_parallel) and split as it is built, and
// every local parameter and the plan must be exactly equal. The directories cover what
// the split read has to get right: vocabulary padding rows (51 tokens), a tied head and
// a tied copy stored beside it, GPT-2's transposed Conv1D weights, grouped-query
// attention whose key/value heads are replicated at tp 4, names with and without the
// family prefix, bfloat16 files, checkpoints sharded over several files through
// model.safetensors.index.json, BERT classifiers with a new head and pooler drawn from
// the seed, and GPT-2 and Llama classifiers. Broken files are refused naming the file
// and the tensor.
#define BOOST_TEST_MODULE test_tensor_parallel_load
#include <boost/test/unit_test.hpp>

#include <mpi.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/tensor_parallel.h"
#include "mpi_job.h"
#include "model/bert_checkpoint.h"
#include "model/causal_lm.h"
#include "model/classifier.h"
#include "model/gpt2_checkpoint.h"
#include "model/llama_checkpoint.h"
#include "model/safetensors.h"

namespace dist = ftrain::dist;
namespace model = ftrain::model;
namespace fs = std::filesystem;

namespace {

struct JobOptions {
  static constexpr const char* program = "test_tensor_parallel_load";
  static ftrain::dist::CommOptions make() {
    ftrain::dist::CommOptions options;
    MPI_Comm_size(MPI_COMM_WORLD, &options.tp);
    return options;
  }
};
using Job = ftrain::testing::MpiJob<JobOptions>;
BOOST_TEST_GLOBAL_FIXTURE(Job);

dist::Communicator& comm() { return Job::comm(); }
int64_t N() { return comm().tp().size(); }

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A directory all ranks share, made by rank 0.
fs::path shared_directory(const std::string& name) {
  std::string root;
  if (comm().rank() == 0) {
    std::string pattern = (fs::temp_directory_path() / "ftrain_tp_load_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    root = pattern;
  }
  root = comm().world().broadcast(root, 0);
  return fs::path(root) / name;
}

// How the stored copy of a model differs from what save_* writes.
struct Storage {
  at::ScalarType dtype = at::kFloat;
  int files = 1;                                   // > 1: model.safetensors.index.json and its shards
  std::function<std::string(const std::string&)> rename = [](const std::string& name) { return name; };
  std::vector<std::pair<std::string, std::string>> also = {};  // (stored name, copy of this stored name)
};

// Rank 0 writes `tensors` and `config` as a Hugging Face directory; everyone waits.
void write_directory(const fs::path& dir, const model::NamedTensors& tensors, nlohmann::json config,
                     const Storage& storage = {}) {
  if (comm().rank() == 0) {
    fs::create_directories(dir);
    model::NamedTensors stored;
    for (const auto& [name, tensor] : tensors) stored.emplace_back(storage.rename(name), tensor.to(storage.dtype).contiguous());
    for (const auto& [name, source] : storage.also)
      for (const auto& [stored_name, tensor] : model::NamedTensors(stored))
        if (stored_name == source) stored.emplace_back(name, tensor);
    if (storage.files == 1) {
      model::save_safetensors(dir / "model.safetensors", stored);
    } else {
      // Tensor i goes to file i % files.
      nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
      std::vector<model::NamedTensors> parts(storage.files);
      for (size_t i = 0; i < stored.size(); ++i) parts[i % storage.files].push_back(stored[i]);
      for (int f = 0; f < storage.files; ++f) {
        const std::string file = "model-0000" + std::to_string(f + 1) + "-of-0000" + std::to_string(storage.files) +
                                 ".safetensors";
        model::save_safetensors(dir / file, parts[f]);
        for (const auto& [name, tensor] : parts[f]) index["weight_map"][name] = file;
      }
      std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
    }
    config["torch_dtype"] = storage.dtype == at::kBFloat16 ? "bfloat16" : "float32";
    std::ofstream(dir / "config.json") << config.dump(2);
  }
  comm().world().barrier();
}

// Seeded noise on every parameter, so zero biases and unit norms cannot hide a part
// read from the wrong place.
void perturb(torch::nn::Module& module, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters())
    parameter.add_(torch::randn(parameter.sizes(), generator, parameter.scalar_type()) * 0.1);
}

// Every local parameter and every entry of the plans exactly equal.
void check_same(torch::nn::Module& whole_then_split, const dist::TensorParallelPlan& expected_plan,
                torch::nn::Module& split_as_read, const dist::TensorParallelPlan& plan) {
  auto expected = whole_then_split.named_parameters();
  auto got = split_as_read.named_parameters();
  BOOST_TEST_REQUIRE(got.size() == expected.size());
  for (const auto& item : expected) {
    BOOST_TEST_CONTEXT(item.key() << " on rank " << comm().rank()) {
      BOOST_TEST_REQUIRE(got.contains(item.key()));
      const at::Tensor& value = got[item.key()];
      BOOST_TEST(value.sizes() == item.value().sizes());
      BOOST_TEST(value.scalar_type() == at::kFloat);
      BOOST_TEST(torch::equal(value, item.value()), "values differ");
      BOOST_TEST(value.requires_grad());
    }
  }
  BOOST_TEST(plan.tp_size == expected_plan.tp_size);
  BOOST_TEST_REQUIRE(plan.sharded.size() == expected_plan.sharded.size());
  for (const auto& [name, shard] : expected_plan.sharded) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_TEST_REQUIRE(plan.sharded.count(name) == 1u);
      const dist::ParameterShard& got_shard = plan.sharded.at(name);
      BOOST_TEST(got_shard.dim == shard.dim);
      BOOST_TEST(torch::equal(got_shard.index, shard.index));
      BOOST_TEST(got_shard.global_shape == shard.global_shape);
      BOOST_TEST(got_shard.replicas == shard.replicas);
    }
  }
}

void check_causal_lm(const fs::path& dir) {
  model::CausalLm whole = model::CausalLm::load({.path = dir});
  const dist::TensorParallelPlan expected_plan = dist::apply_tensor_parallel(whole, comm());
  dist::TensorParallelPlan plan;
  model::CausalLm split = dist::load_tensor_parallel(model::CausalLmOptions{.path = dir}, comm(), plan);
  check_same(whole.module(), expected_plan, split.module(), plan);

  // Both compute the same vocabulary shard of the logits.
  torch::NoGradGuard no_grad;
  whole.module().eval(), split.module().eval();
  const at::Tensor ids = torch::randint(whole.vocab_size(), {2, 7}, at::make_generator<at::CPUGeneratorImpl>(3));
  BOOST_TEST(torch::equal(split.logits(ids), whole.logits(ids)));
}

model::Gpt2Config tiny_gpt2(bool tied) {
  model::Gpt2Config config;
  config.vocab_size = 51;  // not a multiple of 2 or 4: padding rows on the last rank
  config.n_positions = 16;
  config.n_embd = 32;
  config.n_layer = 2;
  config.n_head = 4;
  config.tie_word_embeddings = tied;
  return config;
}

model::LlamaConfig tiny_llama() {
  model::LlamaConfig config;
  config.vocab_size = 51;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;  // split at tp 2, replicated at tp 4
  config.max_position_embeddings = 32;
  config.tie_word_embeddings = false;
  config.attention_bias = true;
  return config;
}

model::BertConfig tiny_bert() {
  model::BertConfig config;
  config.vocab_size = 51;
  config.hidden_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.intermediate_size = 64;
  config.max_position_embeddings = 32;
  return config;
}

model::NamedTensors gpt2_tensors(const model::Gpt2Config& config, uint64_t seed) {
  model::Gpt2 gpt2 = model::init_gpt2(config, seed);
  perturb(*gpt2, seed);
  model::NamedTensors out;
  for (const auto& [name, tensor] : model::to_hf_state(gpt2)) out.emplace_back(name, tensor.contiguous());
  return out;
}

BOOST_AUTO_TEST_CASE(gpt2_tied_with_padding_rows_reads_the_same_parts) {
  const fs::path dir = shared_directory("gpt2_tied");
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  write_directory(dir, gpt2_tensors(config, 1), config.to_json());
  check_causal_lm(dir);
}

BOOST_AUTO_TEST_CASE(gpt2_untied_in_bfloat16_over_three_files_without_the_prefix_reads_the_same_parts) {
  const fs::path dir = shared_directory("gpt2_untied_sharded");
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/false);
  Storage storage{.dtype = at::kBFloat16, .files = 3, .rename = [](const std::string& name) {
                    return name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;  // GPT2Model's names
                  }};
  write_directory(dir, gpt2_tensors(config, 2), config.to_json(), storage);
  check_causal_lm(dir);
}

BOOST_AUTO_TEST_CASE(a_tied_head_stored_beside_the_embedding_is_checked_and_read_the_same) {
  const fs::path dir = shared_directory("gpt2_tied_copy");
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  write_directory(dir, gpt2_tensors(config, 3), config.to_json(),
                  Storage{.also = {{"lm_head.weight", "transformer.wte.weight"}}});
  check_causal_lm(dir);

  // A different head under tie_word_embeddings is refused by both reads.
  const fs::path differing = shared_directory("gpt2_tied_differing");
  model::NamedTensors tensors = gpt2_tensors(config, 3);
  tensors.emplace_back("lm_head.weight", torch::zeros({config.vocab_size, config.n_embd}));
  write_directory(differing, tensors, config.to_json());
  dist::TensorParallelPlan plan;
  try {
    dist::load_tensor_parallel(model::CausalLmOptions{.path = differing}, comm(), plan);
    BOOST_ERROR("a tied head differing from the embedding was accepted");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(contains(e.what(), "'lm_head.weight' differs from 'transformer.wte.weight'"), e.what());
  }
}

BOOST_AUTO_TEST_CASE(llama_with_replicated_key_value_heads_in_bfloat16_reads_the_same_parts) {
  const fs::path dir = shared_directory("llama_gqa");
  const model::LlamaConfig config = tiny_llama();
  model::Llama llama = model::init_llama(config, 4);
  perturb(*llama, 4);
  write_directory(dir, model::to_hf_state(llama), config.to_json(), Storage{.dtype = at::kBFloat16, .files = 2});
  check_causal_lm(dir);
  if (N() == 4) {  // two key/value heads over four ranks: each is read by two
    dist::TensorParallelPlan plan;
    dist::load_tensor_parallel(model::CausalLmOptions{.path = dir}, comm(), plan);
    BOOST_TEST(plan.sharded.at("model.layers.0.self_attn.k_proj.weight").replicas == 2);
  }
}

BOOST_AUTO_TEST_CASE(llama_tied_with_a_padding_token_and_a_dropout_override_reads_the_same_parts) {
  const fs::path dir = shared_directory("llama_tied");
  model::LlamaConfig config = tiny_llama();
  config.num_key_value_heads = 4;
  config.tie_word_embeddings = true;
  config.pad_token_id = 50;
  model::Llama llama = model::init_llama(config, 5);
  perturb(*llama, 5);
  write_directory(dir, model::to_hf_state(llama), config.to_json());
  model::CausalLm whole = model::CausalLm::load({.path = dir, .dropout = 0.0});
  const dist::TensorParallelPlan expected_plan = dist::apply_tensor_parallel(whole, comm());
  dist::TensorParallelPlan plan;
  model::CausalLm split = dist::load_tensor_parallel(model::CausalLmOptions{.path = dir, .dropout = 0.0}, comm(), plan);
  check_same(whole.module(), expected_plan, split.module(), plan);
}

// A classifier read split and read whole then split: the same parts, the same new
// head, the same logits.
void check_classifier(const fs::path& dir, model::ClassifierKind kind) {
  model::ClassifierOptions options;
  options.path = dir;
  options.kind = kind;
  options.label_names = {"negative", "neutral", "positive"};
  options.seed = 77;
  model::ClassifierLoadReport expected_report, report;
  model::Classifier whole = model::Classifier::load(options, &expected_report);
  const dist::TensorParallelPlan expected_plan = dist::apply_tensor_parallel(whole, comm());
  dist::TensorParallelPlan plan;
  model::Classifier split = dist::load_tensor_parallel(options, comm(), plan, &report);
  check_same(whole.module(), expected_plan, split.module(), plan);
  BOOST_TEST(report.head_initialised == expected_report.head_initialised);
  BOOST_TEST(report.pooler_initialised == expected_report.pooler_initialised);
  BOOST_TEST(report.warnings == expected_report.warnings, boost::test_tools::per_element());

  torch::NoGradGuard no_grad;
  whole.module().eval(), split.module().eval();
  const at::Tensor ids = torch::randint(51, {2, 7}, at::make_generator<at::CPUGeneratorImpl>(5));
  BOOST_TEST(torch::equal(split.logits(ids), whole.logits(ids)));
}

BOOST_AUTO_TEST_CASE(bert_classifiers_with_a_new_head_read_the_same_parts) {
  const model::BertConfig config = tiny_bert();
  model::Bert bert = model::init_bert(config, 6);
  perturb(*bert, 6);

  // BertModel's layout with its pooler; the sequence head is new.
  const fs::path plain = shared_directory("bert_plain");
  write_directory(plain, model::to_hf_state(bert), config.to_json());
  check_classifier(plain, model::ClassifierKind::sequence);
  check_classifier(plain, model::ClassifierKind::token);

  // A masked-LM export: `bert.` names, no pooler (drawn from the seed), a head to skip.
  const fs::path masked = shared_directory("bert_masked_lm");
  model::NamedTensors tensors;
  for (const auto& [name, tensor] : model::to_hf_state(bert))
    if (name.rfind("pooler.", 0) != 0) tensors.emplace_back("bert." + name, tensor);
  tensors.emplace_back("cls.predictions.bias", torch::zeros({config.vocab_size}));
  write_directory(masked, tensors, config.to_json(), Storage{.dtype = at::kBFloat16, .files = 2});
  check_classifier(masked, model::ClassifierKind::sequence);
}

BOOST_AUTO_TEST_CASE(decoder_classifiers_read_the_same_parts) {
  // GPT-2 and Llama bodies under a new score head (the language-modelling head in the
  // file is skipped); the Llama's key/value heads are replicated at tp 4.
  const model::Gpt2Config gpt2_config = tiny_gpt2(/*tied=*/true);
  const fs::path gpt2 = shared_directory("gpt2_classifier");
  write_directory(gpt2, gpt2_tensors(gpt2_config, 10), gpt2_config.to_json());
  check_classifier(gpt2, model::ClassifierKind::sequence);
  check_classifier(gpt2, model::ClassifierKind::token);

  const model::LlamaConfig llama_config = tiny_llama();
  model::Llama llama = model::init_llama(llama_config, 11);
  perturb(*llama, 11);
  const fs::path llama_dir = shared_directory("llama_classifier");
  write_directory(llama_dir, model::to_hf_state(llama), llama_config.to_json(), Storage{.dtype = at::kBFloat16});
  check_classifier(llama_dir, model::ClassifierKind::sequence);
}

// ---------------------------------------------------------------------------------
// Broken files

std::string refusal(const fs::path& dir) {
  dist::TensorParallelPlan plan;
  try {
    dist::load_tensor_parallel(model::CausalLmOptions{.path = dir}, comm(), plan);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

BOOST_AUTO_TEST_CASE(a_missing_tensor_is_refused_naming_the_file_and_the_tensor) {
  const fs::path dir = shared_directory("gpt2_missing");
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  model::NamedTensors tensors;
  for (auto& [name, tensor] : gpt2_tensors(config, 8))
    if (name != "transformer.h.1.mlp.c_fc.weight") tensors.emplace_back(name, tensor);
  write_directory(dir, tensors, config.to_json());
  const std::string message = refusal(dir);
  BOOST_TEST(contains(message, (dir / "model.safetensors").string()), message);
  BOOST_TEST(contains(message, "missing 'transformer.h.1.mlp.c_fc.weight'"), message);
}

BOOST_AUTO_TEST_CASE(a_tensor_of_the_wrong_shape_is_refused_naming_the_file_the_tensor_and_the_shapes) {
  const fs::path dir = shared_directory("llama_misshaped");
  const model::LlamaConfig config = tiny_llama();
  model::Llama llama = model::init_llama(config, 9);
  model::NamedTensors tensors = model::to_hf_state(llama);
  for (auto& [name, tensor] : tensors)
    if (name == "model.layers.0.self_attn.k_proj.weight") tensor = torch::zeros({24, 32});  // 3 heads, not 2
  write_directory(dir, tensors, config.to_json(), Storage{.files = 2});
  const std::string message = refusal(dir);
  BOOST_TEST(contains(message, (dir / "model.safetensors.index.json").string()), message);
  // The global shape, whatever this rank's part of it is.
  BOOST_TEST(contains(message, "'model.layers.0.self_attn.k_proj.weight' is [24, 32], expected [16, 32]"), message);
}

BOOST_AUTO_TEST_CASE(a_model_the_group_cannot_split_is_refused_before_anything_is_read) {
  if (N() == 1) return;
  const fs::path dir = shared_directory("gpt2_heads");
  model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  config.n_head = N() + 1, config.n_embd = 8 * (N() + 1);
  write_directory(dir, {}, config.to_json());  // no tensors at all: never looked at
  dist::TensorParallelPlan plan;
  try {
    dist::load_tensor_parallel(model::CausalLmOptions{.path = dir}, comm(), plan);
    BOOST_ERROR("an indivisible number of heads was accepted");
  } catch (const std::invalid_argument& e) {
    BOOST_TEST(contains(e.what(), "n_head " + std::to_string(N() + 1)), e.what());
  }
}

}  // namespace
