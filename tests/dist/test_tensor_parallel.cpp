// Tensor parallelism under mpirun: the whole world is one tensor-parallel group.
//
// The paired functions are checked against values worked out by hand. For tiny GPT-2
// and Llama models every rank builds the same model twice from one seed, shards one
// copy and keeps the other whole as the reference: the vocabulary-parallel loss must
// equal the reference loss, and after backward each shard's gradient must equal the
// slice of the reference gradient that this file derives on its own from the
// parameter's name (replicated parameters: the whole gradient).
//
// Every rank runs every test and makes the same collective calls whatever the checks
// find, so a failed check never leaves another rank waiting; an unexpected exception
// ends the whole job (abort_job) for the same reason.
#define BOOST_TEST_MODULE test_tensor_parallel
#include <boost/test/execution_monitor.hpp>
#include <boost/test/unit_test.hpp>

#include <ATen/Parallel.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/mpi_session.h"
#include "mpi_job.h"
#include "dist/tensor_parallel.h"
#include "model/bert_checkpoint.h"
#include "model/gpt2_checkpoint.h"
#include "model/llama_checkpoint.h"

namespace dist = ftrain::dist;
namespace model = ftrain::model;
namespace F = torch::nn::functional;
using torch::indexing::Slice;

namespace {

struct JobOptions {
  static constexpr const char* program = "test_tensor_parallel";
  // One tensor-parallel group of every rank.
  static ftrain::dist::CommOptions make() {
    ftrain::dist::CommOptions options;
    MPI_Comm_size(MPI_COMM_WORLD, &options.tp);
    return options;
  }
};
using Job = ftrain::testing::MpiJob<JobOptions>;
BOOST_TEST_GLOBAL_FIXTURE(Job);

dist::Communicator& comm() { return Job::comm(); }
dist::Group& tp() { return comm().tp(); }
int64_t N() { return tp().size(); }
int64_t R() { return tp().rank(); }

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// max |a - b| / max |b|: the error relative to the size of the expected values.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  if (actual.sizes() != expected.sizes()) return std::numeric_limits<double>::infinity();
  const double scale = std::max(expected.abs().max().item<double>(), 1e-30);
  return (actual - expected).abs().max().item<double>() / scale;
}

constexpr double kTolerance = 1e-5;

// ---------------------------------------------------------------------------------
// The paired functions

BOOST_AUTO_TEST_CASE(copy_to_region_is_identity_forward_and_sums_gradients_backward) {
  torch::Tensor x = torch::full({2, 3}, double(R() + 1), torch::kDouble).requires_grad_();
  torch::Tensor y = dist::copy_to_tp_region(x, tp());
  BOOST_TEST(torch::equal(y, x.detach()));
  (y * double(R() + 1)).sum().backward();
  // d/dx of sum over ranks k of (k + 1) * x_k, each x_k a copy: 1 + 2 + ... + N
  BOOST_TEST(torch::equal(x.grad(), torch::full({2, 3}, double(N() * (N() + 1) / 2), torch::kDouble)));
}

BOOST_AUTO_TEST_CASE(reduce_from_region_sums_forward_and_passes_gradients_backward) {
  torch::Tensor x = torch::full({2, 3}, double(R() + 1), torch::kDouble).requires_grad_();
  torch::Tensor y = dist::reduce_from_tp_region(x, tp());
  BOOST_TEST(torch::equal(y, torch::full({2, 3}, double(N() * (N() + 1) / 2), torch::kDouble)));
  (y * 3.0).sum().backward();
  BOOST_TEST(torch::equal(x.grad(), torch::full({2, 3}, 3.0, torch::kDouble)));
}

BOOST_AUTO_TEST_CASE(gather_from_region_concatenates_the_last_dim_and_takes_its_slice_backward) {
  torch::Tensor x = (torch::arange(6, torch::kDouble).view({2, 3}) + 10.0 * double(R())).requires_grad_();
  torch::Tensor y = dist::gather_from_tp_region(x, tp());
  BOOST_TEST_REQUIRE(y.sizes() == (std::vector<int64_t>{2, 3 * N()}));
  for (int64_t k = 0; k < N(); ++k)
    BOOST_TEST(torch::equal(y.index({Slice(), Slice(3 * k, 3 * k + 3)}),
                            torch::arange(6, torch::kDouble).view({2, 3}) + 10.0 * double(k)));
  torch::Tensor weights = torch::arange(2 * 3 * N(), torch::kDouble).view({2, 3 * N()});
  (y * weights).sum().backward();
  BOOST_TEST(torch::equal(x.grad(), weights.index({Slice(), Slice(3 * R(), 3 * R() + 3)})));
}

