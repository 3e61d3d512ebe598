// The layers of the models that a parallel layout may change: linear layers, the
// token embedding, the points where an activation enters several linear layers or the
// blocks, and where an activation lies in the unsplit model's (for dropout).
//
// In a plain model each computes exactly what torch::nn::Linear, torch::nn::Embedding
// and the identity compute, with the same parameter names and shapes. dist/ shards
// their weights in place and sets how they compute from the shards (a "style"); the
// models never communicate themselves (see dist/tensor_parallel.h).
#pragma once

#include <torch/nn/functional/embedding.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <utility>

#include "model/dropout.h"
#include "model/logits.h"

namespace ftrain::model {

// How a linear layer computes its output from its (sharded) weight and bias:
// (..., in) -> (..., out). `name` says which layout it is, for printing.
struct LinearStyle {
  std::string name;
  std::function<torch::Tensor(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias)>
      forward;
};

// While one is alive on this thread, the Linear and Embedding layers below are built
// with uninitialised weights that are allocated but never written, so their memory is
// not committed until something writes it. For a model that is split before its
// weights are read (dist::load_tensor_parallel): the whole model is never resident,
// only the parts each process keeps. Other modules (norms, position embeddings) are
// initialised as usual. The values of such a layer are garbage until loaded.
class SkipInitialisation {
 public:
  SkipInitialisation() : previous_(active()) { active() = true; }
  ~SkipInitialisation() { active() = previous_; }
  SkipInitialisation(const SkipInitialisation&) = delete;
  SkipInitialisation& operator=(const SkipInitialisation&) = delete;

  static bool on() { return active(); }

 private:
  static bool& active() {
    thread_local bool skipping = false;
    return skipping;
  }
  bool previous_;
};

// y = x W^T + b, as torch::nn::LinearImpl (whose parameters, options and
// initialisation it keeps, so code that looks for a torch::nn::LinearImpl finds it),
// unless a style was set.
class LinearImpl : public torch::nn::LinearImpl {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  // torch::nn::LinearImpl's constructor always initialises; under SkipInitialisation it
  // gets a placeholder of no elements, and the weights of the real size are then
  // allocated without being written.
  explicit LinearImpl(const torch::nn::LinearOptions& options)
      : torch::nn::LinearImpl(SkipInitialisation::on() ? placeholder(options) : options) {
    if (!SkipInitialisation::on()) return;
    this->options = options;
    weight.set_data(torch::empty({options.out_features(), options.in_features()}));
    if (bias.defined()) bias.set_data(torch::empty({options.out_features()}));
  }

  torch::Tensor forward(const torch::Tensor& input) {
    if (style_.forward) return style_.forward(input, weight, bias);
    return torch::nn::functional::linear(input, weight, bias);
  }

  // Throws std::logic_error when a style is already set: a layer is parallelised once.
  void set_style(LinearStyle style) {
    if (style_.forward)
      throw std::logic_error("ftrain::model::Linear: already " + style_.name + ", cannot also be " + style.name);
    style_ = std::move(style);
  }
  const LinearStyle& style() const { return style_; }

  void pretty_print(std::ostream& stream) const override {
    torch::nn::LinearImpl::pretty_print(stream);
    if (style_.forward) stream << " [" << style_.name << "]";
  }

 private:
  // (0, 1) weight, and a bias of no elements if there is one.
  static torch::nn::LinearOptions placeholder(const torch::nn::LinearOptions& options) {
    return torch::nn::LinearOptions(1, 0).bias(options.bias());
  }

