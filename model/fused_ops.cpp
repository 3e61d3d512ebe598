#include "model/fused_ops.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include <initializer_list>
#include <stdexcept>
#include <string>

#ifdef FTRAIN_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/fused_ops_cuda.h"
#endif

namespace ftrain::model::fused {

namespace {

std::string shape(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : "undefined"; }
std::string dtype(const at::Tensor& t) { return t.defined() ? c10::toString(t.scalar_type()) : "undefined"; }

// The messages are built only on failure: these checks run on every forward call.
[[noreturn]] void refuse(const std::string& function, const std::string& what) {
  throw std::invalid_argument("ftrain::model::fused::" + function + ": " + what);
}

// x (..., C) and, when defined, y of x's shape and weight and bias of C elements.
void check_norm(const std::string& function, const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                const at::Tensor& bias) {
  if (!x.defined() || x.dim() < 1) refuse(function, "x must be a tensor (..., C), got " + shape(x));
  const int64_t C = x.size(-1);
  if (y.defined() && y.sizes() != x.sizes())
    refuse(function, "y must have x's shape " + shape(x) + ", got " + shape(y));
  if (!weight.defined() || weight.dim() != 1 || weight.size(0) != C)
    refuse(function, "weight must have shape (" + std::to_string(C) + "), got " + shape(weight));
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != C))
    refuse(function, "bias must have shape (" + std::to_string(C) + "), got " + shape(bias));
}

void check_swiglu(const at::Tensor& gate, const at::Tensor& up) {
  if (!gate.defined() || !up.defined() || gate.sizes() != up.sizes() || gate.scalar_type() != up.scalar_type())
    refuse("swiglu", "gate and up must have one shape and dtype, got " + shape(gate) + " " + dtype(gate) + " and " +
                         shape(up) + " " + dtype(up));
}

void check_bias_gelu(const at::Tensor& x, const at::Tensor& bias) {
  if (!x.defined() || x.dim() < 1) refuse("bias_gelu", "x must be a tensor (..., C), got " + shape(x));
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != x.size(-1)))
    refuse("bias_gelu", "bias must have shape (" + std::to_string(x.size(-1)) + "), got " + shape(bias));
}

void check_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
  if (!q.defined() || !k.defined() || q.dim() != 4 || k.dim() != 4 || q.size(0) != k.size(0) ||
      q.size(2) != k.size(2) || q.size(3) != k.size(3))
    refuse("rotary", "q (B, nh, T, hs) and k (B, nkv, T, hs) expected, got " + shape(q) + " and " + shape(k));
  if (q.scalar_type() != k.scalar_type())
    refuse("rotary", "q and k must have one dtype, got " + dtype(q) + " and " + dtype(k));
  const int64_t B = q.size(0), T = q.size(2), hs = q.size(3);
  if (hs % 2 != 0) refuse("rotary", "the head size must be even, got " + std::to_string(hs));
  if (!cos.defined() || !sin.defined() || cos.dim() != 3 || cos.sizes() != sin.sizes() ||
      (cos.size(0) != 1 && cos.size(0) != B) || cos.size(1) != T || cos.size(2) != hs)
    refuse("rotary", "cos and sin must have shape (" + std::to_string(B) + " or 1, " + std::to_string(T) + ", " +
                         std::to_string(hs) + "), got " + shape(cos) + " and " + shape(sin));
}

}  // namespace

// ---------------------------------------------------------------------------------
// References: what the models computed before, op for op.

namespace reference {

namespace {

at::Tensor residual_sum(const at::Tensor& x, const at::Tensor& y) {
  // y.to is a no-op for y of x's dtype, and for float32 x exactly the promotion of x + y.
  return y.defined() ? x + y.to(x.scalar_type()) : x;
}

// (..., hs) -> (..., hs): the halves (x1, x2) become (-x2, x1).
at::Tensor rotate_half(const at::Tensor& x) {
  auto halves = x.chunk(2, /*dim=*/-1);
  return at::cat({-halves[1], halves[0]}, /*dim=*/-1);
}

at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // angles (B or 1, T, hs) -> (B or 1, 1, T, hs), broadcast over heads
  return (x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)).to(x.scalar_type());
}

}  // namespace

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                               double eps, std::optional<c10::ScalarType> out_dtype) {
  check_norm("add_rms_norm", x, y, weight, {});
  const at::Tensor residual = residual_sum(x, y);
  // LlamaRmsNorm: statistics in float32 whatever the input precision; the scale applies
  // after casting back.
  at::Tensor h = residual.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  const at::Tensor normed = weight * h.to(residual.scalar_type());
  return {residual, normed.to(out_dtype.value_or(residual.scalar_type()))};
}

