// Data parallelism (dist/data_parallel.h) and ZeRO (dist/zero.h) under mpirun: the
// data-parallel group is every rank.
//
// Tiny GPT-2 and Llama (grouped-query attention) models are built from one seed on
// every rank, and each rank feeds its own batches. Every rank also trains a reference:
// the plain model fed the concatenation of all ranks' batches, whose gradient is the
// sum the sharded run reduces. A few steps of SGD on local_slices() must give the
// reference's losses and, gathered with gather_state, its parameters; at stages 2 and
// 3 with and without activation checkpointing, with one and two micro-batches, and
// with frozen blocks. The first step's all-gather and reduce-scatter bytes and the
// peak parameter and gradient bytes are checked against values derived here from the
// padded unit sizes.
//
// The same training through dist/data_parallel.h's one interface, replicated (zero 0)
// and sharded, must give the reference's losses, gradient norms and parameters.
//
// Every rank runs every test and makes the same collective calls whatever the checks
// find; an unexpected exception ends the whole job (abort_job).
#define BOOST_TEST_MODULE test_data_parallel
#include <boost/test/execution_monitor.hpp>
#include <boost/test/unit_test.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/data_parallel.h"
#include "dist/mpi_session.h"
#include "dist/streamed_vocab.h"
#include "mpi_job.h"
#include "dist/zero.h"
#include "model/activation_checkpoint.h"
#include "model/fused_cross_entropy.h"
#include "model/gpt2.h"
#include "model/llama.h"
#include "model/transformer_body.h"

namespace dist = ftrain::dist;
namespace model = ftrain::model;
namespace F = torch::nn::functional;
using torch::indexing::Slice;

namespace {

struct JobOptions {
  static constexpr const char* program = "test_data_parallel";
  static ftrain::dist::CommOptions make() { return {}; }
};
using Job = ftrain::testing::MpiJob<JobOptions>;
BOOST_TEST_GLOBAL_FIXTURE(Job);

dist::Communicator& comm() { return Job::comm(); }
dist::Group& dp() { return comm().dp(); }
int64_t N() { return dp().size(); }
int64_t R() { return dp().rank(); }

// max |a - b| / max |b|: the error relative to the size of the expected values.
double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  if (actual.sizes() != expected.sizes()) return std::numeric_limits<double>::infinity();
  const double scale = std::max(expected.abs().max().item<double>(), 1e-30);
  return (actual - expected).abs().max().item<double>() / scale;
}

constexpr double kTolerance = 1e-5;
constexpr int64_t kVocab = 51;
constexpr int64_t kRows = 2;     // per rank and micro-batch
constexpr int64_t kLength = 12;  // tokens per row
constexpr double kLearningRate = 0.5;

model::Gpt2Config tiny_gpt2() {
  model::Gpt2Config config;
  config.vocab_size = kVocab;
  config.n_positions = 16;
  config.n_embd = 32;
  config.n_layer = 3;
  config.n_head = 4;
  config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0;  // ranks and reference see other rows
  return config;
}

model::LlamaConfig tiny_llama() {
  model::LlamaConfig config;
  config.vocab_size = kVocab;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 3;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;  // grouped-query attention
  config.max_position_embeddings = 32;
  config.tie_word_embeddings = false;
  config.attention_bias = true;
  return config;
}

// The tokens of rank r's micro-batch m of step s: (kRows, kLength), the same on every
// rank that asks.
torch::Tensor batch_of(int64_t step, int64_t micro, int64_t rank) {
  auto generator = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + 10 * micro + rank + 1));
  return torch::randint(kVocab, {kRows, kLength}, generator, torch::kLong);
}

// Sum of the next-token cross-entropies of (B, T, V) logits over (B, T) ids.
torch::Tensor loss_sum(const torch::Tensor& logits, const torch::Tensor& ids) {
  return F::cross_entropy(logits.index({Slice(), Slice(0, -1)}).reshape({-1, kVocab}),
                          ids.index({Slice(), Slice(1)}).reshape({-1}),
                          F::CrossEntropyFuncOptions().reduction(torch::kSum));
}

// One kind of model: how to make it (same seed, same values on every rank), run it
// and list its blocks' parameter names.
struct ModelKind {
  std::function<std::shared_ptr<torch::nn::Module>()> make;
  std::function<torch::Tensor(torch::nn::Module&, const torch::Tensor&)> logits;
  std::function<void(torch::nn::Module&, model::BlockRunner)> set_block_runner;
  std::function<std::vector<std::shared_ptr<torch::nn::Module>>(torch::nn::Module&)> blocks;
};

ModelKind gpt2_kind() {
  return {[] {
            torch::manual_seed(42);
            return std::static_pointer_cast<torch::nn::Module>(model::Gpt2(tiny_gpt2()).ptr());
          },
          [](torch::nn::Module& m, const torch::Tensor& ids) { return dynamic_cast<model::Gpt2Impl&>(m).forward(ids); },
          [](torch::nn::Module& m, model::BlockRunner runner) {
            dynamic_cast<model::Gpt2Impl&>(m).set_block_runner(std::move(runner));
          },
          [](torch::nn::Module& m) { return dynamic_cast<model::Gpt2Impl&>(m).blocks(); }};
}

ModelKind llama_kind() {
  return {[] {
            torch::manual_seed(43);
            return std::static_pointer_cast<torch::nn::Module>(model::Llama(tiny_llama()).ptr());
          },
          [](torch::nn::Module& m, const torch::Tensor& ids) { return dynamic_cast<model::LlamaImpl&>(m).forward(ids); },
          [](torch::nn::Module& m, model::BlockRunner runner) {
            dynamic_cast<model::LlamaImpl&>(m).set_block_runner(std::move(runner));
          },
          [](torch::nn::Module& m) { return dynamic_cast<model::LlamaImpl&>(m).blocks(); }};
}

// Names (as in named_parameters) of each block's parameters, found by identity.
std::vector<std::vector<std::string>> block_param_names(torch::nn::Module& net, const ModelKind& kind) {
  std::map<const void*, size_t> block_of;
  const auto blocks = kind.blocks(net);
  for (size_t b = 0; b < blocks.size(); ++b)
    for (const auto& p : blocks[b]->parameters()) block_of[p.unsafeGetTensorImpl()] = b;
  std::vector<std::vector<std::string>> names(blocks.size());
  for (const auto& item : net.named_parameters()) {
    auto found = block_of.find(item.value().unsafeGetTensorImpl());
    if (found != block_of.end()) names[found->second].push_back(item.key());
  }
  return names;
}

struct RunOptions {
  int stage = 3;
  bool checkpoint = false;
  int64_t micro_batches = 1;
  int64_t steps = 3;
  bool freeze_blocks = false;  // blocks' parameters do not require grad
  bool checkpoint_outside = false;  // checkpoint_blocks(zero.block_runner()) instead
  bool whole_model_unit = false;    // no block names: stage 3 gathers the model as one unit
  bool overlap = false;             // ZeroSharding::set_overlap
  bool split_input = false;         // stage 3: the embeddings a unit apart from the root
};