BOOST_AUTO_TEST_CASE(scatter_to_region_takes_the_slice_and_gathers_gradients_backward) {
  torch::Tensor x = torch::arange(2 * 3 * N(), torch::kDouble).view({2, 3 * N()}).requires_grad_();
  torch::Tensor y = dist::scatter_to_tp_region(x, tp());
  BOOST_TEST(torch::equal(y, x.detach().index({Slice(), Slice(3 * R(), 3 * R() + 3)})));
  (y * double(R() + 1)).sum().backward();
  for (int64_t k = 0; k < N(); ++k)
    BOOST_TEST(torch::equal(x.grad().index({Slice(), Slice(3 * k, 3 * k + 3)}),
                            torch::full({2, 3}, double(k + 1), torch::kDouble)));
  if (N() > 1) {
    try {
      dist::scatter_to_tp_region(torch::zeros({2, 3 * N() + 1}), tp());
      BOOST_ERROR("an indivisible last dimension was accepted");
    } catch (const std::invalid_argument& e) {
      BOOST_TEST(contains(e.what(), std::to_string(3 * N() + 1)), e.what());
    }
  }
}

BOOST_AUTO_TEST_CASE(sum_over_replicas_sums_gradients_of_ranks_holding_the_same_copy) {
  const int replicas = N() % 2 == 0 ? 2 : 1;
  torch::Tensor x = torch::ones({4}, torch::kDouble).requires_grad_();
  torch::Tensor y = dist::sum_over_replicas(x, tp(), replicas);
  BOOST_TEST(torch::equal(y, x.detach()));
  (y * double(R() + 1)).sum().backward();
  const int64_t first = R() / replicas * replicas;  // the first rank holding this copy
  double expected = 0;
  for (int64_t k = first; k < first + replicas; ++k) expected += double(k + 1);
  BOOST_TEST(torch::equal(x.grad(), torch::full({4}, expected, torch::kDouble)));
}

// ---------------------------------------------------------------------------------
// The vocabulary-parallel loss alone

BOOST_AUTO_TEST_CASE(vocab_parallel_cross_entropy_equals_cross_entropy_of_the_whole_logits) {
  const int64_t V = 51;  // not a multiple of 2 or 4: the last rank holds padding columns
  const dist::VocabShard shard = dist::VocabShard::of(V, tp().size(), tp().rank());
  auto generator = at::make_generator<at::CPUGeneratorImpl>(5);
  torch::Tensor logits = torch::randn({3, 5, V}, generator, torch::kDouble) * 4.0;
  torch::Tensor targets = torch::randint(V, {3, 5}, generator, torch::kLong);
  targets.index_put_({0, 2}, -100);
  targets.index_put_({2, 4}, V - 1);
  torch::Tensor weights = torch::rand({3, 5}, generator, torch::kDouble);

  torch::Tensor whole = logits.clone().requires_grad_();
  torch::Tensor expected = F::cross_entropy(whole.reshape({-1, V}), targets.reshape({-1}),
                                            F::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(-100))
                               .view({3, 5});
  (expected * weights).sum().backward();

  // Padding columns hold large values, which must not count.
  torch::Tensor padded = torch::cat({logits, torch::full({3, 5, shard.padded_size - V}, 100.0, torch::kDouble)}, -1);
  torch::Tensor local = padded.index({Slice(), Slice(), Slice(shard.start, shard.start + shard.rows)}).clone();
  local.requires_grad_();
  torch::Tensor loss = dist::vocab_parallel_cross_entropy(local, targets, tp(), V);
  BOOST_TEST(loss.scalar_type() == torch::kDouble);
  BOOST_TEST(relative_error(loss, expected.detach()) < 1e-12);
  BOOST_TEST(loss[0][2].item<double>() == 0.0);
  (loss * weights).sum().backward();
  torch::Tensor expected_grad = torch::cat({whole.grad(), torch::zeros({3, 5, shard.padded_size - V}, torch::kDouble)}, -1)
                                    .index({Slice(), Slice(), Slice(shard.start, shard.start + shard.rows)});
  BOOST_TEST(relative_error(local.grad(), expected_grad) < 1e-12);

  torch::Tensor outside = targets.clone();
  outside.index_put_({1, 1}, V);
  try {
    dist::vocab_parallel_cross_entropy(local, outside, tp(), V);
    BOOST_ERROR("a target outside the vocabulary was accepted");
  } catch (const std::invalid_argument& e) {
    BOOST_TEST(contains(e.what(), "outside [0, 51)"), e.what());
  }
}