  LinearStyle style_;
};

// The handle the models hold, like torch::nn::Linear. Calling it runs LinearImpl's
// forward (and so its style). It also holds a plain torch::nn::Linear put in a
// layer's place with replace_module (as tests that assemble a shard by hand do), which
// computes F::linear and can take no style.
class Linear : public torch::nn::ModuleHolder<torch::nn::LinearImpl> {
 public:
  /* implicit */ Linear(std::nullptr_t) : ModuleHolder(nullptr) {}
  Linear(int64_t in_features, int64_t out_features)
      : Linear(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit Linear(const torch::nn::LinearOptions& options)
      : ModuleHolder(std::shared_ptr<torch::nn::LinearImpl>(std::make_shared<LinearImpl>(options))) {}
  // What register_module and replace_module return.
  /* implicit */ Linear(std::shared_ptr<torch::nn::LinearImpl> layer) : ModuleHolder(std::move(layer)) {}
  /* implicit */ Linear(torch::nn::ModuleHolder<torch::nn::LinearImpl> layer) : ModuleHolder(std::move(layer)) {}

  torch::Tensor operator()(const torch::Tensor& input) {
    if (LinearImpl* layer = styled()) return layer->forward(input);
    return get()->forward(input);
  }

  // The project's layer, or nullptr when a plain torch::nn::Linear stands here.
  LinearImpl* styled() const { return dynamic_cast<LinearImpl*>(ptr().get()); }
};

// How the token embedding looks rows up in its (sharded) weight: (...) int64 ids ->
// (..., C); and, for a head tied to it, how it scores hidden states against every row:
// (..., C) -> (..., V). A style without `logits` serves look-ups only.
struct EmbeddingStyle {
  std::string name;
  std::function<torch::Tensor(const torch::Tensor& ids, const torch::Tensor& weight)> forward;
  std::function<torch::Tensor(const torch::Tensor& hidden, const torch::Tensor& weight)> logits = {};
};

// A token embedding, as torch::nn::EmbeddingImpl unless a style was set.
class EmbeddingImpl : public torch::nn::EmbeddingImpl {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : EmbeddingImpl(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim)) {}
  // As LinearImpl: under SkipInitialisation the table is allocated and not written.
  explicit EmbeddingImpl(torch::nn::EmbeddingOptions options)
      : torch::nn::EmbeddingImpl(skipping(options) ? torch::nn::EmbeddingOptions(0, options.embedding_dim()) : options) {
    if (!skipping(options)) return;
    this->options = options;
    weight.set_data(torch::empty({options.num_embeddings(), options.embedding_dim()}));
  }

  torch::Tensor forward(const torch::Tensor& ids) {
    if (style_.forward) return style_.forward(ids, weight);
    return torch::nn::EmbeddingImpl::forward(ids);
  }

  // The tied head's logits: (..., C) hidden states -> (..., V), hidden W^T.
  // Throws std::logic_error when the style looks rows up but cannot score them.
  torch::Tensor logits(const torch::Tensor& hidden) {
    if (style_.logits) return style_.logits(hidden, weight);
    if (style_.forward)
      throw std::logic_error("ftrain::model::Embedding: " + style_.name + " serves look-ups only, not a tied head");
    return vocab_logits(hidden, weight);
  }

  // Throws std::logic_error when a style is already set.
  void set_style(EmbeddingStyle style) {
    if (style_.forward)
      throw std::logic_error("ftrain::model::Embedding: already " + style_.name + ", cannot also be " + style.name);
    style_ = std::move(style);
  }
  const EmbeddingStyle& style() const { return style_; }

  void pretty_print(std::ostream& stream) const override {
    torch::nn::EmbeddingImpl::pretty_print(stream);
    if (style_.forward) stream << " [" << style_.name << "]";
  }

 private:
  // A table given as options._weight is the caller's, and kept.
  static bool skipping(const torch::nn::EmbeddingOptions& options) {
    return SkipInitialisation::on() && !options._weight().defined();
  }

  EmbeddingStyle style_;
};
TORCH_MODULE(Embedding);

// Where one activation enters the linear layers that read it (the projections of an
// attention layer, the first layers of an MLP, the language-modelling head): the
// identity in a plain model. Tensor parallelism puts copy_to_tp_region here, once for
// all of those layers, so the activation's gradient is summed over the ranks once
// rather than once per layer.
struct InputHook {
  std::string name;
  std::function<torch::Tensor(const torch::Tensor&)> forward;

  torch::Tensor operator()(const torch::Tensor& x) const { return forward ? forward(x) : x; }
};

// Which part of the unsplit model's activation a module's activation is, so that its
// dropout draws that part of the whole mask (model/dropout.h): nothing in a plain model.
// Tensor parallelism says which heads an attention layer holds; sequence parallelism
// which positions of the residual stream a block holds.
struct PartHook {
  std::string name;
  std::function<SliceOf(const torch::Tensor&)> locate;

  std::optional<SliceOf> operator()(const torch::Tensor& x) const {
    if (!locate) return std::nullopt;
    return locate(x);
  }
};

}  // namespace ftrain::model
