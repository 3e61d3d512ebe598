#include <boost/test/unit_test.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <mutex>
#include <optional>
#include <vector>

#include "model/dropout.h"

BOOST_AUTO_TEST_SUITE(test_dropout)

using ftrain::model::hashed_dropout;
using ftrain::model::hashed_dropout_keep_mask;

BOOST_AUTO_TEST_CASE(identity_when_not_training_or_p_zero) {
  const auto x = torch::randn({8, 16});
  BOOST_TEST(hashed_dropout(x, 0.3, /*training=*/false).is_same(x));
  BOOST_TEST(hashed_dropout(x, 0.0, /*training=*/true).is_same(x));
  BOOST_CHECK_THROW(hashed_dropout(x, 1.0, true), std::invalid_argument);
  BOOST_CHECK_THROW(hashed_dropout(x, -0.1, true), std::invalid_argument);
}

// Kept elements are x / (1 - p), dropped ones 0, and the kept fraction is 1 - p within
// 5 standard deviations of a binomial count, over the whole tensor and in each of its
// chunks of 4096 (a hash with a weak spot would show stripes).
BOOST_AUTO_TEST_CASE(keeps_the_right_fraction_everywhere_and_scales) {
  torch::manual_seed(7);
  for (const double p : {0.1, 0.5, 0.9}) {
    const auto x = torch::rand({256, 4096}) + 0.5;  // no zeros, so kept means nonzero
    const auto y = hashed_dropout(x, p, true);
    const auto kept = y.ne(0);
    BOOST_TEST(torch::allclose(y.masked_select(kept), x.masked_select(kept) / (1 - p), 1e-6, 0));
    const double n = static_cast<double>(x.numel());
    const double sigma = std::sqrt(n * p * (1 - p));
    BOOST_TEST(std::abs(kept.sum().item<double>() - n * (1 - p)) < 5 * sigma);
    const auto per_chunk = kept.reshape({-1, 4096}).sum(1).to(torch::kFloat64);
    const double chunk_sigma = std::sqrt(4096 * p * (1 - p));
    BOOST_TEST((per_chunk - 4096 * (1 - p)).abs().max().item<double>() < 5.5 * chunk_sigma);
    // Neighbours are independent: P(both kept) = (1 - p)^2 within 5 sigma.
    const auto flat = kept.reshape({-1}).to(torch::kFloat64);
    const double both = (flat.slice(0, 0, -1) * flat.slice(0, 1)).mean().item<double>();
    BOOST_TEST(std::abs(both - (1 - p) * (1 - p)) < 5 * std::sqrt((1 - p) * (1 - p) / (n - 1)));
  }
}

// The default generator's seed decides the mask: the same seed gives the same mask,
// the next call a different one, and float32, float64 and bfloat16 agree on it.
BOOST_AUTO_TEST_CASE(masks_follow_the_default_generator) {
  const auto x = torch::rand({64, 128}) + 0.5;
  torch::manual_seed(11);
  const auto first = hashed_dropout(x, 0.25, true).ne(0);
  const auto second = hashed_dropout(x, 0.25, true).ne(0);
  torch::manual_seed(11);
  const auto again = hashed_dropout(x, 0.25, true).ne(0);
  BOOST_TEST(torch::equal(first, again));
  BOOST_TEST(!torch::equal(first, second));
  torch::manual_seed(11);
  BOOST_TEST(torch::equal(hashed_dropout(x.to(torch::kFloat64), 0.25, true).ne(0), first));
  torch::manual_seed(11);
  BOOST_TEST(torch::equal(hashed_dropout(x.to(torch::kBFloat16), 0.25, true).ne(0), first));
}

// The backward pass applies the forward's mask and scale to the gradient, and
// hashed_dropout_keep_mask says which mask that is.
BOOST_AUTO_TEST_CASE(gradient_is_the_same_mask) {
  torch::manual_seed(3);
  const auto x = (torch::rand({33, 77}) + 0.5).requires_grad_();
  const double p = 0.4;
  const auto y = hashed_dropout(x, p, true);
  const auto upstream = torch::randn({33, 77});
  (y * upstream).sum().backward();
  const auto kept = y.detach().ne(0).to(torch::kFloat32);
  BOOST_TEST(torch::allclose(x.grad(), upstream * kept / (1 - p), 1e-6, 1e-7));
  // A non-contiguous input gives the mask of its contiguous copy.
  const auto t = torch::rand({77, 33}) + 0.5;
  torch::manual_seed(5);
  const auto yt = hashed_dropout(t.t(), p, true);
  torch::manual_seed(5);
  BOOST_TEST(torch::equal(yt.ne(0), hashed_dropout(t.t().contiguous(), p, true).ne(0)));
  // hashed_dropout_keep_mask: one seed, one mask of 0 and 1 at the right rate.
  const auto mask = hashed_dropout_keep_mask({1 << 16}, 0.2, 42);
  BOOST_TEST(torch::equal(mask, hashed_dropout_keep_mask({1 << 16}, 0.2, 42)));
  BOOST_TEST(!torch::equal(mask, hashed_dropout_keep_mask({1 << 16}, 0.2, 43)));
  BOOST_TEST(std::abs(mask.mean().item<double>() - 0.8) < 5 * std::sqrt(0.16 / (1 << 16)));
  BOOST_TEST(((mask == 0) | (mask == 1)).all().item<bool>());
}

