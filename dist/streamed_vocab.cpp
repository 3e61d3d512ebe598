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

// Rank k's rows, on every rank: its own shard on rank k, `buffer` (filled) elsewhere.
at::Tensor rows_of(const Rows& rows, int k, at::Tensor& buffer) {
  Group& group = *rows.group;
  if (k == group.rank()) {
    at::Tensor mine = rows.shard;
    group.broadcast(mine, k);
    return mine;
  }
  if (!buffer.defined()) buffer = at::empty_like(rows.shard);
  group.broadcast(buffer, k);
  return buffer;
}

// Sums every rank's gradient of rank k's rows onto rank k's shard gradient.
void reduce_rows(const Rows& rows, int k, const at::Tensor& part) {
  Group& group = *rows.group;
  at::Tensor send = rows.reduce_dtype ? part.to(*rows.reduce_dtype) : part.to(rows.grad.scalar_type());
  group.reduce(send, k, ReduceOp::Sum);
  if (k == group.rank()) rows.grad.add_(send.to(rows.grad.scalar_type()));
}

bool head_trains(const Rows& rows) { return rows.param.requires_grad(); }

// A (0) tensor that requires grad when the matrix trains: it puts the function in the
// graph even where its tensor inputs need no gradient, since the matrix is no input.
at::Tensor anchor(const Rows& rows) {
  const bool trains = torch::GradMode::is_enabled() && head_trains(rows);
  return at::empty({0}, rows.shard.options().requires_grad(false)).requires_grad_(trains);
}

