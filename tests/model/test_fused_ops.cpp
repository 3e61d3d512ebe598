// model/fused_ops.h. On the CPU: each reference against the unfused computation the
// models write (outputs and gradients), and the dispatching functions against the
// references. On a GPU: the CUDA kernels against the references computed on the CPU in
// float32 from the same (rounded) inputs, on odd sizes too.
//
// Argument after `--`: --device=cuda asks for the CUDA cases; it exits with 77 (ctest:
// skipped) where no GPU is visible. The CUDA cases run whenever a GPU is visible.
#define BOOST_TEST_MODULE test_fused_ops
#include <boost/test/unit_test.hpp>

#include <torch/cuda.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "model/fused_ops.h"

namespace fused = ftrain::model::fused;
using Tensors = std::vector<torch::Tensor>;

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
      std::printf("test_fused_ops: --device=cuda and no CUDA device is visible; skipped\n");
      std::exit(77);
    }
  }
};
BOOST_TEST_GLOBAL_FIXTURE(DeviceChoice);

std::string name(torch::Dtype dtype) { return c10::toString(dtype); }
std::string name(const torch::Tensor& t) { return t.defined() ? name(t.scalar_type()) : "none"; }
std::string name(at::IntArrayRef sizes) { return c10::str(sizes); }

// |got - want| <= atol * max(1, max |want|) + rtol * |want|, elementwise in float64: atol
// scales with the largest value, so that sums over many rows (weight gradients) are held
// to the precision of their terms. Undefined matches undefined only.
void check_close(const torch::Tensor& got, const torch::Tensor& want, double rtol, double atol, const std::string& what) {
  BOOST_TEST_REQUIRE(got.defined() == want.defined(), what << ": one of the two is undefined");
  if (!got.defined()) return;
  BOOST_TEST_REQUIRE(got.sizes() == want.sizes(), what << ": shape " << got.sizes() << ", want " << want.sizes());
  BOOST_TEST(got.scalar_type() == want.scalar_type(),
             what << ": dtype " << name(got) << ", want " << name(want));
  const torch::Tensor g = got.detach().cpu().to(torch::kDouble), w = want.detach().cpu().to(torch::kDouble);
  const double scale = w.numel() == 0 ? 1.0 : std::max(1.0, w.abs().max().item<double>());
  const bool close = torch::allclose(g, w, rtol, atol * scale);
  BOOST_TEST(close, what << ": largest difference " << (w.numel() == 0 ? 0.0 : (g - w).abs().max().item<double>())
                         << " (largest value " << scale << ")");
}

// Outputs of a function and the gradients of its inputs, after backward from the outputs
// with given upstream gradients.
struct Run {
  Tensors outputs, grads;
};

// Leaves are fresh copies of `inputs` (undefined stays undefined) that require gradients;
// upstream[i] (cast to output i's dtype and device) flows back from output i where defined.
Run run(const std::function<Tensors(const Tensors&)>& f, const Tensors& inputs, const Tensors& upstream) {
  Tensors leaves;
  for (const torch::Tensor& t : inputs) leaves.push_back(t.defined() ? t.detach().clone().requires_grad_() : t);
  const Tensors outputs = f(leaves);
  Tensors roots, root_grads;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (!upstream.at(i).defined() || !outputs[i].requires_grad()) continue;
    roots.push_back(outputs[i]);
    root_grads.push_back(upstream[i].to(outputs[i].options()));
  }
  if (!roots.empty()) torch::autograd::backward(roots, root_grads);
  Run result;
  for (const torch::Tensor& t : outputs) result.outputs.push_back(t.detach());
  for (const torch::Tensor& t : leaves) result.grads.push_back(t.defined() ? t.grad() : torch::Tensor());
  return result;
}

void check_runs(const Run& got, const Run& want, double rtol, double atol, const std::string& what) {
  for (std::size_t i = 0; i < want.outputs.size(); ++i)
    check_close(got.outputs.at(i), want.outputs[i], rtol, atol, what + ", output " + std::to_string(i));
  for (std::size_t i = 0; i < want.grads.size(); ++i)
    check_close(got.grads.at(i), want.grads[i], rtol, atol, what + ", gradient of input " + std::to_string(i));
}

torch::Tensor randn(at::IntArrayRef sizes, torch::Dtype dtype) { return torch::randn(sizes, torch::kDouble).to(dtype); }