std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps,
                                                 std::optional<c10::ScalarType> out_dtype) {
  check_norm("add_layer_norm", x, y, weight, bias);
  const at::Tensor residual = residual_sum(x, y);
  const at::Tensor normed = at::layer_norm(residual, {residual.size(-1)}, weight, bias, eps);
  return {residual, normed.to(out_dtype.value_or(residual.scalar_type()))};
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
  check_swiglu(gate, up);
  return at::silu(gate) * up;
}

at::Tensor bias_gelu(const at::Tensor& x, const at::Tensor& bias, bool tanh_approximation) {
  check_bias_gelu(x, bias);
  return at::gelu(bias.defined() ? x + bias : x, tanh_approximation ? "tanh" : "none").to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                         const at::Tensor& sin) {
  check_rotary(q, k, cos, sin);
  return {rotate(q, cos, sin), rotate(k, cos, sin)};
}

}  // namespace reference

// ---------------------------------------------------------------------------------
// CUDA: autograd functions whose forward and backward are the kernels

#ifdef FTRAIN_WITH_CUDA_KERNELS
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool kernel_stores(c10::ScalarType type) {
  return type == at::kFloat || type == at::kBFloat16 || type == at::kHalf;
}

cuda::DType kernel_type(c10::ScalarType type) {
  switch (type) {
    case at::kFloat: return cuda::DType::float32;
    case at::kBFloat16: return cuda::DType::bfloat16;
    case at::kHalf: return cuda::DType::float16;
    default:
      throw std::invalid_argument(std::string("ftrain::model::fused: no CUDA kernel for ") + c10::toString(type));
  }
}

// Whether every defined tensor is on CUDA (undefined ones are optional arguments).
bool all_cuda(std::initializer_list<at::Tensor> tensors) {
  for (const at::Tensor& t : tensors)
    if (t.defined() && !t.is_cuda()) return false;
  return true;
}

bool floating(const at::Tensor& t) { return !t.defined() || at::isFloatingType(t.scalar_type()); }

void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

