#include "dist/streamed_vocab.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "model/fused_cross_entropy.h"
#include "model/transformer_body.h"

namespace ftrain::dist {

namespace {

using Rows = ZeroSharding::RowShards;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Autograd keeps only IValues in saved_data; the rows live as long as the sharding.
void save_rows(AutogradContext* ctx, const Rows& rows) {
  ctx->saved_data["rows"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(&rows));
}
const Rows& saved_rows(AutogradContext* ctx) {
  return *reinterpret_cast<const Rows*>(static_cast<intptr_t>(ctx->saved_data.at("rows").toInt()));
}

bool trains(const Rows& rows) { return rows.param.requires_grad(); }

// A (0) tensor that requires grad when the matrix trains: it puts the function in the
// graph even where its tensor inputs need no gradient, since the matrix is no input.
at::Tensor anchor(const Rows& rows) {
  const bool wanted = torch::GradMode::is_enabled() && trains(rows);
  return at::empty({0}, rows.shard.options().requires_grad(false)).requires_grad_(wanted);
}

// Window w of the matrix: local rows [w Rw, w Rw + Rw) of every owner's R rows, N Rw rows
// in all, owner k's at [k Rw, k Rw + Rw). Its row (k, j) is vocabulary id
// k R + w Rw + j, a real row when w Rw + j < R and that id < V.
struct Windows {
  int64_t count = 1;  // W
  int64_t rows = 0;   // Rw, rows per owner and window (the last window's may pass R: padding)

  Windows(const Rows& r, int64_t window_bytes) {
    if (window_bytes <= 0) window_bytes = r.window_bytes;
    const int64_t ranks = r.group->size(), R = r.rows_per_rank;
    const int64_t bytes = ranks * R * r.cols * static_cast<int64_t>(r.shard.element_size());
    count = std::clamp<int64_t>((bytes + window_bytes - 1) / std::max<int64_t>(1, window_bytes), 1, R);
    rows = (R + count - 1) / count;
  }

  // Window w of every owner, on every rank (an all-gather): (N Rw, C).
  at::Tensor gather(const Rows& r, int64_t w) const {
    at::Tensor mine = own_part(r.shard, r, w);
    at::Tensor out = at::empty({r.group->size() * rows, r.cols}, r.shard.options());
    r.group->all_gather(out, mine);
    return out;
  }

  // Sums every rank's gradient of window w (N Rw, C) over ranks and adds each owner's
  // part into its shard's gradient (a reduce-scatter).
  void reduce(const Rows& r, int64_t w, const at::Tensor& part) const {
    const at::Tensor send = part.to(r.reduce_dtype.value_or(r.grad.scalar_type())).contiguous();
    at::Tensor mine = at::empty({rows, r.cols}, send.options());
    r.group->reduce_scatter(mine, send, ReduceOp::Sum);
    const int64_t valid = real_rows(r, w);
    r.grad.narrow(0, w * rows, valid).add_(mine.narrow(0, 0, valid).to(r.grad.scalar_type()));
  }

  // Rows of window w inside a shard of R rows.
  int64_t real_rows(const Rows& r, int64_t w) const { return std::min(rows, r.rows_per_rank - w * rows); }

  // This rank's part of window w of `shard` (R, C): a view, or a padded copy for a last
  // window shorter than Rw.
  at::Tensor own_part(const at::Tensor& shard, const Rows& r, int64_t w) const {
    const int64_t valid = real_rows(r, w);
    if (valid == rows) return shard.narrow(0, w * rows, rows);
    at::Tensor padded = at::zeros({rows, r.cols}, shard.options());
    padded.narrow(0, 0, valid).copy_(shard.narrow(0, w * rows, valid));
    return padded;
  }

  // For vocabulary ids `ids`: whether window w holds them, and their row in it (0 where
  // it does not).
  std::pair<at::Tensor, at::Tensor> locate(const Rows& r, int64_t w, const at::Tensor& ids) const {
    const int64_t R = r.rows_per_rank;
    const at::Tensor owner = at::div(ids, R, "floor");
    const at::Tensor local = ids - owner * R - w * rows;
    const at::Tensor held = (local >= 0) & (local < rows);
    return {held, at::where(held, owner * rows + local, at::zeros_like(local))};
  }