// (..., C) from leading sizes and C.
std::vector<int64_t> with_last(std::vector<int64_t> leading, int64_t C) {
  leading.push_back(C);
  return leading;
}

// ---------------------------------------------------------------------------------
// The unfused computations as the models write them

// LlamaRmsNormImpl::forward: statistics in float32; the scale applies after casting back.
torch::Tensor llama_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  torch::Tensor h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, /*dim=*/-1);
  return torch::cat({-halves[1], halves[0]}, /*dim=*/-1);
}

// model/llama.cpp's apply_rotary.
torch::Tensor llama_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1);
}

// (batches, T, hs) cos and sin of positions offset + t (batch b starting at offset 3 b),
// the hs / 2 frequencies of theta 10000 repeated over both halves.
std::pair<torch::Tensor, torch::Tensor> angles(int64_t batches, int64_t T, int64_t hs, torch::Dtype dtype) {
  const torch::Tensor inv_freq =
      1.0 / torch::pow(10000.0, torch::arange(0, hs, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(hs));
  const torch::Tensor positions =
      torch::arange(T, torch::kFloat).unsqueeze(0) + 3.0 * torch::arange(batches, torch::kFloat).unsqueeze(1);
  const torch::Tensor freqs = positions.unsqueeze(-1) * inv_freq;  // (batches, T, hs / 2)
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1);        // (batches, T, hs)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

// q or k as the models make them: (B, T, n, hs) viewed as (B, n, T, hs).
torch::Tensor heads(int64_t B, int64_t n, int64_t T, int64_t hs, torch::Dtype dtype) {
  return randn({B, T, n, hs}, dtype).transpose(1, 2);
}

const std::vector<std::vector<int64_t>> kCpuLeading = {{1}, {3}, {2, 5}, {4, 1, 3}};
const std::vector<int64_t> kCpuWidths = {1, 8, 37, 100, 769};

}  // namespace

// ---------------------------------------------------------------------------------
// CPU: references against the models' unfused code, dispatch against the references

BOOST_AUTO_TEST_SUITE(cpu)

BOOST_AUTO_TEST_CASE(rms_norm_reference_is_the_llama_formula) {
  torch::manual_seed(1);
  const double eps = 1e-6;
  for (torch::Dtype dtype : {torch::kDouble, torch::kFloat})
    for (const auto& leading : kCpuLeading)
      for (int64_t C : kCpuWidths) {
        const auto sizes = with_last(leading, C);
        const Tensors inputs = {randn(sizes, dtype), randn(sizes, dtype), 1.0 + 0.1 * randn({C}, dtype)};
        const Tensors upstream = {randn(sizes, dtype), randn(sizes, dtype)};
        const std::string where = name(dtype) + " " + name(sizes);
        const Run want = run([&](const Tensors& in) {
          const torch::Tensor sum = in[0] + in[1];
          return Tensors{sum, llama_rms_norm(sum, in[2], eps)};
        }, inputs, upstream);
        const Run got = run([&](const Tensors& in) {
          auto [residual, normed] = fused::reference::add_rms_norm(in[0], in[1], in[2], eps);
          return Tensors{residual, normed};
        }, inputs, upstream);
        check_runs(got, want, 1e-6, 1e-6, "rms reference, " + where);
        // LibTorch's own RMSNorm agrees to float32 rounding (the formula's statistics are float32).
        check_close(got.outputs[1], at::rms_norm(inputs[0] + inputs[1], {C}, inputs[2], eps), 1e-5, 1e-5,
                    "rms reference against at::rms_norm, " + where);
        // Without y the residual is x and the norm reads x.
        const Run alone = run([&](const Tensors& in) {
          auto [residual, normed] = fused::reference::add_rms_norm(in[0], {}, in[2], eps);
          BOOST_TEST(residual.is_same(in[0]));
          return Tensors{normed};
        }, inputs, {upstream[1]});
        const Run alone_want = run([&](const Tensors& in) { return Tensors{llama_rms_norm(in[0], in[2], eps)}; },
                                   inputs, {upstream[1]});
        check_runs(alone, alone_want, 1e-6, 1e-6, "rms reference without y, " + where);
      }
}