namespace {

// softmax(q k^T / sqrt(d) + mask) * keep / (1 - p) @ v, with the mask of `seed`.
torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& additive_mask, double p, uint64_t seed) {
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (additive_mask.defined()) scores = scores + additive_mask;
  auto probs = torch::softmax(scores, -1);
  return torch::matmul(probs * hashed_dropout_keep_mask(probs.sizes(), p, seed) / (1 - p), v);
}

uint64_t next_seed_after(uint64_t manual_seed) {
  torch::manual_seed(manual_seed);
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get<at::CPUGeneratorImpl>()->random64();
}

}  // namespace

// With dropout on the CPU the written-out attention is the reference computation with
// the hashed mask, for the causal, boolean and additive masks, gradients included;
// without dropout it is LibTorch's fused attention.
BOOST_AUTO_TEST_CASE(attention_with_dropout_is_the_written_out_form) {
  using ftrain::model::dot_product_attention;
  const int64_t B = 2, H = 3, T = 5, D = 4;
  const auto q0 = torch::randn({B, H, T, D}), k0 = torch::randn({B, H, T, D}), v0 = torch::randn({B, H, T, D});
  const auto causal_bias = torch::zeros({T, T}).masked_fill(torch::ones({T, T}, torch::kBool).triu(1), -INFINITY);
  const auto allowed = (torch::rand({B, 1, T, T}) > 0.3) | torch::eye(T, torch::kBool);
  const auto allowed_bias = torch::zeros({B, 1, T, T}).masked_fill(allowed.logical_not(), -INFINITY);
  const auto additive = torch::randn({B, 1, 1, T});
  struct Case {
    std::optional<torch::Tensor> mask;
    bool causal;
    torch::Tensor reference_bias;
  };
  for (const Case& c : {Case{std::nullopt, true, causal_bias}, Case{allowed, false, allowed_bias},
                        Case{additive, false, additive}}) {
    auto q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
    auto rq = q0.clone().requires_grad_(), rk = k0.clone().requires_grad_(), rv = v0.clone().requires_grad_();
    const uint64_t seed = next_seed_after(21);
    torch::manual_seed(21);
    const auto y = dot_product_attention(q, k, v, c.mask, 0.3, c.causal);
    const auto expected = reference_attention(rq, rk, rv, c.reference_bias, 0.3, seed);
    BOOST_TEST(torch::allclose(y, expected, 1e-5, 1e-6));
    const auto upstream = torch::randn_like(y);
    (y * upstream).sum().backward();
    (expected * upstream).sum().backward();
    BOOST_TEST(torch::allclose(q.grad(), rq.grad(), 1e-5, 1e-6));
    BOOST_TEST(torch::allclose(k.grad(), rk.grad(), 1e-5, 1e-6));
    BOOST_TEST(torch::allclose(v.grad(), rv.grad(), 1e-5, 1e-6));
    const auto fused = at::scaled_dot_product_attention(q0, k0, v0, c.mask, 0.0, c.causal);
    BOOST_TEST(torch::allclose(dot_product_attention(q0, k0, v0, c.mask, 0.0, c.causal), fused));
    BOOST_TEST(torch::allclose(fused, reference_attention(q0, k0, v0, c.reference_bias, 0.0, seed), 1e-5, 1e-6));
  }
}

// ---------------------------------------------------------------------------------
// Parts of a whole tensor (tensor and sequence parallelism)

using ftrain::model::SliceOf;