  // Whether each row of window w is a real vocabulary row: (N Rw) bool.
  at::Tensor real(const Rows& r, int64_t w, const at::TensorOptions& options) const {
    const at::Tensor index = at::arange(r.group->size() * rows, options.dtype(at::kLong));
    const at::Tensor j = index.remainder(rows), owner = at::div(index, rows, "floor");
    return (w * rows + j < r.rows_per_rank) & (owner * r.rows_per_rank + w * rows + j < r.rows);
  }
};

struct StreamedEmbedding : torch::autograd::Function<StreamedEmbedding> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& ids, const at::Tensor& anchor, const Rows* rows,
                            int64_t padding_idx, int64_t window_bytes) {
    const Windows windows(*rows, window_bytes);
    const at::Tensor flat = ids.reshape({-1});
    at::Tensor out = at::zeros({flat.size(0), rows->cols}, rows->shard.options());
    for (int64_t w = 0; w < windows.count; ++w) {
      const at::Tensor window = windows.gather(*rows, w);
      const auto [held, index] = windows.locate(*rows, w, flat);
      out = at::where(held.unsqueeze(1), window.index_select(0, index), out);
    }
    save_rows(ctx, *rows);
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["window_bytes"] = window_bytes;
    ctx->save_for_backward({ids});
    std::vector<int64_t> shape = ids.sizes().vec();
    shape.push_back(rows->cols);
    (void)anchor;
    return out.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Rows& rows = saved_rows(ctx);
    if (trains(rows)) {
      torch::NoGradGuard no_grad;
      const Windows windows(rows, ctx->saved_data.at("window_bytes").toInt());
      const at::Tensor flat = ctx->get_saved_variables()[0].reshape({-1});
      const int64_t padding_idx = ctx->saved_data.at("padding_idx").toInt();
      at::Tensor g = grads[0].reshape({-1, rows.cols}).to(at::kFloat);
      if (padding_idx >= 0) g = g * (flat != padding_idx).unsqueeze(1).to(g.scalar_type());
      for (int64_t w = 0; w < windows.count; ++w) {
        const auto [held, index] = windows.locate(rows, w, flat);
        at::Tensor part = at::zeros({rows.group->size() * windows.rows, rows.cols}, g.options());
        // Tokens of other windows add zeros (to row 0): no host-side selection.
        part.index_add_(0, index, g * held.unsqueeze(1).to(g.scalar_type()));
        windows.reduce(rows, w, part);
      }
    }
    return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The loss of every row in float32 (float64 for a float64 model), window by window, and
// in backward the gradients: one pass over the windows each way.
struct StreamedCrossEntropy : torch::autograd::Function<StreamedCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& anchor,
                            const at::Tensor& targets, const at::Tensor& scale, const Rows* rows,
                            c10::ScalarType compute_dtype, int64_t ignore_index, int64_t window_bytes) {
    // The casts and products below are this function's own; autocast must not redo them.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const Windows windows(*rows, window_bytes);
    const int64_t n = hidden.size(0);
    const c10::ScalarType accumulate = compute_dtype == at::kDouble ? at::kDouble : at::kFloat;
    const auto acc = hidden.options().dtype(accumulate);
    const at::Tensor h = hidden.to(compute_dtype);
    const at::Tensor counted = targets != ignore_index;
    const at::Tensor safe_targets = at::where(counted, targets, at::zeros_like(targets));
    at::Tensor row_max = at::full({n}, -std::numeric_limits<double>::infinity(), acc);
    at::Tensor row_sum = at::zeros({n}, acc), target_logit = at::zeros({n}, acc);
    const int64_t chunk = model::cross_entropy_chunk_rows(rows->group->size() * windows.rows, 4);
    for (int64_t w = 0; w < windows.count; ++w) {
      const at::Tensor weight = windows.gather(*rows, w).to(compute_dtype);
      const at::Tensor padding = ~windows.real(*rows, w, hidden.options());
      auto [held, index] = windows.locate(*rows, w, safe_targets);
      held = held & counted;
      for (int64_t begin = 0; begin < n; begin += chunk) {
        const int64_t m = std::min(chunk, n - begin);
        const at::Tensor logits = at::mm(h.narrow(0, begin, m), weight.t())
                                      .to(accumulate)
                                      .masked_fill_(padding, -std::numeric_limits<double>::infinity());
        at::Tensor mx = row_max.narrow(0, begin, m), sm = row_sum.narrow(0, begin, m);
        const at::Tensor new_max = at::maximum(mx, std::get<0>(logits.max(1)));
        sm.mul_((mx - new_max).exp_()).add_((logits - new_max.unsqueeze(1)).exp_().sum(1));
        mx.copy_(new_max);
        const at::Tensor picked = logits.gather(1, index.narrow(0, begin, m).unsqueeze(1)).squeeze(1);
        target_logit.narrow(0, begin, m).add_(at::where(held.narrow(0, begin, m), picked, at::zeros_like(picked)));
      }
    }
    const at::Tensor log_sum = row_max + row_sum.log();
    const at::Tensor per_row = at::where(counted, log_sum - target_logit, at::zeros_like(log_sum));
    save_rows(ctx, *rows);
    ctx->saved_data["compute_dtype"] = static_cast<int64_t>(compute_dtype);
    ctx->saved_data["window_bytes"] = window_bytes;
    ctx->save_for_backward({hidden, safe_targets, counted, scale, log_sum});
    (void)anchor;
    return (per_row * scale).sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    torch::NoGradGuard no_grad;
    const Rows& rows = saved_rows(ctx);
    const Windows windows(rows, ctx->saved_data.at("window_bytes").toInt());
    const auto compute_dtype = static_cast<c10::ScalarType>(ctx->saved_data.at("compute_dtype").toInt());
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &targets = saved[1], &counted = saved[2], &log_sum = saved[4];
    const at::Tensor row_scale = saved[3] * grads[0].to(saved[3].scalar_type());
    const int64_t n = hidden.size(0), window_rows = rows.group->size() * windows.rows;
    const c10::ScalarType accumulate = log_sum.scalar_type();
    const at::Tensor h = hidden.to(compute_dtype);
    const bool wants_hidden = ctx->needs_input_grad(0), wants_head = trains(rows);
    at::Tensor grad_hidden = wants_hidden ? at::zeros({n, rows.cols}, hidden.options().dtype(accumulate)) : at::Tensor();
    const int64_t chunk = model::cross_entropy_chunk_rows(window_rows, 4);
    for (int64_t w = 0; w < windows.count; ++w) {
      const at::Tensor weight = windows.gather(rows, w).to(compute_dtype);
      const at::Tensor padding = ~windows.real(rows, w, hidden.options());
      auto [held, index] = windows.locate(rows, w, targets);
      held = held & counted;
      at::Tensor part = wants_head ? at::zeros({window_rows, rows.cols}, hidden.options().dtype(accumulate))
                                   : at::Tensor();
      for (int64_t begin = 0; begin < n; begin += chunk) {
        const int64_t m = std::min(chunk, n - begin);
        const at::Tensor h_chunk = h.narrow(0, begin, m);
        // softmax - one-hot, each row times its scale; padding rows' probabilities are 0
        at::Tensor d = (at::mm(h_chunk, weight.t()).to(accumulate) - log_sum.narrow(0, begin, m).unsqueeze(1))
                           .exp_()
                           .masked_fill_(padding, 0.0);
        d.scatter_add_(1, index.narrow(0, begin, m).unsqueeze(1),
                       -held.narrow(0, begin, m).to(accumulate).unsqueeze(1));
        d.mul_(row_scale.narrow(0, begin, m).to(accumulate).unsqueeze(1));
        const at::Tensor dc = d.to(compute_dtype);
        if (wants_hidden) grad_hidden.narrow(0, begin, m).add_(at::mm(dc, weight).to(accumulate));
        if (wants_head) part.add_(at::mm(dc.t(), h_chunk).to(accumulate));
      }
      if (wants_head) windows.reduce(rows, w, part);
    }
    return {wants_hidden ? grad_hidden.to(hidden.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

ZeroUnitNames zero3_unit_names(torch::nn::Module& root, const std::string& head_weight_name, bool ties_embeddings,
                               int tp_size) {
  ZeroUnitNames names;
  if (tp_size == 1)
    if (const auto embedding = model::token_embedding(root)) {
      names.vocabulary.push_back(embedding->weight_name);
      if (!head_weight_name.empty() && head_weight_name != embedding->weight_name)
        names.vocabulary.push_back(head_weight_name);
    }
  if (!ties_embeddings || !names.vocabulary.empty()) names.input = model::input_parameter_names(root);
  return names;
}

ZeroUnitNames zero3_seq2seq_unit_names(torch::nn::Module& root, const std::string& head_weight_name) {
  // Tensor parallelism splits T5's blocks only: its embedding and head are whole in
  // every tensor-parallel part, so they stream whatever the layout.
  ZeroUnitNames names = zero3_unit_names(root, head_weight_name, /*ties_embeddings=*/true, /*tp_size=*/1);
  names.input.clear();  // the decoder reads the embedding after the encoder's blocks
  return names;
}

model::EmbeddingStyle streamed_embedding(const ZeroSharding::RowShards& rows, std::optional<int64_t> padding_idx,
                                         int64_t window_bytes) {
  const Rows* shards = &rows;
  const int64_t padding = padding_idx.value_or(-1);
  return model::EmbeddingStyle{"streamed by rows over the data-parallel group (ZeRO-3)",
                               [shards, padding, window_bytes](const at::Tensor& ids, const at::Tensor&) {
                                 return StreamedEmbedding::apply(ids, anchor(*shards), shards, padding, window_bytes);
                               },
                               [shards, window_bytes](const at::Tensor& hidden, const at::Tensor&) {
                                 return streamed_logits(*shards, hidden, window_bytes);
                               }};
}

at::Tensor streamed_logits(const ZeroSharding::RowShards& rows, const at::Tensor& hidden, int64_t window_bytes) {
  if (!hidden.defined() || hidden.dim() < 1 || hidden.size(-1) != rows.cols)
    throw std::invalid_argument("streamed_logits: hidden (..., " + std::to_string(rows.cols) + ") expected for '" +
                                rows.name + "', got " +
                                (hidden.defined() ? c10::str(hidden.sizes()) : std::string("undefined")));
  if (torch::GradMode::is_enabled() && (hidden.requires_grad() || trains(rows)))
    throw std::logic_error("streamed_logits: the logits of '" + rows.name +
                           "' have no gradient; a loss streams the head (streamed_linear_cross_entropy_sum)");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const c10::DeviceType device = hidden.device().type();
  const c10::ScalarType compute_dtype =
      at::autocast::is_autocast_enabled(device) ? at::autocast::get_autocast_dtype(device) : rows.shard.scalar_type();
  const Windows windows(rows, window_bytes);
  const at::Tensor h = hidden.reshape({-1, rows.cols}).to(compute_dtype);
  at::Tensor out = at::empty({h.size(0), rows.rows}, h.options());
  for (int64_t w = 0; w < windows.count; ++w) {
    const at::Tensor weight = windows.gather(rows, w).to(compute_dtype);
    // Window row k Rw + j is vocabulary id k R + w Rw + j (dropped where it is padding).
    const at::Tensor index = at::arange(weight.size(0), hidden.options().dtype(at::kLong));
    const at::Tensor ids = at::div(index, windows.rows, "floor") * rows.rows_per_rank + w * windows.rows +
                           index.remainder(windows.rows);
    const at::Tensor real = windows.real(rows, w, hidden.options());
    out.index_copy_(1, ids.masked_select(real), at::mm(h, weight.index_select(0, index.masked_select(real)).t()));
  }
  std::vector<int64_t> shape = hidden.sizes().vec();
  shape.back() = rows.rows;
  return out.view(shape);
}

model::LinearStyle streamed_head(const ZeroSharding::RowShards& rows) {
  const Rows* shards = &rows;
  return model::LinearStyle{"streamed by rows over the data-parallel group (ZeRO-3)",
                            [shards](const at::Tensor& input, const at::Tensor&, const at::Tensor& bias) {
                              if (bias.defined() && bias.numel() > 0)
                                throw std::logic_error("streamed_head: '" + shards->name + "' has a bias");
                              return streamed_logits(*shards, input);
                            }};
}

bool stream_head(torch::nn::Module& root, const ZeroSharding::RowShards& rows) {
  for (const auto& module : root.modules())
    if (auto* layer = dynamic_cast<model::LinearImpl*>(module.get()); layer && layer->weight.is_same(rows.param)) {
      layer->set_style(streamed_head(rows));
      return true;
    }
  return false;
}

at::Tensor streamed_linear_cross_entropy_sum(const ZeroSharding::RowShards& rows, const at::Tensor& hidden,
                                             const at::Tensor& targets, const at::Tensor& row_weights,
                                             int64_t ignore_index, int64_t window_bytes) {
  if (!hidden.defined() || hidden.dim() != 2 || hidden.size(1) != rows.cols)
    throw std::invalid_argument("streamed_linear_cross_entropy_sum: hidden (N, " + std::to_string(rows.cols) +
                                ") expected for '" + rows.name + "', got " +
                                (hidden.defined() ? c10::str(hidden.sizes()) : std::string("undefined")));
  if (!targets.defined() || targets.scalar_type() != at::kLong || targets.dim() != 1 ||
      targets.size(0) != hidden.size(0))
    throw std::invalid_argument("streamed_linear_cross_entropy_sum: targets must be int64 of shape (" +
                                std::to_string(hidden.size(0)) + ")");
  if (row_weights.defined() && row_weights.sizes() != targets.sizes())
    throw std::invalid_argument("streamed_linear_cross_entropy_sum: row_weights must have the targets' shape");
  if (targets.is_cpu()) {
    const at::Tensor bad = (targets != ignore_index) & ((targets < 0) | (targets >= rows.rows));
    if (bad.any().item<bool>())
      throw std::invalid_argument("streamed_linear_cross_entropy_sum: a target is outside [0, " +
                                  std::to_string(rows.rows) + ") and is not ignore_index " +
                                  std::to_string(ignore_index));
  }
  const c10::DeviceType device = hidden.device().type();
  const c10::ScalarType compute_dtype =
      at::autocast::is_autocast_enabled(device) ? at::autocast::get_autocast_dtype(device) : rows.shard.scalar_type();
  const c10::ScalarType accumulate = compute_dtype == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor counted = (targets != ignore_index).to(accumulate);
  const at::Tensor scale = row_weights.defined() ? row_weights.to(accumulate) * counted : counted;
  return StreamedCrossEntropy::apply(hidden, anchor(rows), targets, scale, &rows,
                                     compute_dtype, ignore_index, window_bytes);
}

}  // namespace ftrain::dist