BOOST_AUTO_TEST_CASE(layer_norm_reference_is_at_layer_norm) {
  torch::manual_seed(2);
  const double eps = 1e-5;
  for (torch::Dtype dtype : {torch::kDouble, torch::kFloat})
    for (const auto& leading : kCpuLeading)
      for (int64_t C : kCpuWidths) {
        const auto sizes = with_last(leading, C);
        const Tensors inputs = {randn(sizes, dtype), randn(sizes, dtype), 1.0 + 0.1 * randn({C}, dtype),
                                0.1 * randn({C}, dtype)};
        const Tensors upstream = {randn(sizes, dtype), randn(sizes, dtype)};
        const std::string where = name(dtype) + " " + name(sizes);
        const Run want = run([&](const Tensors& in) {
          const torch::Tensor sum = in[0] + in[1];
          return Tensors{sum, at::layer_norm(sum, {C}, in[2], in[3], eps)};
        }, inputs, upstream);
        const Run got = run([&](const Tensors& in) {
          auto [residual, normed] = fused::reference::add_layer_norm(in[0], in[1], in[2], in[3], eps);
          return Tensors{residual, normed};
        }, inputs, upstream);
        check_runs(got, want, 1e-6, 1e-6, "layer norm reference, " + where);
      }
}

// Under autocast the residual stream is float32 and a block's output bfloat16: x + y
// promotes, and out_dtype rounds the norm once at the end.
BOOST_AUTO_TEST_CASE(norm_references_promote_y_and_round_to_out_dtype) {
  torch::manual_seed(3);
  const double eps = 1e-5;
  const torch::Tensor x = randn({3, 37}, torch::kFloat), y = randn({3, 37}, torch::kBFloat16);
  const torch::Tensor weight = 1.0 + 0.1 * randn({37}, torch::kFloat), bias = 0.1 * randn({37}, torch::kFloat);
  auto [residual, normed] = fused::reference::add_rms_norm(x, y, weight, eps, torch::kBFloat16);
  BOOST_TEST(torch::equal(residual, x + y));
  BOOST_TEST(normed.scalar_type() == torch::kBFloat16);
  BOOST_TEST(torch::equal(normed, llama_rms_norm(x + y, weight, eps).to(torch::kBFloat16)));
  auto [ln_residual, ln_normed] = fused::reference::add_layer_norm(x, y, weight, bias, eps, torch::kBFloat16);
  BOOST_TEST(torch::equal(ln_residual, x + y));
  BOOST_TEST(torch::equal(ln_normed, at::layer_norm(x + y, {37}, weight, bias, eps).to(torch::kBFloat16)));
}

BOOST_AUTO_TEST_CASE(swiglu_reference_is_silu_times_up) {
  torch::manual_seed(4);
  for (torch::Dtype dtype : {torch::kDouble, torch::kFloat})
    for (const auto& leading : kCpuLeading)
      for (int64_t C : kCpuWidths) {
        const auto sizes = with_last(leading, C);
        const Tensors inputs = {randn(sizes, dtype), randn(sizes, dtype)};
        const Tensors upstream = {randn(sizes, dtype)};
        const Run want = run([](const Tensors& in) { return Tensors{torch::silu(in[0]) * in[1]}; }, inputs, upstream);
        const Run got = run([](const Tensors& in) { return Tensors{fused::reference::swiglu(in[0], in[1])}; }, inputs,
                            upstream);
        check_runs(got, want, 1e-6, 1e-6, "swiglu reference, " + name(dtype) + " " + name(sizes));
      }
}

BOOST_AUTO_TEST_CASE(bias_gelu_reference_is_gelu_of_the_sum) {
  torch::manual_seed(5);
  for (torch::Dtype dtype : {torch::kDouble, torch::kFloat})
    for (bool tanh : {true, false})
      for (bool with_bias : {true, false})
        for (const auto& leading : kCpuLeading)
          for (int64_t C : kCpuWidths) {
            const auto sizes = with_last(leading, C);
            const Tensors inputs = {2.0 * randn(sizes, dtype), with_bias ? randn({C}, dtype) : torch::Tensor()};
            const Tensors upstream = {randn(sizes, dtype)};
            const std::string approximate = tanh ? "tanh" : "none";
            const Run want = run([&](const Tensors& in) {
              return Tensors{torch::gelu(in[1].defined() ? in[0] + in[1] : in[0], approximate)};
            }, inputs, upstream);
            const Run got = run([&](const Tensors& in) {
              return Tensors{fused::reference::bias_gelu(in[0], in[1], tanh)};
            }, inputs, upstream);
            check_runs(got, want, 1e-6, 1e-6,
                       "bias_gelu reference, " + approximate + (with_bias ? " with bias, " : " without bias, ") +
                           name(dtype) + " " + name(sizes));
          }
}