struct StreamedEmbedding : torch::autograd::Function<StreamedEmbedding> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& ids, const at::Tensor& anchor, const Rows* rows,
                            int64_t padding_idx) {
    const int64_t R = rows->rows_per_rank;
    const at::Tensor flat = ids.reshape({-1});
    at::Tensor out = at::zeros({flat.size(0), rows->cols}, rows->shard.options());
    at::Tensor buffer;
    for (int k = 0; k < rows->group->size(); ++k) {
      const at::Tensor chunk = rows_of(*rows, k, buffer);
      const at::Tensor local = flat - k * R;
      const at::Tensor mine = ((local >= 0) & (local < R)).unsqueeze(1);
      out = at::where(mine, chunk.index_select(0, local.clamp(0, R - 1)), out);
    }
    save_rows(ctx, *rows);
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->save_for_backward({ids});
    std::vector<int64_t> shape = ids.sizes().vec();
    shape.push_back(rows->cols);
    (void)anchor;
    return out.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Rows& rows = saved_rows(ctx);
    const at::Tensor flat = ctx->get_saved_variables()[0].reshape({-1});
    const int64_t padding_idx = ctx->saved_data.at("padding_idx").toInt();
    const int64_t R = rows.rows_per_rank;
    at::Tensor g = grads[0].reshape({-1, rows.cols}).to(at::kFloat);
    if (padding_idx >= 0) g = g * (flat != padding_idx).unsqueeze(1).to(g.scalar_type());
    if (head_trains(rows)) {
      torch::NoGradGuard no_grad;
      for (int k = 0; k < rows.group->size(); ++k) {
        const at::Tensor local = flat - k * R;
        const at::Tensor mine = ((local >= 0) & (local < R)).unsqueeze(1).to(g.scalar_type());
        at::Tensor part = at::zeros({R, rows.cols}, g.options());
        // Tokens of other shards add zeros (to row 0): no host-side selection.
        part.index_add_(0, local.clamp(0, R - 1), g * mine);
        reduce_rows(rows, k, part);
      }
    }
    return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The loss of every row in float32 (float64 for a float64 model), by shards of the
// vocabulary, and in backward the gradients. One pass over the shards each way.
struct StreamedCrossEntropy : torch::autograd::Function<StreamedCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& anchor,
                            const at::Tensor& targets, const at::Tensor& scale, const Rows* rows,
                            c10::ScalarType compute_dtype, int64_t ignore_index) {
    // The casts and products below are this function's own; autocast must not redo them.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t n = hidden.size(0), R = rows->rows_per_rank;
    const c10::ScalarType accumulate = compute_dtype == at::kDouble ? at::kDouble : at::kFloat;
    const auto acc = hidden.options().dtype(accumulate);
    const at::Tensor h = hidden.to(compute_dtype);
    const at::Tensor counted = targets != ignore_index;
    at::Tensor row_max = at::full({n}, -std::numeric_limits<double>::infinity(), acc);
    at::Tensor row_sum = at::zeros({n}, acc), target_logit = at::zeros({n}, acc);
    const int64_t chunk = model::cross_entropy_chunk_rows(R, 4);
    at::Tensor buffer;
    for (int k = 0; k < rows->group->size(); ++k) {
      const at::Tensor w = rows_of(*rows, k, buffer).to(compute_dtype);
      const int64_t valid = std::clamp<int64_t>(rows->rows - k * R, 0, R);
      if (valid == 0) continue;  // only padding rows: nothing to add (every rank skips alike)
      const at::Tensor local = targets - k * R;
      const at::Tensor held = counted & (local >= 0) & (local < valid);
      const at::Tensor index = local.clamp(0, valid - 1).unsqueeze(1);
      for (int64_t begin = 0; begin < n; begin += chunk) {
        const int64_t m = std::min(chunk, n - begin);
        const at::Tensor logits = at::mm(h.narrow(0, begin, m), w.narrow(0, 0, valid).t()).to(accumulate);
        at::Tensor mx = row_max.narrow(0, begin, m), sm = row_sum.narrow(0, begin, m);
        const at::Tensor new_max = at::maximum(mx, std::get<0>(logits.max(1)));
        sm.mul_((mx - new_max).exp_()).add_((logits - new_max.unsqueeze(1)).exp_().sum(1));
        mx.copy_(new_max);
        const at::Tensor picked = logits.gather(1, index.narrow(0, begin, m)).squeeze(1);
        target_logit.narrow(0, begin, m).add_(at::where(held.narrow(0, begin, m), picked, at::zeros_like(picked)));
      }
    }
    const at::Tensor log_sum = row_max + row_sum.log();
    const at::Tensor per_row = at::where(counted, log_sum - target_logit, at::zeros_like(log_sum));
    save_rows(ctx, *rows);
    ctx->saved_data["compute_dtype"] = static_cast<int64_t>(compute_dtype);
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->save_for_backward({hidden, targets, scale, log_sum});
    (void)anchor;
    return (per_row * scale).sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    torch::NoGradGuard no_grad;
    const Rows& rows = saved_rows(ctx);
    const auto compute_dtype = static_cast<c10::ScalarType>(ctx->saved_data.at("compute_dtype").toInt());
    const int64_t ignore_index = ctx->saved_data.at("ignore_index").toInt();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& hidden = saved[0];
    const at::Tensor& targets = saved[1];
    const at::Tensor& log_sum = saved[3];
    const at::Tensor row_scale = saved[2] * grads[0].to(saved[2].scalar_type());
    const int64_t n = hidden.size(0), R = rows.rows_per_rank;
    const c10::ScalarType accumulate = log_sum.scalar_type();
    const at::Tensor h = hidden.to(compute_dtype);
    const at::Tensor counted = targets != ignore_index;
    const bool wants_hidden = ctx->needs_input_grad(0), wants_head = head_trains(rows);
    at::Tensor grad_hidden = wants_hidden ? at::zeros({n, rows.cols}, hidden.options().dtype(accumulate)) : at::Tensor();
    const int64_t chunk = model::cross_entropy_chunk_rows(R, 4);
    at::Tensor buffer;
    for (int k = 0; k < rows.group->size(); ++k) {
      const at::Tensor w = rows_of(rows, k, buffer).to(compute_dtype);
      const int64_t valid = std::clamp<int64_t>(rows.rows - k * R, 0, R);
      at::Tensor part = at::zeros({R, rows.cols}, hidden.options().dtype(accumulate));
      if (valid > 0) {
        const at::Tensor local = targets - k * R;
        const at::Tensor held = counted & (local >= 0) & (local < valid);
        const at::Tensor index = local.clamp(0, valid - 1).unsqueeze(1);
        const at::Tensor wv = w.narrow(0, 0, valid);
        for (int64_t begin = 0; begin < n; begin += chunk) {
          const int64_t m = std::min(chunk, n - begin);
          const at::Tensor h_chunk = h.narrow(0, begin, m);
          // softmax - one-hot, each row times its scale
          at::Tensor d = (at::mm(h_chunk, wv.t()).to(accumulate) - log_sum.narrow(0, begin, m).unsqueeze(1)).exp_();
          d.scatter_add_(1, index.narrow(0, begin, m), -held.narrow(0, begin, m).to(accumulate).unsqueeze(1));
          d.mul_(row_scale.narrow(0, begin, m).to(accumulate).unsqueeze(1));
          const at::Tensor dc = d.to(compute_dtype);
          if (wants_hidden) grad_hidden.narrow(0, begin, m).add_(at::mm(dc, wv).to(accumulate));
          if (wants_head) part.narrow(0, 0, valid).add_(at::mm(dc.t(), h_chunk).to(accumulate));
        }
      }
      if (wants_head) reduce_rows(rows, k, part);
    }
    return {wants_hidden ? grad_hidden.to(hidden.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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

model::EmbeddingStyle streamed_embedding(const ZeroSharding::RowShards& rows, std::optional<int64_t> padding_idx) {
  const Rows* shards = &rows;
  const int64_t padding = padding_idx.value_or(-1);
  return model::EmbeddingStyle{"streamed by rows over the data-parallel group (ZeRO-3)",
                               [shards, padding](const at::Tensor& ids, const at::Tensor&) {
                                 return StreamedEmbedding::apply(ids, anchor(*shards), shards, padding);
                               }};
}

at::Tensor streamed_linear_cross_entropy_sum(const ZeroSharding::RowShards& rows, const at::Tensor& hidden,
                                             const at::Tensor& targets, const at::Tensor& row_weights,
                                             int64_t ignore_index) {
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
                                     compute_dtype, ignore_index);
}

}  // namespace ftrain::dist