// ---------------------------------------------------------------------------------
// Whole models: what this rank's shard of each parameter must be, derived here from
// the parameter's name and the configuration alone.

// Rows [start, start + rows) of the vocabulary padded with zero rows to a multiple of N.
torch::Tensor vocab_rows(const torch::Tensor& full) {
  const int64_t V = full.size(0), rows = (V + N() - 1) / N();
  torch::Tensor padded = torch::cat({full, torch::zeros({rows * N() - V, full.size(1)}, full.options())});
  return padded.index({Slice(R() * rows, (R() + 1) * rows)});
}

torch::Tensor block_of(const torch::Tensor& full, int64_t dim) {
  const int64_t part = full.size(dim) / N();
  return full.narrow(dim, R() * part, part);
}

bool ends_with(const std::string& name, const std::string& suffix) {
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

torch::Tensor gpt2_shard(const std::string& name, const torch::Tensor& full) {
  if (name == "transformer.wte.weight" || name == "lm_head.weight") return vocab_rows(full);
  if (ends_with(name, "attn.c_attn.weight") || ends_with(name, "attn.c_attn.bias")) {
    auto qkv = full.chunk(3, 0);  // this rank's heads of each of queries, keys and values
    return torch::cat({block_of(qkv[0], 0), block_of(qkv[1], 0), block_of(qkv[2], 0)});
  }
  if (ends_with(name, "mlp.c_fc.weight") || ends_with(name, "mlp.c_fc.bias")) return block_of(full, 0);
  if (ends_with(name, "c_proj.weight")) return block_of(full, 1);
  return full;  // LayerNorms, wpe, the biases of c_proj
}

// Rows of this rank's key/value heads: those its query heads read.
torch::Tensor kv_heads_of(const torch::Tensor& full, const model::LlamaConfig& config) {
  const int64_t hs = config.head_size(), per_rank = config.num_attention_heads / N();
  const int64_t group = config.num_attention_heads / config.num_key_value_heads;  // query heads per kv head
  std::set<int64_t> used;
  for (int64_t q = R() * per_rank; q < (R() + 1) * per_rank; ++q) used.insert(q / group);
  std::vector<torch::Tensor> rows;
  for (int64_t head : used) rows.push_back(full.narrow(0, head * hs, hs));
  return torch::cat(rows);
}

std::function<torch::Tensor(const std::string&, const torch::Tensor&)> llama_shard(const model::LlamaConfig& config) {
  return [config](const std::string& name, const torch::Tensor& full) {
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return vocab_rows(full);
    if (contains(name, "q_proj.") || contains(name, "gate_proj.") || contains(name, "up_proj.")) return block_of(full, 0);
    if (contains(name, "k_proj.") || contains(name, "v_proj.")) return kv_heads_of(full, config);
    if (ends_with(name, "o_proj.weight") || ends_with(name, "down_proj.weight")) return block_of(full, 1);
    return full;  // RMSNorms, the biases of o_proj and down_proj
  };
}

// Next-token ids of a (2, 9) batch: inputs (2, 8) and targets (2, 8), one target ignored.
struct Batch {
  torch::Tensor inputs, targets;
};
Batch batch_of(int64_t vocab_size, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::Tensor ids = torch::randint(vocab_size, {2, 9}, generator, torch::kLong);
  ids.index_put_({1, 3}, vocab_size - 1);  // the last row of the vocabulary, on the last rank
  Batch batch{ids.index({Slice(), Slice(0, 8)}), ids.index({Slice(), Slice(1, 9)}).clone()};
  batch.targets.index_put_({0, 5}, -100);
  return batch;
}

// Hugging Face's initialisation makes biases 0 and norms 1, under which a bias added on
// every rank instead of once would go unnoticed: every parameter gets the same seeded
// noise in both copies.
template <typename Model>
void perturb(Model& model, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  for (auto& parameter : model->parameters())
    parameter.add_(torch::randn(parameter.sizes(), generator, parameter.scalar_type()) * 0.1);
}

// Mean loss over the counted targets of the whole and the sharded model; then both
// backward, and every parameter of the shard checked against the reference. Both
// forward passes start from the same generator state, so dropout (when the model has
// any) must draw the same masks in both.
template <typename Model>
void check_against_reference(Model& reference, Model& sharded, int64_t vocab_size, const Batch& batch,
                             const std::function<torch::Tensor(const std::string&, const torch::Tensor&)>& shard_of) {
  reference->train();
  sharded->train();
  const torch::Tensor counted = (batch.targets != -100).sum();

  torch::manual_seed(31);
  torch::Tensor logits = reference->forward(batch.inputs);
  torch::Tensor expected = F::cross_entropy(logits.reshape({-1, vocab_size}), batch.targets.reshape({-1}),
                                            F::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-100)) /
                           counted;
  torch::manual_seed(31);
  torch::Tensor local_logits = sharded->forward(batch.inputs);
  const dist::VocabShard vocab = dist::VocabShard::of(vocab_size, tp().size(), tp().rank());
  BOOST_TEST(local_logits.sizes() == (std::vector<int64_t>{2, 8, vocab.rows}));
  torch::Tensor loss = dist::vocab_parallel_cross_entropy(local_logits, batch.targets, tp(), vocab_size).sum() / counted;
  const double loss_error = std::abs(loss.item<double>() - expected.item<double>()) / expected.item<double>();
  BOOST_TEST(loss_error < kTolerance, "loss " << loss.item<double>() << " vs " << expected.item<double>());

  expected.backward();
  loss.backward();
  auto whole = reference->named_parameters();
  for (const auto& item : sharded->named_parameters()) {
    const std::string& name = item.key();
    BOOST_TEST_CONTEXT(name << " on rank " << R()) {
      BOOST_TEST_REQUIRE(whole.contains(name));
      const torch::Tensor& full = whole[name];
      BOOST_TEST(torch::equal(item.value(), shard_of(name, full)), "value");
      BOOST_TEST_REQUIRE(item.value().grad().defined());
      const double error = relative_error(item.value().grad(), shard_of(name, full.grad()));
      BOOST_TEST(error < kTolerance, "gradient relative error " << error);
    }
  }
}

