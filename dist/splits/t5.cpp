#include "dist/splits/cutting.h"
#include "model/t5.h"

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace ftrain::dist::splits {

namespace {

TensorParallelPlan split_t5(torch::nn::Module& module, Communicator& comm, ParameterValues values) {
  model::T5 t5(std::dynamic_pointer_cast<model::T5Impl>(module.shared_from_this()));
  Group& group = comm.tp();
  const int64_t N = group.size(), r = group.rank();
  const model::T5Config& config = t5->config();
  const std::string refused = refusal("T5", group.size());
  if (config.num_heads % N != 0)
    throw std::invalid_argument(refused + "num_heads " + std::to_string(config.num_heads) + " is not a multiple of " +
                                std::to_string(N) + " (attention is split by heads)");
  if (config.d_ff % N != 0)
    throw std::invalid_argument(refused + "d_ff " + std::to_string(config.d_ff) + " is not a multiple of " +
                                std::to_string(N));
  if (comm.options().sequence_parallel)
    throw std::invalid_argument(refused + "sequence parallelism is not available for T5");
  Cutting plan = cutting_for(comm, values);
  torch::NoGradGuard no_grad;
  const int64_t heads = config.num_heads / N, width = heads * config.d_kv, hidden = config.d_ff / N;
  for (auto [stack_name, stack] : {std::pair{std::string("encoder."), t5->encoder},
                                    std::pair{std::string("decoder."), t5->decoder}}) {
    for (size_t b = 0; b < stack->block->size(); ++b) {
      auto* layers = stack->block[b]->named_children()[0].value()->as<torch::nn::ModuleList>();
      for (size_t l = 0; l < layers->size(); ++l) {
        auto& sublayer = *layers->ptr(l)->as<model::T5SublayerImpl>();
        const std::string name = stack_name + "block." + std::to_string(b) + ".layer." + std::to_string(l) + ".";
        if (sublayer.attention) {
          auto& attention = *sublayer.attention;
          const bool cross = l == 1;  // the decoder's second sublayer
          const std::string prefix = name + (cross ? "EncDecAttention." : "SelfAttention.");
          attention.input_hook = into_split_layers(plan, group);
          attention.heads_part = heads_of_rank(group);
          if (cross) attention.memory_hook = into_split_layers(plan, group);
          shard_rows(plan, attention.q, prefix + "q", r * width, width, group, {.copy_input = false});
          shard_rows(plan, attention.k, prefix + "k", r * width, width, group, {.copy_input = false});
          shard_rows(plan, attention.v, prefix + "v", r * width, width, group, {.copy_input = false});
          shard_columns(plan, attention.o, prefix + "o", r * width, width, group);
          if (attention.relative_attention_bias)
            cut(plan, prefix + "relative_attention_bias.weight", attention.relative_attention_bias->weight, 1,
                range(r * heads, heads));
        } else {
          auto& ff = *sublayer.feed_forward;
          const std::string prefix = name + "DenseReluDense.";
          ff.input_hook = into_split_layers(plan, group);
          ff.hidden_part = {"hidden units of rank " + std::to_string(r) + " of " + std::to_string(N),
                            [&group](const at::Tensor& h) {
                              return model::SliceOf{.dim = h.dim() - 1, .offset = group.rank() * h.size(-1),
                                                    .whole = group.size() * h.size(-1)};
                            }};
          for (auto [layer, what] : {std::pair{&ff.wi, "wi"}, std::pair{&ff.wi_0, "wi_0"}, std::pair{&ff.wi_1, "wi_1"}})
            if (*layer) shard_rows(plan, *layer, prefix + what, r * hidden, hidden, group, {.copy_input = false});
          shard_columns(plan, ff.wo, prefix + "wo", r * hidden, hidden, group);
        }
      }
    }
  }
  return plan.plan;
}

}  // namespace

FamilySplit t5_split() { return {"t5", nullptr, nullptr, split_t5}; }

}  // namespace ftrain::dist::splits