struct RunResult {
  std::vector<double> losses;  // global mean loss of each step
  std::vector<double> grad_norms;  // of the whole model's gradient, each step
  std::vector<std::pair<std::string, torch::Tensor>> params;
  dist::CommStats first_step;  // through the step's gather_parameters()
  int64_t peak_parameter_bytes = 0;
  int64_t peak_gradient_bytes = 0;
  int64_t gradient_bytes_between_backward = 0;  // the most held after a micro-batch's backward
  size_t overlapped_reductions = 0;             // in the first step
};

int64_t global_targets(const RunOptions& options) { return N() * kRows * (kLength - 1) * options.micro_batches; }

void freeze_blocks(torch::nn::Module& net, const ModelKind& kind) {
  for (const auto& block : kind.blocks(net))
    for (auto& p : block->parameters()) p.requires_grad_(false);
}

// The plain model fed every rank's batches at once; SGD on the full gradients.
RunResult run_reference(const ModelKind& kind, const RunOptions& options) {
  auto net = kind.make();
  if (options.freeze_blocks) freeze_blocks(*net, kind);
  net->train();
  RunResult result;
  for (int64_t step = 0; step < options.steps; ++step) {
    double loss = 0;
    for (int64_t m = 0; m < options.micro_batches; ++m) {
      std::vector<torch::Tensor> rows;
      for (int64_t r = 0; r < N(); ++r) rows.push_back(batch_of(step, m, r));
      const torch::Tensor ids = torch::cat(rows);
      torch::Tensor micro_loss = loss_sum(kind.logits(*net, ids), ids) / double(global_targets(options));
      micro_loss.backward();
      loss += micro_loss.item<double>();
    }
    result.losses.push_back(loss);
    torch::NoGradGuard no_grad;
    double square_sum = 0;
    for (auto& p : net->parameters())
      if (p.grad().defined()) square_sum += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
    result.grad_norms.push_back(std::sqrt(square_sum));
    for (auto& p : net->parameters())
      if (p.grad().defined()) p.sub_(kLearningRate * p.grad());
    net->zero_grad();
  }
  for (const auto& item : net->named_parameters()) result.params.emplace_back(item.key(), item.value().detach().clone());
  return result;
}

// The same training with ZeroSharding at `options.stage`, each rank on its own rows.
RunResult run_sharded(const ModelKind& kind, const RunOptions& options) {
  auto net = kind.make();
  if (options.freeze_blocks) freeze_blocks(*net, kind);
  net->train();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : net->named_parameters()) named.emplace_back(item.key(), item.value());
  dist::ZeroSharding zero(named, dp(), options.stage,
                          options.whole_model_unit ? std::vector<std::vector<std::string>>{}
                                                   : block_param_names(*net, kind),
                          options.split_input ? model::input_parameter_names(*net) : std::vector<std::string>{});
  zero.set_overlap(options.overlap);
  if (options.checkpoint_outside)
    kind.set_block_runner(*net, model::checkpoint_blocks(zero.block_runner()));
  else
    kind.set_block_runner(*net, zero.block_runner(options.checkpoint ? model::checkpoint_blocks() : model::BlockRunner()));

  RunResult result;
  for (int64_t step = 0; step < options.steps; ++step) {
    if (step == 0) {
      comm().stats().reset();
      zero.reset_peaks();
    }
    double local_loss = 0;
    for (int64_t m = 0; m < options.micro_batches; ++m) {
      const torch::Tensor ids = batch_of(step, m, R());
      zero.before_forward();
      torch::Tensor micro_loss = loss_sum(kind.logits(*net, ids), ids) / double(global_targets(options));
      zero.before_backward(/*completes_step=*/m + 1 == options.micro_batches);
      micro_loss.backward();
      zero.after_backward();
      if (step == 0)
        result.gradient_bytes_between_backward = std::max(result.gradient_bytes_between_backward, zero.gradient_bytes());
      local_loss += micro_loss.item<double>();
    }
    zero.reduce_gradients();
    if (step == 0) {
      result.peak_parameter_bytes = zero.peak_parameter_bytes();
      result.peak_gradient_bytes = zero.peak_gradient_bytes();
      result.overlapped_reductions = zero.overlapped_reductions();
    }
    result.losses.push_back(dp().all_reduce(local_loss, dist::ReduceOp::Sum));
    {
      torch::NoGradGuard no_grad;
      for (const auto& slice : zero.local_slices())
        if (named[slice.param_index].second.requires_grad()) slice.param.sub_(kLearningRate * slice.grad);
    }
    zero.gather_parameters();
    if (step == 0) result.first_step = comm().stats();
    zero.zero_grad();
  }
  std::vector<torch::Tensor> slice_params;
  for (const auto& slice : zero.local_slices()) slice_params.push_back(slice.param);
  result.params = zero.gather_state(slice_params);
  kind.set_block_runner(*net, {});
  return result;
}

// The same training through dist/data_parallel.h, driven as the trainer drives it:
// replicated at zero 0, sharded at 1-3. Gradients are halved through
// scale_gradients() and the learning rate doubled, so a scale that missed some
// gradients shows; the norm is taken from gradients() as clipping takes it. After the
// steps the model evaluates `eval_ids` between before_forward() and
// after_evaluation(), into `eval_logits`.
RunResult run_data_parallel(const ModelKind& kind, const dist::DataParallelOptions& options, int64_t micro_batches,
                            const torch::Tensor& eval_ids, torch::Tensor& eval_logits) {
  auto net = kind.make();
  net->train();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : net->named_parameters()) named.emplace_back(item.key(), item.value());
  auto data_parallel = dist::make_data_parallel(named, dp(), options, block_param_names(*net, kind));
  kind.set_block_runner(*net, data_parallel->block_runner({}));
  RunOptions run;
  run.micro_batches = micro_batches;
  RunResult result;
  for (int64_t step = 0; step < run.steps; ++step) {
    double local_loss = 0;
    for (int64_t m = 0; m < micro_batches; ++m) {
      const torch::Tensor ids = batch_of(step, m, R());
      data_parallel->before_forward();
      torch::Tensor micro_loss = loss_sum(kind.logits(*net, ids), ids) / double(global_targets(run));
      data_parallel->before_backward(/*completes_step=*/m + 1 == micro_batches);
      micro_loss.backward();
      data_parallel->after_backward();
      local_loss += micro_loss.item<double>();
    }
    data_parallel->finish_gradients();
    result.losses.push_back(dp().all_reduce(local_loss, dist::ReduceOp::Sum));
    double square_sum = 0;
    for (const auto& [name, grad] : data_parallel->gradients())
      square_sum += grad.to(torch::kFloat64).pow(2).sum().item<double>();
    if (data_parallel->shards_state()) square_sum = dp().all_reduce(square_sum, dist::ReduceOp::Sum);
    result.grad_norms.push_back(std::sqrt(square_sum));
    data_parallel->scale_gradients(torch::full({}, 0.5));
    {
      torch::NoGradGuard no_grad;
      for (const dist::LocalSlice& slice : data_parallel->local_slices()) {
        const at::Tensor grad = slice.grad.defined() ? slice.grad : slice.param.grad();
        if (grad.defined()) slice.param.sub_(2 * kLearningRate * grad);
      }
    }
    data_parallel->after_step();
  }
  for (const auto& [name, param] : named) result.params.emplace_back(name, data_parallel->whole_parameter(name).clone());
  net->eval();
  torch::NoGradGuard no_grad;
  data_parallel->before_forward();
  eval_logits = kind.logits(*net, eval_ids);
  data_parallel->after_evaluation();
  kind.set_block_runner(*net, {});
  return result;
}