model::Gpt2Config tiny_gpt2(bool tied) {
  model::Gpt2Config config;
  config.vocab_size = 51;
  config.n_positions = 16;
  config.n_embd = 32;
  config.n_layer = 2;
  config.n_head = 4;
  config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0;
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
  config.num_key_value_heads = 2;  // grouped-query attention; tp 4 replicates key/value heads
  config.max_position_embeddings = 32;
  config.tie_word_embeddings = false;
  config.attention_bias = true;  // column biases on q/k/v, a row bias on o_proj
  config.mlp_bias = true;
  return config;
}

BOOST_AUTO_TEST_CASE(gpt2_tied_matches_the_unsharded_model) {
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  model::Gpt2 reference = model::init_gpt2(config, 7), sharded = model::init_gpt2(config, 7);
  perturb(reference, 7), perturb(sharded, 7);
  dist::apply_tensor_parallel(sharded, comm());
  BOOST_TEST(sharded->named_parameters().size() == reference->named_parameters().size());
  check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 11), gpt2_shard);
}

BOOST_AUTO_TEST_CASE(gpt2_untied_matches_the_unsharded_model) {
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/false);
  model::Gpt2 reference = model::init_gpt2(config, 8), sharded = model::init_gpt2(config, 8);
  perturb(reference, 8), perturb(sharded, 8);
  dist::apply_tensor_parallel(sharded, comm());
  check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 12), gpt2_shard);
}

BOOST_AUTO_TEST_CASE(gpt2_hidden_states_and_the_kv_cache_are_whole_on_every_rank) {
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  model::Gpt2 reference = model::init_gpt2(config, 9), sharded = model::init_gpt2(config, 9);
  perturb(reference, 9), perturb(sharded, 9);
  dist::apply_tensor_parallel(sharded, comm());
  reference->eval(), sharded->eval();
  torch::NoGradGuard no_grad;
  const Batch batch = batch_of(config.vocab_size, 13);
  torch::Tensor expected = reference->hidden_states(batch.inputs);
  BOOST_TEST(relative_error(sharded->hidden_states(batch.inputs), expected) < kTolerance);
  model::KvCache cache;
  torch::Tensor first = sharded->hidden_states(batch.inputs.index({Slice(), Slice(0, 5)}), &cache);
  torch::Tensor rest = sharded->hidden_states(batch.inputs.index({Slice(), Slice(5, 8)}), &cache);
  BOOST_TEST(relative_error(torch::cat({first, rest}, 1), expected) < kTolerance);
  BOOST_TEST(cache.keys.front().size(1) == config.n_head / N());  // (B, local heads, T, hs)
}

