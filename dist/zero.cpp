#include "dist/zero.h"

#include "dist/host_memory.h"

#include <c10/core/StorageImpl.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <stdexcept>

namespace ftrain::dist {

namespace {

// A unit's full buffer keeps its StorageImpl for its whole life, so the parameters and
// gradients viewing it, and the views autograd saved of them, stay valid; only the
// memory behind it comes and goes (as FSDP resizes its storage). Swapping `.data`
// instead would leave the saved views holding the old memory.
void release_storage(const at::Tensor& buffer) {
  c10::StorageImpl* storage = buffer.storage().unsafeGetStorageImpl();
  storage->set_data_ptr_noswap(c10::DataPtr(nullptr, buffer.device()));
  storage->set_nbytes(0);
}

void allocate_storage(const at::Tensor& buffer) {
  c10::StorageImpl* storage = buffer.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>(buffer.numel()) * buffer.element_size();
  // On the host, mapped memory (dist/host_memory.h): it comes and goes every step.
  storage->set_data_ptr_noswap(buffer.is_cpu() ? mapped_allocate(bytes) : storage->allocator()->allocate(bytes));
  storage->set_nbytes(bytes);
}

std::int64_t bytes_of(const at::Tensor& t) { return t.numel() * static_cast<std::int64_t>(t.element_size()); }

}  // namespace

// ---------------------------------------------------------------------------------
// Hooks around a block
//
// Forward, a block runs as  x -> AfterBlockBackward -> block -> BeforeBlockBackward -> y.
// Both are identities; backward visits them in reverse, so BeforeBlockBackward's
// backward runs just before the block's (give it gradient memory; at stage 3 also
// gather its parameters and prefetch the previous block's) and AfterBlockBackward's
// once the gradient of the block's input is complete. The engine runs a parameter's
// AccumulateGrad as soon as its gradient is ready and before any other ready node, so
// by then the block's parameter gradients are all accumulated (test_data_parallel
// checks the result): reduce-scatter them (in the background with overlap), free the
// block's gradients and, at stage 3, its parameters.

struct ZeroBlockHooks {
  // Autograd keeps only IValues in ctx->saved_data; a capsule carries the owner.
  struct Owner : torch::CustomClassHolder {
    Owner(ZeroSharding& zero, size_t unit) : zero(zero), unit(unit) {}
    ZeroSharding& zero;
    size_t unit;
  };

  static Owner& owner(torch::autograd::AutogradContext* ctx) {
    return *static_cast<Owner*>(ctx->saved_data.at("owner").toCapsule().get());
  }

  static void before_block_backward(ZeroSharding& zero, size_t unit) {
    zero.progress();
    if (zero.input_unit_ && unit == zero.num_blocks()) {
      // The root (final norm, head) comes after the last block: its backward is done.
      zero.reduce_unit(0, zero.overlap_);
      zero.free_params(0);
    }
    if (zero.stage_ == 3) {
      zero.ensure_gathered(unit);
      if (unit > 1) zero.prefetch(unit - 1);  // the block before; unit 0 is the root
    }
    if (zero.trainable(zero.units_[unit])) zero.hold_grads(unit);
  }

  static void after_block_backward(ZeroSharding& zero, size_t unit) {
    if (zero.stage_ == 1) {
      // Earlier micro-batches only accumulate; without overlap reduce_gradients() reduces.
      if (zero.reduce_in_backward_) zero.reduce_unit(unit, /*in_background=*/true);
      return;
    }
    zero.reduce_unit(unit, zero.overlap_);
    if (zero.stage_ == 3) zero.free_params(unit);
    if (zero.input_unit_ && unit == 1 && zero.trainable(zero.units_[*zero.input_unit_])) {
      // The embeddings' backward comes next: it may read their weights (a LayerNorm's).
      zero.ensure_gathered(*zero.input_unit_);
      zero.hold_grads(*zero.input_unit_);
    }
  }
};

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BeforeBlockBackward : torch::autograd::Function<BeforeBlockBackward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, c10::intrusive_ptr<ZeroBlockHooks::Owner> owner) {
    ctx->saved_data["owner"] = c10::IValue::make_capsule(std::move(owner));
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& owner = ZeroBlockHooks::owner(ctx);
    ZeroBlockHooks::before_block_backward(owner.zero, owner.unit);
    return {grads[0], at::Tensor()};
  }
};