void check_against_reference(const RunResult& actual, const RunResult& expected) {
  BOOST_TEST_REQUIRE(actual.losses.size() == expected.losses.size());
  for (size_t s = 0; s < actual.losses.size(); ++s)
    BOOST_TEST(std::abs(actual.losses[s] - expected.losses[s]) <= kTolerance * std::abs(expected.losses[s]),
               "step " << s << " loss " << actual.losses[s] << " vs reference " << expected.losses[s]);
  if (!actual.grad_norms.empty()) {
    BOOST_TEST_REQUIRE(actual.grad_norms.size() == expected.grad_norms.size());
    for (size_t s = 0; s < actual.grad_norms.size(); ++s)
      BOOST_TEST(std::abs(actual.grad_norms[s] - expected.grad_norms[s]) <= kTolerance * expected.grad_norms[s],
                 "step " << s << " grad_norm " << actual.grad_norms[s] << " vs reference " << expected.grad_norms[s]);
  }
  BOOST_TEST_REQUIRE(actual.params.size() == expected.params.size());
  for (size_t i = 0; i < actual.params.size(); ++i) {
    BOOST_TEST(actual.params[i].first == expected.params[i].first);
    const double error = relative_error(actual.params[i].second, expected.params[i].second);
    BOOST_TEST(error <= kTolerance, actual.params[i].first << ": relative error " << error);
  }
}

// Elements of each unit, padded to a multiple of N: the root first, then the blocks.
std::vector<int64_t> padded_unit_numels(const ModelKind& kind) {
  auto net = kind.make();
  const auto names = block_param_names(*net, kind);
  std::map<std::string, int64_t> numel;
  int64_t total = 0;
  for (const auto& item : net->named_parameters()) {
    numel[item.key()] = item.value().numel();
    total += item.value().numel();
  }
  std::vector<int64_t> units = {total};
  for (const auto& block : names) {
    int64_t n = 0;
    for (const auto& name : block) n += numel.at(name);
    units.front() -= n;
    units.push_back(n);
  }
  for (int64_t& n : units) n = (n + N() - 1) / N() * N();
  return units;
}

// Stage 3's communication and memory over the first step, derived from the unit sizes.
void check_stage3_accounting(const RunResult& run, const ModelKind& kind, const RunOptions& options) {
  const std::vector<int64_t> units = padded_unit_numels(kind);
  const double ring = double(N() - 1) / double(N());
  const double bytes = 4.0;  // float32
  int64_t root = units.front(), blocks = 0, shards = 0, largest_pair = 0, largest_block = 0;
  for (size_t u = 1; u < units.size(); ++u) {
    blocks += units[u];
    largest_block = std::max(largest_block, units[u]);
    largest_pair = std::max(largest_pair, units[u] + (u + 1 < units.size() ? units[u + 1] : 0));
  }
  for (int64_t n : units) shards += n / N();
  const int64_t micro = options.micro_batches;
  // Blocks: gathered for forward and backward and reduce-scattered in every micro-batch,
  // unless frozen (no reduce-scatter). The root: gathered once, reduced once.
  const double gathered = double((2 * micro) * blocks + root);
  const double reduced = double((options.freeze_blocks ? 0 : micro) * blocks + root);
  BOOST_TEST(run.first_step.all_gather.bytes_sent == ring * bytes * gathered);
  BOOST_TEST(run.first_step.reduce_scatter.bytes_sent == ring * bytes * reduced);
  const int64_t n_blocks = static_cast<int64_t>(units.size()) - 1;
  BOOST_TEST(run.first_step.all_gather.calls == 2 * micro * n_blocks + 1);
  BOOST_TEST(run.first_step.reduce_scatter.calls == (options.freeze_blocks ? 0 : micro) * n_blocks + 1);
  if (R() == 0)
    BOOST_TEST_MESSAGE("N=" << N() << " micro-batches " << micro << (options.freeze_blocks ? " frozen blocks" : "")
                            << ": all-gather " << run.first_step.all_gather.bytes_sent << " B, reduce-scatter "
                            << run.first_step.reduce_scatter.bytes_sent << " B, peak parameters "
                            << run.peak_parameter_bytes << " B, peak gradients " << run.peak_gradient_bytes
                            << " B; unsharded model " << 4 * (root + blocks) << " B");
  // Held at most at once: every shard, the root, and a block with the next one being
  // prefetched; gradients of the root and of one block, or with overlap of two
  // neighbours (one computing its backward, the one after it being reduced).
  BOOST_TEST(run.peak_parameter_bytes == int64_t(bytes) * (shards + root + largest_pair));
  const int64_t held_blocks = options.freeze_blocks ? 0 : options.overlap ? largest_pair : largest_block;
  BOOST_TEST(run.peak_gradient_bytes == int64_t(bytes) * (shards + root + held_blocks));
  BOOST_TEST(run.overlapped_reductions ==
             size_t(options.overlap && !options.freeze_blocks ? micro * n_blocks : 0));
}

// Stage 3 with the input unit split off the root (dist/zero.h, "Input unit"), over the
// first step. Per micro-batch: the input gathered for the forward and again for its
// backward, the root once, each block twice; each reduce-scattered once. Held at most
// at once: the input alone, two neighbouring blocks, or the root with the last block;
// gradients of one of them (with overlap, with the unit reduced before it still in
// flight).
void check_split_accounting(const RunResult& run, const ModelKind& kind, const RunOptions& options) {
  auto net = kind.make();
  const std::vector<std::string> input_names = model::input_parameter_names(*net);
  BOOST_TEST_REQUIRE(!input_names.empty());
  std::vector<int64_t> units = padded_unit_numels(kind);  // the root (with the input), then the blocks
  int64_t input = 0;
  for (const auto& item : net->named_parameters())
    if (std::find(input_names.begin(), input_names.end(), item.key()) != input_names.end()) input += item.value().numel();
  int64_t root = 0;
  {
    int64_t everything = 0, in_blocks = 0;
    for (const auto& item : net->named_parameters()) everything += item.value().numel();
    for (const auto& block : block_param_names(*net, kind))
      for (const auto& name : block) in_blocks += net->named_parameters()[name].numel();
    root = everything - in_blocks - input;
  }
  auto padded = [](int64_t n) { return (n + N() - 1) / N() * N(); };
  input = padded(input);
  root = padded(root);
  const std::vector<int64_t> blocks(units.begin() + 1, units.end());
  int64_t block_total = 0, largest_pair = 0, largest_block = 0, shards = (input + root) / N();
  for (size_t b = 0; b < blocks.size(); ++b) {
    block_total += blocks[b];
    shards += blocks[b] / N();
    largest_block = std::max(largest_block, blocks[b]);
    largest_pair = std::max(largest_pair, blocks[b] + (b + 1 < blocks.size() ? blocks[b + 1] : 0));
  }
  const double ring = double(N() - 1) / double(N());
  const int64_t micro = options.micro_batches, n_blocks = static_cast<int64_t>(blocks.size());
  BOOST_TEST(run.first_step.all_gather.bytes_sent == ring * 4.0 * double(micro * (2 * block_total + 2 * input + root)));
  BOOST_TEST(run.first_step.reduce_scatter.bytes_sent == ring * 4.0 * double(micro * (block_total + input + root)));
  BOOST_TEST(run.first_step.all_gather.calls == micro * (2 * n_blocks + 3));
  BOOST_TEST(run.first_step.reduce_scatter.calls == micro * (n_blocks + 2));
  const int64_t gathered = std::max({input, largest_pair, root + blocks.back()});
  const int64_t held = options.overlap ? std::max({root + blocks.back(), largest_pair, blocks.front() + input})
                                       : std::max({root, largest_block, input});
  BOOST_TEST(run.peak_parameter_bytes == 4 * (shards + gathered));
  BOOST_TEST(run.peak_gradient_bytes == 4 * (shards + held));
  BOOST_TEST(run.overlapped_reductions == size_t(options.overlap ? micro * (n_blocks + 1) : 0));
}

