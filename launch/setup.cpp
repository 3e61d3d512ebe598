#include "launch/setup.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <stdexcept>
#include <thread>

#include "data/durable_file.h"
#include "launch/checkpoint/store.h"
#include "model/activation_checkpoint.h"

namespace fs = std::filesystem;

namespace ftrain::launch {
namespace {

void prepare_run_dir(const Config& config, dist::Communicator& comm) {
  const fs::path dir = config.run.dir;
  if (config.run.resume == "none" && !CheckpointStore(dir / "checkpoints", 1).committed().empty())
    throw std::runtime_error(config.run.dir +
                             ": run directory already holds checkpoints; pass --run.resume=auto to continue "
                             "it or choose a new --run.dir (run.resume)");
  if (comm.rank() == 0) {
    fs::create_directories(dir);
    data::write_file_atomically(dir / "config.ini", config.resolved_ini);
  }
  comm.world().barrier();
}

// The whole model, before it is split, is rank 0's on every rank.
void broadcast_parameters(Task& task, dist::Communicator& comm) {
  if (comm.world_size() == 1) return;
  torch::NoGradGuard no_grad;
  // A model split as it was built holds different parts on a tensor-parallel group's
  // ranks; the ranks holding the same parts are a data-parallel group.
  dist::Group& holders = task.plan().tp_size > 1 ? comm.dp() : comm.world();
  for (auto& p : task.module().parameters()) {
    at::Tensor data = p.detach();
    holders.broadcast(data, 0);
  }
}

std::optional<c10::ScalarType> reduce_dtype(const Config& config) {
  if (config.train.reduce_dtype == ReduceDtype::bf16) return c10::ScalarType::BFloat16;
  return std::nullopt;
}

}  // namespace

RunParts build_run(const Config& config, dist::Communicator& comm,
                   const std::function<void(const std::string& next)>& loaded) {
  const data::DatasetInfo dataset = data::read_dataset_info(config.data.path);
  validate_for(config, comm.layout(), dataset);
  prepare_run_dir(config, comm);
  torch::manual_seed(config.run.seed);
  if (!fs::is_directory(config.model.path))
    throw std::runtime_error(config.model.path + ": model directory not found (model.path)");
  RunParts run;
  // Split over the tensor-parallel group as it is built: each rank reads its part.
  run.task = std::make_unique<Task>(config, dataset, comm);
  loaded("setting up the model (broadcast, sharding, optimizer)");
  if (comm.rank() == 0)
    for (const auto& warning : run.task->load_warnings()) std::cout << "ftrain: warning: " << warning << "\n";

  // A model read straight into ZeRO-3 shards is on the device already, and every rank
  // read the same files: nothing to broadcast.
  std::unique_ptr<dist::ZeroSharding> read_into_shards = run.task->take_sharding();
  run.task->module().to(comm.device());
  if (!read_into_shards) broadcast_parameters(*run.task, comm);
  // Tensor parallelism first; data parallelism then replicates or shards what each
  // tensor-parallel rank holds.
  run.plan = run.task->parallelize(comm);
  std::vector<std::pair<std::string, at::Tensor>> named_params;
  for (auto& item : run.task->module().named_parameters()) named_params.emplace_back(item.key(), item.value());
  const dist::DataParallelOptions options{config.dist.zero, config.dist.overlap, config.dist.prefetch,
                                          config.dist.bucket_bytes(), reduce_dtype(config)};
  dist::ZeroUnitNames units = run.task->zero3_unit_names();
  run.data_parallel = dist::make_data_parallel(std::move(named_params), comm.dp(), options,
                                               run.task->block_parameter_names(), std::move(units.input),
                                               std::move(units.vocabulary), std::move(read_into_shards));
  run.task->stream_vocabulary(*run.data_parallel);
  std::vector<AdamWSlot> slots;
  for (const dist::LocalSlice& slice : run.data_parallel->local_slices())
    slots.push_back(AdamWSlot{slice.name, slice.param, slice.grad, slice.is_matrix});
  run.optimizer = std::make_unique<AdamW>(std::move(slots), config.optim);
  // Activation checkpointing inside each block, data parallelism's hooks around it,
  // so a recomputation finds the block's parameters gathered.
  model::BlockRunner runner;
  if (config.train.activation_checkpointing) runner = model::checkpoint_blocks();
  if (auto wrapped = run.data_parallel->block_runner(runner)) run.task->set_block_runner(wrapped);

  const int dp_size = comm.layout().dp_size;
  data::LoaderOptions loader_options = config.data;
  loader_options.grad_accum_steps = config.train.global_batch_size / (config.data.micro_batch_size * dp_size);
  run.loader = std::make_unique<data::StreamingLoader>(loader_options, comm.layout().dp_rank(comm.rank()), dp_size);
  // A token id at or beyond the embedding table would index out of range deep in the
  // forward pass; report it here with both files named.
  const int64_t model_vocab = run.task->vocab_size();
  const int64_t data_vocab = run.loader->info().vocab_size;
  if (data_vocab > model_vocab)
    throw std::runtime_error(config.data.path + ": dataset vocab_size " + std::to_string(data_vocab) +
                             " exceeds the model's " + std::to_string(model_vocab) + " (" + config.model.path +
                             "/config.json); the data was tokenized for another model");
  return run;
}

namespace {

// One line per node: its ranks and the data-parallel ranks whose tensor-parallel groups
// it holds, so a reader sees that tensor parallelism stays inside nodes.
void print_placement(const dist::Communicator& comm) {
  const dist::Layout& layout = comm.layout();
  std::vector<std::string> order;  // host names, in layout order
  std::map<std::string, std::pair<std::vector<int>, std::set<int>>> nodes;
  for (int dp = 0; dp < layout.dp_size; ++dp) {
    for (int tp = 0; tp < layout.tp_size; ++tp) {
      const int rank = layout.rank_of(dp, tp);
      auto [node, added] = nodes.try_emplace(comm.host(rank));
      if (added) order.push_back(comm.host(rank));
      node->second.first.push_back(rank);
      node->second.second.insert(dp);
    }
  }
  const size_t shown = 16;
  for (size_t i = 0; i < order.size() && i < shown; ++i) {
    auto& [ranks, dps] = nodes.at(order[i]);
    std::sort(ranks.begin(), ranks.end());
    std::cout << "ftrain: node " << order[i] << ": rank(s)";
    for (size_t k = 0; k < ranks.size(); ++k) std::cout << (k ? "," : " ") << ranks[k];
    std::cout << " = tp group(s) of dp rank(s)";
    size_t k = 0;
    for (int dp : dps) std::cout << (k++ ? "," : " ") << dp;
    std::cout << "\n";
  }
  if (order.size() > shown) std::cout << "ftrain: ... and " << order.size() - shown << " more node(s)\n";
  if (const int straddling = layout.straddling_tp_groups())
    std::cout << "ftrain: warning: " << straddling << " tensor-parallel group(s) span two nodes: a node's rank "
              << "count is not a multiple of dist.tp = " << layout.tp_size << "\n";
}

}  // namespace

int intra_op_threads(int run_threads, int local_ranks) {
  if (run_threads > 0) return run_threads;
  if (const char* omp = std::getenv("OMP_NUM_THREADS"); omp != nullptr && *omp != '\0') {
    const std::string value(omp);
    const std::string first = value.substr(0, value.find(','));  // "4,2": 4 at the outer level
    std::size_t used = 0;
    int threads = 0;
    try {
      threads = std::stoi(first, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != first.size() || threads < 1 || threads > 4096) {
      throw std::invalid_argument("OMP_NUM_THREADS: expected a thread count from 1 to 4096, got '" + value +
                                  "' (or leave it unset and set run.threads)");
    }
    return threads;
  }
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, local_ranks));
}