// `anchor` is a (0) tensor that requires grad, so the hook is in the graph even when x
// needs no gradient (frozen embeddings before a trainable block).
struct AfterBlockBackward : torch::autograd::Function<AfterBlockBackward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& anchor,
                            c10::intrusive_ptr<ZeroBlockHooks::Owner> owner) {
    ctx->saved_data["owner"] = c10::IValue::make_capsule(std::move(owner));
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& owner = ZeroBlockHooks::owner(ctx);
    ZeroBlockHooks::after_block_backward(owner.zero, owner.unit);
    return {grads[0], at::Tensor(), at::Tensor()};
  }
};

}  // namespace

// ---------------------------------------------------------------------------------
// Construction

ZeroSharding::ZeroSharding(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp, int stage,
                           std::vector<std::vector<std::string>> block_param_names,
                           std::vector<std::string> input_param_names,
                           std::vector<std::string> vocabulary_param_names)
    : dp_(dp), stage_(stage), params_(std::move(named_params)) {
  if (params_.empty()) throw std::invalid_argument("ZeroSharding: no parameters");
  if (stage_ < 1 || stage_ > 3)
    throw std::invalid_argument("ZeroSharding: stage must be 1, 2 or 3, got " + std::to_string(stage_));
  const auto options = params_.front().second.options().requires_grad(false);
  for (const auto& [name, p] : params_)
    if (p.scalar_type() != options.dtype().toScalarType() || p.device() != options.device())
      throw std::invalid_argument("ZeroSharding: parameter '" + name + "' differs in dtype or device");
  build_units(block_param_names, std::move(input_param_names), vocabulary_param_names, /*with_values=*/true, options);
  reset_peaks();
}

ZeroSharding::ZeroSharding(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp,
                           std::vector<std::vector<std::string>> block_param_names, Unfilled unfilled,
                           std::vector<std::string> input_param_names,
                           std::vector<std::string> vocabulary_param_names)
    : dp_(dp), stage_(3), params_(std::move(named_params)) {
  if (params_.empty()) throw std::invalid_argument("ZeroSharding: no parameters");
  build_units(block_param_names, std::move(input_param_names), vocabulary_param_names, /*with_values=*/false,
              at::TensorOptions().device(unfilled.device).dtype(unfilled.dtype));
  filled_.assign(params_.size(), false);
  reset_peaks();
}

size_t ZeroSharding::index_of(const std::string& name, const char* caller) const {
  auto found = param_index_.find(name);
  if (found == param_index_.end())
    throw std::invalid_argument(std::string("ZeroSharding::") + caller + ": no parameter '" + name + "'");
  return found->second;
}

void ZeroSharding::fill_shard(const std::string& name, const at::Tensor& values) {
  const size_t index = index_of(name, "fill_shard");
  const at::Tensor& param = params_[index].second;
  if (values.sizes() != param.sizes())
    throw std::invalid_argument("ZeroSharding::fill_shard: '" + name + "' is " + c10::str(param.sizes()) +
                                ", given " + c10::str(values.sizes()));
  torch::NoGradGuard no_grad;
  for (const Slice& slice : slices_) {
    if (slice.param_index != index) continue;
    // A view for a contiguous tensor (a memory-mapped file's pages outside the range
    // are never touched); a transposed one is copied whole first.
    slice.param.copy_(values.reshape({-1}).narrow(0, slice.param_offset, slice.param.numel()));
  }
  if (!filled_.empty()) filled_[index] = true;
}

std::pair<int64_t, int64_t> ZeroSharding::own_range(const std::string& name) const {
  const size_t index = index_of(name, "own_range");
  for (const Slice& slice : slices_)
    if (slice.param_index == index) return {slice.param_offset, slice.param.numel()};
  return {0, 0};
}

std::vector<int64_t> ZeroSharding::parameter_shape(const std::string& name) const {
  return params_[index_of(name, "parameter_shape")].second.sizes().vec();
}

void ZeroSharding::fill_own_range(const std::string& name, const at::Tensor& values) {
  const size_t index = index_of(name, "fill_own_range");
  torch::NoGradGuard no_grad;
  for (const Slice& slice : slices_) {
    if (slice.param_index != index) continue;
    if (values.numel() != slice.param.numel())
      throw std::invalid_argument("ZeroSharding::fill_own_range: '" + name + "' holds " +
                                  std::to_string(slice.param.numel()) + " elements here, given " +
                                  std::to_string(values.numel()));
    slice.param.copy_(values.reshape({-1}));
  }
  if (!filled_.empty()) filled_[index] = true;
}