// Stage 2's communication and memory over the first step. Every unit is reduce-scattered
// in every micro-batch (blocks by their hooks, the root by after_backward) unless
// frozen, and all-gathered once after the update: k psi (N-1)/N + psi (N-1)/N. The
// parameters stay whole; the gradients peak at the shards plus the root's and one
// block's full gradients, held together during a block's backward (with overlap, two
// blocks': the one after it is still being reduced).
void check_stage2_accounting(const RunResult& run, const ModelKind& kind, const RunOptions& options) {
  const std::vector<int64_t> units = padded_unit_numels(kind);
  const double ring = double(N() - 1) / double(N());
  const int64_t bytes = 4;  // float32
  int64_t psi = 0, shards = 0, blocks = 0, largest_block = 0, largest_pair = 0;
  for (int64_t n : units) {
    psi += n;
    shards += n / N();
  }
  for (size_t u = 1; u < units.size(); ++u) {
    blocks += units[u];
    largest_block = std::max(largest_block, units[u]);
    largest_pair = std::max(largest_pair, units[u] + (u + 1 < units.size() ? units[u + 1] : 0));
  }
  const int64_t root = units.front();
  const int64_t micro = options.micro_batches;
  const int64_t n_units = static_cast<int64_t>(units.size());
  const int64_t reduced = micro * (options.freeze_blocks ? root : psi);
  BOOST_TEST(run.first_step.reduce_scatter.bytes_sent == ring * double(bytes * reduced));
  BOOST_TEST(run.first_step.reduce_scatter.calls == micro * (options.freeze_blocks ? 1 : n_units));
  BOOST_TEST(run.first_step.all_gather.bytes_sent == ring * double(bytes * psi));
  BOOST_TEST(run.first_step.all_gather.calls == n_units);
  BOOST_TEST(run.peak_parameter_bytes == bytes * psi);
  const int64_t held_blocks = options.freeze_blocks ? 0 : options.overlap ? largest_pair : largest_block;
  BOOST_TEST(run.peak_gradient_bytes == bytes * (shards + root + held_blocks));
  BOOST_TEST(run.overlapped_reductions ==
             size_t(options.overlap && !options.freeze_blocks ? micro * (n_units - 1) : 0));
  // Every full gradient is freed once its micro-batch's backward is done.
  BOOST_TEST(run.gradient_bytes_between_backward == bytes * shards);
  if (R() == 0)
    BOOST_TEST_MESSAGE("stage 2, N=" << N() << " micro-batches " << micro
                                     << (options.freeze_blocks ? " frozen blocks" : "") << ": reduce-scatter "
                                     << run.first_step.reduce_scatter.bytes_sent << " B, all-gather "
                                     << run.first_step.all_gather.bytes_sent << " B, peak gradients "
                                     << run.peak_gradient_bytes << " B (shards " << bytes * shards << " B, root "
                                     << bytes * root << " B, largest block " << bytes * largest_block
                                     << " B); unsharded gradients " << bytes * (root + blocks) << " B");
}

void check_stage2(const ModelKind& kind, const RunOptions& options) {
  const RunResult expected = run_reference(kind, options);
  const RunResult actual = run_sharded(kind, options);
  check_against_reference(actual, expected);
  check_stage2_accounting(actual, kind, options);
}

void check_stage3(const ModelKind& kind, const RunOptions& options) {
  const RunResult expected = run_reference(kind, options);
  const RunResult actual = run_sharded(kind, options);
  check_against_reference(actual, expected);
  check_stage3_accounting(actual, kind, options);
}

}  // namespace

BOOST_AUTO_TEST_CASE(start_all_gather_gathers_in_rank_order_and_counts_like_all_gather) {
  comm().stats().reset();
  torch::Tensor mine = torch::full({3}, double(R() + 1), torch::kFloat);
  torch::Tensor out = torch::empty({3 * N()}, torch::kFloat);
  dist::PendingCollective pending = dp().start_all_gather(out, mine);
  pending.wait();
  BOOST_TEST(pending.done());
  for (int64_t r = 0; r < N(); ++r) BOOST_TEST(torch::equal(out.narrow(0, 3 * r, 3), torch::full({3}, double(r + 1))));
  BOOST_TEST(comm().stats().all_gather.calls == 1);
  BOOST_TEST(comm().stats().all_gather.bytes_sent == double(N() - 1) / double(N()) * 4.0 * 3.0 * double(N()));
  // In place: this rank's chunk of out is the input.
  torch::Tensor in_place = torch::zeros({2 * N()}, torch::kFloat);
  in_place.narrow(0, 2 * R(), 2).fill_(double(10 * R()));
  torch::Tensor chunk = in_place.narrow(0, 2 * R(), 2);
  dp().start_all_gather(in_place, chunk).wait();
  for (int64_t r = 0; r < N(); ++r) BOOST_TEST(in_place[2 * r].item<double>() == double(10 * r));
}

BOOST_AUTO_TEST_CASE(stages_1_and_2_match_the_reference) {
  for (int stage : {1, 2}) {
    RunOptions options;
    options.stage = stage;
    options.micro_batches = 2;
    BOOST_TEST_CONTEXT("stage " << stage) { check_against_reference(run_sharded(gpt2_kind(), options), run_reference(gpt2_kind(), options)); }
  }
}

BOOST_AUTO_TEST_CASE(gpt2_stage2_matches_the_reference_and_frees_gradients_per_block) {
  for (bool checkpoint : {false, true})
    for (int64_t micro : {1, 2}) {
      RunOptions options;
      options.stage = 2;
      options.checkpoint = checkpoint;
      options.micro_batches = micro;
      BOOST_TEST_CONTEXT("checkpoint " << checkpoint << ", micro-batches " << micro) { check_stage2(gpt2_kind(), options); }
    }
}

BOOST_AUTO_TEST_CASE(llama_stage2_matches_the_reference_and_frees_gradients_per_block) {
  for (int64_t micro : {1, 2}) {
    RunOptions options;
    options.stage = 2;
    options.micro_batches = micro;
    BOOST_TEST_CONTEXT("micro-batches " << micro) { check_stage2(llama_kind(), options); }
  }
}

BOOST_AUTO_TEST_CASE(stage2_with_frozen_blocks_reduces_the_root_only) {
  RunOptions options;
  options.stage = 2;
  options.freeze_blocks = true;
  options.micro_batches = 2;
  check_stage2(gpt2_kind(), options);
}