BOOST_AUTO_TEST_CASE(rotary_reference_is_the_llama_rotation_and_its_gradient_the_inverse) {
  torch::manual_seed(6);
  for (torch::Dtype dtype : {torch::kDouble, torch::kFloat})
    for (int64_t angle_batches : {1, 2})
      for (int64_t hs : {2, 6, 64}) {
        const int64_t B = 2, nh = 4, nkv = 2, T = 7;
        auto [cos, sin] = angles(angle_batches, T, hs, dtype);
        const Tensors inputs = {heads(B, nh, T, hs, dtype), heads(B, nkv, T, hs, dtype)};
        const Tensors upstream = {randn({B, nh, T, hs}, dtype), randn({B, nkv, T, hs}, dtype)};
        const std::string where = name(dtype) + " hs " + std::to_string(hs) + ", angles for " +
                                  std::to_string(angle_batches) + " batches";
        const Run want = run([&](const Tensors& in) {
          return Tensors{llama_rotary(in[0], cos, sin), llama_rotary(in[1], cos, sin)};
        }, inputs, upstream);
        const Run got = run([&](const Tensors& in) {
          auto [q, k] = fused::reference::rotary(in[0], in[1], cos, sin);
          return Tensors{q, k};
        }, inputs, upstream);
        check_runs(got, want, 1e-6, 1e-6, "rotary reference, " + where);
        // The gradient is the rotation back (by minus the angles), which the kernels compute.
        for (int i = 0; i < 2; ++i)
          check_close(got.grads[i], llama_rotary(upstream[i], cos, -sin), 1e-6, 1e-6,
                      "rotary gradient as the inverse rotation, " + where);
      }
}

// Rotary angles held in float32 with bfloat16 queries: the result keeps the queries' dtype.
BOOST_AUTO_TEST_CASE(rotary_reference_keeps_the_dtype_of_q_and_k) {
  auto [cos, sin] = angles(1, 5, 8, torch::kFloat);
  const torch::Tensor q = heads(1, 2, 5, 8, torch::kBFloat16), k = heads(1, 1, 5, 8, torch::kBFloat16);
  auto [q_rotated, k_rotated] = fused::reference::rotary(q, k, cos, sin);
  BOOST_TEST(q_rotated.scalar_type() == torch::kBFloat16);
  BOOST_TEST(torch::equal(q_rotated, llama_rotary(q, cos, sin).to(torch::kBFloat16)));
  BOOST_TEST(torch::equal(k_rotated, llama_rotary(k, cos, sin).to(torch::kBFloat16)));
}