std::vector<std::string> ZeroSharding::unfilled() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < filled_.size(); ++i)
    if (!filled_[i]) out.push_back(params_[i].first);
  return out;
}

const ZeroSharding::RowShards* ZeroSharding::row_shards(const std::string& name) const {
  for (const RowShards& rows : row_shards_)
    if (rows.name == name) return &rows;
  return nullptr;
}

void ZeroSharding::build_units(const std::vector<std::vector<std::string>>& block_param_names,
                               std::vector<std::string> input_param_names,
                               const std::vector<std::string>& vocabulary_param_names, bool with_values,
                               const at::TensorOptions& buffer_options) {
  for (size_t i = 0; i < params_.size(); ++i) param_index_[params_[i].first] = i;
  // Unit 0 is the root; block b is unit b + 1.
  unit_of_.assign(params_.size(), 0);
  for (size_t b = 0; b < block_param_names.size(); ++b)
    for (const std::string& name : block_param_names[b]) {
      auto found = param_index_.find(name);
      if (found == param_index_.end())
        throw std::invalid_argument("ZeroSharding: block " + std::to_string(b) + " names parameter '" + name +
                                    "', which is not among the parameters given");
      if (unit_of_[found->second] != 0)
        throw std::invalid_argument("ZeroSharding: parameter '" + name + "' is named by blocks " +
                                    std::to_string(unit_of_[found->second] - 1) + " and " + std::to_string(b));
      unit_of_[found->second] = b + 1;
    }
  num_blocks_ = block_param_names.size();
  // Without blocks there is nothing to split the root around.
  const bool streams = stage_ == 3 && !block_param_names.empty();
  std::vector<size_t> vocabulary;  // parameter indices, one unit each
  if (streams) {
    for (const std::string& name : vocabulary_param_names) {
      auto found = param_index_.find(name);
      if (found == param_index_.end())
        throw std::invalid_argument("ZeroSharding: vocabulary parameter '" + name +
                                    "' is not among the parameters given");
      const at::Tensor& p = params_[found->second].second;
      if (p.dim() != 2 || unit_of_[found->second] != 0)
        throw std::invalid_argument("ZeroSharding: vocabulary parameter '" + name + "' must be a (V, C) matrix "
                                    "outside the blocks, got " + c10::str(p.sizes()));
      if (std::find(vocabulary.begin(), vocabulary.end(), found->second) == vocabulary.end())
        vocabulary.push_back(found->second);
    }
    std::erase_if(input_param_names, [&](const std::string& name) {
      auto found = param_index_.find(name);
      return found != param_index_.end() &&
             std::find(vocabulary.begin(), vocabulary.end(), found->second) != vocabulary.end();
    });
  }
  const bool splits_input = streams && !input_param_names.empty();
  if (splits_input) {
    const size_t input = block_param_names.size() + 1;
    for (const std::string& name : input_param_names) {
      auto found = param_index_.find(name);
      if (found == param_index_.end())
        throw std::invalid_argument("ZeroSharding: input parameter '" + name + "' is not among the parameters given");
      if (unit_of_[found->second] != 0)
        throw std::invalid_argument("ZeroSharding: input parameter '" + name + "' is named by block " +
                                    std::to_string(unit_of_[found->second] - 1) + " too");
      unit_of_[found->second] = input;
    }
    input_unit_ = input;
  }
  const size_t first_vocabulary = block_param_names.size() + 1 + (splits_input ? 1 : 0);
  for (size_t v = 0; v < vocabulary.size(); ++v) unit_of_[vocabulary[v]] = first_vocabulary + v;
  units_.resize(first_vocabulary + vocabulary.size());
  for (size_t i = 0; i < params_.size(); ++i) units_[unit_of_[i]].params.push_back(i);
  if (splits_input && units_.front().params.empty())
    throw std::invalid_argument("ZeroSharding: every parameter outside the blocks is an input parameter; "
                                "name the input parameters only when something follows the blocks");

  const auto options = buffer_options.requires_grad(false);
  const int64_t ranks = dp_.size();
  offsets_.assign(params_.size(), 0);
  for (Unit& unit : units_) {
    int64_t total = 0;
    for (size_t i : unit.params) {
      offsets_[i] = total;
      total += params_[i].second.numel();
    }
    unit.shard_numel = (total + ranks - 1) / ranks;
    if (&unit - units_.data() >= static_cast<std::ptrdiff_t>(first_vocabulary)) {
      // Whole rows per rank: R = ceil(V / N) rows of C.
      const at::Tensor& p = params_[unit.params.front()].second;
      unit.shard_numel = (p.size(0) + ranks - 1) / ranks * p.size(1);
      unit.streamed = true;
    }
    unit.shard_offset = shard_numel_;
    shard_numel_ += unit.shard_numel;
  }
  if (stage_ == 3) shard_params_ = torch::zeros({shard_numel_}, options);
  // Stage 1 reduces each unit in place into this rank's chunk of its full gradients.
  if (stage_ >= 2) {
    shard_grads_ = torch::zeros({shard_numel_}, options);
    gradient_bytes_ = bytes_of(shard_grads_);
    own_grads_ = {shard_grads_};
  }
  anchor_ = torch::empty({0}, options).requires_grad_(true);

  torch::NoGradGuard no_grad;
  const int64_t rank = dp_.rank();
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& unit = units_[u];
    // Without values, the buffers are never written here: their memory is released
    // below before it is touched.
    unit.full_params = with_values ? torch::zeros({unit.shard_numel * ranks}, options)
                                   : torch::empty({unit.shard_numel * ranks}, options);
    unit.full_grads = torch::empty({unit.shard_numel * ranks}, options);
    if (stage_ == 1) unit.full_grads.zero_();
    for (size_t i : unit.params) {
      at::Tensor& p = params_[i].second;
      at::Tensor view = unit.full_params.narrow(0, offsets_[i], p.numel());
      if (with_values) view.copy_(p.detach().reshape({-1}));
      p.set_data(view.view(p.sizes()));
      p.mutable_grad() = unit.full_grads.narrow(0, offsets_[i], p.numel()).view(p.sizes());
    }
    const int64_t shard_begin = unit.shard_numel * rank;
    if (stage_ == 3) {
      // Parameters are equal on every rank, so each takes its shard without communicating.
      if (with_values)
        shard_params_.narrow(0, unit.shard_offset, unit.shard_numel)
            .copy_(unit.full_params.narrow(0, shard_begin, unit.shard_numel));
      release_storage(unit.full_params);
    } else {
      unit.gathered = true;  // stages 1 and 2 keep every parameter whole
    }
    if (stage_ == 1) {
      // Gradients accumulate over the micro-batches in the full buffers.
      unit.grads_held = true;
      gradient_bytes_ += bytes_of(unit.full_grads);
      own_grads_.push_back(unit.full_grads.narrow(0, unit.shard_numel * rank, unit.shard_numel));
    } else {
      release_storage(unit.full_grads);
    }

    const int64_t shard_end = shard_begin + unit.shard_numel;
    for (size_t i : unit.params) {
      const int64_t begin = std::max(shard_begin, offsets_[i]);
      const int64_t end = std::min(shard_end, offsets_[i] + params_[i].second.numel());
      if (begin >= end) continue;
      const int64_t at = unit.shard_offset + begin - shard_begin;
      // At stages 1 and 2 the optimizer updates its part of the whole parameters in
      // place; gather_parameters() then sends it to the other ranks.
      at::Tensor param = stage_ == 3 ? shard_params_.narrow(0, at, end - begin)
                                     : unit.full_params.narrow(0, begin, end - begin);
      at::Tensor grad = stage_ == 1 ? unit.full_grads.narrow(0, begin, end - begin)
                                    : shard_grads_.narrow(0, at, end - begin);
      slices_.push_back(Slice{params_[i].first, param, grad, begin - offsets_[i], params_[i].second.numel(),
                              params_[i].second.dim() >= 2, i});
      slice_shard_offsets_.push_back(at);
    }
  }
  int64_t largest_block = 0;  // bytes of the largest block gathered whole (and of its gradients)
  for (size_t u = 1; u <= num_blocks_; ++u)
    largest_block = std::max(largest_block, units_[u].shard_numel * ranks * static_cast<int64_t>(options.dtype().itemsize()));
  for (size_t u = first_vocabulary; u < units_.size(); ++u) {
    const Unit& unit = units_[u];
    const auto& [name, p] = params_[unit.params.front()];
    const int64_t cols = p.size(1), rows_per_rank = unit.shard_numel / cols;
    row_shards_.push_back(RowShards{name, &dp_, p, p.size(0), cols, rows_per_rank,
                                    shard_params_.narrow(0, unit.shard_offset, unit.shard_numel).view({rows_per_rank, cols}),
                                    shard_grads_.narrow(0, unit.shard_offset, unit.shard_numel).view({rows_per_rank, cols}),
                                    std::nullopt, std::min(kStreamWindowBytes, largest_block / 4)});
  }
  parameter_bytes_ = 0;
  if (stage_ == 3) {
    parameter_bytes_ = bytes_of(shard_params_);
  } else {
    for (const Unit& unit : units_) parameter_bytes_ += bytes_of(unit.full_params);
  }
}