template <typename T>
T* pointer(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
const void* pointer(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

int64_t rows_of(const at::Tensor& t) { return t.size(-1) == 0 ? 0 : t.numel() / t.size(-1); }

// Per-column sums of a (blocks, cols) float32 partial-sum buffer, in `type`.
at::Tensor column_sum(const at::Tensor& partial, c10::ScalarType type) { return partial.sum(0).to(type); }

// An optional tensor argument of an autograd function: LibTorch's Function::apply takes
// an undefined at::Tensor for an input and fails on it (its device is asked for), so
// absent inputs travel as std::nullopt, which apply treats as no input at all.
std::optional<at::Tensor> given(const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; }

// Whether the gradient of an input is wanted, as it required one when the function ran
// (needs_input_grad would count only the inputs given, so its indices would shift).
bool wants_grad(AutogradContext* ctx, const char* input) { return ctx->saved_data[input].toBool(); }

// The kernels' casts are their own: autocast must not redo the few ATen calls around them.
struct KernelScope {
  c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::autocast_dispatch_keyset};
  c10::cuda::CUDAGuard device;
  explicit KernelScope(const at::Tensor& t) : device(t.device()) {}
};

// (residual, normed) when y is given, else (normed): the residual is then x itself,
// returned by the caller. The norm is RMSNorm (rms) or LayerNorm (bias may be undefined).
class AddNorm : public torch::autograd::Function<AddNorm> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& y_given,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias_given, double eps, bool rms,
                               c10::ScalarType out_dtype) {
    const KernelScope scope(x);
    const at::Tensor y = y_given.value_or(at::Tensor()), bias = bias_given.value_or(at::Tensor());
    const int64_t rows = rows_of(x), cols = x.size(-1);
    const at::Tensor input = x.contiguous();
    const at::Tensor other = y.defined() ? y.to(x.scalar_type()).contiguous() : at::Tensor();
    const at::Tensor w = weight.to(at::kFloat).contiguous();
    const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
    const auto f32 = x.options().dtype(at::kFloat);
    const at::Tensor residual = y.defined() ? at::empty_like(input) : input;
    at::Tensor normed = at::empty(x.sizes(), x.options().dtype(out_dtype));
    const at::Tensor mean = rms ? at::Tensor() : at::empty({rows}, f32);
    const at::Tensor rstd = at::empty({rows}, f32);
    cuda::add_norm_forward(rms, input.data_ptr(), pointer(other), kernel_type(x.scalar_type()), w.data_ptr<float>(),
                           pointer<float>(b), static_cast<float>(eps), rows, cols, residual.data_ptr(),
                           normed.data_ptr(), kernel_type(out_dtype), pointer<float>(mean), rstd.data_ptr<float>(),
                           stream_of(x));
    // Backward recomputes the normalised rows from the residual and the statistics.
    ctx->save_for_backward({residual, w, mean, rstd});
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["has_y"] = y.defined();
    ctx->saved_data["y_dtype"] = static_cast<int64_t>(y.defined() ? y.scalar_type() : x.scalar_type());
    ctx->saved_data["out_dtype"] = static_cast<int64_t>(out_dtype);
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.defined() ? bias.scalar_type() : weight.scalar_type());
    ctx->saved_data["x_grad"] = x.requires_grad();
    ctx->saved_data["y_grad"] = y.defined() && y.requires_grad();
    ctx->saved_data["weight_grad"] = weight.requires_grad();
    ctx->saved_data["bias_grad"] = bias.defined() && bias.requires_grad();
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined, and is skipped
    if (y.defined()) return {residual, normed};
    return {normed};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &residual = saved[0], &w = saved[1], &mean = saved[2], &rstd = saved[3];
    const KernelScope scope(residual);
    auto type_of = [&](const char* key) { return static_cast<c10::ScalarType>(ctx->saved_data[key].toInt()); };
    const bool rms = ctx->saved_data["rms"].toBool(), has_y = ctx->saved_data["has_y"].toBool();
    const int64_t rows = rows_of(residual), cols = residual.size(-1);
    at::Tensor grad_residual = has_y ? grads[0] : at::Tensor();
    at::Tensor grad_normed = has_y ? grads[1] : grads[0];
    if (grad_residual.defined()) grad_residual = grad_residual.to(residual.scalar_type()).contiguous();

    // d residual: through the norm, plus what the residual output received
    at::Tensor grad_sum = grad_residual, grad_weight, grad_bias;
    if (grad_normed.defined()) {
      const c10::ScalarType out_dtype = type_of("out_dtype");
      grad_normed = grad_normed.to(out_dtype).contiguous();
      grad_sum = at::empty_like(residual);
      cuda::add_norm_backward(rms, grad_normed.data_ptr(), kernel_type(out_dtype), pointer(grad_residual),
                              residual.data_ptr(), kernel_type(residual.scalar_type()), w.data_ptr<float>(),
                              pointer<float>(mean), rstd.data_ptr<float>(), rows, cols, grad_sum.data_ptr(),
                              stream_of(residual));
      const bool want_weight = wants_grad(ctx, "weight_grad"), want_bias = !rms && wants_grad(ctx, "bias_grad");
      if (want_weight || want_bias) {
        const int64_t blocks = cuda::column_blocks(rows, cols);
        const auto f32 = residual.options().dtype(at::kFloat);
        const at::Tensor weight_partial = at::empty({blocks, cols}, f32);
        const at::Tensor bias_partial = want_bias ? at::empty({blocks, cols}, f32) : at::Tensor();
        cuda::norm_param_grad(rms, grad_normed.data_ptr(), kernel_type(out_dtype), residual.data_ptr(),
                              kernel_type(residual.scalar_type()), pointer<float>(mean), rstd.data_ptr<float>(), rows,
                              cols, blocks, weight_partial.data_ptr<float>(), pointer<float>(bias_partial),
                              stream_of(residual));
        if (want_weight) grad_weight = column_sum(weight_partial, type_of("weight_dtype"));
        if (want_bias) grad_bias = column_sum(bias_partial, type_of("bias_dtype"));
      }
    }
    at::Tensor grad_x, grad_y;
    if (grad_sum.defined()) {
      if (wants_grad(ctx, "x_grad")) grad_x = grad_sum;
      if (wants_grad(ctx, "y_grad")) grad_y = grad_sum.to(type_of("y_dtype"));
    }
    return {grad_x, grad_y, grad_weight, grad_bias, {}, {}, {}};
  }
};

