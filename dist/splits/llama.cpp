#include "dist/splits/cutting.h"
#include "model/llama.h"

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace ftrain::dist::splits {

namespace {

// The Llama family's body (LlamaModel, registered under `prefix`, "model."), as
// split_gpt2_body.
void split_llama_body(model::LlamaModelImpl& body, const std::string& prefix, Group& group, Cutting& plan,
                      const std::function<void()>& check_also, GatheredFor output_reader) {
  const int64_t N = group.size(), r = group.rank();
  const model::LlamaConfig& config = body.config();
  const int64_t heads = config.num_attention_heads, kv_heads = config.num_key_value_heads;
  const int64_t hs = config.head_size(), inner = config.intermediate_size;
  const std::string refused = refusal(config.model_type, group.size());
  if (heads % N != 0)
    throw std::invalid_argument(refused + "num_attention_heads " + std::to_string(heads) + " is not a multiple of " +
                                std::to_string(N) + " (attention is split by heads)");
  if (kv_heads % N != 0 && N % kv_heads != 0)
    throw std::invalid_argument(refused + "num_key_value_heads " + std::to_string(kv_heads) +
                                " is neither a multiple nor a divisor of " + std::to_string(N) +
                                " (key/value heads are split, or each rank keeps the one its query heads use)");
  if (inner % N != 0)
    throw std::invalid_argument(refused + "intermediate_size " + std::to_string(inner) + " is not a multiple of " +
                                std::to_string(N));
  check_unsharded(body.embed_tokens->weight, {config.vocab_size, config.hidden_size}, prefix + "embed_tokens.weight",
                  refused);
  // Every layer is checked before any is changed.
  for (size_t i = 0; i < body.layers->size(); ++i) {
    auto& block = *body.layers[i]->as<model::LlamaBlockImpl>();
    const std::string layer = prefix + "layers." + std::to_string(i) + ".";
    for (auto [layer_ref, name] : {std::pair{&block.self_attn->q_proj, "self_attn.q_proj"},
                                   std::pair{&block.self_attn->k_proj, "self_attn.k_proj"},
                                   std::pair{&block.self_attn->v_proj, "self_attn.v_proj"},
                                   std::pair{&block.self_attn->o_proj, "self_attn.o_proj"},
                                   std::pair{&block.mlp->gate_proj, "mlp.gate_proj"},
                                   std::pair{&block.mlp->up_proj, "mlp.up_proj"},
                                   std::pair{&block.mlp->down_proj, "mlp.down_proj"}})
      own_linear(*layer_ref, layer + name);
  }
  if (check_also) check_also();

  // Rank r computes query heads [r nh / N, (r + 1) nh / N). Query head j reads key/value
  // head j / (nh / nkv), so r's key/value heads are [r nkv / N, (r + 1) nkv / N) when N
  // divides nkv, else the single head r / (N / nkv), which N / nkv ranks share.
  const int64_t q_heads = heads / N;
  const int64_t local_kv_heads = kv_heads % N == 0 ? kv_heads / N : 1;
  const int64_t first_kv_head = kv_heads % N == 0 ? r * local_kv_heads : r / (N / kv_heads);
  const int replicas = kv_heads % N == 0 ? 1 : static_cast<int>(N / kv_heads);

  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < body.layers->size(); ++i) {
    auto& block = *body.layers[i]->as<model::LlamaBlockImpl>();
    const std::string layer = prefix + "layers." + std::to_string(i) + ".";
    auto& attn = *block.self_attn;
    attn.input_hook = into_split_layers(plan, group);
    attn.heads_part = heads_of_rank(group);
    shard_rows(plan, attn.q_proj, layer + "self_attn.q_proj", r * q_heads * hs, q_heads * hs, group, {.copy_input = false});
    const ColumnParallelOptions kv = {.copy_input = false, .replicas = replicas};
    shard_rows(plan, attn.k_proj, layer + "self_attn.k_proj", first_kv_head * hs, local_kv_heads * hs, group, kv);
    shard_rows(plan, attn.v_proj, layer + "self_attn.v_proj", first_kv_head * hs, local_kv_heads * hs, group, kv);
    shard_columns(plan, attn.o_proj, layer + "self_attn.o_proj", r * q_heads * hs, q_heads * hs, group);

    auto& mlp = *block.mlp;
    mlp.input_hook = into_split_layers(plan, group);
    shard_rows(plan, mlp.gate_proj, layer + "mlp.gate_proj", r * (inner / N), inner / N, group, {.copy_input = false});
    shard_rows(plan, mlp.up_proj, layer + "mlp.up_proj", r * (inner / N), inner / N, group, {.copy_input = false});
    shard_columns(plan, mlp.down_proj, layer + "mlp.down_proj", r * (inner / N), inner / N, group);
    if (plan.plan.sequence_parallel) sum_gradients_over_sequence(block, layer, plan, group);
  }
  split_body_ends(plan, body, body.embed_tokens, prefix + "embed_tokens", config.vocab_size, *body.norm,
                  prefix + "norm.", group, output_reader);
}

}  // namespace

FamilySplit llama_split() {
  return {"llama", split_lm<model::Llama>, split_decoder_body<model::LlamaModelImpl, split_llama_body>};
}

}  // namespace ftrain::dist::splits

namespace ftrain::dist {

TensorParallelPlan apply_tensor_parallel(model::Llama& model, Communicator& comm, ParameterValues values) {
  return splits::split_language_model(model, *model->model, "model.", comm, values, splits::split_llama_body);
}

}  // namespace ftrain::dist