BOOST_AUTO_TEST_CASE(gpt2_communicates_two_all_reduces_per_layer_each_way) {
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  model::Gpt2 sharded = model::init_gpt2(config, 7);
  dist::apply_tensor_parallel(sharded, comm());
  const Batch batch = batch_of(config.vocab_size, 11);
  comm().stats().reset();
  torch::Tensor loss = dist::vocab_parallel_cross_entropy(sharded->forward(batch.inputs), batch.targets, tp(),
                                                          config.vocab_size)
                           .sum();
  // Embedding 1, two row-parallel layers per block, the loss's max, sum and target logit.
  BOOST_TEST(comm().stats().all_reduce.calls == 1 + 2 * config.n_layer + 3);
  // Forward, per block: two all-reduces of B * T * C elements.
  const double elements = 2.0 * 8.0 * double(config.n_embd), ring = 2.0 * double(N() - 1) / double(N());
  const double scalars = 3.0 * 2.0 * 8.0;  // the loss's three values per position
  BOOST_TEST(comm().stats().all_reduce.bytes_sent ==
                 ring * 4.0 * ((1 + 2 * config.n_layer) * elements + scalars),
             boost::test_tools::tolerance(1e-9));
  comm().stats().reset();
  loss.backward();
  // copy_to_tp_region in front of attention and of the MLP in each block, and of the head.
  BOOST_TEST(comm().stats().all_reduce.calls == 2 * config.n_layer + 1);
  BOOST_TEST(comm().stats().all_gather.calls == 0);
  BOOST_TEST(comm().stats().reduce_scatter.calls == 0);
}

BOOST_AUTO_TEST_CASE(llama_with_grouped_query_attention_matches_the_unsharded_model) {
  const model::LlamaConfig config = tiny_llama();
  model::Llama reference = model::init_llama(config, 21), sharded = model::init_llama(config, 21);
  perturb(reference, 21), perturb(sharded, 21);
  dist::apply_tensor_parallel(sharded, comm());
  auto& attention = *sharded->model->layers[0]->as<model::LlamaBlockImpl>()->self_attn;
  BOOST_TEST(attention.q_proj->weight.size(0) == 4 / N() * 8);
  BOOST_TEST(attention.k_proj->weight.size(0) == (N() <= 2 ? 2 / N() : 1) * 8);
  comm().stats().reset();
  check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 22),
                          llama_shard(config));
  // Forward: embedding, two per block, the loss's three. Backward: one per block's
  // attention and MLP, one for the head, and with replicated key/value heads the
  // summed gradients of k_proj and v_proj (weight and bias).
  const int64_t layers = config.num_hidden_layers;
  const int64_t replicated = N() > config.num_key_value_heads ? 4 * layers : 0;
  BOOST_TEST(comm().stats().all_reduce.calls == (1 + 2 * layers + 3) + (2 * layers + 1 + replicated));
}

BOOST_AUTO_TEST_CASE(llama_tied_with_a_padding_token_matches_the_unsharded_model) {
  model::LlamaConfig config = tiny_llama();
  config.num_key_value_heads = 4;  // every head its own key/value head: split at tp 4 too
  config.tie_word_embeddings = true;
  config.attention_bias = config.mlp_bias = false;
  config.pad_token_id = 50;  // on the last rank; its row gets no gradient
  model::Llama reference = model::init_llama(config, 23), sharded = model::init_llama(config, 23);
  perturb(reference, 23), perturb(sharded, 23);
  dist::apply_tensor_parallel(sharded, comm());
  check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 24),
                          llama_shard(config));
}

// ---------------------------------------------------------------------------------
// Dropout and sequence parallelism

// The communicator of the fixture's world with sequence parallelism on. Models split
// with it keep references to its groups, so it is made before them and outlives them.
dist::Communicator sequence_parallel_comm() {
  dist::CommOptions options = JobOptions::make();
  options.sequence_parallel = true;
  return dist::Communicator::create(options);
}

model::Gpt2Config with_dropout(model::Gpt2Config config) {
  config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.2;
  return config;
}

BOOST_AUTO_TEST_CASE(attention_dropout_over_split_heads_matches_the_unsharded_model) {
  const model::Gpt2Config config = with_dropout(tiny_gpt2(/*tied=*/false));
  model::Gpt2 reference = model::init_gpt2(config, 41), sharded = model::init_gpt2(config, 41);
  perturb(reference, 41), perturb(sharded, 41);
  dist::apply_tensor_parallel(sharded, comm());
  check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 42), gpt2_shard);
}