BOOST_AUTO_TEST_CASE(stage2_under_checkpointing_outside_reduces_each_block_once) {
  // The recomputation in backward runs through the ZeRO runner again; the block's
  // gradients are still reduced once per micro-batch.
  RunOptions options;
  options.stage = 2;
  options.checkpoint_outside = true;
  options.micro_batches = 2;
  check_stage2(gpt2_kind(), options);
}

BOOST_AUTO_TEST_CASE(stage2_holds_fewer_gradient_bytes_than_stage1) {
  // Stage 1 keeps every unit's full gradients (the reduced shard lands in them); stage 2
  // its shard plus the root's and one block's full gradients.
  RunOptions options;
  options.micro_batches = 2;
  options.stage = 1;
  const RunResult stage1 = run_sharded(gpt2_kind(), options);
  options.stage = 2;
  const RunResult stage2 = run_sharded(gpt2_kind(), options);
  options.stage = 3;
  const RunResult stage3 = run_sharded(gpt2_kind(), options);
  const std::vector<int64_t> units = padded_unit_numels(gpt2_kind());
  int64_t psi = 0;
  for (int64_t n : units) psi += n;
  BOOST_TEST(stage1.peak_gradient_bytes == 4 * psi);
  // One rank has nothing to shard: there stage 2 holds the working set on top.
  if (N() > 1) BOOST_TEST(stage2.peak_gradient_bytes < stage1.peak_gradient_bytes);
  BOOST_TEST(stage3.peak_gradient_bytes == stage2.peak_gradient_bytes);  // the same units held at once
  // Stage 1's sends, whatever the micro-batches: each unit reduce-scattered and
  // all-gathered once, after the backward passes.
  const double ring = double(N() - 1) / double(N());
  BOOST_TEST(stage1.first_step.reduce_scatter.bytes_sent == ring * 4.0 * double(psi));
  BOOST_TEST(stage1.first_step.all_gather.bytes_sent == ring * 4.0 * double(psi));
  BOOST_TEST(stage1.first_step.reduce_scatter.calls == units.size());
  BOOST_TEST(stage1.first_step.all_gather.calls == units.size());
  BOOST_TEST(stage1.overlapped_reductions == 0u);
  if (R() == 0)
    BOOST_TEST_MESSAGE("N=" << N() << ", gpt2 of " << psi << " parameters (padded), peak gradient bytes per rank: stage 1 "
                            << stage1.peak_gradient_bytes << ", stage 2 " << stage2.peak_gradient_bytes
                            << ", stage 3 " << stage3.peak_gradient_bytes);
}

BOOST_AUTO_TEST_CASE(stage1_with_overlap_reduces_each_block_during_the_last_backward) {
  // Gradients accumulate over the micro-batches; in the last backward pass each block
  // is reduce-scattered once its backward is done, the root after the pass. The same
  // sends as without overlap, and the reference's training.
  const std::vector<int64_t> units = padded_unit_numels(gpt2_kind());
  int64_t psi = 0;
  for (int64_t n : units) psi += n;
  const double ring = double(N() - 1) / double(N());
  for (bool checkpoint : {false, true})
    for (int64_t micro : {1, 3}) {
      RunOptions options;
      options.stage = 1;
      options.overlap = true;
      options.checkpoint = checkpoint;
      options.micro_batches = micro;
      BOOST_TEST_CONTEXT("checkpoint " << checkpoint << ", micro-batches " << micro) {
        const RunResult actual = run_sharded(gpt2_kind(), options);
        check_against_reference(actual, run_reference(gpt2_kind(), options));
        BOOST_TEST(actual.overlapped_reductions == units.size() - 1);
        BOOST_TEST(actual.first_step.reduce_scatter.calls == units.size());
        BOOST_TEST(actual.first_step.reduce_scatter.bytes_sent == ring * 4.0 * double(psi));
        BOOST_TEST(actual.peak_gradient_bytes == 4 * psi);
      }
    }
}

BOOST_AUTO_TEST_CASE(stage1_refuses_a_backward_after_the_step_was_reduced) {
  const ModelKind kind = llama_kind();
  auto net = kind.make();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : net->named_parameters()) named.emplace_back(item.key(), item.value());
  dist::ZeroSharding zero(named, dp(), 1, block_param_names(*net, kind));
  zero.set_overlap(true);
  kind.set_block_runner(*net, zero.block_runner());
  const torch::Tensor ids = batch_of(0, 0, R());
  zero.before_backward(/*completes_step=*/true);
  loss_sum(kind.logits(*net, ids), ids).backward();
  zero.after_backward();
  BOOST_TEST(zero.overlapped_reductions() == 3u);
  try {
    zero.before_backward(/*completes_step=*/false);
    BOOST_FAIL("a further backward pass was accepted");
  } catch (const std::logic_error& error) {
    BOOST_TEST(std::string(error.what()).find("zero_grad") != std::string::npos, error.what());
  }
  zero.reduce_gradients();
  zero.zero_grad();
  BOOST_TEST(zero.overlapped_reductions() == 0u);
  zero.before_backward(/*completes_step=*/true);  // accepted again
  zero.after_backward();
  zero.reduce_gradients();
  kind.set_block_runner(*net, {});
}

BOOST_AUTO_TEST_CASE(stages_2_and_3_with_overlap_match_the_reference) {
  // Each block's reduce-scatter runs while the block before it computes its backward:
  // the same training and sends, one more block's gradients held at the peak.
  for (int stage : {2, 3})
    for (bool llama : {false, true})
      for (int64_t micro : {1, 2}) {
        const ModelKind kind = llama ? llama_kind() : gpt2_kind();
        RunOptions options;
        options.stage = stage;
        options.overlap = true;
        options.micro_batches = micro;
        options.checkpoint = micro == 2;
        BOOST_TEST_CONTEXT("stage " << stage << (llama ? ", llama" : ", gpt2") << ", micro-batches " << micro) {
          if (stage == 2)
            check_stage2(kind, options);
          else
            check_stage3(kind, options);
        }
      }
}

BOOST_AUTO_TEST_CASE(overlap_with_frozen_blocks_reduces_the_root_only) {
  for (int stage : {1, 2, 3}) {
    RunOptions options;
    options.stage = stage;
    options.overlap = true;
    options.freeze_blocks = true;
    options.micro_batches = 2;
    BOOST_TEST_CONTEXT("stage " << stage) {
      const RunResult actual = run_sharded(gpt2_kind(), options);
      check_against_reference(actual, run_reference(gpt2_kind(), options));
      BOOST_TEST(actual.overlapped_reductions == 0u);
    }
  }
}

BOOST_AUTO_TEST_CASE(stage2_without_blocks_reduces_the_whole_model_as_one_unit) {
  RunOptions options;
  options.stage = 2;
  options.whole_model_unit = true;
  options.micro_batches = 2;
  const RunResult actual = run_sharded(llama_kind(), options);
  check_against_reference(actual, run_reference(llama_kind(), options));
  BOOST_TEST(actual.first_step.reduce_scatter.calls == 2);
  BOOST_TEST(actual.first_step.all_gather.calls == 1);
}

BOOST_AUTO_TEST_CASE(gpt2_stage3_matches_the_reference) {
  for (bool checkpoint : {false, true})
    for (int64_t micro : {1, 2}) {
      RunOptions options;
      options.checkpoint = checkpoint;
      options.micro_batches = micro;
      BOOST_TEST_CONTEXT("checkpoint " << checkpoint << ", micro-batches " << micro) { check_stage3(gpt2_kind(), options); }
    }
}

