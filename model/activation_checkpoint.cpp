#include "model/activation_checkpoint.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>
#include <torch/torch.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace ftrain::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The state of the default generators of the CPU and, for a CUDA input, its device.
struct RngState {
  std::vector<std::pair<c10::Device, at::Tensor>> states;

  static RngState capture(const c10::Device& device) {
    RngState out;
    out.states.emplace_back(c10::Device(c10::kCPU), get(c10::Device(c10::kCPU)));
    if (!device.is_cpu()) out.states.emplace_back(device, get(device));
    return out;
  }

  void restore() const {
    for (const auto& [device, state] : states) {
      at::Generator generator = at::globalContext().defaultGenerator(device);
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(state);
    }
  }

 private:
  static at::Tensor get(const c10::Device& device) {
    at::Generator generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    return generator.get_state();
  }
};

// Whether autocast was on, and to which type, for the CPU and the input's device.
struct AutocastState {
  struct One {
    c10::DeviceType device;
    bool enabled;
    at::ScalarType dtype;
  };
  std::vector<One> devices;

  static AutocastState capture(c10::DeviceType device) {
    AutocastState out;
    for (c10::DeviceType type : {c10::DeviceType::CPU, device}) {
      if (!out.devices.empty() && type == out.devices.front().device) continue;
      out.devices.push_back({type, at::autocast::is_autocast_enabled(type), at::autocast::get_autocast_dtype(type)});
    }
    return out;
  }

  void apply() const {
    for (const One& one : devices) {
      at::autocast::set_autocast_enabled(one.device, one.enabled);
      at::autocast::set_autocast_dtype(one.device, one.dtype);
    }
  }
};

// Puts the autocast state of the forward in place for the recomputation, and the
// caller's back afterwards. Nesting is counted as an autocast region does, so casts
// cached during the recomputation are dropped at its end rather than surviving into
// a later step with stale weights.
class AutocastAs {
 public:
  explicit AutocastAs(const AutocastState& forward) : saved_(AutocastState::capture(forward.devices.back().device)) {
    forward.apply();
    at::autocast::increment_nesting();
  }
  ~AutocastAs() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    saved_.apply();
  }
  AutocastAs(const AutocastAs&) = delete;
  AutocastAs& operator=(const AutocastAs&) = delete;

 private:
  AutocastState saved_;
};

// What the backward needs to run the block again. Autograd keeps only IValues in
// ctx->saved_data; a capsule carries this object from forward to backward.
struct Recompute : torch::CustomClassHolder {
  BlockForward block;
  RngState rng;
  AutocastState autocast;
};

// Forward: the block under no-grad, keeping only its input (and its reads). Backward:
// the block again with gradients, from the same random state and autocast state, on
// detached copies of its input and reads, then backward through it, which accumulates
// the block's parameter gradients and gives those of the input and the reads.
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList reads,
                            c10::intrusive_ptr<Recompute> recompute) {
    recompute->rng = RngState::capture(x.device());
    recompute->autocast = AutocastState::capture(x.device().type());
    at::Tensor y;
    {
      torch::NoGradGuard no_grad;
      // Casts made without autograd must not enter autocast's weight cache: a later use
      // of the cache (the recomputation, another micro-batch) would get a weight copy
      // that leads no gradient back to the weight.
      const bool cache = at::autocast::is_autocast_cache_enabled();
      at::autocast::set_autocast_cache_enabled(false);
      try {
        y = recompute->block(x);
      } catch (...) {
        at::autocast::set_autocast_cache_enabled(cache);
        throw;
      }
      at::autocast::set_autocast_cache_enabled(cache);
    }
    std::vector<at::Tensor> saved{x};
    saved.insert(saved.end(), reads.begin(), reads.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(std::move(recompute));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* recompute = static_cast<Recompute*>(ctx->saved_data.at("recompute").toCapsule().get());
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor x = saved[0].detach().requires_grad_(true);
    std::vector<at::Tensor> reads;
    for (std::size_t i = 1; i < saved.size(); ++i)
      reads.push_back(saved[i].detach().requires_grad_(ctx->needs_input_grad(i)));
    at::Tensor y;
    {
      const RngState now = RngState::capture(x.device());
      recompute->rng.restore();
      {
        AutocastAs autocast(recompute->autocast);
        torch::AutoGradMode grad(true);
        y = recompute->block.reading(reads)(x);
      }
      now.restore();
    }
    // Accumulates into the parameters' .grad as a plain backward would, into x.grad and
    // into the reads' .grad.
    if (y.requires_grad()) torch::autograd::backward({y}, {grads[0]});
    variable_list out{x.grad()};
    for (const at::Tensor& read : reads) out.push_back(read.grad());
    out.emplace_back();  // the recompute capsule
    return out;
  }
};

}  // namespace

BlockRunner checkpoint_blocks(BlockRunner inner) {
  return [inner = std::move(inner)](std::size_t index, const at::Tensor& x, const BlockForward& block) -> at::Tensor {
    BlockForward run = block;
    if (inner)
      run = BlockForward(block.reads, [inner, index, block](const at::Tensor& y, const std::vector<at::Tensor>& reads) {
        return inner(index, y, block.reading(reads));
      });
    const bool reads_need_grad =
        std::any_of(run.reads.begin(), run.reads.end(), [](const at::Tensor& t) { return t.requires_grad(); });
    if (!torch::GradMode::is_enabled() || !(x.requires_grad() || reads_need_grad)) return run(x);
    auto recompute = c10::make_intrusive<Recompute>();
    const std::vector<at::Tensor> reads = run.reads;
    recompute->block = std::move(run);
    return CheckpointFunction::apply(x, at::TensorList(reads), std::move(recompute));
  };
}

}  // namespace ftrain::model