std::pair<at::Tensor, at::Tensor> add_norm_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                const at::Tensor& bias, double eps, bool rms,
                                                c10::ScalarType out_dtype) {
  const variable_list outputs = AddNorm::apply(x, given(y), weight, given(bias), eps, rms, out_dtype);
  if (y.defined()) return {outputs[0], outputs[1]};
  return {x, outputs[0]};
}

bool norm_on_kernels(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
                     c10::ScalarType out_dtype) {
  return x.is_cuda() && all_cuda({y, weight, bias}) && kernel_stores(x.scalar_type()) && kernel_stores(out_dtype) &&
         floating(y) && floating(weight) && floating(bias);
}

class Swiglu : public torch::autograd::Function<Swiglu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    const KernelScope scope(gate);
    const at::Tensor g = gate.contiguous(), u = up.contiguous();
    at::Tensor out = at::empty_like(g);
    cuda::swiglu_forward(g.data_ptr(), u.data_ptr(), out.data_ptr(), kernel_type(g.scalar_type()), g.numel(),
                         stream_of(g));
    ctx->save_for_backward({g, u});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &g = saved[0], &u = saved[1];
    const KernelScope scope(g);
    const at::Tensor grad_out = grads[0].to(g.scalar_type()).contiguous();
    at::Tensor grad_gate = at::empty_like(g), grad_up = at::empty_like(u);
    cuda::swiglu_backward(grad_out.data_ptr(), g.data_ptr(), u.data_ptr(), grad_gate.data_ptr(), grad_up.data_ptr(),
                          kernel_type(g.scalar_type()), g.numel(), stream_of(g));
    return {grad_gate, grad_up};
  }
};

class BiasGelu : public torch::autograd::Function<BiasGelu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& bias_given,
                            bool tanh_approximation) {
    const KernelScope scope(x);
    const at::Tensor bias = bias_given.value_or(at::Tensor());
    const at::Tensor input = x.contiguous();
    const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor out = at::empty_like(input);
    cuda::bias_gelu_forward(input.data_ptr(), pointer<float>(b), kernel_type(x.scalar_type()), rows_of(x), x.size(-1),
                            tanh_approximation, out.data_ptr(), stream_of(x));
    ctx->save_for_backward({input, b});
    ctx->saved_data["tanh"] = tanh_approximation;
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.defined() ? bias.scalar_type() : x.scalar_type());
    ctx->saved_data["bias_grad"] = bias.defined() && bias.requires_grad();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &b = saved[1];
    const KernelScope scope(input);
    const int64_t rows = rows_of(input), cols = input.size(-1);
    const at::Tensor grad_out = grads[0].to(input.scalar_type()).contiguous();
    at::Tensor grad_x = at::empty_like(input), grad_bias;
    const bool want_bias = b.defined() && wants_grad(ctx, "bias_grad");
    const int64_t blocks = want_bias ? cuda::column_blocks(rows, cols) : 0;
    const at::Tensor bias_partial =
        want_bias ? at::empty({blocks, cols}, input.options().dtype(at::kFloat)) : at::Tensor();
    cuda::bias_gelu_backward(grad_out.data_ptr(), input.data_ptr(), pointer<float>(b), kernel_type(input.scalar_type()),
                             rows, cols, ctx->saved_data["tanh"].toBool(), grad_x.data_ptr(), blocks,
                             pointer<float>(bias_partial), stream_of(input));
    if (want_bias)
      grad_bias = column_sum(bias_partial, static_cast<c10::ScalarType>(ctx->saved_data["bias_dtype"].toInt()));
    return {grad_x, grad_bias, {}};
  }
};

// t itself when its last dimension is contiguous, else a contiguous copy.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

cuda::RotaryOperand rotary_operand(const at::Tensor& in, const at::Tensor& out) {
  cuda::RotaryOperand operand;
  operand.in = in.data_ptr();
  operand.out = out.data_ptr();
  operand.heads = in.size(1);
  for (int d = 0; d < 3; ++d) {
    operand.in_strides[d] = in.stride(d);
    operand.out_strides[d] = out.stride(d);
  }
  return operand;
}