BOOST_AUTO_TEST_CASE(llama_stage3_matches_the_reference) {
  for (bool checkpoint : {false, true})
    for (int64_t micro : {1, 2}) {
      RunOptions options;
      options.checkpoint = checkpoint;
      options.micro_batches = micro;
      BOOST_TEST_CONTEXT("checkpoint " << checkpoint << ", micro-batches " << micro) { check_stage3(llama_kind(), options); }
    }
}

BOOST_AUTO_TEST_CASE(stage3_with_frozen_blocks_trains_the_root_only) {
  RunOptions options;
  options.freeze_blocks = true;
  options.checkpoint = true;
  check_stage3(gpt2_kind(), options);
}

BOOST_AUTO_TEST_CASE(stage3_under_checkpointing_recomputes_with_the_parameters_gathered_again) {
  // Checkpointing outside ZeRO: the recomputation in backward goes through the ZeRO
  // runner, which gathers the block once more and leaves freeing to the block's hooks.
  RunOptions options;
  options.checkpoint_outside = true;
  options.micro_batches = 2;
  const RunResult actual = run_sharded(gpt2_kind(), options);
  check_against_reference(actual, run_reference(gpt2_kind(), options));
  const std::vector<int64_t> units = padded_unit_numels(gpt2_kind());
  int64_t blocks = 0;
  for (size_t u = 1; u < units.size(); ++u) blocks += units[u];
  const double ring = double(N() - 1) / double(N());
  BOOST_TEST(actual.first_step.all_gather.bytes_sent == ring * 4.0 * double(2 * 2 * blocks + units.front()));
  BOOST_TEST(actual.first_step.reduce_scatter.bytes_sent == ring * 4.0 * double(2 * blocks + units.front()));
}

BOOST_AUTO_TEST_CASE(stage3_without_blocks_gathers_the_whole_model_as_one_unit) {
  RunOptions options;
  options.whole_model_unit = true;
  options.checkpoint = true;
  const RunResult actual = run_sharded(llama_kind(), options);
  check_against_reference(actual, run_reference(llama_kind(), options));
  BOOST_TEST(actual.first_step.all_gather.calls == 1);
  BOOST_TEST(actual.first_step.reduce_scatter.calls == 1);
}

BOOST_AUTO_TEST_CASE(stage3_parameters_are_freed_between_uses_and_after_release) {
  const ModelKind kind = gpt2_kind();
  auto net = kind.make();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : net->named_parameters()) named.emplace_back(item.key(), item.value());
  dist::ZeroSharding zero(named, dp(), 3, block_param_names(*net, kind));
  const std::vector<int64_t> units = padded_unit_numels(kind);
  int64_t shards = 0;
  for (int64_t n : units) shards += n / N();
  BOOST_TEST(zero.parameter_bytes() == 4 * shards);
  BOOST_TEST(zero.gradient_bytes() == 4 * shards);
  // Every parameter's storage is released, its shape kept.
  for (const auto& [name, p] : named) BOOST_TEST(p.storage().nbytes() == 0u, name);
  kind.set_block_runner(*net, zero.block_runner());
  net->eval();
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    zero.before_forward();
    logits = kind.logits(*net, batch_of(0, 0, R()));
    BOOST_TEST(zero.parameter_bytes() == 4 * (shards + units.front()));  // the root alone
    zero.release();
  }
  BOOST_TEST(zero.parameter_bytes() == 4 * shards);
  BOOST_TEST(zero.gradient_bytes() == 4 * shards);  // no gradient memory under no-grad
  // The same logits as the plain model.
  auto plain = kind.make();
  plain->eval();
  torch::NoGradGuard no_grad;
  BOOST_TEST(relative_error(logits, kind.logits(*plain, batch_of(0, 0, R()))) <= kTolerance);
  kind.set_block_runner(*net, {});
}

BOOST_AUTO_TEST_CASE(stage3_unfilled_shards_filled_parameter_by_parameter_equal_the_sharded_whole_model) {
  // The same model twice: sharded from its values, and built Unfilled with each shard
  // filled from the whole tensors (transposed ones too, as GPT-2's Conv1D weights come).
  const ModelKind kind = gpt2_kind();
  auto whole = kind.make();
  std::vector<std::pair<std::string, at::Tensor>> values;
  for (const auto& item : whole->named_parameters()) values.emplace_back(item.key(), item.value().detach().clone());
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : whole->named_parameters()) named.emplace_back(item.key(), item.value());
  dist::ZeroSharding reference(named, dp(), 3, block_param_names(*whole, kind));

  auto net = kind.make();
  std::vector<std::pair<std::string, at::Tensor>> unfilled_params;
  for (const auto& item : net->named_parameters()) unfilled_params.emplace_back(item.key(), item.value());
  dist::ZeroSharding zero(unfilled_params, dp(), block_param_names(*net, kind),
                          dist::ZeroSharding::Unfilled{torch::kCPU, torch::kFloat32});
  for (const auto& [name, p] : unfilled_params) BOOST_TEST(p.storage().nbytes() == 0u, name);
  BOOST_TEST(zero.unfilled().size() == values.size());
  BOOST_CHECK_THROW(zero.fill_shard("no.such.parameter", values.front().second), std::invalid_argument);
  BOOST_CHECK_THROW(zero.fill_shard(values.front().first, torch::zeros({3})), std::invalid_argument);
  for (const auto& [name, value] : values) {
    // A 2-D value arrives as a transposed view of its stored layout half the time.
    const at::Tensor given = value.dim() == 2 && name.find("attn") != std::string::npos ? value.t().contiguous().t() : value;
    zero.fill_shard(name, given);
  }
  BOOST_TEST(zero.unfilled().empty());
  BOOST_REQUIRE_EQUAL(zero.local_slices().size(), reference.local_slices().size());
  for (size_t k = 0; k < zero.local_slices().size(); ++k) {
    BOOST_TEST(zero.local_slices()[k].name == reference.local_slices()[k].name);
    BOOST_TEST(torch::equal(zero.local_slices()[k].param, reference.local_slices()[k].param),
               zero.local_slices()[k].name);
  }
  // And the model runs from them as from the whole one.
  kind.set_block_runner(*net, zero.block_runner());
  net->eval();
  torch::NoGradGuard no_grad;
  zero.before_forward();
  const torch::Tensor logits = kind.logits(*net, batch_of(0, 0, R()));
  zero.release();
  whole->eval();
  kind.set_block_runner(*whole, reference.block_runner());
  reference.before_forward();
  const torch::Tensor expected = kind.logits(*whole, batch_of(0, 0, R()));
  reference.release();
  BOOST_TEST(relative_error(logits, expected) <= kTolerance);
  kind.set_block_runner(*net, {});
  kind.set_block_runner(*whole, {});
}