ZeroSharding::~ZeroSharding() {
  // A collective still in flight writes into memory that must outlive it.
  try {
    finish_prefetch();
    finish_reduction();
  } catch (...) {
  }
}

// ---------------------------------------------------------------------------------
// Stage 3: gathering and freeing units

bool ZeroSharding::trainable(const Unit& unit) const {
  return std::any_of(unit.params.begin(), unit.params.end(),
                     [&](size_t i) { return params_[i].second.requires_grad(); });
}

void ZeroSharding::count_parameters(std::int64_t bytes) {
  parameter_bytes_ += bytes;
  peak_parameter_bytes_ = std::max(peak_parameter_bytes_, parameter_bytes_);
}

void ZeroSharding::count_gradients(std::int64_t bytes) {
  gradient_bytes_ += bytes;
  peak_gradient_bytes_ = std::max(peak_gradient_bytes_, gradient_bytes_);
}

void ZeroSharding::reset_peaks() {
  peak_parameter_bytes_ = parameter_bytes_;
  peak_gradient_bytes_ = gradient_bytes_;
}

void ZeroSharding::gather(size_t u, bool in_background) {
  Unit& unit = units_[u];
  if (unit.streamed)
    throw std::logic_error("ZeroSharding: '" + params_[unit.params.front()].first +
                           "' streams by rows and is never gathered whole");
  allocate_storage(unit.full_params);
  unit.gathered = true;
  count_parameters(bytes_of(unit.full_params));
  torch::NoGradGuard no_grad;
  const at::Tensor mine = shard_params_.narrow(0, unit.shard_offset, unit.shard_numel);
  if (in_background) {
    prefetch_ = dp_.start_all_gather(unit.full_params, mine);
    prefetching_ = u;
  } else {
    dp_.all_gather(unit.full_params, mine);
  }
}