void print_banner(const Config& config, const dist::Communicator& comm, Task& task,
                  const dist::TensorParallelPlan& plan, const data::StreamingLoader& loader) {
  int64_t parameters = 0;
  for (const auto& p : task.module().parameters()) parameters += p.numel();
  const int dp_size = comm.layout().dp_size;
  std::cout << config.resolved_ini;
  std::cout << "ftrain: " << comm.world_size() << " rank(s), tp " << comm.layout().tp_size
            << (plan.sequence_parallel ? " (sequence parallel)" : "") << " x dp " << dp_size << ", ZeRO stage "
            << config.dist.zero << ", device " << comm.device() << " with " << at::get_num_threads()
            << " CPU thread(s) per rank, " << parameters << " parameters, "
            << (config.model.init == ModelInit::random ? "RANDOMLY INITIALISED " : "pretrained ") << task.family()
            << " weights from " << config.model.path << ", task " << task.name() << "\n"
            << "ftrain: global batch " << config.train.global_batch_size << " sequences of " << loader.seq_len()
            << " tokens = " << config.data.micro_batch_size << " per rank x "
            << config.train.global_batch_size / (config.data.micro_batch_size * dp_size) << " accumulation x "
            << dp_size << " data-parallel ranks\n";
  print_placement(comm);
  std::cout.flush();
}

}  // namespace ftrain::launch
