#include "dist/splits/cutting.h"
#include "model/gpt2.h"

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace ftrain::dist::splits {

namespace {

// GPT-2's body (GPT2Model, registered under `prefix`, "transformer."): the blocks split
// by heads and MLP width, wte by vocabulary rows. `check_also` runs after the body's
// own checks and before anything is changed, for the parts around the body.
void split_gpt2_body(model::Gpt2TransformerImpl& body, const std::string& prefix, Group& group, Cutting& plan,
                     const std::function<void()>& check_also, GatheredFor output_reader) {
  const int64_t N = group.size(), r = group.rank();
  const model::Gpt2Config& config = body.config();
  const int64_t C = config.n_embd, inner = config.inner_dim();
  const std::string refused = refusal("GPT-2", group.size());
  if (config.n_head % N != 0)
    throw std::invalid_argument(refused + "n_head " + std::to_string(config.n_head) +
                                " is not a multiple of " + std::to_string(N) + " (attention is split by heads)");
  if (inner % N != 0)
    throw std::invalid_argument(refused + "the MLP width (n_inner) " + std::to_string(inner) +
                                " is not a multiple of " + std::to_string(N));
  check_unsharded(body.wte->weight, {config.vocab_size, C}, prefix + "wte.weight", refused);
  // Every layer is checked before any is changed.
  for (size_t i = 0; i < body.h->size(); ++i) {
    auto& block = *body.h[i]->as<model::BlockImpl>();
    const std::string layer = prefix + "h." + std::to_string(i) + ".";
    for (auto [layer_ref, name] : {std::pair{&block.attn->c_attn, "attn.c_attn"}, std::pair{&block.attn->c_proj, "attn.c_proj"},
                                   std::pair{&block.mlp->c_fc, "mlp.c_fc"}, std::pair{&block.mlp->c_proj, "mlp.c_proj"}})
      own_linear(*layer_ref, layer + name);  // throws for a layer that cannot be sharded
  }
  if (check_also) check_also();

  torch::NoGradGuard no_grad;
  const int64_t width = C / N;  // this rank's heads: n_head / N of them, head_dim each
  for (size_t i = 0; i < body.h->size(); ++i) {
    auto& block = *body.h[i]->as<model::BlockImpl>();
    const std::string layer = prefix + "h." + std::to_string(i) + ".";
    auto& attn = *block.attn;
    // c_attn (3C, C) is [queries; keys; values]: this rank's heads of each, (3C / N, C).
    {
      model::LinearImpl& impl = own_linear(attn.c_attn, layer + "attn.c_attn");
      const at::Tensor heads = at::cat({range(r * width, width), range(C + r * width, width),
                                        range(2 * C + r * width, width)});
      cut(plan, layer + "attn.c_attn.weight", impl.weight, 0, heads);
      if (impl.bias.defined()) cut(plan, layer + "attn.c_attn.bias", impl.bias, 0, heads);
      impl.options.out_features(3 * width);
      impl.set_style(column_parallel(group, {.copy_input = false}));
    }
    attn.input_hook = into_split_layers(plan, group);
    attn.heads_part = heads_of_rank(group);
    shard_columns(plan, attn.c_proj, layer + "attn.c_proj", r * width, width, group);

    auto& mlp = *block.mlp;
    mlp.input_hook = into_split_layers(plan, group);
    shard_rows(plan, mlp.c_fc, layer + "mlp.c_fc", r * (inner / N), inner / N, group, {.copy_input = false});
    shard_columns(plan, mlp.c_proj, layer + "mlp.c_proj", r * (inner / N), inner / N, group);
    if (plan.plan.sequence_parallel) {
      attn.residual_part = positions_of_rank(group);
      mlp.residual_part = positions_of_rank(group);
      sum_gradients_over_sequence(block, layer, plan, group);
    }
  }
  split_body_ends(plan, body, body.wte, prefix + "wte", config.vocab_size, *body.ln_f, prefix + "ln_f.", group,
                  output_reader);
}

}  // namespace

FamilySplit gpt2_split() {
  return {"gpt2", split_lm<model::Gpt2>, split_decoder_body<model::Gpt2TransformerImpl, split_gpt2_body>};
}

}  // namespace ftrain::dist::splits

namespace ftrain::dist {

TensorParallelPlan apply_tensor_parallel(model::Gpt2& model, Communicator& comm, ParameterValues values) {
  return splits::split_language_model(model, *model->transformer, "transformer.", comm, values, splits::split_gpt2_body);
}

}  // namespace ftrain::dist