// dist/data_parallel.h: replicated (zero 0, gradients all-reduced in buckets small
// enough that the model needs several) and sharded (ZeRO 1-3) data parallelism behind
// one interface give the reference's losses, gradient norms and parameters, with and
// without overlap and accumulation, and evaluate as the reference model does.
BOOST_AUTO_TEST_CASE(every_data_parallel_kind_matches_the_reference_through_one_interface) {
  const torch::Tensor eval_ids = batch_of(99, 0, R());
  for (const ModelKind& kind : {gpt2_kind(), llama_kind()})
    for (int zero : {0, 1, 2, 3})
      for (bool overlap : {false, true})
        for (int64_t micro_batches : {1, 2}) {
          BOOST_TEST_CONTEXT("zero " << zero << (overlap ? " with overlap" : "") << ", " << micro_batches
                                     << " micro-batches") {
            dist::DataParallelOptions options;
            options.zero = zero;
            options.overlap = overlap;
            options.bucket_bytes = 4096;
            torch::Tensor logits;
            const RunResult actual = run_data_parallel(kind, options, micro_batches, eval_ids, logits);
            RunOptions reference;
            reference.micro_batches = micro_batches;
            check_against_reference(actual, run_reference(kind, reference));
            // The reference's trained parameters, run on the same rows.
            auto net = kind.make();
            {
              torch::NoGradGuard no_grad;
              for (const auto& [name, value] : actual.params) net->named_parameters()[name].copy_(value);
            }
            net->eval();
            torch::NoGradGuard no_grad;
            BOOST_TEST(relative_error(logits, kind.logits(*net, eval_ids)) <= kTolerance);
          }
        }
}