// On CPU tensors the dispatching functions are the references, bit for bit.
BOOST_AUTO_TEST_CASE(dispatch_on_the_cpu_is_the_reference) {
  torch::manual_seed(7);
  const auto sizes = with_last({2, 3}, 37);
  const torch::Tensor x = randn(sizes, torch::kFloat), y = randn(sizes, torch::kFloat);
  const torch::Tensor weight = 1.0 + 0.1 * randn({37}, torch::kFloat), bias = 0.1 * randn({37}, torch::kFloat);
  const Tensors norm_upstream = {randn(sizes, torch::kFloat), randn(sizes, torch::kFloat)};
  auto same = [](const Run& got, const Run& want, const std::string& what) { check_runs(got, want, 0, 0, what); };

  for (std::optional<c10::ScalarType> out : {std::optional<c10::ScalarType>(), std::optional(torch::kBFloat16)}) {
    const std::string where = out ? " to bf16" : "";
    same(run([&](const Tensors& in) {
      auto [r, n] = fused::add_rms_norm(in[0], in[1], in[2], 1e-6, out);
      return Tensors{r, n};
    }, {x, y, weight}, norm_upstream), run([&](const Tensors& in) {
      auto [r, n] = fused::reference::add_rms_norm(in[0], in[1], in[2], 1e-6, out);
      return Tensors{r, n};
    }, {x, y, weight}, norm_upstream), "add_rms_norm" + where);
    same(run([&](const Tensors& in) {
      auto [r, n] = fused::add_layer_norm(in[0], in[1], in[2], in[3], 1e-5, out);
      return Tensors{r, n};
    }, {x, y, weight, bias}, norm_upstream), run([&](const Tensors& in) {
      auto [r, n] = fused::reference::add_layer_norm(in[0], in[1], in[2], in[3], 1e-5, out);
      return Tensors{r, n};
    }, {x, y, weight, bias}, norm_upstream), "add_layer_norm" + where);
  }
  same(run([](const Tensors& in) { return Tensors{fused::swiglu(in[0], in[1])}; }, {x, y}, {norm_upstream[0]}),
       run([](const Tensors& in) { return Tensors{fused::reference::swiglu(in[0], in[1])}; }, {x, y},
           {norm_upstream[0]}),
       "swiglu");
  for (bool tanh : {true, false})
    same(run([&](const Tensors& in) { return Tensors{fused::bias_gelu(in[0], in[1], tanh)}; }, {x, bias},
             {norm_upstream[0]}),
         run([&](const Tensors& in) { return Tensors{fused::reference::bias_gelu(in[0], in[1], tanh)}; }, {x, bias},
             {norm_upstream[0]}),
         std::string("bias_gelu ") + (tanh ? "tanh" : "erf"));

  auto [cos, sin] = angles(1, 5, 8, torch::kFloat);
  const Tensors qk = {heads(2, 4, 5, 8, torch::kFloat), heads(2, 2, 5, 8, torch::kFloat)};
  const Tensors qk_upstream = {randn({2, 4, 5, 8}, torch::kFloat), randn({2, 2, 5, 8}, torch::kFloat)};
  same(run([&](const Tensors& in) {
    auto [q, k] = fused::rotary(in[0], in[1], cos, sin);
    return Tensors{q, k};
  }, qk, qk_upstream), run([&](const Tensors& in) {
    auto [q, k] = fused::reference::rotary(in[0], in[1], cos, sin);
    return Tensors{q, k};
  }, qk, qk_upstream), "rotary");
}

BOOST_AUTO_TEST_CASE(refuses_mismatched_shapes) {
  const torch::Tensor x = torch::randn({3, 8});
  BOOST_CHECK_THROW(fused::add_rms_norm(x, {}, torch::ones({7}), 1e-6), std::invalid_argument);
  BOOST_CHECK_THROW(fused::add_rms_norm(x, torch::randn({1, 8}), torch::ones({8}), 1e-6), std::invalid_argument);
  BOOST_CHECK_THROW(fused::add_layer_norm(x, {}, torch::ones({8}), torch::zeros({9}), 1e-5), std::invalid_argument);
  BOOST_CHECK_THROW(fused::swiglu(x, torch::randn({3, 9})), std::invalid_argument);
  BOOST_CHECK_THROW(fused::swiglu(x, x.to(torch::kDouble)), std::invalid_argument);
  BOOST_CHECK_THROW(fused::bias_gelu(x, torch::zeros({9}), true), std::invalid_argument);
  auto [cos, sin] = angles(1, 5, 6, torch::kFloat);
  BOOST_CHECK_THROW(fused::rotary(heads(1, 2, 5, 7, torch::kFloat), heads(1, 2, 5, 7, torch::kFloat), cos, sin),
                    std::invalid_argument);  // odd head size
  BOOST_CHECK_THROW(fused::rotary(heads(1, 2, 5, 6, torch::kFloat), heads(1, 2, 4, 6, torch::kFloat), cos, sin),
                    std::invalid_argument);  // k of other positions
  BOOST_CHECK_THROW(fused::rotary(heads(2, 2, 5, 6, torch::kFloat), heads(2, 2, 5, 6, torch::kFloat),
                                  torch::cat({cos, cos, cos}), torch::cat({sin, sin, sin})),
                    std::invalid_argument);  // angles for 3 batches of 2
}