void ZeroSharding::finish_prefetch() {
  if (!prefetching_) return;
  prefetch_.wait();
  prefetching_.reset();
}

void ZeroSharding::ensure_gathered(size_t u) {
  if (prefetching_ == u) {
    finish_prefetch();
    return;
  }
  if (units_[u].gathered) return;
  gather(u, /*in_background=*/false);
}

void ZeroSharding::prefetch(size_t u) {
  if (!prefetch_enabled_ || units_[u].gathered) return;
  // One gather in flight at a time; every rank starts and waits for them in the same order.
  finish_prefetch();
  gather(u, /*in_background=*/true);
}

void ZeroSharding::free_params(size_t u) {
  Unit& unit = units_[u];
  if (!unit.gathered) return;
  if (prefetching_ == u) finish_prefetch();
  release_storage(unit.full_params);
  unit.gathered = false;
  count_parameters(-bytes_of(unit.full_params));
}

void ZeroSharding::hold_grads(size_t u) {
  Unit& unit = units_[u];
  if (!unit.grads_held) {
    allocate_storage(unit.full_grads);
    unit.grads_held = true;
    count_gradients(bytes_of(unit.full_grads));
    torch::NoGradGuard no_grad;
    unit.full_grads.zero_();
  }
  // Autograd adds into a defined gradient in place; one reset to undefined (a
  // zero_grad(set_to_none) on the module) would send it elsewhere.
  for (size_t i : unit.params) {
    at::Tensor& p = params_[i].second;
    if (!p.grad().defined())
      p.mutable_grad() = unit.full_grads.narrow(0, offsets_[i], p.numel()).view(p.sizes());
  }
}

