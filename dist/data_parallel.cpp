#include "dist/data_parallel.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <stdexcept>

#include "dist/grad_reducer.h"
#include "dist/zero.h"

namespace ftrain::dist {
namespace {

// Every rank holds everything; the gradients are all-reduced in buckets.
class ReplicatedDataParallel final : public DataParallel {
 public:
  ReplicatedDataParallel(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp,
                         const DataParallelOptions& options)
      : overlap_(options.overlap) {
    std::vector<at::Tensor> params;
    for (auto& [name, param] : named_params) {
      slices_.push_back(LocalSlice{name, param, {}, 0, param.sizes().vec(), param.dim() >= 2});
      params.push_back(param);
    }
    if (dp.size() > 1)
      reducer_ = std::make_unique<GradientReducer>(std::move(params), dp, options.bucket_bytes, options.reduce_dtype);
  }

  const std::vector<LocalSlice>& local_slices() const override { return slices_; }
  bool shards_state() const override { return false; }

  void before_backward(bool completes_step) override {
    // The last micro-batch's backward completes the gradients: reduce them as they come.
    armed_ = reducer_ && overlap_ && completes_step;
    if (armed_) reducer_->arm(ReduceOp::Sum);
  }

  void finish_gradients() override {
    if (!reducer_) return;
    if (armed_) reducer_->finish();
    else reducer_->reduce(ReduceOp::Sum);
    armed_ = false;
  }

  std::vector<std::pair<std::string, at::Tensor>> gradients() override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (LocalSlice& slice : slices_)
      if (slice.param.grad().defined()) out.emplace_back(slice.name, slice.param.mutable_grad());
    return out;
  }

  void scale_gradients(double factor) override {
    torch::NoGradGuard no_grad;
    if (auto grads = gradient_tensors(); !grads.empty()) at::_foreach_mul_(grads, factor);
  }
  void scale_gradients(const at::Tensor& factor) override {
    torch::NoGradGuard no_grad;
    if (auto grads = gradient_tensors(); !grads.empty()) at::_foreach_mul_(grads, factor);
  }

  void after_step() override {
    torch::NoGradGuard no_grad;
    if (auto grads = gradient_tensors(); !grads.empty()) at::_foreach_zero_(grads);
  }

  at::Tensor whole_parameter(const std::string& name) override {
    auto found = std::find_if(slices_.begin(), slices_.end(), [&](const LocalSlice& s) { return s.name == name; });
    if (found == slices_.end()) throw std::invalid_argument("data parallelism: no parameter '" + name + "'");
    return found->param.detach();
  }

  HeldBytes peak_held_bytes() const override {
    HeldBytes held;
    for (const LocalSlice& slice : slices_) held.parameters += slice.param.nbytes();
    held.gradients = held.parameters + (reducer_ ? static_cast<int64_t>(reducer_->total_bucket_bytes()) : 0);
    return held;
  }

 private:
  std::vector<at::Tensor> gradient_tensors() {
    std::vector<at::Tensor> grads;
    for (auto& [name, grad] : gradients()) grads.push_back(grad);
    return grads;
  }

  std::vector<LocalSlice> slices_;
  std::unique_ptr<GradientReducer> reducer_;  // none on one data-parallel rank
  bool overlap_ = true;
  bool armed_ = false;  // this step's reduction runs during its last backward
};

// ZeRO stages 1-3 over the data-parallel group.
class ShardedDataParallel final : public DataParallel {
 public:
  // `named_params`: the model's, as given to `zero`.
  ShardedDataParallel(std::unique_ptr<ZeroSharding> zero, const std::vector<std::pair<std::string, at::Tensor>>& named_params,
                      const DataParallelOptions& options)
      : zero_(std::move(zero)) {
    zero_->set_reduce_dtype(options.reduce_dtype);
    zero_->set_overlap(options.overlap);
    zero_->set_prefetch(options.prefetch);
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& [name, param] : named_params) shapes[name] = param.sizes().vec();
    for (const ZeroSharding::Slice& slice : zero_->local_slices())
      slices_.push_back(LocalSlice{slice.name, slice.param, slice.grad, slice.param_offset, shapes.at(slice.name),
                                   slice.is_matrix});
  }

  const std::vector<LocalSlice>& local_slices() const override { return slices_; }
  bool shards_state() const override { return true; }
  bool parameters_resident() const override { return zero_->stage() != 3; }

  model::BlockRunner block_runner(model::BlockRunner inner) override { return zero_->block_runner(std::move(inner)); }
  void before_forward() override { zero_->before_forward(); }
  void before_backward(bool completes_step) override { zero_->before_backward(completes_step); }
  void after_backward() override { zero_->after_backward(); }
  void finish_gradients() override { zero_->reduce_gradients(); }

  std::vector<std::pair<std::string, at::Tensor>> gradients() override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const LocalSlice& slice : slices_) out.emplace_back(slice.name, slice.grad);
    return out;
  }

  void scale_gradients(double factor) override { zero_->scale_gradients(factor); }
  void scale_gradients(const at::Tensor& factor) override { zero_->scale_gradients(factor); }

  void after_step() override {
    zero_->gather_parameters();
    zero_->zero_grad();
  }
  void after_evaluation() override { zero_->release(); }
  void after_load() override { zero_->gather_parameters(); }
  void release_gradients() override { zero_->release_gradients(); }
  at::Tensor whole_parameter(const std::string& name) override { return zero_->gather_parameter(name); }
  const ZeroSharding::RowShards* vocabulary_rows(const std::string& name) const override {
    return zero_->row_shards(name);
  }

  HeldBytes peak_held_bytes() const override {
    return HeldBytes{zero_->peak_parameter_bytes(), zero_->peak_gradient_bytes()};
  }

 private:
  std::unique_ptr<ZeroSharding> zero_;
  std::vector<LocalSlice> slices_;
};

}  // namespace

std::unique_ptr<DataParallel> make_data_parallel(std::vector<std::pair<std::string, at::Tensor>> named_params,
                                                 Group& dp, const DataParallelOptions& options,
                                                 std::vector<std::vector<std::string>> block_param_names,
                                                 std::vector<std::string> input_param_names,
                                                 std::vector<std::string> vocabulary_param_names,
                                                 std::unique_ptr<ZeroSharding> loaded) {
  if (options.zero < 0 || options.zero > 3)
    throw std::invalid_argument("dist.zero = " + std::to_string(options.zero) + ": expected 0, 1, 2 or 3");
  if (loaded && options.zero != 3)
    throw std::logic_error("a model read straight into ZeRO shards needs dist.zero = 3");
  if (options.zero == 0) return std::make_unique<ReplicatedDataParallel>(std::move(named_params), dp, options);
  if (!loaded)
    // Parameters and gradients move into flat buffers, one per block; this rank's
    // optimizer sees only the slices of its shard.
    loaded = std::make_unique<ZeroSharding>(named_params, dp, options.zero, std::move(block_param_names),
                                            std::move(input_param_names), std::move(vocabulary_param_names));
  return std::make_unique<ShardedDataParallel>(std::move(loaded), named_params, options);
}

}  // namespace ftrain::dist