BOOST_AUTO_TEST_CASE(input_dtype_for_linear_follows_autocast) {
  const torch::Tensor x = torch::randn({2, 4});
  BOOST_TEST(fused::input_dtype_for_linear(x) == torch::kFloat);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  const c10::ScalarType under_autocast = fused::input_dtype_for_linear(x);
  const c10::ScalarType double_under_autocast = fused::input_dtype_for_linear(x.to(torch::kDouble));
  at::autocast::set_autocast_enabled(at::kCPU, false);
  BOOST_TEST(under_autocast == torch::kBFloat16);
  BOOST_TEST(double_under_autocast == torch::kDouble);  // autocast leaves float64 alone
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------
// CUDA: the kernels against the references on the CPU

namespace {

struct Tolerance {
  double rtol, atol;
};

// For results stored in `dtype`, computed in float32 either way.
Tolerance tolerance_for(torch::Dtype dtype) {
  if (dtype == torch::kBFloat16) return {2e-2, 2e-2};
  if (dtype == torch::kHalf) return {5e-3, 5e-3};
  return {1e-5, 1e-5};
}

// The inputs' float32 masters rounded to `dtypes` (kFloat keeps them), as the CUDA run
// gets them on the GPU and the reference run in float32 on the CPU; the upstream
// gradients rounded to the CUDA outputs' dtypes the same way. The reference's outputs
// and gradients are then rounded to the CUDA ones' dtypes and compared.
void compare_with_reference(const std::function<Tensors(const Tensors&)>& kernels,
                            const std::function<Tensors(const Tensors&)>& reference, const Tensors& masters,
                            const std::vector<torch::Dtype>& dtypes, const Tensors& upstream, Tolerance tolerance,
                            const std::string& what) {
  Tensors on_gpu, on_cpu;
  for (std::size_t i = 0; i < masters.size(); ++i) {
    if (!masters[i].defined()) {
      on_gpu.emplace_back();
      on_cpu.emplace_back();
      continue;
    }
    const torch::Tensor rounded = masters[i].to(dtypes.at(i));
    on_gpu.push_back(rounded.to(torch::kCUDA));
    on_cpu.push_back(rounded.to(torch::kFloat));
  }
  const Run got = run(kernels, on_gpu, upstream);
  Tensors rounded_upstream;
  for (std::size_t i = 0; i < upstream.size(); ++i)
    rounded_upstream.push_back(upstream[i].to(got.outputs.at(i).scalar_type()).to(torch::kFloat));
  const Run want = run(reference, on_cpu, rounded_upstream);
  Run want_rounded;
  for (std::size_t i = 0; i < want.outputs.size(); ++i)
    want_rounded.outputs.push_back(want.outputs[i].to(got.outputs.at(i).scalar_type()));
  for (std::size_t i = 0; i < want.grads.size(); ++i)
    want_rounded.grads.push_back(want.grads[i].defined() ? want.grads[i].to(got.grads.at(i).defined()
                                                                                 ? got.grads[i].scalar_type()
                                                                                 : want.grads[i].scalar_type())
                                                         : want.grads[i]);
  check_runs(got, want_rounded, tolerance.rtol, tolerance.atol, what);
}

// rows x hidden: 1, 3 and 129 rows of the given widths, and a few random shapes.
std::vector<std::pair<int64_t, int64_t>> cuda_shapes() {
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int64_t rows : {1, 3, 129})
    for (int64_t hidden : {37, 100, 768, 2048, 4097}) shapes.emplace_back(rows, hidden);
  std::mt19937 generator(12345);
  for (int i = 0; i < 3; ++i)
    shapes.emplace_back(std::uniform_int_distribution<int64_t>(1, 300)(generator),
                        std::uniform_int_distribution<int64_t>(2, 3000)(generator));
  return shapes;
}

std::string shape_name(int64_t rows, int64_t hidden) {
  return std::to_string(rows) + " x " + std::to_string(hidden);
}

// Whether `t` came from one of the kernels' autograd functions.
bool from_kernels(const torch::Tensor& t, const std::string& function) {
  return t.grad_fn() && t.grad_fn()->name().find(function) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda, *boost::unit_test::precondition([](auto) { return torch::cuda::is_available(); }))

BOOST_AUTO_TEST_CASE(norms_equal_the_reference) {
  torch::manual_seed(11);
  struct Config {
    torch::Dtype x, y, weight;
    std::optional<torch::Dtype> out;
    bool with_y;
  };
  const std::vector<Config> configs = {
      {torch::kFloat, torch::kFloat, torch::kFloat, std::nullopt, true},
      {torch::kFloat, torch::kFloat, torch::kFloat, std::nullopt, false},
      {torch::kBFloat16, torch::kBFloat16, torch::kBFloat16, std::nullopt, true},
      {torch::kFloat, torch::kBFloat16, torch::kFloat, torch::kBFloat16, true},  // autocast: float32 stream
      {torch::kBFloat16, torch::kBFloat16, torch::kFloat, torch::kFloat, false},
      {torch::kHalf, torch::kHalf, torch::kFloat, std::nullopt, true},
  };
  for (bool rms : {true, false})
    for (const Config& config : configs)
      for (auto [rows, C] : cuda_shapes()) {
        const double eps = rms ? 1e-6 : 1e-5;
        const Tensors masters = {torch::randn({rows, C}), config.with_y ? torch::randn({rows, C}) : torch::Tensor(),
                                 1.0 + 0.1 * torch::randn({C}), 0.1 * torch::randn({C})};
        const std::vector<torch::Dtype> dtypes = {config.x, config.y, config.weight, config.weight};
        const Tensors upstream = {torch::randn({rows, C}), torch::randn({rows, C})};
        const std::optional<c10::ScalarType> out = config.out;
        auto norm = [&](bool kernels) {
          return [&, kernels](const Tensors& in) {
            // The reference computes in float32 and is rounded afterwards.
            const std::optional<c10::ScalarType> out_dtype = kernels ? out : std::nullopt;
            auto [residual, normed] =
                rms ? (kernels ? fused::add_rms_norm : fused::reference::add_rms_norm)(in[0], in[1], in[2], eps,
                                                                                       out_dtype)
                    : (kernels ? fused::add_layer_norm : fused::reference::add_layer_norm)(in[0], in[1], in[2], in[3],
                                                                                           eps, out_dtype);
            if (kernels && fused::has_cuda_kernels()) BOOST_TEST(from_kernels(normed, "AddNorm"));
            if (!config.with_y) BOOST_TEST(residual.is_same(in[0]));
            return Tensors{residual, normed};
          };
        };
        const torch::Dtype stored = config.x == torch::kFloat && config.y == torch::kFloat && !config.out
                                        ? torch::kFloat
                                        : (config.x == torch::kHalf ? torch::kHalf : torch::kBFloat16);
        Tolerance tolerance = tolerance_for(stored);
        if (stored == torch::kFloat) tolerance.rtol = 1e-4;  // gradients through a row's statistics
        compare_with_reference(norm(true), norm(false), rms ? Tensors(masters.begin(), masters.end() - 1) : masters,
                               dtypes, upstream, tolerance,
                               std::string(rms ? "add_rms_norm" : "add_layer_norm") + " x " + name(config.x) + " y " +
                                   (config.with_y ? name(config.y) : "none") + " weight " + name(config.weight) +
                                   " out " + (out ? name(*out) : "default") + ", " + shape_name(rows, C));
      }
}

BOOST_AUTO_TEST_CASE(norms_without_gradients_and_with_only_one_output_used) {
  torch::manual_seed(12);
  const torch::Tensor x = torch::randn({5, 100}, torch::kCUDA), y = torch::randn({5, 100}, torch::kCUDA);
  const torch::Tensor weight = torch::ones({100}, torch::kCUDA), bias = torch::zeros({100}, torch::kCUDA);
  {
    torch::NoGradGuard no_grad;
    auto [residual, normed] = fused::add_layer_norm(x, y, weight, bias, 1e-5);
    check_close(normed, at::layer_norm(x + y, {100}, weight, bias, 1e-5), 1e-5, 1e-5, "layer norm without gradients");
  }
  // Only the norm's output feeds the loss: the residual's gradient stays undefined inside.
  const torch::Tensor xl = x.clone().requires_grad_(), yl = y.clone().requires_grad_();
  auto [residual, normed] = fused::add_rms_norm(xl, yl, weight, 1e-6);
  normed.sum().backward();
  const torch::Tensor xr = x.cpu().requires_grad_(), yr = y.cpu().requires_grad_();
  fused::reference::add_rms_norm(xr, yr, weight.cpu(), 1e-6).second.sum().backward();
  check_close(xl.grad(), xr.grad(), 1e-4, 1e-5, "x gradient through the norm only");
  check_close(yl.grad(), yr.grad(), 1e-4, 1e-5, "y gradient through the norm only");
}

BOOST_AUTO_TEST_CASE(swiglu_equals_the_reference) {
  torch::manual_seed(13);
  for (torch::Dtype dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf})
    for (auto [rows, C] : cuda_shapes()) {
      const Tensors masters = {2.0 * torch::randn({rows, C}), torch::randn({rows, C})};
      const Tensors upstream = {torch::randn({rows, C})};
      auto swiglu = [](bool kernels) {
        return [kernels](const Tensors& in) {
          const torch::Tensor out = (kernels ? fused::swiglu : fused::reference::swiglu)(in[0], in[1]);
          if (kernels && fused::has_cuda_kernels()) BOOST_TEST(from_kernels(out, "Swiglu"));
          return Tensors{out};
        };
      };
      compare_with_reference(swiglu(true), swiglu(false), masters, {dtype, dtype}, upstream, tolerance_for(dtype),
                             "swiglu " + name(dtype) + ", " + shape_name(rows, C));
    }
}