void ZeroSharding::progress() {
  if (reducing_) reducing_->pending.progress();
  if (prefetching_) prefetch_.progress();
}

bool ZeroSharding::needs_reduction(const Unit& unit) const {
  return stage_ == 1 ? !unit.reduced : unit.grads_held;
}

void ZeroSharding::reduce_unit(size_t u, bool in_background) {
  if (reducing_ && reducing_->unit == u) {
    finish_reduction();
    return;
  }
  Unit& unit = units_[u];
  if (!needs_reduction(unit)) return;
  // One reduction in flight at a time; every rank starts and waits for them in the same
  // order.
  finish_reduction();
  unit.reduced = true;
  Reduction reduction;
  reduction.unit = u;
  if (trainable(unit)) {
    torch::NoGradGuard no_grad;
    const bool converts = reduce_dtype_ && *reduce_dtype_ != unit.full_grads.scalar_type();
    const at::Tensor send = converts ? unit.full_grads.to(*reduce_dtype_) : unit.full_grads;
    if (stage_ == 1) {
      // Once a step, in place: this rank's chunk of the full gradients receives the sum.
      at::Tensor own = unit.full_grads.narrow(0, unit.shard_numel * dp_.rank(), unit.shard_numel);
      if (converts) {
        reduction.target = own;
        reduction.out = at::empty({unit.shard_numel}, send.options());
      } else {
        reduction.out = own;
      }
    } else {
      // Every micro-batch's sum is added into the shard.
      reduction.target = shard_grads_.narrow(0, unit.shard_offset, unit.shard_numel);
      reduction.add = true;
      reduction.out = at::empty({unit.shard_numel}, send.options());
    }
    if (in_background) {
      reduction.pending = dp_.start_reduce_scatter(reduction.out, send, ReduceOp::Sum);
      if (phase_ == Phase::Backward) ++overlapped_reductions_;
    } else {
      dp_.reduce_scatter(reduction.out, send, ReduceOp::Sum);
    }
  }
  reducing_ = std::move(reduction);
  if (!in_background) finish_reduction();
}

void ZeroSharding::finish_reduction() {
  if (!reducing_) return;
  Reduction reduction = std::move(*reducing_);
  reducing_.reset();
  reduction.pending.wait();
  Unit& unit = units_[reduction.unit];
  torch::NoGradGuard no_grad;
  if (reduction.target.defined()) {
    if (reduction.add) {
      reduction.target.add_(reduction.out);
    } else {
      reduction.target.copy_(reduction.out);
    }
  }
  if (stage_ == 1) return;  // the full gradients stay for the next step
  release_storage(unit.full_grads);
  unit.grads_held = false;
  count_gradients(-bytes_of(unit.full_grads));
}

model::BlockRunner ZeroSharding::block_runner(model::BlockRunner inner) {
  return [this, inner](size_t index, const at::Tensor& x, const model::BlockForward& block) -> at::Tensor {
    // Without blocks the root unit is the whole model, gathered by before_forward() and
    // reduced after backward.
    if (units_.size() == 1) return inner ? inner(index, x, block) : block(x);
    const size_t u = index + 1;
    if (u > num_blocks())
      throw std::out_of_range("ZeroSharding::block_runner: block " + std::to_string(index) + ", but " +
                              std::to_string(num_blocks()) + " blocks were given to the constructor");
    // In backward, a block runs only as a recomputation (activation checkpointing
    // outside this runner): its hooks free it after its own backward.
    const bool recomputing = phase_ == Phase::Backward;
    const bool gathers = stage_ == 3;
    progress();
    if (gathers) {
      // The embeddings are done with once the first block has its input.
      if (input_unit_ && u == 1 && !recomputing) free_params(*input_unit_);
      ensure_gathered(u);
      if (!recomputing && u < num_blocks()) prefetch(u + 1);
      // The root (final norm, head) runs next when the input unit is split off.
      if (!recomputing && input_unit_ && u == num_blocks()) prefetch(0);
    }

    const bool hooked = torch::GradMode::is_enabled() && (x.requires_grad() || trainable(units_[u]));
    at::Tensor input = x;
    if (hooked) input = AfterBlockBackward::apply(x, anchor_, c10::make_intrusive<ZeroBlockHooks::Owner>(*this, u));
    at::Tensor y = inner ? inner(index, input, block) : block(input);
    if (hooked && y.requires_grad())
      y = BeforeBlockBackward::apply(y, c10::make_intrusive<ZeroBlockHooks::Owner>(*this, u));
    if (gathers && !recomputing) {
      free_params(u);
      if (input_unit_ && u == num_blocks()) ensure_gathered(0);
    }
    return y;
  };
}