// A part's mask is that part of the whole tensor's mask, along any dimension, and the
// tensor-operation form (used off the CPU) computes the kernel's mask bit for bit, also
// where global indices pass 2^32.
BOOST_AUTO_TEST_CASE(a_part_gets_its_part_of_the_whole_mask) {
  const std::vector<int64_t> whole = {3, 8, 5, 7};
  const auto full = hashed_dropout_keep_mask(whole, 0.3, 99);
  for (int64_t dim = 0; dim < 4; ++dim) {
    for (const int64_t offset : {int64_t{0}, whole[dim] / 2}) {
      const int64_t size = whole[dim] - offset - (dim == 1 ? 1 : 0);
      std::vector<int64_t> shape = whole;
      shape[dim] = size;
      const SliceOf part{.dim = dim, .offset = offset, .whole = whole[dim]};
      const auto mask = hashed_dropout_keep_mask(shape, 0.3, 99, part);
      BOOST_TEST_CONTEXT("dim " << dim << " offset " << offset) {
        BOOST_TEST(torch::equal(mask, full.narrow(dim, offset, size)));
        BOOST_TEST(torch::equal(hashed_dropout_keep_mask(shape, 0.3, 99, part, /*tensor_ops=*/true), mask));
      }
    }
  }
  // Rows far into a huge whole: indices above 2^32, where the hash mixes in the high word.
  const SliceOf far{.dim = 1, .offset = (int64_t{1} << 32) + 3, .whole = int64_t{1} << 33};
  const auto kernel = hashed_dropout_keep_mask({2, 6, 9}, 0.5, 7, far);
  BOOST_TEST(torch::equal(hashed_dropout_keep_mask({2, 6, 9}, 0.5, 7, far, /*tensor_ops=*/true), kernel));
  BOOST_TEST(std::abs(kernel.mean().item<double>() - 0.5) < 0.2);
  BOOST_CHECK_THROW(hashed_dropout_keep_mask({2, 6}, 0.5, 7, SliceOf{.dim = 1, .offset = 3, .whole = 8}),
                    std::invalid_argument);
  BOOST_CHECK_THROW(hashed_dropout_keep_mask({2, 6}, 0.5, 7, SliceOf{.dim = 2, .offset = 0, .whole = 6}),
                    std::invalid_argument);
}

// Splitting an activation and dropping each part gives the whole activation's dropout,
// forward and backward, for the same generator state.
BOOST_AUTO_TEST_CASE(parts_dropped_apart_equal_the_whole_dropped_at_once) {
  const auto x = torch::rand({2, 12, 16}) + 0.5;
  torch::manual_seed(4);
  const auto whole = hashed_dropout(x, 0.25, true);
  std::vector<torch::Tensor> parts;
  for (int64_t r = 0; r < 3; ++r) {
    torch::manual_seed(4);  // each rank's generator is where the whole model's is
    const auto piece = x.narrow(1, 4 * r, 4).clone().requires_grad_();
    const auto y = hashed_dropout(piece, 0.25, true, SliceOf{.dim = 1, .offset = 4 * r, .whole = 12});
    y.sum().backward();
    BOOST_TEST(torch::equal(piece.grad().ne(0), whole.narrow(1, 4 * r, 4).ne(0)));
    parts.push_back(y.detach());
  }
  BOOST_TEST(torch::equal(torch::cat(parts, 1), whole));
  BOOST_CHECK_THROW(hashed_dropout(x, 0.25, true, SliceOf{.dim = 1, .offset = 4, .whole = 12}),
                    std::invalid_argument);
}

// Attention over some of the heads, with `heads` saying which, equals those heads of
// attention over all of them, dropout included.
BOOST_AUTO_TEST_CASE(attention_over_some_heads_drops_as_the_whole) {
  using ftrain::model::dot_product_attention;
  const auto q = torch::randn({2, 4, 6, 3}), k = torch::randn({2, 4, 6, 3}), v = torch::randn({2, 4, 6, 3});
  torch::manual_seed(8);
  const auto whole = dot_product_attention(q, k, v, std::nullopt, 0.4, /*is_causal=*/true);
  torch::manual_seed(8);
  const auto heads = dot_product_attention(q.narrow(1, 2, 2), k.narrow(1, 2, 2), v.narrow(1, 2, 2), std::nullopt, 0.4,
                                           /*is_causal=*/true, std::nullopt, SliceOf{.dim = 1, .offset = 2, .whole = 4});
  BOOST_TEST(torch::allclose(heads, whole.narrow(1, 2, 2), 1e-6, 1e-7));
  torch::manual_seed(8);
  const auto unplaced = dot_product_attention(q.narrow(1, 2, 2), k.narrow(1, 2, 2), v.narrow(1, 2, 2), std::nullopt,
                                              0.4, /*is_causal=*/true);
  BOOST_TEST(!torch::allclose(unplaced, whole.narrow(1, 2, 2), 1e-6, 1e-7), "without `heads` the mask is another");
}

BOOST_AUTO_TEST_SUITE_END()  // test_dropout