BOOST_AUTO_TEST_CASE(data_parallel_slices_cover_each_parameter_once_over_the_group) {
  for (int zero : {0, 1, 3}) {
    auto net = gpt2_kind().make();
    std::vector<std::pair<std::string, at::Tensor>> named;
    int64_t total = 0;
    for (const auto& item : net->named_parameters()) {
      named.emplace_back(item.key(), item.value());
      total += item.value().numel();
    }
    dist::DataParallelOptions options;
    options.zero = zero;
    options.bucket_bytes = 1 << 20;
    auto data_parallel = dist::make_data_parallel(named, dp(), options, block_param_names(*net, gpt2_kind()));
    int64_t held = 0;
    for (const dist::LocalSlice& slice : data_parallel->local_slices()) {
      held += slice.param.numel();
      BOOST_TEST(slice.flat_offset + slice.param.numel() <= c10::multiply_integers(slice.shape), slice.name);
    }
    BOOST_TEST(data_parallel->shards_state() == (zero > 0));
    BOOST_TEST(data_parallel->parameters_resident() == (zero < 3));
    // Replicated: every rank holds everything. Sharded: the ranks' slices add up to the
    // model, each element once.
    const int64_t over_group = data_parallel->shards_state() ? dp().all_reduce(held, dist::ReduceOp::Sum) : held;
    BOOST_TEST(over_group == total, "zero " << zero);
  }
  dist::DataParallelOptions wrong;
  wrong.zero = 4;
  BOOST_CHECK_THROW(dist::make_data_parallel({}, dp(), wrong, {}), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(llama_stage3_with_the_embeddings_apart_matches_the_reference) {
  for (bool overlap : {false, true})
    for (int64_t micro_batches : {1, 2})
      for (bool checkpoint : {false, true}) {
        RunOptions options;
        options.stage = 3;
        options.split_input = true;
        options.overlap = overlap;
        options.micro_batches = micro_batches;
        options.checkpoint = checkpoint;
        BOOST_TEST_CONTEXT((overlap ? "overlap, " : "") << micro_batches << " micro-batches"
                                                        << (checkpoint ? ", checkpointing" : "")) {
          const RunResult actual = run_sharded(llama_kind(), options);
          check_against_reference(actual, run_reference(llama_kind(), options));
          check_split_accounting(actual, llama_kind(), options);
        }
      }
}

BOOST_AUTO_TEST_CASE(stage3_refuses_an_input_unit_that_leaves_the_root_empty_or_overlaps_a_block) {
  auto net = llama_kind().make();
  std::vector<std::pair<std::string, at::Tensor>> named;
  std::vector<std::string> outside_blocks;
  const auto blocks = block_param_names(*net, llama_kind());
  for (const auto& item : net->named_parameters()) {
    named.emplace_back(item.key(), item.value());
    bool in_block = false;
    for (const auto& block : blocks) in_block |= std::find(block.begin(), block.end(), item.key()) != block.end();
    if (!in_block) outside_blocks.push_back(item.key());
  }
  BOOST_CHECK_THROW(dist::ZeroSharding(named, dp(), 3, blocks, outside_blocks), std::invalid_argument);
  BOOST_CHECK_THROW(dist::ZeroSharding(named, dp(), 3, blocks, {blocks.front().front()}), std::invalid_argument);
  BOOST_CHECK_THROW(dist::ZeroSharding(named, dp(), 3, blocks, {"no.such.parameter"}), std::invalid_argument);
}

// ---------------------------------------------------------------------------------
// Vocabulary matrices streamed by windows of rows (dist/streamed_vocab.h), against the
// whole matrix: a vocabulary of 37 rows (uneven for 2, 3 and 4 ranks, so the last rank
// holds padding rows), different tokens on every rank, the padding token in them,
// ignored targets and weighted rows. The gradient a rank's shard receives must be the
// rows of the whole matrix's gradient summed over ranks.

namespace {

constexpr int64_t kVocabRows = 37, kCols = 8, kPadding = 4;

struct StreamedVocabulary {
  at::Tensor whole = at::randn({kVocabRows, kCols}, at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
  at::Tensor block = at::randn({3});
  std::unique_ptr<dist::ZeroSharding> zero;
  const dist::ZeroSharding::RowShards* rows = nullptr;

  StreamedVocabulary() {
    // The same values on every rank (rank 0's), as a model's parameters are.
    dp().broadcast(whole, 0);
    dp().broadcast(block, 0);
    std::vector<std::pair<std::string, at::Tensor>> named{{"vocab", whole.clone().requires_grad_(true)},
                                                          {"block", block.clone().requires_grad_(true)}};
    zero = std::make_unique<dist::ZeroSharding>(named, dp(), 3, std::vector<std::vector<std::string>>{{"block"}},
                                                std::vector<std::string>{}, std::vector<std::string>{"vocab"});
    rows = zero->row_shards("vocab");
  }

  // This rank's rows of a whole (kVocabRows, kCols) tensor, padding rows zero.
  at::Tensor own_rows(const at::Tensor& full) const {
    const int64_t r = rows->rows_per_rank, begin = R() * r;
    at::Tensor out = at::zeros({r, kCols});
    const int64_t valid = std::clamp<int64_t>(kVocabRows - begin, 0, r);
    if (valid > 0) out.narrow(0, 0, valid).copy_(full.narrow(0, begin, valid));
    return out;
  }
};

at::Tensor summed_over_ranks(at::Tensor t) {
  dp().all_reduce(t, dist::ReduceOp::Sum);
  return t;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_vocabulary_matrix_is_sharded_by_whole_rows_and_never_gathered) {
  torch::manual_seed(11);
  StreamedVocabulary v;
  BOOST_REQUIRE(v.rows != nullptr);
  BOOST_TEST(v.rows->rows_per_rank == (kVocabRows + N() - 1) / N());
  BOOST_TEST(relative_error(v.rows->shard, v.own_rows(v.whole)) == 0.0);
  BOOST_TEST(v.zero->row_shards("block") == nullptr);
  // Windows no larger than a quarter of the largest block gathered whole (3 elements,
  // padded to N).
  BOOST_TEST(v.rows->window_bytes == std::min(dist::kStreamWindowBytes, (3 + N() - 1) / N() * N() * 4 / 4));
  // Not at stages 1 and 2, nor without blocks: then the matrix is an ordinary parameter.
  std::vector<std::pair<std::string, at::Tensor>> named{{"vocab", v.whole.clone()}, {"block", v.block.clone()}};
  BOOST_TEST(dist::ZeroSharding(named, dp(), 2, {{"block"}}, {}, {"vocab"}).row_shards("vocab") == nullptr);
  BOOST_TEST(dist::ZeroSharding(named, dp(), 3, {}, {}, {"vocab"}).row_shards("vocab") == nullptr);
  BOOST_CHECK_THROW(dist::ZeroSharding(named, dp(), 3, {{"block"}}, {}, {"block"}), std::invalid_argument);
}

// One window (the default), windows of 3 rows of every owner (the last one short), and
// windows of one row.
std::vector<int64_t> window_sizes() { return {0, N() * 3 * kCols * 4, 1}; }

BOOST_AUTO_TEST_CASE(streamed_embedding_equals_the_whole_table_with_its_gradient) {
  for (const int64_t window_bytes : window_sizes()) {
    BOOST_TEST_CONTEXT("windows of " << window_bytes << " bytes") {
      torch::manual_seed(12);
      StreamedVocabulary v;
      torch::manual_seed(100 + R());  // every rank looks up its own tokens
      at::Tensor ids = at::randint(0, kVocabRows, {3, 5}, at::kLong);
      ids[0][0] = kPadding;
      ids[2][4] = kVocabRows - 1;  // the last row, held by the last rank
      const at::Tensor upstream = at::randn({3, 5, kCols});

      const model::EmbeddingStyle style = dist::streamed_embedding(*v.rows, kPadding, window_bytes);
      const at::Tensor got = style.forward(ids, v.rows->param);
      BOOST_TEST(relative_error(got, F::embedding(ids, v.whole)) == 0.0);
      (got * upstream).sum().backward();

      at::Tensor table = v.whole.clone().requires_grad_(true);
      (F::embedding(ids, table, F::EmbeddingFuncOptions().padding_idx(kPadding)) * upstream).sum().backward();
      const at::Tensor expected = summed_over_ranks(table.grad().clone());
      BOOST_TEST(expected[kPadding].abs().sum().item<double>() == 0.0);
      BOOST_TEST(relative_error(v.rows->grad, v.own_rows(expected)) < 1e-6);
      // Under no_grad nothing is sent back.
      {
        torch::NoGradGuard no_grad;
        v.rows->grad.zero_();
        BOOST_TEST(!style.forward(ids, v.rows->param).requires_grad());
      }
      BOOST_TEST(v.rows->grad.abs().sum().item<double>() == 0.0);
    }
  }
}

BOOST_AUTO_TEST_CASE(streamed_logits_equal_the_whole_product_and_refuse_a_gradient) {
  for (const int64_t window_bytes : window_sizes()) {
    BOOST_TEST_CONTEXT("windows of " << window_bytes << " bytes") {
      torch::manual_seed(14);
      StreamedVocabulary v;
      torch::manual_seed(300 + R());  // every rank scores its own hidden states
      const at::Tensor hidden = at::randn({2, 3, kCols});
      const at::Tensor expected = at::matmul(hidden, v.whole.t());
      {
        torch::NoGradGuard no_grad;
        const at::Tensor got = dist::streamed_logits(*v.rows, hidden, window_bytes);
        BOOST_TEST(got.sizes() == expected.sizes());
        BOOST_TEST(relative_error(got, expected) < 1e-6);
        // The same through the embedding's tied head and an untied head's style.
        const model::EmbeddingStyle tied = dist::streamed_embedding(*v.rows, kPadding, window_bytes);
        BOOST_TEST(relative_error(tied.logits(hidden, v.rows->param), expected) < 1e-6);
        if (window_bytes == 0)
          BOOST_TEST(relative_error(dist::streamed_head(*v.rows).forward(hidden, v.rows->param, {}), expected) < 1e-6);
      }
      // While a gradient is recorded the logits would have none: refused.
      BOOST_CHECK_THROW(dist::streamed_logits(*v.rows, hidden, window_bytes), std::logic_error);
      BOOST_CHECK_THROW(dist::streamed_logits(*v.rows, at::randn({2, kCols + 1}), window_bytes),
                        std::invalid_argument);
    }
  }
  // An embedding without a style scores against its own table; one whose style only
  // looks rows up refuses to serve as a tied head.
  model::Embedding plain(kVocabRows, kCols);
  const at::Tensor h = at::randn({4, kCols});
  BOOST_TEST(relative_error(plain->logits(h).detach(), at::matmul(h, plain->weight.detach().t())) < 1e-6);
  plain->set_style({"looked up only", [](const at::Tensor& ids, const at::Tensor& w) { return F::embedding(ids, w); }});
  BOOST_CHECK_THROW(plain->logits(h), std::logic_error);
}

BOOST_AUTO_TEST_CASE(streamed_head_loss_equals_the_fused_loss_with_its_gradients) {
  for (const int64_t window_bytes : window_sizes()) {
    BOOST_TEST_CONTEXT("windows of " << window_bytes << " bytes") {
      torch::manual_seed(13);
      StreamedVocabulary v;
      torch::manual_seed(200 + R());
      const int64_t n = 9;
      at::Tensor hidden = at::randn({n, kCols}).requires_grad_(true);
      at::Tensor targets = at::randint(0, kVocabRows, {n}, at::kLong);
      targets[1] = -100;
      targets[2] = kVocabRows - 1;
      const at::Tensor weights = at::rand({n});

      const at::Tensor got = dist::streamed_linear_cross_entropy_sum(*v.rows, hidden, targets, weights, -100,
                                                                     window_bytes);
      got.backward();
      at::Tensor reference_hidden = hidden.detach().clone().requires_grad_(true);
      at::Tensor head = v.whole.clone().requires_grad_(true);
      const at::Tensor expected = model::linear_cross_entropy_sum(reference_hidden, head, targets, weights);
      expected.backward();
      BOOST_TEST(got.item<double>() == expected.item<double>(), boost::test_tools::tolerance(1e-6));
      BOOST_TEST(relative_error(hidden.grad(), reference_hidden.grad()) < 1e-5);
      BOOST_TEST(relative_error(v.rows->grad, v.own_rows(summed_over_ranks(head.grad().clone()))) < 1e-5);

      // A frozen head: the hidden states' gradient alone, nothing reduced into the shard.
      v.rows->grad.zero_();
      v.rows->param.requires_grad_(false);
      hidden.mutable_grad() = at::Tensor();
      dist::streamed_linear_cross_entropy_sum(*v.rows, hidden, targets, weights, -100, window_bytes).backward();
      BOOST_TEST(relative_error(hidden.grad(), reference_hidden.grad()) < 1e-5);
      BOOST_TEST(v.rows->grad.abs().sum().item<double>() == 0.0);
      BOOST_CHECK_THROW(
          dist::streamed_linear_cross_entropy_sum(*v.rows, hidden, at::full({n}, kVocabRows, at::kLong), {}),
          std::invalid_argument);
    }
  }
}