void ZeroSharding::before_forward() {
  if (stage_ != 3) return;
  if (input_unit_) {
    // The root is gathered at the last block, its gradients held by before_backward();
    // the input's once block 0's backward is done.
    ensure_gathered(*input_unit_);
    return;
  }
  ensure_gathered(0);
  if (torch::GradMode::is_enabled() && trainable(units_[0])) hold_grads(0);
}

void ZeroSharding::before_backward(bool completes_step) {
  if (stage_ == 1) {
    // Gradients added after a unit was reduced would be left out of the step.
    for (size_t u = 0; u < units_.size(); ++u)
      if (units_[u].reduced)
        throw std::logic_error("ZeroSharding: a backward pass after the step's gradients were reduced (unit " +
                               std::to_string(u) + "); zero_grad() comes first");
    reduce_in_backward_ = completes_step && overlap_;
  }
  phase_ = Phase::Backward;
  if (trainable(units_[0])) hold_grads(0);
}

void ZeroSharding::after_backward() {
  phase_ = Phase::Forward;
  if (stage_ == 1) {
    // The root's gradients (an embedding tied to the head) are complete only now;
    // reduce_gradients() reduces it with any block whose hook did not run.
    reduce_in_backward_ = false;
    return;
  }
  if (stage_ == 3) {
    finish_prefetch();
    if (input_unit_) {
      // Every micro-batch's input gradients are reduced now, as the blocks' were: a
      // rank holds no whole embedding between backward passes.
      reduce_unit(*input_unit_);
      free_params(*input_unit_);
    }
    finish_reduction();
    return;
  }
  // Stage 2 reduces every micro-batch completely, so between backward passes (and in
  // the next forward, when activations are largest) a rank holds only its shard's
  // gradients. What is left is the root, whose gradients (an embedding tied to the head)
  // are complete only now, and any block whose backward did not reach its hook. Every
  // rank holds the same units, as every rank runs the same model.
  for (size_t u = 0; u < units_.size(); ++u) reduce_unit(u);
  finish_reduction();
}

void ZeroSharding::release() {
  if (stage_ != 3) return;
  finish_prefetch();
  for (size_t u = 0; u < units_.size(); ++u) free_params(u);
}

void ZeroSharding::release_gradients() {
  finish_reduction();
  if (stage_ == 1) {
    for (Unit& unit : units_) {
      count_gradients(-static_cast<std::int64_t>(unit.full_grads.storage().nbytes()));
      release_storage(unit.full_grads);
    }
    return;
  }
  for (size_t u = 0; u < units_.size(); ++u) {
    if (!units_[u].grads_held) continue;
    release_storage(units_[u].full_grads);
    units_[u].grads_held = false;
    count_gradients(-bytes_of(units_[u].full_grads));
  }
  if (!shard_grads_.defined()) return;
  count_gradients(-static_cast<std::int64_t>(shard_grads_.storage().nbytes()));
  release_storage(shard_grads_);
}

// ---------------------------------------------------------------------------------
// After backward

void ZeroSharding::reduce_gradients() {
  finish_prefetch();
  // Left are the root's gradients, those of a block whose backward stopped early, and
  // at stage 1 without overlap every unit (at stage 2 after_backward() reduced them
  // already). Every rank holds the same units, as every rank runs the same model, so
  // all call the same reduce-scatters.
  for (size_t u = 0; u < units_.size(); ++u) reduce_unit(u);
  finish_reduction();
  if (stage_ == 3)
    for (size_t u = 0; u < units_.size(); ++u) free_params(u);
}

double ZeroSharding::gradient_square_sum() {
  // Each rank sums the squares of its own shard; padding is zero.
  double mine = 0;
  for (const at::Tensor& grads : own_grads_) mine += grads.to(torch::kFloat64).pow(2).sum().item<double>();
  return dp_.all_reduce(mine, ReduceOp::Sum);
}

