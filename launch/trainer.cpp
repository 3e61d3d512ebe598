#include "launch/trainer.h"

#include <unistd.h>

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>

#include "data/durable_file.h"
#include "data/streaming_loader.h"
#include "dist/grad_reducer.h"
#include "dist/host_memory.h"
#include "dist/zero.h"
#include "launch/optim/adamw.h"
#include "launch/optim/schedule.h"
#include "launch/checkpoint/store.h"
#include "launch/checkpoint/writer.h"
#include "launch/eval/early_stopping.h"
#include "launch/eval/metrics.h"
#include "launch/device_readback.h"
#include "launch/precision.h"
#include "launch/telemetry/memory.h"
#include "launch/telemetry/profiler.h"
#include "launch/signals.h"
#include "launch/task.h"
#include "launch/telemetry/tensorboard.h"
#include "launch/watchdog.h"
#include "model/activation_checkpoint.h"
#include "model/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Wall seconds since the kernel started this process (field 22 of /proc/self/stat, in
// clock ticks since boot), so start-up counts loading the shared libraries too.
double seconds_since_process_start() {
  std::ifstream stat("/proc/self/stat"), uptime("/proc/uptime");
  std::string line;
  double now = 0;
  if (!std::getline(stat, line) || !(uptime >> now)) return -1;
  std::istringstream fields(line.substr(line.rfind(')') + 2));  // after the command name
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  return now - std::stod(field) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string format_duration(double seconds) {
  const auto total = static_cast<long long>(std::max(0.0, seconds));
  char text[32];
  std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", total / 3600, (total / 60) % 60, total % 60);
  return text;
}

// metrics.jsonl, and the same numbers as TensorBoard scalars when tensorboard_dir is set
// (run.tensorboard).
class MetricsLog {
 public:
  MetricsLog(const fs::path& path, const fs::path& tensorboard_dir) : out_(path, std::ios::app) {
    if (!out_) throw std::runtime_error(path.string() + ": cannot open for writing");
    if (!tensorboard_dir.empty()) tensorboard_ = std::make_unique<TensorBoardWriter>(tensorboard_dir);
  }
  void write(const json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
    if (tensorboard_) tensorboard_->add_record(record);
  }

 private:
  std::ofstream out_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

class Trainer {
 public:
  Trainer(const Config& config, dist::Communicator& comm)
      : config_(config),
        comm_(comm),
        autocast_dtype_(compute_dtype(config.train.precision)),
        scaler_(config.train.precision == Precision::fp16, config.train.loss_scale, config.train.loss_scale_window),
        watchdog_(config.run.step_timeout, comm.rank()),
        profiler_(ProfilerOptions{config.run.profile_from, config.run.profile_steps,
                                  (std::filesystem::path(config.run.dir) / "profile").string(), comm.rank(),
                                  comm.device().is_cuda()}),
        phases_(device_peak(comm)) {}

  int run() {
    // Every phase before the steps is watched too: a rank that hangs while the others
    // wait in the load's broadcast or the resume's agreement ends the job the same way.
    enter_phase("load");
    watchdog_.begin("loading the model from " + config_.model.path);
    const data::DatasetInfo dataset = data::read_dataset_info(config_.data.path);
    validate_for(config_, comm_.layout(), dataset);
    prepare_run_dir();
    torch::manual_seed(config_.run.seed);
    if (!fs::is_directory(config_.model.path))
      throw std::runtime_error(config_.model.path + ": model directory not found (model.path)");
    // Split over the tensor-parallel group as it is built: each rank reads its part.
    task_ = std::make_unique<Task>(config_, dataset, comm_);
    enter_phase("setup");
    watchdog_.begin("setting up the model (broadcast, sharding, optimizer)");
    if (rank0())
      for (const auto& warning : task_->load_warnings()) std::cout << "ftrain: warning: " << warning << "\n";
    early_stopping_.emplace(config_.train.eval_metric == "auto" ? task_->default_metric() : config_.train.eval_metric,
                            config_.train.early_stopping_patience);
    // A model read straight into ZeRO-3 shards is on the device already, and every rank
    // read the same files: nothing to broadcast.
    zero_ = task_->take_sharding();
    task_->module().to(comm_.device());
    if (!zero_) broadcast_parameters();
    // Tensor parallelism first, then ZeRO over the data-parallel group shards what
    // each tensor-parallel rank holds.
    plan_ = task_->parallelize(comm_);
    for (auto& item : task_->module().named_parameters()) named_params_.emplace_back(item.key(), item.value());

    if (config_.dist.zero > 0) {
      // Parameters and gradients move into flat buffers, one per block; this rank's
      // optimizer sees only the slices of its shard. The gradients are reduced block
      // by block as backward completes them (stage 1: in the last micro-batch; with
      // dist.overlap, while the blocks before run backward); stage 3 also gathers the
      // parameters block by block, as the model runs them.
      if (!zero_)
        zero_ = std::make_unique<dist::ZeroSharding>(named_params_, comm_.dp(), config_.dist.zero,
                                                     task_->block_parameter_names());
      zero_->set_reduce_dtype(reduce_dtype());
      zero_->set_overlap(config_.dist.overlap);
      std::vector<AdamWSlot> slots;
      for (const auto& slice : zero_->local_slices())
        slots.push_back(AdamWSlot{slice.name, slice.param, slice.grad, slice.is_matrix});
      optimizer_ = std::make_unique<AdamW>(std::move(slots), config_.optim);
    } else {
      optimizer_ = std::make_unique<AdamW>(named_params_, config_.optim);
      std::vector<torch::Tensor> params;
      for (auto& [name, p] : named_params_) params.push_back(p);
      if (dp_size() > 1)
        reducer_ = std::make_unique<dist::GradientReducer>(
            params, comm_.dp(), static_cast<size_t>(config_.dist.bucket_mb * 1024 * 1024), reduce_dtype());
    }

    // What runs around each transformer block: activation checkpointing inside, ZeRO's
    // hooks outside it (reduce the block's gradients after its backward; stage 3:
    // gather it too), so the recomputation finds the block's parameters gathered.
    model::BlockRunner runner;
    if (config_.train.activation_checkpointing) runner = model::checkpoint_blocks();
    if (zero_) runner = zero_->block_runner(runner);
    if (runner) task_->set_block_runner(runner);

    data::LoaderOptions loader_options = config_.data;
    loader_options.grad_accum_steps = grad_accum_steps();
    loader_ = std::make_unique<data::StreamingLoader>(loader_options, comm_.layout().dp_rank(comm_.rank()), dp_size());
    check_vocabulary();

    check_validation_split();

    store_ = std::make_unique<CheckpointStore>(fs::path(config_.run.dir) / "checkpoints", config_.checkpoint.keep);
    writer_ = std::make_unique<CheckpointWriter>(*store_, comm_.world(), config_.checkpoint.async);
    enter_phase("resume");
    watchdog_.begin("resuming from " + store_->directory().string());
    resume();
    watchdog_.end();
    phases_.close();

    if (rank0()) {
      const fs::path dir = config_.run.dir;
      metrics_ = std::make_unique<MetricsLog>(dir / "metrics.jsonl", config_.run.tensorboard ? dir / "tensorboard" : fs::path());
      print_banner();
    }
    return train();
  }

 private:
  bool rank0() const { return comm_.rank() == 0; }
  int dp_size() const { return comm_.layout().dp_size; }
  bool zero3() const { return zero_ && zero_->stage() == 3; }
  std::optional<c10::ScalarType> reduce_dtype() const {
    if (config_.train.reduce_dtype == ReduceDtype::bf16) return c10::ScalarType::BFloat16;
    return std::nullopt;
  }
  int64_t grad_accum_steps() const {
    return config_.train.global_batch_size / (config_.data.micro_batch_size * dp_size());
  }

  void prepare_run_dir() {
    const fs::path dir = config_.run.dir;
    const fs::path checkpoints = dir / "checkpoints";
    if (config_.run.resume == "none" && !CheckpointStore(checkpoints, 1).committed().empty())
      throw std::runtime_error(config_.run.dir +
                               ": run directory already holds checkpoints; pass --run.resume=auto to continue "
                               "it or choose a new --run.dir (run.resume)");
    if (rank0()) {
      fs::create_directories(dir);
      data::write_file_atomically(dir / "config.ini", config_.resolved_ini);
    }
    comm_.world().barrier();
  }

  // The whole model, before it is split, is rank 0's on every rank.
  void broadcast_parameters() {
    if (comm_.world_size() == 1) return;
    torch::NoGradGuard no_grad;
    // A model split as it was built holds different parts on a tensor-parallel group's
    // ranks; the ranks holding the same parts are a data-parallel group.
    dist::Group& holders = task_->plan().tp_size > 1 ? comm_.dp() : comm_.world();
    for (auto& p : task_->module().parameters()) {
      at::Tensor data = p.detach();
      holders.broadcast(data, 0);
    }
  }

  // Every parameter in its global shape, on every rank, for the final export: ZeRO-3
  // shards gathered over the data-parallel group, tensor-parallel parts over the
  // tensor-parallel group. Collective.
  NamedTensors gathered_parameters() {
    NamedTensors local;
    if (zero3()) {
      // Between uses a rank holds only its shards of the parameters.
      std::vector<at::Tensor> shards;
      for (const auto& slice : zero_->local_slices()) shards.push_back(slice.param);
      local = zero_->gather_state(shards);
    } else {
      for (auto& [name, p] : named_params_) local.emplace_back(name, p.detach());
    }
    NamedTensors out;
    for (auto& [name, t] : local) out.emplace_back(name, plan_.gather(name, t, comm_.tp()));
    return out;
  }

  // What this rank holds of every parameter and AdamW moment, described against the
  // tensor's global shape: its tensor-parallel part, or under ZeRO (any stage) its flat
  // range of that, and which of the ranks holding the same values it is, so that each
  // value is written once. The checkpoint saves these and loads them back
  // (CheckpointReader::read_into) without knowing the layout. No communication.
  std::vector<HeldTensor> held_state() {
    const int tp_rank = comm_.layout().tp_rank(comm_.rank());
    const int dp_rank = comm_.layout().dp_rank(comm_.rank());
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < named_params_.size(); ++i) index[named_params_[i].first] = i;
    // values: the whole part, or with zero_sharded a flat range starting at flat_offset.
    auto describe = [&](const std::string& key, const std::string& name, at::Tensor values, bool zero_sharded,
                        int64_t flat_offset) {
      const at::Tensor& param = named_params_[index.at(name)].second;
      HeldTensor held;
      held.name = key;
      held.values = values.detach();
      held.part_shape = param.sizes().vec();
      held.global_shape = plan_.global_shape(name, param);
      held.flat_offset = flat_offset;
      int copies = comm_.layout().tp_size, copy = tp_rank;
      if (auto split = plan_.sharded.find(name); split != plan_.sharded.end()) {
        held.split_dim = split->second.dim;
        held.index = split->second.index;
        copies = split->second.replicas;
        copy = tp_rank % copies;
      }
      // Replicas over the data-parallel ranks share the writing too; ZeRO shards do not
      // overlap.
      held.writers = zero_sharded ? copies : copies * dp_size();
      held.writer = zero_sharded ? copy : copy * dp_size() + dp_rank;
      return held;
    };
    std::vector<HeldTensor> out;
    if (zero_) {
      // At stages 1 and 2 every rank holds the whole parameters, but each writes and
      // reads only its shard; load_state gathers the rest.
      for (const auto& slice : zero_->local_slices())
        out.push_back(describe("model/" + slice.name, slice.name, slice.param, true, slice.param_offset));
    } else {
      for (auto& [name, p] : named_params_) out.push_back(describe("model/" + name, name, p, false, 0));
    }
    if (zero_) {
      const auto& slices = zero_->local_slices();
      const auto exp_avgs = optimizer_->exp_avgs();
      const auto exp_avg_sqs = optimizer_->exp_avg_sqs();
      for (size_t k = 0; k < slices.size(); ++k) {
        out.push_back(describe("optim/exp_avg/" + slices[k].name, slices[k].name, exp_avgs[k], true,
                               slices[k].param_offset));
        out.push_back(describe("optim/exp_avg_sq/" + slices[k].name, slices[k].name, exp_avg_sqs[k], true,
                               slices[k].param_offset));
      }
    } else {
      for (auto& [key, t] : optimizer_->named_state())
        out.push_back(describe("optim/" + key, key.substr(key.find('/') + 1), t, false, 0));
    }
    return out;
  }

  // Reads what held_state() describes (with_optimizer: the AdamW moments too) from
  // `checkpoint`, whatever the layout that wrote it. Only the blocks of the checkpoint
  // that hold this rank's elements are read, each checked against its checksum.
  // Returns the metadata. No communication, so a rank that fails here cannot leave the
  // others inside a collective.
  json read_state(const fs::path& checkpoint, bool with_optimizer) {
    CheckpointReader reader(checkpoint);
    torch::NoGradGuard no_grad;
    for (const HeldTensor& held : held_state())
      if (with_optimizer || held.name.rfind("model/", 0) == 0) reader.read_into(held);
    return reader.meta();
  }

  // Collective: read_state on every rank, then agreement. Returns the metadata, or
  // nothing with `problem` set (the same on every rank, naming each failed rank) when any
  // rank could not read its part; the model may then hold parts of the checkpoint, so
  // load another one or stop.
  std::optional<json> load_state(const fs::path& checkpoint, bool with_optimizer, std::string& problem) {
    json meta;
    std::string error;
    try {
      meta = read_state(checkpoint, with_optimizer);
    } catch (const std::exception& e) {
      error = e.what();
    }
    const int64_t failed = comm_.world().all_reduce(static_cast<int64_t>(error.empty() ? 0 : 1), dist::ReduceOp::Sum);
    if (failed > 0) {
      const auto errors = comm_.world().gather(error, 0);
      std::string message;
      for (size_t r = 0; r < errors.size(); ++r)
        if (!errors[r].empty()) message += (message.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": " + errors[r]);
      problem = comm_.world().broadcast(message, 0);
      return std::nullopt;
    }
    // ZeRO: every rank filled only its shard; make the parameters whole again.
    if (zero_) zero_->gather_parameters();
    return meta;
  }

  void check_vocabulary() {
    // A token id at or beyond the embedding table would index out of range deep in the
    // forward pass; report it here with both files named.
    const int64_t model_vocab = task_->vocab_size();
    const int64_t data_vocab = loader_->info().vocab_size;
    if (data_vocab > model_vocab)
      throw std::runtime_error(config_.data.path + ": dataset vocab_size " + std::to_string(data_vocab) +
                               " exceeds the model's " + std::to_string(model_vocab) + " (" + config_.model.path +
                               "/config.json); the data was tokenized for another model");
  }

  // The checkpoints to try, newest first: with run.resume=auto every committed one, else
  // the one named. Rank 0 lists them and tells the others, so that every rank tries the
  // same ones (per-rank listings could differ on a shared filesystem with stale caches).
  std::vector<fs::path> resume_candidates() {
    std::string listed;
    if (rank0()) {
      if (config_.run.resume == "auto") {
        const auto all = store_->committed();
        for (auto it = all.rbegin(); it != all.rend(); ++it) listed += it->string() + "\n";
      } else {
        listed = config_.run.resume + "\n";
      }
    }
    listed = comm_.world().broadcast(listed, 0);
    std::vector<fs::path> out;
    std::istringstream lines(listed);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) out.emplace_back(line);
    return out;
  }

  // Options whose change would silently change which sequences later steps see.
  json data_order_meta() const {
    return {{"global_batch_size", config_.train.global_batch_size},
            {"seed", config_.data.seed},
            {"shuffle", config_.data.shuffle},
            {"split", config_.data.split},
            {"seq_len", loader_->seq_len()},
            {"num_samples", loader_->num_samples()}};
  }

  void check_data_order(const json& saved, const fs::path& checkpoint) const {
    const json now = data_order_meta();
    static const std::map<std::string, std::string> keys = {
        {"global_batch_size", "train.global_batch_size"}, {"seed", "data.seed"}, {"shuffle", "data.shuffle"},
        {"split", "data.split"}, {"seq_len", "data.path (seq_len)"}, {"num_samples", "data.path (rows)"}};
    for (const auto& [field, key] : keys)
      if (saved.contains(field) && saved.at(field) != now.at(field))
        throw std::runtime_error(checkpoint.string() + ": was saved with " + key + " = " + saved.at(field).dump() +
                                 ", this run has " + now.at(field).dump() +
                                 "; the data order would not continue (" + key + ")");
  }

  void resume() {
    if (config_.run.resume == "none") return;
    const auto candidates = resume_candidates();
    if (candidates.empty()) {
      if (rank0()) std::cout << "ftrain: no checkpoint in " << store_->directory().string() << "; starting fresh\n";
      return;
    }
    // Parameters and optimizer state are stored with their global shapes, whatever the
    // layout that wrote them; each rank reads its parts, checking every piece it reads.
    // A checkpoint some rank cannot read is reported and the one before it is tried.
    std::optional<fs::path> checkpoint;
    json meta;
    std::vector<std::string> problems;
    for (const auto& candidate : candidates) {
      std::string problem;
      if (auto loaded = load_state(candidate, /*with_optimizer=*/true, problem)) {
        checkpoint = candidate;
        meta = std::move(*loaded);
        break;
      }
      problems.push_back(candidate.string() + ": " + problem);
      if (rank0()) std::cerr << "ftrain: skipping checkpoint " << problems.back() << "\n";
    }
    if (!checkpoint) {
      std::string all;
      for (const auto& problem : problems) all += "\n  " + problem;
      throw std::runtime_error("no checkpoint could be loaded (run.resume = " + config_.run.resume + "):" + all);
    }
    check_data_order(meta.at("data"), *checkpoint);
    step_ = meta.at("step").get<int64_t>();
    tokens_seen_ = meta.value("tokens_seen", int64_t{0});
    // Body parameters were not updated during the frozen-body stage.
    const int64_t optimizer_steps = meta.at("optimizer_steps").get<int64_t>();
    const int64_t body_updates = optimizer_steps - std::min(optimizer_steps, config_.train.freeze_base_steps);
    const Task* task = task_.get();
    optimizer_->set_step_count(optimizer_steps, [&](const std::string& name) {
      return task->is_head_parameter(name) ? optimizer_steps : body_updates;
    });
    if (meta.contains("validation")) early_stopping_->restore(meta["validation"]);
    if (scaler_.enabled() && meta.contains("loss_scale"))
      scaler_.restore(meta["loss_scale"]["scale"].get<double>(), meta["loss_scale"]["good_steps"].get<int64_t>());
    last_saved_step_ = step_;
    loader_->restore(data::LoaderState{meta.at("data").at("global_position").get<int64_t>()});
    if (rank0()) {
      set_aside_later_checkpoints(*checkpoint);
      truncate_metrics_after(step_);
      std::cout << "ftrain: resumed from " << checkpoint->string() << " at step " << step_ << "\n";
    }
    comm_.world().barrier();
  }

  // Checkpoints newer than the one resumed from belong to an abandoned timeline (a
  // corrupt newest one, or an explicit older choice). They are renamed, not deleted,
  // so a later --resume does not jump back to them.
  void set_aside_later_checkpoints(const fs::path& resumed) {
    for (const auto& dir : store_->committed()) {
      if (dir.filename().string() <= resumed.filename().string()) continue;
      fs::path aside = dir;
      aside += ".stale";
      fs::remove_all(aside);
      fs::rename(dir, aside);
      std::cout << "ftrain: set aside " << dir.string() << " (newer than the checkpoint resumed from)\n";
    }
  }

  // Steps logged after the checkpoint are run again; keep metrics.jsonl one record per step.
  void truncate_metrics_after(int64_t step) {
    const fs::path path = fs::path(config_.run.dir) / "metrics.jsonl";
    if (!fs::exists(path)) return;
    std::ifstream in(path);
    std::string kept, line;
    while (std::getline(in, line)) {
      json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_object() && record.value("step", int64_t{0}) > step) continue;
      kept += line + "\n";
    }
    data::write_file_atomically(path, kept);
  }

  // Collective. Starts saving the state after step_: each rank copies its pieces to
  // host memory, and the files are written in the background (checkpoint.async) and
  // committed by a later commit_saves(). Random state needs no saving: dropout is
  // reseeded from (seed, data-parallel rank, step) at every step.
  void save_checkpoint() {
    write_step_record();  // its figures are the saved step's
    Watchdog::Scope watched(watchdog_, "saving the checkpoint of step " + std::to_string(step_));
    PhaseMemory::Scope phase(phases_, "save");
    json meta;
    if (rank0()) {
      json data_meta = data_order_meta();
      data_meta["global_position"] = loader_->state().global_position;
      data_meta["path"] = config_.data.path;
      meta = {
          {"tokens_seen", tokens_seen_},
          {"optimizer_steps", optimizer_->step_count()},
          {"data", data_meta},
          {"rng", {{"scheme", "reseeded every step from (run.seed, data-parallel rank, step)"}, {"seed", config_.run.seed}}},
          {"layout",
           {{"world_size", comm_.world_size()}, {"tp", comm_.layout().tp_size}, {"dp", dp_size()},
            {"zero", config_.dist.zero}}},
          {"model", {{"family", task_->family()}, {"task", task_->name()}, {"path", config_.model.path}}},
          {"validation", early_stopping_->state()},
          {"loss_scale", {{"scale", scaler_.scale()}, {"good_steps", scaler_.good_steps()}}},
          {"config", config_.resolved_ini},
      };
    }
    writer_->start(step_, held_state(), std::move(meta));
    last_saved_step_ = step_;
    if (rank0() && config_.checkpoint.async)
      std::printf("ftrain: saving the checkpoint of step %lld in the background (training paused %.3f s)\n",
                  static_cast<long long>(step_), writer_->last_blocking_seconds());
  }

  // Collective. Commits the checkpoint being written once every rank has written its
  // file; with wait, waits for that. Returns the checkpoint committed now, if any.
  std::optional<fs::path> commit_saves(bool wait) {
    if (!writer_->pending()) return std::nullopt;
    std::optional<Watchdog::Scope> watched;
    if (wait) watched.emplace(watchdog_, "finishing the checkpoint of step " + std::to_string(last_saved_step_));
    auto committed = writer_->poll(wait);
    if (committed && rank0()) std::cout << "ftrain: saved checkpoint " << committed->string() << std::endl;
    return committed;
  }

  // Whether a split exists is decided once, identically on every rank (the file is the
  // same), so evaluation never leaves some ranks in a collective.
  bool has_split(const std::string& split) const {
    if (split.empty()) return false;
    const auto splits = data::list_splits(config_.data.path);
    return std::find(splits.begin(), splits.end(), split) != splits.end();
  }

  void check_validation_split() {
    has_validation_ = has_split(config_.train.eval_split);
    if (!has_validation_ && rank0())
      std::cout << "ftrain: " << config_.data.path << " has no '" << config_.train.eval_split
                << "' split; validation is off (train.eval_split)\n";
  }

  // The task's metrics over the first max_samples rows of a split (all if < 0), each row
  // evaluated by exactly one rank and the counts summed over ranks. Collective.
  std::optional<json> evaluate(const std::string& split, int64_t max_samples) {
    Watchdog::Scope watched(watchdog_, "evaluating split '" + split + "' at step " + std::to_string(step_));
    PhaseMemory::Scope phase(phases_, "evaluate");
    data::EvalReader reader(config_.data.path, split, config_.data.micro_batch_size, max_samples,
                            comm_.layout().dp_rank(comm_.rank()), dp_size());
    torch::NoGradGuard no_grad;
    task_->module().eval();
    if (zero_) zero_->before_forward();
    EvalTotals totals = task_->empty_totals();
    while (auto batch = reader.next()) {
      AutocastScope autocast(comm_.device().type(), autocast_dtype_);
      task_->evaluate(task_->prepare(*batch, comm_.device()), totals);
    }
    if (zero_) zero_->release();
    task_->module().train();

    // One all-reduce for every count, one for the loss.
    std::vector<int64_t> counts = {totals.count};
    counts.insert(counts.end(), totals.confusion.begin(), totals.confusion.end());
    counts.insert(counts.end(), totals.entities.begin(), totals.entities.end());
    at::Tensor packed = torch::tensor(counts, torch::kInt64);
    comm_.dp().all_reduce(packed, dist::ReduceOp::Sum);
    const int64_t* summed = packed.data_ptr<int64_t>();
    totals.count = summed[0];
    std::copy_n(summed + 1, totals.confusion.size(), totals.confusion.begin());
    std::copy_n(summed + 1 + totals.confusion.size(), totals.entities.size(), totals.entities.begin());
    totals.loss_sum = comm_.dp().all_reduce(totals.loss_sum, dist::ReduceOp::Sum);
    if (totals.count == 0) return std::nullopt;
    return task_->metrics(totals);
  }

  static std::string describe(const json& metrics) {
    std::string line;
    char text[64];
    for (const char* key : {"loss", "perplexity", "accuracy", "macro_f1", "entity_precision", "entity_recall",
                            "entity_f1"}) {
      if (!metrics.contains(key)) continue;
      std::snprintf(text, sizeof(text), "%s%s %.4f", line.empty() ? "" : " | ", key, metrics[key].get<double>());
      line += text;
    }
    return line;
  }

  // Validation: prints and logs the metrics, keeps the best checkpoint and counts
  // evaluations without improvement. Returns whether early stopping says stop.
  // Collective.
  bool report_validation() {
    write_step_record();  // the step's line before its validation's
    if (!has_validation_) return false;
    const auto metrics = evaluate(config_.train.eval_split, config_.train.eval_samples > 0 ? config_.train.eval_samples : -1);
    if (!metrics) return false;
    const double value = metrics->at(early_stopping_->metric()).get<double>();
    const bool improved = early_stopping_->observe(value, step_);
    if (rank0()) {
      std::printf("step %6lld | validation %s%s\n", static_cast<long long>(step_), describe(*metrics).c_str(),
                  improved ? " | best" : "");
      std::fflush(stdout);
      json record = {{"step", step_}};
      for (const auto& [key, entry] : metrics->items()) record["val_" + key] = entry;
      metrics_->write(record);
    }
    if (improved && config_.checkpoint.keep_best) {
      if (last_saved_step_ != step_) save_checkpoint();
      commit_saves(/*wait=*/true);
      if (rank0())
        store_->mark_best(store_->final_directory(step_), {{"metric", early_stopping_->metric()}, {"value", value}, {"step", step_}});
      comm_.world().barrier();
    }
    return early_stopping_->should_stop();
  }

  // After training: the best weights (with keep_best), the test report, the export.
  void finish() {
    commit_saves(/*wait=*/true);
    std::optional<fs::path> best;
    if (config_.checkpoint.keep_best && has_validation_) {
      std::string chosen;
      if (rank0())
        if (auto found = store_->best()) chosen = found->string();
      chosen = comm_.world().broadcast(chosen, 0);
      if (!chosen.empty()) best = fs::path(chosen);
    }
    if (best && early_stopping_->best_step() != step_) {
      std::string problem;
      Watchdog::Scope watched(watchdog_, "loading the best checkpoint " + best->string());
      if (!load_state(*best, /*with_optimizer=*/false, problem))
        throw std::runtime_error("the best checkpoint cannot be loaded: " + problem);
      if (rank0())
        std::cout << "ftrain: finishing with the best model by validation " << early_stopping_->metric() << ": "
                  << best->string() << "\n";
    }
    const int64_t weights_step = best ? early_stopping_->best_step() : step_;
    if (has_split(config_.train.test_split)) {
      const auto metrics = evaluate(config_.train.test_split, -1);
      if (metrics && rank0()) {
        std::printf("test (%s, weights of step %lld) | %s\n", config_.train.test_split.c_str(),
                    static_cast<long long>(weights_step), describe(*metrics).c_str());
        std::fflush(stdout);
        json report = {{"split", config_.train.test_split}, {"step", weights_step},
                       {"task", task_->name()}, {"metrics", *metrics}};
        data::write_file_atomically(fs::path(config_.run.dir) / "test_report.json", report.dump(2) + "\n");
      }
    }
    // Training is over and its checkpoints committed: the optimizer's moments are not
    // needed again, and the export may have their memory (half of ZeRO-3's state).
    optimizer_.reset();
    enter_phase("export");
    Watchdog::Scope watched(watchdog_, "exporting the model and ending the run");
    if (config_.checkpoint.export_hf) export_final(weights_step);
    comm_.world().barrier();
    report_phase_memory();
  }

  // The whole value of parameter `name` on every rank: its ZeRO-3 shards gathered over
  // the data-parallel group, its tensor-parallel parts over the tensor-parallel group.
  // Collective; one tensor's memory.
  at::Tensor whole_parameter(const std::string& name) {
    at::Tensor local;
    if (zero3()) {
      local = zero_->gather_parameter(name);
    } else {
      auto found = std::find_if(named_params_.begin(), named_params_.end(),
                                [&](const auto& item) { return item.first == name; });
      if (found == named_params_.end()) throw std::logic_error("no parameter " + name + " to export");
      local = found->second.detach();
    }
    return plan_.gather(name, local, comm_.tp());
  }

  // final/: the model in Hugging Face's format, with the tokenizer. Collective. A split
  // or sharded causal LM is streamed: rank 0 writes the file tensor by tensor and names
  // each parameter it needs next; every rank joins that one parameter's gather. So no
  // rank holds more than one whole tensor beyond its shards. A split or sharded
  // classifier is still gathered whole on every rank first.
  void export_final(int64_t weights_step) {
    const fs::path final_dir = fs::path(config_.run.dir) / "final";
    Watchdog::Scope watched(watchdog_, "exporting " + final_dir.string());
    const bool split = comm_.layout().tp_size > 1 || config_.dist.zero == 3;
    if (split && task_->streams_export()) {
      dist::Group& world = comm_.world();
      if (rank0()) {
        task_->save_streamed(final_dir, model::ExistingDirectory::overwrite, [&](const std::string& name) {
          world.broadcast(name, 0);
          return whole_parameter(name);
        });
        world.broadcast(std::string(), 0);  // done (a failure above ends the whole job)
      } else {
        for (std::string name = world.broadcast(std::string(), 0); !name.empty(); name = world.broadcast(std::string(), 0))
          whole_parameter(name);
      }
    } else {
      const NamedTensors full_parameters = split ? gathered_parameters() : NamedTensors{};
      if (rank0()) task_->save(final_dir, model::ExistingDirectory::overwrite, full_parameters);
    }
    if (rank0()) {
      // The tokenizer travels with the weights, so final/ is a complete model directory.
      for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                               "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json"}) {
        const fs::path source = fs::path(config_.model.path) / file;
        if (fs::exists(source)) fs::copy_file(source, final_dir / file, fs::copy_options::overwrite_existing);
      }
      std::cout << "ftrain: model of step " << weights_step << " written to " << final_dir.string()
                << " (Hugging Face format)\n";
    }
  }

  // The frozen-body stage: before step freeze_base_steps + 1 only the head trains. The
  // body gets no gradient (autograd stops at it) and the optimizer leaves it alone.
  void set_body_frozen(bool frozen) {
    if (frozen == body_frozen_) return;
    body_frozen_ = frozen;
    for (auto& [name, p] : named_params_)
      if (!task_->is_head_parameter(name)) p.requires_grad_(!frozen);
    if (frozen) {
      const Task* task = task_.get();
      optimizer_->set_frozen([task](const std::string& name) { return !task->is_head_parameter(name); });
    } else {
      optimizer_->set_frozen({});
    }
    if (rank0())
      std::cout << "ftrain: " << (frozen ? "training the head only (train.freeze_base_steps)" : "training the whole model")
                << " from step " << step_ + 1 << "\n";
  }

  void unscale_gradients(double factor) {
    torch::NoGradGuard no_grad;
    if (zero_) {
      zero_->scale_gradients(factor);
      return;
    }
    std::vector<torch::Tensor> grads;
    for (auto& [name, p] : named_params_)
      if (p.grad().defined()) grads.push_back(p.mutable_grad());
    if (!grads.empty()) at::_foreach_mul_(grads, factor);
  }

  // The norm of the whole model's gradient, each value counted once: the gradient this
  // rank holds (its ZeRO shard, or all of it) summed over the data-parallel group
  // when sharded, and over the tensor-parallel group with whole parameters (equal on
  // every tensor-parallel rank) weighted by 1/tp. A float64 scalar on the device, and
  // clipping scales by a factor computed there: no host synchronisation.
  torch::Tensor clip_gradients() {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads;
    std::vector<double> weights;
    auto add = [&](const std::string& name, const torch::Tensor& grad) {
      grads.push_back(grad);
      weights.push_back(1.0 / plan_.replicas(name));
    };
    if (zero_) {
      for (const auto& slice : zero_->local_slices()) add(slice.name, slice.grad);
    } else {
      for (auto& [name, p] : named_params_)
        if (p.grad().defined()) add(name, p.mutable_grad());
    }
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(comm_.device());
    torch::Tensor square_sum = torch::zeros({}, f64);
    if (!grads.empty()) {
      const torch::Tensor norms = torch::stack(at::_foreach_norm(grads, 2)).to(torch::kFloat64);
      torch::Tensor scale = torch::tensor(weights, torch::kFloat64);
      if (scale.device() != norms.device()) scale = scale.pin_memory().to(norms.device(), /*non_blocking=*/true);
      square_sum = (norms.pow(2) * scale).sum();
    }
    if (zero_) comm_.dp().all_reduce(square_sum, dist::ReduceOp::Sum);
    if (comm_.layout().tp_size > 1) comm_.tp().all_reduce(square_sum, dist::ReduceOp::Sum);
    const torch::Tensor norm = square_sum.sqrt();
    const double limit = config_.train.grad_clip;
    if (limit > 0) {
      // limit / (norm + 1e-6) where the norm is finite and above the limit, else 1
      const torch::Tensor factor =
          torch::where(torch::isfinite(norm) & (norm > limit), limit / (norm + 1e-6), torch::ones_like(norm))
              .to(torch::kFloat);
      if (zero_) zero_->scale_gradients(factor);
      else if (!grads.empty()) at::_foreach_mul_(grads, factor);
    }
    return norm;
  }

  int train() {
    task_->module().train();
    const int64_t accum = grad_accum_steps();
    const int64_t start_step = step_;
    run_start_ = last_arrival_ = Clock::now();
    int exit_code = 0;

    if (rank0() && step_ < config_.train.steps) {
      const double startup = seconds_since_process_start();
      metrics_->write({{"step", step_}, {"startup_s", startup}});
      std::printf("ftrain: first step starts %.2f s after the process started\n", startup);
    }
    while (step_ < config_.train.steps) {
      // The first step allocates what every later one reuses (gradients, optimizer state).
      // A phase is entered once, not every step: entering trims the heap, which the
      // steps keep on purpose (launch/main.cpp).
      const char* phase = step_ == start_step ? "first_step" : "train";
      if (phases_.current() != phase) phases_.enter(phase);
      watchdog_.begin("step " + std::to_string(step_ + 1));
      const auto step_start = Clock::now();
      profiler_.before_step(step_ + 1);
      const double bytes_before_step = comm_.stats().total_bytes_sent();
      set_body_frozen(step_ < config_.train.freeze_base_steps);
      std::vector<TaskBatch> micro_batches;
      int64_t local_targets = 0;
      for (int64_t m = 0; m < accum; ++m) {
        micro_batches.push_back(task_->prepare(loader_->next(), comm_.device()));
        local_targets += micro_batches.back().target_count;
      }
      // The loss is normalised by the number of targets (tokens, or labelled rows) in the whole global batch,
      // so summing gradients over micro-steps and ranks gives the gradient of the global
      // mean, however the batch is split.
      const int64_t global_targets = comm_.dp().all_reduce(local_targets, dist::ReduceOp::Sum);
      if (global_targets == 0) throw std::runtime_error(config_.data.path + ": a global batch has no targets (tokens with loss_mask 1, or labels other than -100)");
      // Dropout masks differ per data-parallel rank and step but depend on nothing else,
      // so a resumed run draws the same masks as an uninterrupted one, on CPU and GPU
      // alike. Tensor-parallel ranks draw alike: their replicated activations need the
      // same masks.
      torch::manual_seed(config_.run.seed + 1000003ULL * (comm_.layout().dp_rank(comm_.rank()) + 1) + 7919ULL * step_);
      torch::Tensor local_loss_sum =
          torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(comm_.device()));
      const bool overlap = reducer_ && config_.dist.overlap;
      std::optional<WeightCastCache> casts;  // one cast of each weight for all micro-batches
      casts.emplace(autocast_dtype_.has_value() && config_.dist.zero != 3);
      for (std::size_t m = 0; m < micro_batches.size(); ++m) {
        const TaskBatch& batch = micro_batches[m];
        // The last micro-batch's backward completes the gradients: reduce as they come.
        if (overlap && m + 1 == micro_batches.size()) reducer_->arm(dist::ReduceOp::Sum);
        torch::Tensor loss_sum;
        if (zero_) zero_->before_forward();
        {
          AutocastScope autocast(comm_.device().type(), autocast_dtype_);
          loss_sum = task_->loss_sum(batch);  // fp32: the cross-entropy runs on fp32 logits
        }
        if (zero_) zero_->before_backward(/*completes_step=*/m + 1 == micro_batches.size());
        (loss_sum * (scaler_.scale() / static_cast<double>(global_targets))).backward();
        if (zero_) zero_->after_backward();
        local_loss_sum += loss_sum.detach().to(torch::kFloat64);
      }
      casts.reset();  // the optimizer changes the weights below
      if (overlap) reducer_->finish();
      else if (reducer_) reducer_->reduce(dist::ReduceOp::Sum);
      if (zero_) zero_->reduce_gradients();
      comm_.dp().all_reduce(local_loss_sum, dist::ReduceOp::Sum);  // on the device: no host wait
      const double loss_scale = scaler_.scale();
      if (scaler_.enabled()) unscale_gradients(1.0 / loss_scale);
      const torch::Tensor grad_norm = clip_gradients();
      // The norm is the same on every rank, so all skip or step together. Only fp16's
      // loss scaling reads it on the host within the step.
      const bool stepped = !scaler_.enabled() || scaler_.update(std::isfinite(grad_norm.item<double>()));
      ++step_;
      const double lr = learning_rate(config_.optim, config_.train.steps, step_);
      if (stepped) optimizer_->step(lr);
      if (zero_) {
        zero_->gather_parameters();
        zero_->zero_grad();
      } else {
        optimizer_->zero_grad();
      }

      // Diagnostics. The step's loss and gradient norm are read once the next step is
      // queued (write_step_record), so the host never waits for the device mid-step.
      const double step_bytes = comm_.stats().total_bytes_sent() - bytes_before_step;
      if (step_ == start_step + 1) report_memory();  // after a whole step: ZeRO-2/3's peaks are reached
      write_step_record();  // the previous step's, if still unread
      StepRecord record;
      record.step = step_;
      record.start = step_start;
      record.figures = DeviceReadback(torch::stack({local_loss_sum / static_cast<double>(global_targets), grad_norm}));
      record.lr = lr;
      record.loss_scale = loss_scale;
      record.stepped = stepped;
      record.comm_bytes = step_bytes;
      record.tokens = config_.train.global_batch_size * loader_->seq_len();
      tokens_seen_ += record.tokens;
      record.tokens_seen = tokens_seen_;
      record.first = step_ == start_step + 1;
      unread_ = std::move(record);
      // Only a GPU runs ahead of the host; elsewhere each step's record is written at once.
      if (!comm_.device().is_cuda()) write_step_record();
      profiler_.after_step(step_, seconds_since(step_start));

      bool stop_early = false;
      // The end of the head-only stage is always validated, to show what it reached.
      const bool stage_end = step_ == config_.train.freeze_base_steps;
      if (((config_.train.eval_every > 0 && step_ % config_.train.eval_every == 0) || stage_end) &&
          step_ < config_.train.steps) {
        if (stage_end && rank0()) std::cout << "ftrain: head-only stage done (train.freeze_base_steps)\n";
        stop_early = report_validation();
      }
      if (stop_early) {
        if (rank0())
          std::cout << "ftrain: stopping early at step " << step_ << ": validation " << early_stopping_->metric()
                    << " has not improved for " << early_stopping_->bad_evaluations() << " evaluations (train.early_stopping_patience)\n";
        if (config_.checkpoint.at_end && last_saved_step_ != step_) save_checkpoint();
        break;
      }
      const bool last = step_ == config_.train.steps;
      const bool leaving = config_.run.exit_after_steps > 0 && step_ - start_step >= config_.run.exit_after_steps;
      if (((config_.checkpoint.every > 0 && step_ % config_.checkpoint.every == 0) ||
           (last && config_.checkpoint.at_end) || (leaving && !last)) &&
          last_saved_step_ != step_)
        save_checkpoint();
      // The save in flight is committed as soon as every rank has written it.
      commit_saves(/*wait=*/false);
      if (leaving && !last) {
        write_step_record();
        profiler_.finish();
        commit_saves(/*wait=*/true);
        if (rank0()) std::cout << "ftrain: stopping after " << config_.run.exit_after_steps << " steps (run.exit_after_steps)\n";
        report_phase_memory();
        return exit_code;
      }
      // A stop request (SIGUSR1 before a time limit or pre-emption, SIGTERM, SIGINT) on
      // any rank stops every rank after the same step, with the step saved.
      const auto requested = last ? 0 : comm_.world().all_reduce(static_cast<int64_t>(stop_signal()), dist::ReduceOp::Max);
      if (requested != 0) {
        write_step_record();
        profiler_.finish();
        if (last_saved_step_ != step_) save_checkpoint();
        commit_saves(/*wait=*/true);
        if (rank0())
          std::cout << "ftrain: received " << signal_name(static_cast<int>(requested)) << ": saved step " << step_
                    << "; exiting with " << kExitSavedRequeue
                    << " so the job can be requeued and resumed (run.resume=auto)" << std::endl;
        report_phase_memory();
        return kExitSavedRequeue;
      }
    }
    write_step_record();
    watchdog_.end();
    profiler_.finish();
    if (step_ == config_.train.steps) report_validation();
    finish();
    return exit_code;
  }

  // One step's line of metrics.jsonl and of the log, whose loss and gradient norm may
  // still be on their way from the device.
  struct StepRecord {
    int64_t step = 0;
    Clock::time_point start;
    DeviceReadback figures;  // loss, gradient norm
    double lr = 0, loss_scale = 1, comm_bytes = 0;
    bool stepped = true;
    int64_t tokens = 0, tokens_seen = 0;
    bool first = false;  // the first step of this run
  };

  // Writes the unread step's record: waits for its figures (for that step's work on the
  // device, not later steps'), stops on a non-finite loss, and logs. Its step time runs
  // from its start, or from the previous record's arrival if later, to its own arrival:
  // on a GPU that runs ahead of the host, the device's time per step.
  void write_step_record() {
    if (!unread_) return;
    StepRecord record = std::move(*unread_);
    unread_.reset();
    const double* figures = record.figures.values();
    const double loss = figures[0], grad_norm = figures[1];
    const auto now = Clock::now();
    const double step_seconds = std::chrono::duration<double>(now - std::max(record.start, last_arrival_)).count();
    last_arrival_ = now;
    if (!std::isfinite(loss))
      throw std::runtime_error("loss is " + std::to_string(loss) + " at step " + std::to_string(record.step) +
                               " (lower optim.lr or check the data)");
    smoothed_step_seconds_ = record.first ? step_seconds : 0.9 * smoothed_step_seconds_ + 0.1 * step_seconds;
    const double tokens_per_s = record.tokens / step_seconds;
    if (!rank0()) return;
    json line = {{"step", record.step},
                 {"loss", loss},
                 {"lr", record.lr},
                 {"grad_norm", grad_norm},
                 {"tokens_per_s", tokens_per_s},
                 {"tokens_seen", record.tokens_seen},
                 {"step_time_s", step_seconds},
                 {"comm_bytes", record.comm_bytes},
                 {"loss_scale", record.loss_scale},
                 {"skipped", !record.stepped},
                 {"elapsed_s", seconds_since(run_start_)}};
    if (comm_.device().is_cuda()) line["peak_device_bytes"] = comm_.peak_device_bytes();
    metrics_->write(line);
    if (record.step % config_.train.log_every == 0 || record.first || record.step == config_.train.steps) {
      std::printf("step %6lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | eta %s%s\n",
                  static_cast<long long>(record.step), static_cast<long long>(config_.train.steps), loss, record.lr,
                  grad_norm, tokens_per_s,
                  format_duration(smoothed_step_seconds_ * (config_.train.steps - record.step)).c_str(),
                  record.stepped ? "" : " | skipped: gradients overflowed the fp16 loss scale");
      std::fflush(stdout);
    }
  }

  // What this rank holds for training state, by kind: the figures ZeRO divides (the
  // peaks of the first step: at stages 2 and 3 shards plus the units gathered or
  // holding gradients at once). Every rank writes its own line to metrics.jsonl
  // through rank 0, which gathers them.
  void report_memory() {
    int64_t parameters = 0, gradients = 0;
    if (zero_) {
      parameters = zero_->peak_parameter_bytes();
      gradients = zero_->peak_gradient_bytes();
    } else {
      for (auto& [name, p] : named_params_) parameters += p.nbytes();
      gradients = parameters + (reducer_ ? static_cast<int64_t>(reducer_->total_bucket_bytes()) : 0);
    }
    const int64_t optimizer = optimizer_->state_bytes();
    at::Tensor mine = torch::tensor({parameters, gradients, optimizer}, torch::kInt64);
    at::Tensor all = torch::zeros({comm_.world_size() * 3}, torch::kInt64);
    comm_.world().all_gather(all, mine);
    if (!rank0()) return;
    json per_rank = json::array();
    for (int r = 0; r < comm_.world_size(); ++r)
      per_rank.push_back({{"rank", r}, {"parameter_bytes", all[3 * r].item<int64_t>()},
                          {"gradient_bytes", all[3 * r + 1].item<int64_t>()},
                          {"optimizer_bytes", all[3 * r + 2].item<int64_t>()}});
    metrics_->write({{"step", step_}, {"memory", per_rank}});
    std::printf("ftrain: rank 0 holds %.1f MiB of parameters, %.1f MiB of gradients, %.1f MiB of optimizer state\n",
                parameters / 1048576.0, gradients / 1048576.0, optimizer / 1048576.0);
  }

  // Every rank's measured peak memory in each phase so far, as one metrics.jsonl record
  // (gathered to rank 0): the resident set (host) and the device allocator's peak, and
  // the bytes the process read (a resume reads only its shard's blocks). The
  // model-dependent part of a peak is what it adds to the phase's start or to a run of
  // a tiny model; bench/memory.py and tests/launch/test_memory_phases.py read them.
  // Collective.
  void report_phase_memory() {
    phases_.close();
    json mine = json::array();
    for (const PhasePeak& peak : phases_.peaks())
      mine.push_back({{"rank", comm_.rank()}, {"phase", peak.phase}, {"host_start_bytes", peak.host_start_bytes},
                      {"host_peak_bytes", peak.host_peak_bytes}, {"device_peak_bytes", peak.device_peak_bytes},
                      {"entries", peak.entries}, {"read_bytes", peak.read_bytes},
                      {"per_phase", phases_.per_phase()}});
    const std::vector<std::string> all = comm_.world().gather(mine.dump(), 0);
    if (!rank0()) return;
    json per_rank = json::array();
    for (const std::string& text : all)
      for (const json& peak : json::parse(text)) per_rank.push_back(peak);
    metrics_->write({{"step", step_}, {"memory_phases", per_rank}});
    std::string line;
    for (const PhasePeak& peak : phases_.peaks()) {
      char text[96];
      std::snprintf(text, sizeof(text), "%s%s %.0f", line.empty() ? "" : ", ", peak.phase.c_str(),
                    static_cast<double>(peak.host_peak_bytes) / 1048576.0);
      line += text;
    }
    std::printf("ftrain: rank 0's peak resident MiB by phase: %s%s\n", line.c_str(),
                phases_.per_phase() ? "" : " (since the process started: /proc/self/clear_refs refused a reset)");
    std::fflush(stdout);
  }

  // Starts measuring a phase. FTRAIN_TEST_HANG=<rank>:<phase> makes that rank stop
  // there for good, as a hung process would, for the watchdog's tests.
  void enter_phase(const std::string& phase) {
    phases_.enter(phase);
    static const std::string hang = [] {
      const char* text = std::getenv("FTRAIN_TEST_HANG");
      return std::string(text ? text : "");
    }();
    if (!hang.empty() && hang == std::to_string(comm_.rank()) + ":" + phase)
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }

  static PhaseMemory::DevicePeak device_peak(dist::Communicator& comm) {
    if (!comm.device().is_cuda()) return {};
    return {[&comm] { return comm.peak_device_bytes(); }, [&comm] { comm.reset_peak_device_bytes(); }};
  }

  void print_banner() {
    int64_t parameters = 0;
    for (auto& [name, p] : named_params_) parameters += p.numel();
    std::cout << config_.resolved_ini;
    std::cout << "ftrain: " << comm_.world_size() << " rank(s), tp " << comm_.layout().tp_size
              << (plan_.sequence_parallel ? " (sequence parallel)" : "") << " x dp " << dp_size() << ", ZeRO stage " << config_.dist.zero << ", device " << comm_.device() << ", " << parameters << " parameters, "
              << (config_.model.init == ModelInit::random ? "RANDOMLY INITIALISED " : "pretrained ") << task_->family()
              << " weights from "
              << config_.model.path << ", task " << task_->name() << "\n"
              << "ftrain: global batch " << config_.train.global_batch_size << " sequences of "
              << loader_->seq_len() << " tokens = " << config_.data.micro_batch_size << " per rank x "
              << grad_accum_steps() << " accumulation x " << dp_size() << " data-parallel ranks\n";
    std::cout.flush();
  }

  const Config& config_;
  dist::Communicator& comm_;
  std::unique_ptr<Task> task_;
  std::optional<c10::ScalarType> autocast_dtype_;  // none: fp32
  std::optional<StepRecord> unread_;  // the last step's record, until written
  Clock::time_point run_start_, last_arrival_;
  double smoothed_step_seconds_ = 0;
  LossScaler scaler_;
  Watchdog watchdog_;
  StepProfiler profiler_;
  PhaseMemory phases_;  // each phase's measured peak memory
  std::vector<std::pair<std::string, torch::Tensor>> named_params_;  // this rank's parts
  dist::TensorParallelPlan plan_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  std::unique_ptr<dist::ZeroSharding> zero_;
  std::unique_ptr<data::StreamingLoader> loader_;
  std::unique_ptr<CheckpointStore> store_;
  std::unique_ptr<CheckpointWriter> writer_;
  std::unique_ptr<MetricsLog> metrics_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  bool has_validation_ = false;
  bool body_frozen_ = false;
  int64_t last_saved_step_ = -1;
  std::optional<EarlyStopping> early_stopping_;  // the best validation, and when to stop
};

}  // namespace

int run_training(const Config& config, dist::Communicator& comm) {
  const int threads = config.run.threads > 0
                          ? config.run.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / comm.local_size());
  torch::set_num_threads(threads);
  return Trainer(config, comm).run();
}

}  // namespace ftrain::launch
