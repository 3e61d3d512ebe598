// model/fused_cross_entropy.h against the unfused computation it replaces: F::linear,
// then cross_entropy on float32 logits, weighted per row. Loss and both gradients, on
// whole heads and on vocabulary shards (ranks emulated by threads), in every chunking.
//
// Argument after `--`: --device=cuda compares the CUDA kernels with the CPU instead; it
// exits with 77 (ctest: skipped) where no GPU is visible.
#define BOOST_TEST_MODULE test_fused_cross_entropy
#include <boost/test/unit_test.hpp>

#include <torch/cuda.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "model/fused_cross_entropy.h"

namespace F = torch::nn::functional;
using ftrain::model::linear_cross_entropy_sum;
using ftrain::model::VocabShards;

namespace {

bool cuda_requested() {
  auto& suite = boost::unit_test::framework::master_test_suite();
  for (int i = 1; i < suite.argc; ++i)
    if (std::string(suite.argv[i]) == "--device=cuda") return true;
  return false;
}

struct DeviceChoice {
  DeviceChoice() {
    if (cuda_requested() && torch::cuda::device_count() == 0) {
      std::printf("test_fused_cross_entropy: --device=cuda and no CUDA device is visible; skipped\n");
      std::exit(77);
    }
  }
};
BOOST_TEST_GLOBAL_FIXTURE(DeviceChoice);

struct Problem {
  torch::Tensor hidden, weight, targets, row_weights;
};

// N rows of width C over a vocabulary of V; every fifth target ignored.
Problem make_problem(int64_t N, int64_t C, int64_t V, torch::Dtype dtype, uint64_t seed) {
  torch::manual_seed(seed);
  Problem p;
  p.hidden = torch::randn({N, C}, dtype);
  p.weight = torch::randn({V, C}, dtype) * 0.5;
  p.targets = torch::randint(0, V, {N}, torch::kLong);
  for (int64_t i = 0; i < N; i += 5) p.targets[i] = -100;
  p.row_weights = torch::rand({N}, torch::kFloat);
  return p;
}

struct Result {
  torch::Tensor loss, grad_hidden, grad_weight;
};

Result unfused(const Problem& p, const torch::Device& device = torch::kCPU) {
  torch::Tensor h = p.hidden.to(device).detach().requires_grad_(), w = p.weight.to(device).detach().requires_grad_();
  torch::Tensor logits = F::linear(h, w);
  torch::Tensor per_row = F::cross_entropy(logits.to(logits.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat),
                                           p.targets.to(device),
                                           F::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(-100));
  torch::Tensor loss = (per_row * p.row_weights.to(device).to(per_row.scalar_type())).sum();
  loss.backward();
  return {loss.detach().cpu(), h.grad().cpu(), w.grad().cpu()};
}

torch::Tensor unfused_loss_without_grad(const Problem& p) {
  torch::NoGradGuard no_grad;
  torch::Tensor per_row = F::cross_entropy(F::linear(p.hidden, p.weight).to(torch::kFloat), p.targets,
                                           F::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(-100));
  return (per_row * p.row_weights).sum();
}

Result fused(const Problem& p, int64_t chunk_rows, const torch::Device& device = torch::kCPU) {
  torch::Tensor h = p.hidden.to(device).detach().requires_grad_(), w = p.weight.to(device).detach().requires_grad_();
  torch::Tensor loss =
      linear_cross_entropy_sum(h, w, p.targets.to(device), p.row_weights.to(device), nullptr, -100, chunk_rows);
  loss.backward();
  return {loss.detach().cpu(), h.grad().cpu(), w.grad().cpu()};
}

void check_close(const torch::Tensor& got, const torch::Tensor& want, double rtol, double atol, const std::string& what) {
  const bool close = torch::allclose(got.to(torch::kDouble), want.to(torch::kDouble), rtol, atol);
  BOOST_TEST(close, what << ": largest difference "
                         << (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>());
}

// Threads standing in for the ranks of a tensor-parallel group: each reduction waits for
// every shard's value and gives each the same result.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : slots_(size), sync_(size) {}

  VocabShards shards(int rank, int64_t rows_per_rank, int64_t vocab_size) {
    VocabShards s;
    s.start = rank * rows_per_rank;
    s.vocab_size = vocab_size;
    s.all_reduce_max = [this, rank](at::Tensor& t) { reduce(rank, t, true); };
    s.all_reduce_sum = [this, rank](at::Tensor& t) { reduce(rank, t, false); };
    return s;
  }

 private:
  void reduce(int rank, at::Tensor& t, bool max) {
    slots_[rank] = t.clone();
    sync_.arrive_and_wait();
    at::Tensor result = slots_[0].clone();
    for (std::size_t r = 1; r < slots_.size(); ++r) result = max ? at::maximum(result, slots_[r]) : result + slots_[r];
    sync_.arrive_and_wait();
    t.copy_(result);
  }

  std::vector<at::Tensor> slots_;
  std::barrier<> sync_;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(cpu, *boost::unit_test::precondition([](auto) { return !cuda_requested(); }))

BOOST_AUTO_TEST_CASE(equals_the_unfused_loss_and_gradients_in_every_chunking) {
  for (torch::Dtype dtype : {torch::kDouble, torch::kFloat}) {
    const Problem p = make_problem(37, 19, 53, dtype, 7);
    const Result want = unfused(p);
    const double rtol = dtype == torch::kDouble ? 1e-12 : 1e-6, atol = dtype == torch::kDouble ? 1e-12 : 1e-6;
    for (int64_t chunk : {0, 1, 5, 36, 37, 100}) {
      const Result got = fused(p, chunk);
      const std::string where = std::string(c10::toString(c10::typeMetaToScalarType(p.hidden.dtype()))) +
                                " chunk " + std::to_string(chunk);
      check_close(got.loss, want.loss, rtol, 0, "loss, " + where);
      check_close(got.grad_hidden, want.grad_hidden, rtol * 10, atol, "hidden gradient, " + where);
      check_close(got.grad_weight, want.grad_weight, rtol * 10, atol, "weight gradient, " + where);
    }
  }
}

BOOST_AUTO_TEST_CASE(scales_its_gradients_by_the_incoming_gradient) {
  const Problem p = make_problem(11, 8, 17, torch::kDouble, 3);
  torch::Tensor h = p.hidden.clone().requires_grad_(), w = p.weight.clone().requires_grad_();
  (linear_cross_entropy_sum(h, w, p.targets, p.row_weights) * -2.5).backward();
  const Result once = fused(p, 0);
  check_close(h.grad(), once.grad_hidden * -2.5, 1e-12, 1e-12, "hidden gradient times -2.5");
  check_close(w.grad(), once.grad_weight * -2.5, 1e-12, 1e-12, "weight gradient times -2.5");
}

BOOST_AUTO_TEST_CASE(without_gradients_gives_the_same_loss) {
  const Problem p = make_problem(23, 16, 40, torch::kFloat, 5);
  torch::NoGradGuard no_grad;
  const torch::Tensor loss = linear_cross_entropy_sum(p.hidden, p.weight, p.targets, p.row_weights, nullptr, -100, 4);
  check_close(loss, unfused_loss_without_grad(p), 1e-6, 0, "loss without gradients");
}

BOOST_AUTO_TEST_CASE(vocabulary_shards_equal_the_whole_head) {
  // 53 rows over 2 and 3 ranks: padded to 54, the last rank's last rows are padding.
  const int64_t V = 53, C = 12, N = 29;
  const Problem p = make_problem(N, C, V, torch::kDouble, 11);
  const Result whole = unfused(p);
  for (int ranks : {2, 3}) {
    const int64_t rows = (V + ranks - 1) / ranks;
    const torch::Tensor padded = torch::cat({p.weight, torch::randn({rows * ranks - V, C}, torch::kDouble)});
    ThreadGroup group(ranks);
    std::vector<Result> got(ranks);
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r)
      threads.emplace_back([&, r] {
        const VocabShards shards = group.shards(r, rows, V);
        torch::Tensor h = p.hidden.clone().requires_grad_();
        torch::Tensor w = padded.narrow(0, r * rows, rows).clone().requires_grad_();
        torch::Tensor loss = linear_cross_entropy_sum(h, w, p.targets, p.row_weights, &shards, -100, 7);
        loss.backward();
        got[r] = {loss.detach(), h.grad(), w.grad()};
      });
    for (auto& t : threads) t.join();
    torch::Tensor grad_hidden = torch::zeros_like(p.hidden);
    std::vector<torch::Tensor> weight_parts;
    for (int r = 0; r < ranks; ++r) {
      check_close(got[r].loss, whole.loss, 1e-12, 0, "loss of rank " + std::to_string(r) + " of " + std::to_string(ranks));
      grad_hidden += got[r].grad_hidden;  // tensor parallelism sums the head input's gradient over ranks
      weight_parts.push_back(got[r].grad_weight);
    }
    const torch::Tensor grad_weight = torch::cat(weight_parts);
    check_close(grad_hidden, whole.grad_hidden, 1e-10, 1e-12, "summed hidden gradient, " + std::to_string(ranks) + " ranks");
    check_close(grad_weight.narrow(0, 0, V), whole.grad_weight, 1e-10, 1e-12, "weight gradient, " + std::to_string(ranks) + " ranks");
    BOOST_TEST(grad_weight.narrow(0, V, rows * ranks - V).abs().max().item<double>() == 0.0);  // padding rows learn nothing
  }
}

BOOST_AUTO_TEST_CASE(under_bf16_autocast_matches_the_unfused_autocast_loss) {
  const Problem p = make_problem(64, 32, 301, torch::kFloat, 13);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  const Result want = unfused(p);
  const Result got = fused(p, 9);
  at::autocast::set_autocast_enabled(at::kCPU, false);
  at::autocast::clear_cache();
  check_close(got.loss, want.loss, 1e-4, 0, "bf16 loss");
  check_close(got.grad_hidden, want.grad_hidden, 2e-2, 2e-3, "bf16 hidden gradient");
  check_close(got.grad_weight, want.grad_weight, 2e-2, 2e-3, "bf16 weight gradient");
}

BOOST_AUTO_TEST_CASE(refuses_targets_outside_the_vocabulary) {
  Problem p = make_problem(4, 3, 5, torch::kFloat, 1);
  p.targets[2] = 5;
  BOOST_CHECK_THROW(linear_cross_entropy_sum(p.hidden, p.weight, p.targets, p.row_weights), std::invalid_argument);
  BOOST_CHECK_THROW(linear_cross_entropy_sum(p.hidden, p.weight.t(), p.targets, p.row_weights), std::invalid_argument);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cuda, *boost::unit_test::precondition([](auto) { return cuda_requested(); }))

BOOST_AUTO_TEST_CASE(kernels_equal_the_cpu_in_float32) {
  // 1001 columns: not a multiple of 64, so the padded product and its ignored columns run.
  for (int64_t V : {1001, 1024}) {
    const Problem p = make_problem(300, 64, V, torch::kFloat, 17);
    const Result want = unfused(p);
    for (int64_t chunk : {0, 7, 128}) {
      const Result got = fused(p, chunk, torch::kCUDA);
      const std::string where = "V " + std::to_string(V) + " chunk " + std::to_string(chunk);
      check_close(got.loss, want.loss, 1e-5, 0, "CUDA loss, " + where);
      check_close(got.grad_hidden, want.grad_hidden, 1e-4, 1e-5, "CUDA hidden gradient, " + where);
      check_close(got.grad_weight, want.grad_weight, 1e-4, 1e-5, "CUDA weight gradient, " + where);
    }
  }
}

BOOST_AUTO_TEST_CASE(kernels_under_bf16_autocast_match_the_unfused_autocast_path) {
  const Problem p = make_problem(512, 128, 50257, torch::kFloat, 19);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  const Result want = unfused(p, torch::kCUDA);
  const Result got = fused(p, 100, torch::kCUDA);
  at::autocast::set_autocast_enabled(at::kCUDA, false);
  at::autocast::clear_cache();
  check_close(got.loss, want.loss, 1e-3, 0, "bf16 CUDA loss");
  check_close(got.grad_hidden, want.grad_hidden, 3e-2, 1e-3, "bf16 CUDA hidden gradient");
  check_close(got.grad_weight, want.grad_weight, 3e-2, 1e-3, "bf16 CUDA weight gradient");
}

BOOST_AUTO_TEST_SUITE_END()