BOOST_AUTO_TEST_CASE(bias_gelu_equals_the_reference) {
  torch::manual_seed(14);
  for (torch::Dtype dtype : {torch::kFloat, torch::kBFloat16})
    for (bool tanh : {true, false})
      for (bool with_bias : {true, false})
        for (auto [rows, C] : cuda_shapes()) {
          const Tensors masters = {2.0 * torch::randn({rows, C}), with_bias ? torch::randn({C}) : torch::Tensor()};
          const Tensors upstream = {torch::randn({rows, C})};
          auto bias_gelu = [tanh](bool kernels) {
            return [kernels, tanh](const Tensors& in) {
              const torch::Tensor out =
                  (kernels ? fused::bias_gelu : fused::reference::bias_gelu)(in[0], in[1], tanh);
              if (kernels && fused::has_cuda_kernels()) BOOST_TEST(from_kernels(out, "BiasGelu"));
              return Tensors{out};
            };
          };
          // The bias stays float32, as a parameter does under autocast.
          Tolerance tolerance = tolerance_for(dtype);
          if (dtype == torch::kFloat) tolerance.rtol = 1e-4;  // the bias gradient sums the rows
          compare_with_reference(bias_gelu(true), bias_gelu(false), masters, {dtype, torch::kFloat}, upstream,
                                 tolerance,
                                 std::string("bias_gelu ") + (tanh ? "tanh " : "erf ") +
                                     (with_bias ? "with bias " : "without bias ") + name(dtype) + ", " +
                                     shape_name(rows, C));
        }
}