BOOST_AUTO_TEST_CASE(scatter_to_sequence_region_keeps_own_positions_and_gathers_gradients_backward) {
  torch::Tensor x = torch::arange(2 * 3 * N() * 2, torch::kDouble).view({2, 3 * N(), 2}).requires_grad_();
  torch::Tensor y = dist::scatter_to_sequence_region(x, tp());
  BOOST_TEST(torch::equal(y, x.detach().index({Slice(), Slice(3 * R(), 3 * R() + 3)})));
  (y * double(R() + 1)).sum().backward();
  for (int64_t k = 0; k < N(); ++k)
    BOOST_TEST(torch::equal(x.grad().index({Slice(), Slice(3 * k, 3 * k + 3)}),
                            torch::full({2, 3, 2}, double(k + 1), torch::kDouble)));
  if (N() > 1) {
    try {
      dist::scatter_to_sequence_region(torch::zeros({2, 3 * N() + 1, 2}), tp());
      BOOST_ERROR("a sequence the group does not divide was accepted");
    } catch (const std::invalid_argument& e) {
      BOOST_TEST(contains(e.what(), "sequence length " + std::to_string(3 * N() + 1)), e.what());
    }
  }
}

BOOST_AUTO_TEST_CASE(gather_from_sequence_region_concatenates_positions_and_reduces_or_slices_backward) {
  const torch::Tensor weights = torch::arange(2 * 3 * N() * 2, torch::kDouble).view({2, 3 * N(), 2});
  for (const auto reader : {dist::GatheredFor::tensor_parallel, dist::GatheredFor::replicated}) {
    torch::Tensor x = (torch::arange(12, torch::kDouble).view({2, 3, 2}) + 100.0 * double(R())).requires_grad_();
    torch::Tensor y = dist::gather_from_sequence_region(x, tp(), reader);
    BOOST_TEST_REQUIRE(y.sizes() == (std::vector<int64_t>{2, 3 * N(), 2}));
    for (int64_t k = 0; k < N(); ++k)
      BOOST_TEST(torch::equal(y.index({Slice(), Slice(3 * k, 3 * k + 3)}),
                              torch::arange(12, torch::kDouble).view({2, 3, 2}) + 100.0 * double(k)));
    // Rank k's gradient of the gathered tensor is (k + 1) * weights: split layers sum
    // them (1 + ... + N), replicated readers keep their own.
    (y * weights * double(reader == dist::GatheredFor::replicated ? 1 : R() + 1)).sum().backward();
    const double factor = reader == dist::GatheredFor::replicated ? 1.0 : double(N() * (N() + 1) / 2);
    BOOST_TEST(torch::equal(x.grad(), weights.index({Slice(), Slice(3 * R(), 3 * R() + 3)}) * factor));
  }
}

BOOST_AUTO_TEST_CASE(reduce_scatter_to_sequence_region_sums_and_keeps_own_positions) {
  torch::Tensor x = (torch::arange(2 * 2 * N() * 3, torch::kDouble).view({2, 2 * N(), 3}) + double(R())).requires_grad_();
  torch::Tensor y = dist::reduce_scatter_to_sequence_region(x, tp());
  const torch::Tensor base = torch::arange(2 * 2 * N() * 3, torch::kDouble).view({2, 2 * N(), 3});
  // Sum over ranks k of (base + k), rank R's positions.
  const torch::Tensor expected = base.index({Slice(), Slice(2 * R(), 2 * R() + 2)}) * double(N()) +
                                 double(N() * (N() - 1) / 2);
  BOOST_TEST(torch::equal(y, expected));
  (y * double(R() + 1)).sum().backward();
  for (int64_t k = 0; k < N(); ++k)
    BOOST_TEST(torch::equal(x.grad().index({Slice(), Slice(2 * k, 2 * k + 2)}),
                            torch::full({2, 2, 3}, double(k + 1), torch::kDouble)));
}

BOOST_AUTO_TEST_CASE(gpt2_with_sequence_parallelism_and_dropout_matches_the_unsharded_model) {
  dist::Communicator sequence = sequence_parallel_comm();
  for (const bool tied : {true, false}) {
    BOOST_TEST_CONTEXT((tied ? "tied" : "untied")) {
      const model::Gpt2Config config = with_dropout(tiny_gpt2(tied));
      model::Gpt2 reference = model::init_gpt2(config, 43), sharded = model::init_gpt2(config, 43);
      perturb(reference, 43), perturb(sharded, 43);
      const dist::TensorParallelPlan plan = dist::apply_tensor_parallel(sharded, sequence);
      BOOST_TEST(plan.sequence_parallel == (N() > 1));
      check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 44), gpt2_shard);
      // The hidden states leave the body whole on every rank.
      sharded->eval(), reference->eval();
      torch::NoGradGuard no_grad;
      const Batch batch = batch_of(config.vocab_size, 45);
      BOOST_TEST(relative_error(sharded->hidden_states(batch.inputs), reference->hidden_states(batch.inputs)) < kTolerance);
    }
  }
}

