#include "dist/splits/cutting.h"
#include "model/bert.h"

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace ftrain::dist::splits {

namespace {

// BERT's encoder, as apply_tensor_parallel(model::Bert&, ...) describes it.
TensorParallelPlan split_bert(model::Bert& model, Communicator& comm, const std::string& prefix, ParameterValues values) {
  Group& group = comm.tp();
  const int64_t N = group.size(), r = group.rank();
  const model::BertConfig& config = model->config();
  const int64_t C = config.hidden_size, inner = config.intermediate_size;
  const std::string refused = refusal("BERT", group.size());
  if (config.num_attention_heads % N != 0)
    throw std::invalid_argument(refused + "num_attention_heads " + std::to_string(config.num_attention_heads) +
                                " is not a multiple of " + std::to_string(N) + " (attention is split by heads)");
  if (inner % N != 0)
    throw std::invalid_argument(refused + "intermediate_size " + std::to_string(inner) + " is not a multiple of " +
                                std::to_string(N));
  check_unsharded(model->embeddings->word_embeddings->weight, {config.vocab_size, C},
                  prefix + "embeddings.word_embeddings.weight", refused);
  for (size_t i = 0; i < model->encoder->layer->size(); ++i) {
    auto& layer = *model->encoder->layer[i]->as<model::BertLayerImpl>();
    const std::string name = prefix + "encoder.layer." + std::to_string(i) + ".";
    auto& self = *layer.attention->self;
    for (auto [layer_ref, what] : {std::pair{&self.query, "attention.self.query"}, std::pair{&self.key, "attention.self.key"},
                                   std::pair{&self.value, "attention.self.value"},
                                   std::pair{&layer.attention->output->dense, "attention.output.dense"},
                                   std::pair{&layer.intermediate->dense, "intermediate.dense"},
                                   std::pair{&layer.output->dense, "output.dense"}})
      own_linear(*layer_ref, name + what);
  }

  Cutting plan = cutting_for(comm, values);
  const bool sequence = plan.plan.sequence_parallel;
  torch::NoGradGuard no_grad;
  const int64_t width = C / N;  // this rank's heads
  for (size_t i = 0; i < model->encoder->layer->size(); ++i) {
    auto& layer = *model->encoder->layer[i]->as<model::BertLayerImpl>();
    const std::string name = prefix + "encoder.layer." + std::to_string(i) + ".";
    auto& self = *layer.attention->self;
    self.input_hook = into_split_layers(plan, group);
    self.heads_part = heads_of_rank(group);
    shard_rows(plan, self.query, name + "attention.self.query", r * width, width, group, {.copy_input = false});
    shard_rows(plan, self.key, name + "attention.self.key", r * width, width, group, {.copy_input = false});
    shard_rows(plan, self.value, name + "attention.self.value", r * width, width, group, {.copy_input = false});
    shard_columns(plan, layer.attention->output->dense, name + "attention.output.dense", r * width, width, group);
    shard_rows(plan, layer.intermediate->dense, name + "intermediate.dense", r * (inner / N), inner / N, group,
               {.sequence_parallel = sequence});
    shard_columns(plan, layer.output->dense, name + "output.dense", r * (inner / N), inner / N, group);
    if (sequence) {
      layer.attention->output->residual_part = positions_of_rank(group);
      layer.output->residual_part = positions_of_rank(group);
      sum_gradients_over_sequence(layer, name, plan, group);
    }
  }
  const VocabShard shard = VocabShard::of(config.vocab_size, group.size(), group.rank());
  shard_embedding(plan, model->embeddings->word_embeddings, prefix + "embeddings.word_embeddings", shard, group);
  if (sequence) {
    // The encoder's output goes to the pooler and the classifier's head, whole on every rank.
    model->encoder->blocks_input = scatter_to_sequence_region_hook(group);
    model->encoder->blocks_output = gather_from_sequence_region_hook(group, GatheredFor::replicated);
  }
  return plan.plan;
}

TensorParallelPlan split_bert_body(torch::nn::Module& module, const std::string& prefix, Communicator& comm,
                                   ParameterValues values) {
  model::Bert bert(std::dynamic_pointer_cast<model::BertImpl>(module.shared_from_this()));
  return split_bert(bert, comm, prefix, values);
}

}  // namespace

FamilySplit bert_split() { return {"bert", nullptr, split_bert_body}; }

}  // namespace ftrain::dist::splits

namespace ftrain::dist {

TensorParallelPlan apply_tensor_parallel(model::Bert& model, Communicator& comm, const std::string& prefix,
                                         ParameterValues values) {
  return splits::split_bert(model, comm, prefix, values);
}

}  // namespace ftrain::dist