BOOST_AUTO_TEST_CASE(rotary_equals_the_reference) {
  torch::manual_seed(15);
  struct Case {
    int64_t B, nh, nkv, T, hs, angle_batches;
    bool transposed;
  };
  const std::vector<Case> cases = {{1, 4, 4, 1, 64, 1, true},   {2, 4, 2, 7, 64, 1, true},
                                   {2, 6, 2, 33, 128, 2, true}, {3, 5, 1, 9, 38, 3, false},
                                   {1, 2, 2, 129, 6, 1, false}, {2, 8, 8, 17, 256, 1, true}};
  for (torch::Dtype dtype : {torch::kFloat, torch::kBFloat16})
    for (torch::Dtype angle_dtype : {torch::kFloat, dtype})
      for (const Case& c : cases) {
        auto [cos, sin] = angles(c.angle_batches, c.T, c.hs, angle_dtype);
        auto make = [&](int64_t n) {
          return c.transposed ? torch::randn({c.B, c.T, n, c.hs}).transpose(1, 2) : torch::randn({c.B, n, c.T, c.hs});
        };
        const Tensors masters = {make(c.nh), make(c.nkv), cos.to(torch::kFloat), sin.to(torch::kFloat)};
        const Tensors upstream = {torch::randn({c.B, c.nh, c.T, c.hs}), torch::randn({c.B, c.nkv, c.T, c.hs})};
        auto rotary = [](bool kernels) {
          return [kernels](const Tensors& in) {
            // The angles are constants, as the models' are.
            const torch::Tensor cos = in[2].detach(), sin = in[3].detach();
            auto [q, k] = (kernels ? fused::rotary : fused::reference::rotary)(in[0], in[1], cos, sin);
            if (kernels && fused::has_cuda_kernels()) BOOST_TEST(from_kernels(q, "Rotary"));
            return Tensors{q, k};
          };
        };
        compare_with_reference(rotary(true), rotary(false), masters, {dtype, dtype, angle_dtype, angle_dtype}, upstream,
                               tolerance_for(dtype),
                               "rotary " + name(dtype) + " angles " + name(angle_dtype) + ", (" + std::to_string(c.B) +
                                   ", " + std::to_string(c.nh) + "/" + std::to_string(c.nkv) + ", " +
                                   std::to_string(c.T) + ", " + std::to_string(c.hs) + ")" +
                                   (c.transposed ? " transposed" : ""));
      }
}

BOOST_AUTO_TEST_SUITE_END()