BOOST_AUTO_TEST_CASE(llama_with_sequence_parallelism_matches_the_unsharded_model) {
  dist::Communicator sequence = sequence_parallel_comm();
  model::LlamaConfig config = tiny_llama();
  config.attention_dropout = 0.2;
  model::Llama reference = model::init_llama(config, 46), sharded = model::init_llama(config, 46);
  perturb(reference, 46), perturb(sharded, 46);
  dist::apply_tensor_parallel(sharded, sequence);
  check_against_reference(reference, sharded, config.vocab_size, batch_of(config.vocab_size, 47), llama_shard(config));
}

// A BERT encoder with its pooler: both outputs whole, every gradient the reference's.
BOOST_AUTO_TEST_CASE(bert_with_sequence_parallelism_and_dropout_matches_the_unsharded_model) {
  dist::Communicator sequence = sequence_parallel_comm();
  model::BertConfig config;
  config.vocab_size = 51, config.hidden_size = 32, config.num_hidden_layers = 2, config.num_attention_heads = 4;
  config.intermediate_size = 48, config.max_position_embeddings = 16;
  config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.2;
  model::Bert reference = model::init_bert(config, 48), sharded = model::init_bert(config, 48);
  perturb(reference, 48), perturb(sharded, 48);
  dist::apply_tensor_parallel(sharded, sequence);
  const Batch batch = batch_of(config.vocab_size, 49);
  const torch::Tensor mask = torch::ones({2, 8}, torch::kLong).index_put_({1, Slice(6, 8)}, 0);
  const torch::Tensor types = torch::zeros({2, 8}, torch::kLong).index_put_({Slice(), Slice(4, 8)}, 1);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(50);
  const torch::Tensor hidden_weights = torch::randn({2, 8, 32}, generator), pooled_weights = torch::randn({2, 32}, generator);
  auto loss_of = [&](model::Bert& bert) {
    bert->train();
    torch::manual_seed(51);
    const model::BertOutput out = bert->forward(batch.inputs, mask, types);
    return (out.last_hidden_state * hidden_weights).sum() + (out.pooler_output * pooled_weights).sum();
  };
  torch::Tensor expected = loss_of(reference), loss = loss_of(sharded);
  BOOST_TEST(std::abs(loss.item<double>() - expected.item<double>()) < kTolerance * std::abs(expected.item<double>()));
  expected.backward();
  loss.backward();
  auto whole = reference->named_parameters();
  for (const auto& item : sharded->named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor full = whole[name].grad();
    torch::Tensor part = full;
    if (name == "embeddings.word_embeddings.weight") part = vocab_rows(full);
    else if (contains(name, "attention.self.") || contains(name, "intermediate.dense.")) part = block_of(full, 0);
    else if (ends_with(name, "output.dense.weight")) part = block_of(full, 1);  // both row-parallel layers
    BOOST_TEST_CONTEXT(name << " on rank " << R()) {
      BOOST_TEST_REQUIRE(item.value().grad().defined());
      if (contains(name, "attention.self.key.bias")) {
        // Zero up to rounding: softmax ignores a shift every key of a query shares.
        BOOST_TEST((item.value().grad() - part).abs().max().item<double>() < 1e-6);
        BOOST_TEST(part.abs().max().item<double>() < 1e-6);
      } else {
        BOOST_TEST(relative_error(item.value().grad(), part) < kTolerance);
      }
    }
  }
}

