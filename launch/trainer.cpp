#include "launch/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>
#include <cstring>
#include <map>

#include "model/safetensors.h"

#include "data/streaming_loader.h"
#include "dist/grad_reducer.h"
#include "dist/zero.h"
#include "launch/adamw.h"
#include "launch/checkpoint.h"
#include "model/causal_lm.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string format_duration(double seconds) {
  const auto total = static_cast<long long>(std::max(0.0, seconds));
  char text[32];
  std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", total / 3600, (total / 60) % 60, total % 60);
  return text;
}

// Token tensors of one micro-batch on the model's device.
struct DeviceBatch {
  torch::Tensor input_ids;  // (B, T) int64
  torch::Tensor targets;    // (B, T-1) int64: input_ids shifted left
  torch::Tensor target_mask;  // (B, T-1) float: 1 where the position counts in the loss
  int64_t target_count = 0;
};

DeviceBatch to_device(const data::Batch& batch, const torch::Device& device) {
  DeviceBatch out;
  auto ids = torch::from_blob(const_cast<int32_t*>(batch.input_ids.data()), {batch.batch_size, batch.seq_len},
                              torch::kInt32)
                 .to(torch::kInt64);
  out.input_ids = ids.to(device);
  out.targets = out.input_ids.slice(1, 1);
  if (batch.loss_mask.empty()) {
    out.target_mask = torch::ones({batch.batch_size, batch.seq_len - 1}, torch::kFloat32);
  } else {
    // loss_mask marks positions whose token is a prediction target; the first token of
    // a row is never predicted.
    auto mask = torch::from_blob(const_cast<uint8_t*>(batch.loss_mask.data()), {batch.batch_size, batch.seq_len},
                                 torch::kUInt8);
    out.target_mask = mask.slice(1, 1).to(torch::kFloat32);
  }
  if (!batch.attention_mask.empty()) {
    // Padding is never a target, whatever the loss mask says.
    auto attention = torch::from_blob(const_cast<uint8_t*>(batch.attention_mask.data()),
                                      {batch.batch_size, batch.seq_len}, torch::kUInt8);
    out.target_mask = out.target_mask * attention.slice(1, 1).to(torch::kFloat32);
  }
  out.target_count = static_cast<int64_t>(out.target_mask.sum().item<double>());
  out.target_mask = out.target_mask.to(device);
  return out;
}