// (q, k) -> (rotated q, rotated k) in one launch; backward turns the gradients back.
class Rotary : public torch::autograd::Function<Rotary> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                               const at::Tensor& sin) {
    const KernelScope scope(q);
    const at::Tensor c = cos.to(at::kFloat).contiguous(), s = sin.to(at::kFloat).contiguous();
    ctx->save_for_backward({c, s});
    return turn(q, k, c, s, /*inverse=*/false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const KernelScope scope(saved[0]);
    variable_list turned = turn(grads[0], grads[1], saved[0], saved[1], /*inverse=*/true);
    return {turned[0], turned[1], {}, {}};
  }

 private:
  // Fresh outputs in the inputs' layout where that is dense (a transpose of (B, T, n, hs)
  // stays one), else contiguous.
  static variable_list turn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                            bool inverse) {
    const at::Tensor q_in = rows_contiguous(q), k_in = rows_contiguous(k);  // one dtype (check_rotary)
    at::Tensor q_out = at::empty_like(q_in), k_out = at::empty_like(k_in);
    cuda::rotary(rotary_operand(q_in, q_out), rotary_operand(k_in, k_out), kernel_type(q.scalar_type()), q.size(0),
                 q.size(2), q.size(3), cos.data_ptr<float>(), sin.data_ptr<float>(), cos.size(0), inverse,
                 stream_of(q));
    return {q_out, k_out};
  }
};

}  // namespace
#endif  // FTRAIN_WITH_CUDA_KERNELS

// ---------------------------------------------------------------------------------
// Dispatch: the kernels where they apply, else the reference

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                               double eps, std::optional<c10::ScalarType> out_dtype) {
#ifdef FTRAIN_WITH_CUDA_KERNELS
  check_norm("add_rms_norm", x, y, weight, {});
  const c10::ScalarType out = out_dtype.value_or(x.scalar_type());
  if (norm_on_kernels(x, y, weight, {}, out)) return add_norm_cuda(x, y, weight, {}, eps, /*rms=*/true, out);
#endif
  return reference::add_rms_norm(x, y, weight, eps, out_dtype);
}

std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps,
                                                 std::optional<c10::ScalarType> out_dtype) {
#ifdef FTRAIN_WITH_CUDA_KERNELS
  check_norm("add_layer_norm", x, y, weight, bias);
  const c10::ScalarType out = out_dtype.value_or(x.scalar_type());
  if (norm_on_kernels(x, y, weight, bias, out)) return add_norm_cuda(x, y, weight, bias, eps, /*rms=*/false, out);
#endif
  return reference::add_layer_norm(x, y, weight, bias, eps, out_dtype);
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
#ifdef FTRAIN_WITH_CUDA_KERNELS
  check_swiglu(gate, up);
  if (all_cuda({gate, up}) && gate.is_cuda() && kernel_stores(gate.scalar_type())) return Swiglu::apply(gate, up);
#endif
  return reference::swiglu(gate, up);
}

at::Tensor bias_gelu(const at::Tensor& x, const at::Tensor& bias, bool tanh_approximation) {
#ifdef FTRAIN_WITH_CUDA_KERNELS
  check_bias_gelu(x, bias);
  if (x.is_cuda() && all_cuda({bias}) && kernel_stores(x.scalar_type()) && floating(bias))
    return BiasGelu::apply(x, given(bias), tanh_approximation);
#endif
  return reference::bias_gelu(x, bias, tanh_approximation);
}

std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                         const at::Tensor& sin) {
#ifdef FTRAIN_WITH_CUDA_KERNELS
  check_rotary(q, k, cos, sin);
  // The kernels treat the angles as constants; angles that learn take the reference.
  const bool angles_learn = at::GradMode::is_enabled() && (cos.requires_grad() || sin.requires_grad());
  if (q.is_cuda() && all_cuda({k, cos, sin}) && kernel_stores(q.scalar_type()) && floating(cos) && floating(sin) &&
      !angles_learn) {
    const variable_list outputs = Rotary::apply(q, k, cos, sin);
    return {outputs[0], outputs[1]};
  }
#endif
  return reference::rotary(q, k, cos, sin);
}

c10::ScalarType input_dtype_for_linear(const at::Tensor& x) {
  const c10::DeviceType device = x.device().type();
  const c10::ScalarType type = x.scalar_type();
  const bool castable = type == at::kFloat || type == at::kBFloat16 || type == at::kHalf;
  if (castable && at::autocast::is_autocast_available(device) && at::autocast::is_autocast_enabled(device))
    return at::autocast::get_autocast_dtype(device);
  return type;
}

bool has_cuda_kernels() {
#ifdef FTRAIN_WITH_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

}  // namespace ftrain::model::fused
