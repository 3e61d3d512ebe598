#include "launch/run_state.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "launch/task.h"

using nlohmann::json;

namespace ftrain::launch {
namespace {

// `values` of `slice` under the name `key`.
HeldTensor describe(const std::string& key, const dist::LocalSlice& slice, const at::Tensor& values,
                    bool sharded, const dist::TensorParallelPlan& plan, const dist::Layout& layout, int rank) {
  HeldTensor held;
  held.name = key;
  held.values = values.detach();
  held.part_shape = slice.shape;
  held.global_shape = slice.shape;
  held.flat_offset = slice.flat_offset;
  // Which tensor-parallel ranks hold the same part: all of them for a whole parameter.
  int copies = layout.tp_size, copy = layout.tp_rank(rank);
  if (auto split = plan.sharded.find(slice.name); split != plan.sharded.end()) {
    held.global_shape = split->second.global_shape;
    held.split_dim = split->second.dim;
    held.index = split->second.index;
    copies = split->second.replicas;
    copy %= copies;
  }
  // Replicas over the data-parallel ranks share the writing too; shards do not overlap.
  held.writers = sharded ? copies : copies * layout.dp_size;
  held.writer = sharded ? copy : copy * layout.dp_size + layout.dp_rank(rank);
  return held;
}

// Options whose change would silently change which sequences later steps see.
json data_order(const data::StreamingLoader& loader, const Config& config) {
  return {{"global_batch_size", config.train.global_batch_size},
          {"seed", config.data.seed},
          {"shuffle", config.data.shuffle},
          {"split", config.data.split},
          {"seq_len", loader.seq_len()},
          {"num_samples", loader.num_samples()}};
}

}  // namespace

void register_optimizer_steps(StateRegistry& registry, const std::unique_ptr<AdamW>& optimizer, const Task& task,
                              int64_t freeze_base_steps) {
  registry.add_meta(
      "optimizer_steps", [&optimizer] { return json(optimizer->step_count()); },
      [&optimizer, &task, freeze_base_steps](const json& saved) {
        const int64_t steps = saved.get<int64_t>();
        const int64_t body_updates = steps - std::min(steps, freeze_base_steps);
        optimizer->set_step_count(steps, [&](const std::string& name) {
          return task.is_head_parameter(name) ? steps : body_updates;
        });
      });
}

void register_data_state(StateRegistry& registry, data::StreamingLoader& loader, const Config& config) {
  registry.add_meta(
      "data",
      [&loader, &config] {
        json saved = data_order(loader, config);
        saved["global_position"] = loader.state().global_position;
        saved["path"] = config.data.path;
        return saved;
      },
      [&loader, &config](const json& saved) {
        const json now = data_order(loader, config);
        static const std::map<std::string, std::string> keys = {
            {"global_batch_size", "train.global_batch_size"}, {"seed", "data.seed"}, {"shuffle", "data.shuffle"},
            {"split", "data.split"}, {"seq_len", "data.path (seq_len)"}, {"num_samples", "data.path (rows)"}};
        for (const auto& [field, key] : keys)
          if (saved.contains(field) && saved.at(field) != now.at(field))
            throw std::runtime_error("was saved with " + key + " = " + saved.at(field).dump() + ", this run has " +
                                     now.at(field).dump() + "; the data order would not continue (" + key + ")");
        loader.restore(data::LoaderState{saved.at("global_position").get<int64_t>()});
      });
}

void register_run_record(StateRegistry& registry, const Config& config, const dist::Communicator& comm,
                         const Task& task) {
  registry.add_meta("rng", [&config] {
    return json{{"scheme", "reseeded every step from (run.seed, data-parallel rank, step)"}, {"seed", config.run.seed}};
  });
  registry.add_meta("layout", [&config, &comm] {
    return json{{"world_size", comm.world_size()}, {"tp", comm.layout().tp_size}, {"dp", comm.layout().dp_size},
                {"zero", config.dist.zero}};
  });
  registry.add_meta("model", [&config, &task] {
    return json{{"family", task.family()}, {"task", task.name()}, {"path", config.model.path}};
  });
  registry.add_meta("config", [&config] { return json(config.resolved_ini); });
}

void register_model_state(StateRegistry& registry, dist::DataParallel& data_parallel,
                          const dist::TensorParallelPlan& plan, const dist::Layout& layout, int rank,
                          const std::unique_ptr<AdamW>& optimizer) {
  registry.add_tensors("model", [&data_parallel, &plan, layout, rank] {
    std::vector<HeldTensor> out;
    for (const dist::LocalSlice& slice : data_parallel.local_slices())
      out.push_back(describe("model/" + slice.name, slice, slice.param, data_parallel.shards_state(), plan, layout, rank));
    return out;
  }, [&data_parallel] { data_parallel.after_load(); });
  registry.add_tensors("optim", [&data_parallel, &plan, &optimizer, layout, rank] {
    std::vector<HeldTensor> out;
    if (!optimizer) return out;
    const auto& slices = data_parallel.local_slices();
    const auto exp_avgs = optimizer->exp_avgs();
    const auto exp_avg_sqs = optimizer->exp_avg_sqs();
    const bool sharded = data_parallel.shards_state();
    for (size_t k = 0; k < slices.size(); ++k) {
      out.push_back(describe("optim/exp_avg/" + slices[k].name, slices[k], exp_avgs.at(k), sharded, plan, layout, rank));
      out.push_back(
          describe("optim/exp_avg_sq/" + slices[k].name, slices[k], exp_avg_sqs.at(k), sharded, plan, layout, rank));
    }
    return out;
  });
}

}  // namespace ftrain::launch