void ZeroSharding::scale_gradients(double factor) {
  torch::NoGradGuard no_grad;
  for (const at::Tensor& grads : own_grads_) grads.mul_(factor);
}

void ZeroSharding::scale_gradients(const at::Tensor& factor) {
  torch::NoGradGuard no_grad;
  for (const at::Tensor& grads : own_grads_) grads.mul_(factor);
}

void ZeroSharding::gather_parameters() {
  if (stage_ == 3) return;  // gathered unit by unit when used
  torch::NoGradGuard no_grad;
  // Unit by unit, in place: a unit's shards are contiguous only within its own flat
  // space.
  for (Unit& unit : units_) {
    at::Tensor mine = unit.full_params.narrow(0, unit.shard_numel * dp_.rank(), unit.shard_numel);
    dp_.all_gather(unit.full_params, mine);
  }
}

void ZeroSharding::zero_grad() {
  finish_reduction();
  torch::NoGradGuard no_grad;
  if (shard_grads_.defined()) shard_grads_.zero_();
  for (Unit& unit : units_) {
    if (unit.grads_held) unit.full_grads.zero_();
    unit.reduced = false;
  }
  overlapped_reductions_ = 0;
}

// ---------------------------------------------------------------------------------
// Checkpoints

std::vector<std::pair<std::string, at::Tensor>> ZeroSharding::gather_state(
    const std::vector<at::Tensor>& slice_states) {
  if (slice_states.size() != slices_.size())
    throw std::invalid_argument("ZeroSharding::gather_state: one state tensor per local slice expected");
  torch::NoGradGuard no_grad;
  const auto options = slice_states.empty() ? params_.front().second.options().dtype(torch::kFloat32)
                                            : slice_states.front().options();
  at::Tensor shard = torch::zeros({shard_numel_}, options);
  for (size_t k = 0; k < slices_.size(); ++k)
    shard.narrow(0, slice_shard_offsets_[k], slice_states[k].numel()).copy_(slice_states[k].reshape({-1}));
  const int64_t ranks = dp_.size();
  at::Tensor full = torch::empty({shard_numel_ * ranks}, options);
  dp_.all_gather(full, shard);
  std::vector<std::pair<std::string, at::Tensor>> out;
  // (N * S) -> (N, S): rank r's shard space in row r; a unit's flat space is its
  // columns read row after row.
  const at::Tensor by_rank = full.view({ranks, shard_numel_});
  std::vector<at::Tensor> unit_flat(units_.size());
  for (size_t u = 0; u < units_.size(); ++u)
    unit_flat[u] = by_rank.narrow(1, units_[u].shard_offset, units_[u].shard_numel).reshape({-1});
  for (size_t i = 0; i < params_.size(); ++i)
    out.emplace_back(params_[i].first, unit_flat[unit_of_[i]]
                                           .narrow(0, offsets_[i], params_[i].second.numel())
                                           .view(params_[i].second.sizes()));
  return out;
}

at::Tensor ZeroSharding::gather_parameter(const std::string& name) {
  const size_t index = index_of(name, "gather_parameter");
  const at::Tensor& param = params_[index].second;
  if (stage_ != 3) return param.detach();
  torch::NoGradGuard no_grad;
  // The shards do not overlap: each element is one rank's value plus zeros.
  at::Tensor whole = shard_params_.is_cpu() ? mapped_zeros({param.numel()}, shard_params_.scalar_type())
                                            : torch::zeros({param.numel()}, shard_params_.options());
  for (const Slice& slice : slices_)
    if (slice.param_index == index) whole.narrow(0, slice.param_offset, slice.param.numel()).copy_(slice.param);
  dp_.all_reduce(whole, ReduceOp::Sum);
  return whole.view(param.sizes());
}

std::vector<at::Tensor> ZeroSharding::shard_state(const std::vector<at::Tensor>& full_states) const {
  if (full_states.size() != params_.size())
    throw std::invalid_argument("ZeroSharding::shard_state: one state tensor per parameter expected");
  std::vector<at::Tensor> out;
  for (const Slice& slice : slices_)
    out.push_back(
        full_states[slice.param_index].reshape({-1}).narrow(0, slice.param_offset, slice.param.numel()).clone());
  return out;
}

}  // namespace ftrain::dist