// Sequence parallelism moves the same bytes as the all-reduces it replaces (an
// all-reduce is a reduce-scatter and an all-gather), plus one all-gather of the final
// norm's output, and sums the gradients of the parameters the blocks repeat.
BOOST_AUTO_TEST_CASE(gpt2_with_sequence_parallelism_communicates_as_the_formulas_say) {
  if (N() == 1) return;  // nothing is split on one rank
  dist::Communicator sequence = sequence_parallel_comm();
  const model::Gpt2Config config = tiny_gpt2(/*tied=*/true);
  model::Gpt2 sharded = model::init_gpt2(config, 7);
  dist::apply_tensor_parallel(sharded, sequence);
  const Batch batch = batch_of(config.vocab_size, 11);
  dist::CommStats& stats = sequence.stats();
  stats.reset();
  torch::Tensor loss = dist::vocab_parallel_cross_entropy(sharded->forward(batch.inputs), batch.targets,
                                                          sequence.tp(), config.vocab_size)
                           .sum();
  const int64_t L = config.n_layer;
  const double activation = 4.0 * 2.0 * 8.0 * double(config.n_embd);  // bytes of (B, T, C) float32
  const double ring = double(N() - 1) / double(N());
  // Forward: the embedding's all-reduce and the loss's three; per block two all-gathers
  // into the split layers and two reduce-scatters out of them; the final gather.
  BOOST_TEST(stats.all_reduce.calls == 1 + 3);
  BOOST_TEST(stats.all_gather.calls == 2 * L + 1);
  BOOST_TEST(stats.reduce_scatter.calls == 2 * L);
  BOOST_TEST(stats.all_gather.bytes_sent == ring * activation * double(2 * L + 1), boost::test_tools::tolerance(1e-9));
  BOOST_TEST(stats.reduce_scatter.bytes_sent == ring * activation * double(2 * L), boost::test_tools::tolerance(1e-9));
  stats.reset();
  loss.backward();
  // Backward: each forward all-gather becomes a reduce-scatter and each reduce-scatter
  // an all-gather, the embeddings' scatter an all-gather; the norms (2 x 2 per block and
  // ln_f's 2) and the row-parallel biases (2 per block) sum their gradients.
  BOOST_TEST(stats.reduce_scatter.calls == 2 * L + 1);
  BOOST_TEST(stats.all_gather.calls == 2 * L + 1);
  BOOST_TEST(stats.all_reduce.calls == 6 * L + 2);
  const double per_parameter = 2.0 * ring * 4.0 * double(config.n_embd);
  BOOST_TEST(stats.all_reduce.bytes_sent == per_parameter * double(6 * L + 2), boost::test_tools::tolerance(1e-9));
  BOOST_TEST(stats.reduce_scatter.bytes_sent + stats.all_gather.bytes_sent ==
                 ring * activation * double(4 * L + 2), boost::test_tools::tolerance(1e-9));
}

// ---------------------------------------------------------------------------------
// Refusals

template <typename Model>
std::string refusal_of(Model& model) {
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& p : model->parameters()) shapes.push_back(p.sizes().vec());
  std::string message;
  try {
    dist::apply_tensor_parallel(model, comm());
  } catch (const std::invalid_argument& e) {
    message = e.what();
  }
  std::vector<std::vector<int64_t>> after;
  for (const auto& p : model->parameters()) after.push_back(p.sizes().vec());
  BOOST_TEST((after == shapes), "a refused model was changed");
  return message;
}

BOOST_AUTO_TEST_CASE(indivisible_sizes_are_refused_naming_them) {
  if (N() == 1) return;  // one rank divides everything
  const std::string tp_size = std::to_string(N());

  model::Gpt2Config heads = tiny_gpt2(true);
  heads.n_head = N() + 1, heads.n_embd = 8 * (N() + 1);
  model::Gpt2 gpt2 = model::init_gpt2(heads, 1);
  std::string message = refusal_of(gpt2);
  BOOST_TEST(contains(message, "n_head " + std::to_string(N() + 1) + " is not a multiple of " + tp_size), message);

  model::Gpt2Config width = tiny_gpt2(true);
  width.n_inner = 8 * N() + 1;
  model::Gpt2 narrow = model::init_gpt2(width, 1);
  message = refusal_of(narrow);
  BOOST_TEST(contains(message, "n_inner) " + std::to_string(8 * N() + 1)), message);

  model::LlamaConfig kv = tiny_llama();
  kv.num_key_value_heads = 3, kv.num_attention_heads = 3 * N(), kv.hidden_size = 8 * 3 * N();
  model::Llama llama = model::init_llama(kv, 1);
  message = refusal_of(llama);
  BOOST_TEST(contains(message, "num_key_value_heads 3 is neither a multiple nor a divisor of " + tp_size), message);

  model::LlamaConfig mlp = tiny_llama();
  mlp.intermediate_size = 8 * N() + 1;
  model::Llama wide = model::init_llama(mlp, 1);
  message = refusal_of(wide);
  BOOST_TEST(contains(message, "intermediate_size " + std::to_string(8 * N() + 1)), message);
}

BOOST_AUTO_TEST_CASE(a_model_is_sharded_once) {
  model::Gpt2 gpt2 = model::init_gpt2(tiny_gpt2(true), 1);
  dist::apply_tensor_parallel(gpt2, comm());
  BOOST_CHECK_THROW(dist::apply_tensor_parallel(gpt2, comm()), std::invalid_argument);
}

}  // namespace