// Sum over target positions of next-token cross-entropy. (B, T, V) logits predict
// tokens 1..T-1 from positions 0..T-2.
torch::Tensor next_token_loss_sum(const torch::Tensor& logits, const DeviceBatch& batch) {
  auto predictions = logits.slice(1, 0, logits.size(1) - 1);  // (B, T-1, V)
  auto per_token = torch::nn::functional::cross_entropy(
      predictions.reshape({-1, predictions.size(-1)}).to(torch::kFloat32), batch.targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return (per_token * batch.target_mask.reshape({-1})).sum();
}

class MetricsLog {
 public:
  explicit MetricsLog(const fs::path& path) : out_(path, std::ios::app) {
    if (!out_) throw std::runtime_error(path.string() + ": cannot open for writing");
  }
  void write(const json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

class Trainer {
 public:
  Trainer(const Config& config, dist::Communicator& comm) : config_(config), comm_(comm) {}

  int run() {
    prepare_run_dir();
    torch::manual_seed(config_.run.seed);
    if (!fs::is_directory(config_.model.path))
      throw std::runtime_error(config_.model.path + ": model directory not found (model.path)");
    model_ = model::CausalLm::load(model::CausalLmOptions{config_.model.path, config_.model.init == "pretrained",
                                                          config_.run.seed, config_.model.dropout});
    model_.module().to(comm_.device());
    for (auto& item : model_.module().named_parameters()) named_params_.emplace_back(item.key(), item.value());
    broadcast_parameters();

    const AdamWOptions adamw{config_.optim.beta1, config_.optim.beta2, config_.optim.eps, config_.optim.weight_decay};
    if (config_.zero.stage > 0) {
      // Parameters and gradients move into flat buffers; this rank's optimizer sees
      // only the slices of its shard.
      zero_ = std::make_unique<dist::ZeroSharding>(named_params_, comm_.dp(), config_.zero.stage);
      std::vector<AdamWSlot> slots;
      for (const auto& slice : zero_->local_slices())
        slots.push_back(AdamWSlot{slice.name, slice.param, slice.grad, slice.is_matrix});
      optimizer_ = std::make_unique<AdamW>(std::move(slots), adamw);
    } else {
      optimizer_ = std::make_unique<AdamW>(named_params_, adamw);
      std::vector<torch::Tensor> params;
      for (auto& [name, p] : named_params_) params.push_back(p);
      if (dp_size() > 1)
        reducer_ = std::make_unique<dist::GradientReducer>(
            params, comm_.dp(), static_cast<size_t>(config_.dist.bucket_mb * 1024 * 1024));
    }

    data::LoaderOptions loader_options = config_.data;
    loader_options.grad_accum_steps = grad_accum_steps();
    loader_ = std::make_unique<data::StreamingLoader>(loader_options, comm_.layout().dp_rank(comm_.rank()), dp_size());
    check_vocabulary();

    check_validation_split();

    store_ = std::make_unique<CheckpointStore>(fs::path(config_.run.dir) / "checkpoints", config_.checkpoint.keep);
    resume();

    if (rank0()) {
      metrics_ = std::make_unique<MetricsLog>(fs::path(config_.run.dir) / "metrics.jsonl");
      print_banner();
    }
    return train();
  }

 private:
  bool rank0() const { return comm_.rank() == 0; }
  int dp_size() const { return comm_.layout().dp_size; }
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
      model::write_file_atomically(dir / "config.ini", config_.resolved_ini);
    }
    comm_.world().barrier();
  }

  void broadcast_parameters() {
    if (comm_.world_size() == 1) return;
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : named_params_) {
      at::Tensor data = p.detach();
      comm_.world().broadcast(data, 0);
    }
  }

  void check_vocabulary() {
    // A token id at or beyond the embedding table would index out of range deep in the
    // forward pass; report it here with both files named.
    const int64_t model_vocab = model_.vocab_size();
    const int64_t data_vocab = loader_->info().vocab_size;
    if (data_vocab > model_vocab)
      throw std::runtime_error(config_.data.path + ": dataset vocab_size " + std::to_string(data_vocab) +
                               " exceeds the model's " + std::to_string(model_vocab) + " (" + config_.model.path +
                               "/config.json); the data was tokenized for another model");
  }

  // Every rank must agree on the checkpoint: rank 0 chooses (and verifies) it and
  // tells the others, which then only load it (loading checks the checksums of what
  // it reads). Per-rank choices could differ on a shared filesystem with stale caches.
  std::optional<fs::path> choose_checkpoint() {
    std::string chosen;
    if (rank0()) {
      if (config_.run.resume == "auto") {
        if (auto latest = store_->latest_valid()) chosen = latest->string();
      } else {
        std::string problem;
        if (!verify_checkpoint(config_.run.resume, &problem))
          throw std::runtime_error(problem + " (run.resume)");
        chosen = config_.run.resume;
      }
    }
    chosen = broadcast_string(chosen);
    if (chosen.empty()) return std::nullopt;
    return fs::path(chosen);
  }

  std::string broadcast_string(const std::string& text) {
    if (comm_.world_size() == 1) return text;
    at::Tensor length = torch::tensor({static_cast<int64_t>(text.size())}, torch::kInt64);
    comm_.world().broadcast(length, 0);
    at::Tensor bytes = torch::zeros({length.item<int64_t>()}, torch::kUInt8);
    if (rank0()) std::memcpy(bytes.data_ptr(), text.data(), text.size());
    comm_.world().broadcast(bytes, 0);
    return std::string(static_cast<const char*>(bytes.data_ptr()), bytes.numel());
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
    auto checkpoint = choose_checkpoint();
    if (!checkpoint) {
      if (rank0()) std::cout << "ftrain: no checkpoint in " << store_->directory().string() << "; starting fresh\n";
      return;
    }
    // Optimizer state is stored per parameter with its global shape, whatever the
    // sharding that wrote it, and cut into this rank's slices after reading.
    NamedTensors into;
    for (auto& [name, p] : named_params_) into.emplace_back("model/" + name, p);
    std::vector<at::Tensor> full_exp_avg, full_exp_avg_sq;
    if (zero_) {
      for (auto& [name, p] : named_params_) {
        full_exp_avg.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat32)));
        full_exp_avg_sq.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat32)));
        into.emplace_back("optim/exp_avg/" + name, full_exp_avg.back());
        into.emplace_back("optim/exp_avg_sq/" + name, full_exp_avg_sq.back());
      }
    } else {
      for (auto& [name, t] : optimizer_->named_state()) into.emplace_back("optim/" + name, t);
    }
    json meta = load_checkpoint(*checkpoint, into);
    if (zero_) {
      torch::NoGradGuard no_grad;
      auto mine = zero_->shard_state(full_exp_avg);
      auto mine_sq = zero_->shard_state(full_exp_avg_sq);
      auto states = optimizer_->exp_avgs();
      auto states_sq = optimizer_->exp_avg_sqs();
      for (size_t k = 0; k < states.size(); ++k) {
        states[k].copy_(mine[k]);
        states_sq[k].copy_(mine_sq[k]);
      }
    }
    check_data_order(meta.at("data"), *checkpoint);
    step_ = meta.at("step").get<int64_t>();
    tokens_seen_ = meta.value("tokens_seen", int64_t{0});
    optimizer_->set_step_count(meta.at("optimizer_steps").get<int64_t>());
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
    model::write_file_atomically(path, kept);
  }

  void save_checkpoint() {
    // Every data-parallel replica holds the same model and optimizer state, so rank 0
    // writes them. Random state needs no saving: dropout is reseeded from (seed, rank,
    // step) at every step.
    NamedTensors optimizer_state;
    if (zero_) {
      // Collective: every rank contributes its slices of the sharded state.
      for (auto& [name, t] : zero_->gather_state(optimizer_->exp_avgs()))
        optimizer_state.emplace_back("exp_avg/" + name, t);
      for (auto& [name, t] : zero_->gather_state(optimizer_->exp_avg_sqs()))
        optimizer_state.emplace_back("exp_avg_sq/" + name, t);
    } else {
      optimizer_state = optimizer_->named_state();
    }
    if (rank0()) {
      NamedTensors tensors;
      for (auto& [name, p] : named_params_) tensors.emplace_back("model/" + name, p);
      for (auto& [name, t] : optimizer_state) tensors.emplace_back("optim/" + name, t);
      json data_meta = data_order_meta();
      data_meta["global_position"] = loader_->state().global_position;
      data_meta["path"] = config_.data.path;
      json meta = {
          {"tokens_seen", tokens_seen_},
          {"optimizer_steps", optimizer_->step_count()},
          {"data", data_meta},
          {"rng", {{"scheme", "reseeded every step from (run.seed, rank, step)"}, {"seed", config_.run.seed}}},
          {"layout",
           {{"world_size", comm_.world_size()}, {"tp", comm_.layout().tp_size}, {"dp", dp_size()},
            {"zero", config_.zero.stage}}},
          {"model", {{"family", model_.family()}, {"path", config_.model.path}}},
          {"config", config_.resolved_ini},
      };
      auto dir = store_->save(step_, tensors, meta);
      std::cout << "ftrain: saved checkpoint " << dir.string() << "\n";
    }
    comm_.world().barrier();
  }

  // Whether the validation split exists is decided once, identically on every rank
  // (the file is the same), so evaluation never leaves some ranks in a collective.
  void check_validation_split() {
    const auto splits = data::list_splits(config_.data.path);
    has_validation_ = std::find(splits.begin(), splits.end(), config_.train.eval_split) != splits.end();
    if (!has_validation_ && rank0())
      std::cout << "ftrain: " << config_.data.path << " has no '" << config_.train.eval_split
                << "' split; validation is off (train.eval_split)\n";
  }

  // Mean loss over the validation sequences, each evaluated once across ranks.
  std::optional<double> evaluate() {
    if (!has_validation_) return std::nullopt;
    data::EvalReader reader(config_.data.path, config_.train.eval_split, config_.data.micro_batch_size,
                            config_.train.eval_samples > 0 ? config_.train.eval_samples : -1,
                            comm_.layout().dp_rank(comm_.rank()), dp_size());
    torch::NoGradGuard no_grad;
    model_.module().eval();
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(comm_.device()));
    int64_t count = 0;
    while (auto batch = reader.next()) {
      DeviceBatch device_batch = to_device(*batch, comm_.device());
      loss_sum += next_token_loss_sum(model_.logits(device_batch.input_ids), device_batch).to(torch::kFloat64);
      count += device_batch.target_count;
    }
    model_.module().train();
    const double total = comm_.dp().all_reduce(loss_sum.item<double>(), dist::ReduceOp::Sum);
    count = comm_.dp().all_reduce(count, dist::ReduceOp::Sum);
    if (count == 0) return std::nullopt;
    return total / static_cast<double>(count);
  }

  void report_validation() {
    auto val_loss = evaluate();
    if (!val_loss || !rank0()) return;
    std::printf("step %6lld | validation loss %.4f | perplexity %.2f\n", static_cast<long long>(step_), *val_loss,
                std::exp(*val_loss));
    std::fflush(stdout);
    metrics_->write({{"step", step_}, {"val_loss", *val_loss}, {"val_perplexity", std::exp(*val_loss)}});
  }

  double clip_gradients() {
    torch::NoGradGuard no_grad;
    if (zero_) {
      const double norm = std::sqrt(zero_->gradient_square_sum());
      if (config_.train.grad_clip > 0 && norm > config_.train.grad_clip)
        zero_->scale_gradients(config_.train.grad_clip / (norm + 1e-6));
      return norm;
    }
    // After the data-parallel reduction every rank holds the same gradients, so the
    // local norm is the global one. One host synchronisation for the whole model.
    std::vector<torch::Tensor> grads;
    for (auto& [name, p] : named_params_)
      if (p.grad().defined()) grads.push_back(p.mutable_grad());
    if (grads.empty()) return 0;
    const double norm = torch::stack(at::_foreach_norm(grads, 2)).to(torch::kFloat64).norm().item<double>();
    if (config_.train.grad_clip > 0 && norm > config_.train.grad_clip)
      at::_foreach_mul_(grads, config_.train.grad_clip / (norm + 1e-6));
    return norm;
  }

  int train() {
    const LrScheduleOptions schedule{config_.optim.lr, config_.optim.min_lr, config_.optim.warmup_steps,
                                     config_.train.steps, config_.optim.decay};
    model_.module().train();
    const int64_t accum = grad_accum_steps();
    const int64_t start_step = step_;
    const auto run_start = Clock::now();
    double smoothed_step_seconds = 0;
    int exit_code = 0;

    while (step_ < config_.train.steps) {
      const auto step_start = Clock::now();
      const double bytes_before_step = comm_.stats().total_bytes_sent();
      std::vector<DeviceBatch> micro_batches;
      int64_t local_targets = 0;
      for (int64_t m = 0; m < accum; ++m) {
        micro_batches.push_back(to_device(loader_->next(), comm_.device()));
        local_targets += micro_batches.back().target_count;
      }
      // The loss is normalised by the number of target tokens in the whole global batch,
      // so summing gradients over micro-steps and ranks gives the gradient of the global
      // mean, however the batch is split.
      const int64_t global_targets = comm_.dp().all_reduce(local_targets, dist::ReduceOp::Sum);
      if (global_targets == 0) throw std::runtime_error(config_.data.path + ": a global batch has no target tokens");
      // Dropout masks differ per rank and step but depend on nothing else, so a resumed
      // run draws the same masks as an uninterrupted one, on CPU and GPU alike.
      torch::manual_seed(config_.run.seed + 1000003ULL * (comm_.rank() + 1) + 7919ULL * step_);
      torch::Tensor local_loss_sum =
          torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(comm_.device()));
      for (auto& batch : micro_batches) {
        torch::Tensor loss_sum = next_token_loss_sum(model_.logits(batch.input_ids), batch);
        (loss_sum / static_cast<double>(global_targets)).backward();
        local_loss_sum += loss_sum.detach().to(torch::kFloat64);
      }
      if (reducer_) reducer_->reduce(dist::ReduceOp::Sum);
      if (zero_) zero_->reduce_gradients();
      const double loss =
          comm_.dp().all_reduce(local_loss_sum.item<double>(), dist::ReduceOp::Sum) / global_targets;
      if (!std::isfinite(loss))
        throw std::runtime_error("loss is " + std::to_string(loss) + " at step " + std::to_string(step_ + 1) +
                                 " (lower optim.lr or check the data)");
      const double grad_norm = clip_gradients();
      ++step_;
      const double lr = learning_rate(schedule, step_);
      optimizer_->step(lr);
      if (zero_) {
        zero_->gather_parameters();
        zero_->zero_grad();
      } else {
        optimizer_->zero_grad();
      }

      const double step_bytes = comm_.stats().total_bytes_sent() - bytes_before_step;
      const int64_t step_tokens = config_.train.global_batch_size * loader_->seq_len();
      tokens_seen_ += step_tokens;
      const double step_seconds = seconds_since(step_start);
      smoothed_step_seconds =
          step_ == start_step + 1 ? step_seconds : 0.9 * smoothed_step_seconds + 0.1 * step_seconds;
      const double tokens_per_s = step_tokens / step_seconds;
      if (rank0()) {
        metrics_->write({{"step", step_},
                         {"loss", loss},
                         {"lr", lr},
                         {"grad_norm", grad_norm},
                         {"tokens_per_s", tokens_per_s},
                         {"tokens_seen", tokens_seen_},
                         {"step_time_s", step_seconds},
                         {"comm_bytes", step_bytes},
                         {"elapsed_s", seconds_since(run_start)}});
        if (step_ % config_.train.log_every == 0 || step_ == start_step + 1 || step_ == config_.train.steps) {
          std::printf("step %6lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | eta %s\n",
                      static_cast<long long>(step_), static_cast<long long>(config_.train.steps), loss, lr,
                      grad_norm, tokens_per_s,
                      format_duration(smoothed_step_seconds * (config_.train.steps - step_)).c_str());
          std::fflush(stdout);
        }
      }

      if (config_.train.eval_every > 0 && step_ % config_.train.eval_every == 0 && step_ < config_.train.steps)
        report_validation();
      const bool last = step_ == config_.train.steps;
      const bool leaving = config_.run.exit_after_steps > 0 && step_ - start_step >= config_.run.exit_after_steps;
      if ((config_.checkpoint.every > 0 && step_ % config_.checkpoint.every == 0) ||
          (last && config_.checkpoint.at_end) || (leaving && !last))
        save_checkpoint();
      if (leaving && !last) {
        if (rank0()) std::cout << "ftrain: stopping after " << config_.run.exit_after_steps << " steps (run.exit_after_steps)\n";
        return exit_code;
      }
    }
    report_validation();
    if (config_.checkpoint.export_hf && rank0()) {
      const fs::path final_dir = fs::path(config_.run.dir) / "final";
      model_.save(final_dir, model::ExistingDirectory::overwrite);
      std::cout << "ftrain: final model written to " << final_dir.string() << " (Hugging Face format)\n";
    }
    comm_.world().barrier();
    return exit_code;
  }

  void print_banner() {
    int64_t parameters = 0;
    for (auto& [name, p] : named_params_) parameters += p.numel();
    std::cout << config_.resolved_ini;
    std::cout << "ftrain: " << comm_.world_size() << " rank(s), tp " << comm_.layout().tp_size << " x dp "
              << dp_size() << ", ZeRO stage " << config_.zero.stage << ", device " << comm_.device() << ", " << parameters << " parameters, "
              << (config_.model.init == "random" ? "RANDOMLY INITIALISED " : "pretrained ") << model_.family()
              << " weights from "
              << config_.model.path << "\n"
              << "ftrain: global batch " << config_.train.global_batch_size << " sequences of "
              << loader_->seq_len() << " tokens = " << config_.data.micro_batch_size << " per rank x "
              << grad_accum_steps() << " accumulation x " << dp_size() << " data-parallel ranks\n";
    std::cout.flush();
  }

  const Config& config_;
  dist::Communicator& comm_;
  model::CausalLm model_;
  std::vector<std::pair<std::string, torch::Tensor>> named_params_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  std::unique_ptr<dist::ZeroSharding> zero_;
  std::unique_ptr<data::StreamingLoader> loader_;
  std::unique_ptr<CheckpointStore> store_;
  std::unique_ptr<MetricsLog> metrics_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  bool has_validation_ = false;
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
