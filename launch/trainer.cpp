#include "launch/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "data/streaming_loader.h"
#include "dist/data_parallel.h"
#include "launch/checkpoint/checkpointer.h"
#include "launch/checkpoint/registry.h"
#include "launch/eval/evaluator.h"
#include "launch/export.h"
#include "launch/optim/adamw.h"
#include "launch/optim/clip.h"
#include "launch/optim/schedule.h"
#include "launch/precision.h"
#include "launch/run_state.h"
#include "launch/setup.h"
#include "launch/signals.h"
#include "launch/task.h"
#include "launch/telemetry/memory.h"
#include "launch/telemetry/profiler.h"
#include "launch/telemetry/run_log.h"
#include "launch/telemetry/sample_log.h"
#include "launch/watchdog.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ftrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

class Trainer {
 public:
  Trainer(const Config& config, dist::Communicator& comm)
      : config_(config),
        comm_(comm),
        autocast_dtype_(compute_dtype(config.train.precision)),
        scaler_(config.train.precision == Precision::fp16, config.train.loss_scale, config.train.loss_scale_window),
        watchdog_(config.run.step_timeout, comm.rank()),
        profiler_(ProfilerOptions{config.run.profile_from, config.run.profile_steps,
                                  (fs::path(config.run.dir) / "profile").string(), comm.rank(),
                                  comm.device().is_cuda()}),
        phases_(device_peak(comm)) {}

  int run() {
    set_up();
    // Every phase before the steps is watched too: a rank that hangs while the others
    // wait in the resume's agreement ends the job the same way.
    enter_phase("resume");
    watchdog_.begin("resuming from " + checkpointer_->store().directory().string());
    resume();
    watchdog_.end();
    phases_.close();
    if (rank0()) print_banner(config_, comm_, *task_, plan_, *loader_);
    return train();
  }

 private:
  // The model loaded and split, data parallelism, the optimizer, the data (setup.h);
  // evaluation, the log and the checkpoint state.
  void set_up() {
    enter_phase("load");
    watchdog_.begin("loading the model from " + config_.model.path);
    RunParts run = build_run(config_, comm_, [this](const std::string& next) {
      enter_phase("setup");
      watchdog_.begin(next);
    });
    task_ = std::move(run.task);
    plan_ = std::move(run.plan);
    data_parallel_ = std::move(run.data_parallel);
    optimizer_ = std::move(run.optimizer);
    loader_ = std::move(run.loader);
    log_ = std::make_unique<RunLog>(
        RunLog::Options{config_.run.dir, config_.run.tensorboard, config_.train.steps, config_.train.log_every}, comm_);
    evaluator_ = std::make_unique<Evaluator>(config_, *task_, comm_, *data_parallel_, autocast_dtype_, watchdog_,
                                             phases_, *log_);
    register_state();
    checkpointer_ = std::make_unique<Checkpointer>(fs::path(config_.run.dir) / "checkpoints", config_.checkpoint.keep,
                                                   config_.checkpoint.async, comm_.world(), registry_);
    samples_ = std::make_unique<SampleLog>(config_.run.dir, config_.run.log_samples, comm_.layout(), comm_.rank());
  }

  // The loader's next micro-batch; its rows are kept for run.log_samples.
  data::Batch next_batch() {
    data::Batch batch = loader_->next();
    samples_->add(batch.sample_ids);
    return batch;
  }

  // What a checkpoint holds. Random state needs no saving: dropout is reseeded from
  // (seed, data-parallel rank, step) at every step.
  void register_state() {
    register_model_state(registry_, *data_parallel_, plan_, comm_.layout(), comm_.rank(), optimizer_);
    register_optimizer_steps(registry_, optimizer_, *task_, config_.train.freeze_base_steps);
    register_data_state(registry_, *loader_, config_);
    registry_.add_meta("tokens_seen", [this] { return json(tokens_seen_); },
                       [this](const json& saved) { tokens_seen_ = saved.get<int64_t>(); });
    evaluator_->register_state(registry_);
    scaler_.register_state(registry_);
    register_run_record(registry_, config_, comm_, *task_);
  }

  // Parameters and optimizer state are stored with their global shapes, whatever the
  // layout that wrote them; each rank reads the blocks of its part, checking each.
  void resume() {
    if (config_.run.resume == "none") return;
    if (const auto loaded = checkpointer_->resume(config_.run.resume)) {  // every registered part restored
      step_ = loaded->meta.at("step").get<int64_t>();
      log_->truncate_after(step_);  // the steps after the checkpoint run again
      if (rank0()) std::cout << "ftrain: resumed from " << loaded->checkpoint.string() << " at step " << step_ << "\n";
    } else if (rank0()) {
      std::cout << "ftrain: no checkpoint in " << checkpointer_->store().directory().string() << "; starting fresh\n";
    }
    comm_.world().barrier();
  }

  // Collective. Starts saving the state after step_: each rank copies its part to host
  // memory, and the files are written in the background (checkpoint.async) and
  // committed by a later commit_saves().
  void save_checkpoint() {
    log_->flush();  // its figures are the saved step's
    Watchdog::Scope watched(watchdog_, "saving the checkpoint of step " + std::to_string(step_));
    PhaseMemory::Scope phase(phases_, "save");
    checkpointer_->save(step_);
  }

  // Collective. Commits the save in flight once every rank has written it; with wait,
  // waits for that.
  void commit_saves(bool wait) {
    if (!checkpointer_->pending()) return;
    std::optional<Watchdog::Scope> watched;
    if (wait) watched.emplace(watchdog_, "finishing the checkpoint of step " + std::to_string(checkpointer_->last_saved_step()));
    checkpointer_->commit(wait);
  }

  struct StepOutcome {
    at::Tensor loss;       // the global batch's mean loss per target, float64 on the device
    at::Tensor grad_norm;  // before clipping, float64 on the device
    double lr = 0, loss_scale = 1;
    bool stepped = true;   // false: fp16 gradients overflowed and the update was skipped
  };

  // TRAINING STEP: forward and backward over this rank's micro-batches, the gradients
  // finished over the data-parallel group, clipped, and one optimizer update. What
  // the loop does around it is bookkeeping.
  StepOutcome train_step() {
    set_body_frozen(step_ < config_.train.freeze_base_steps);
    std::vector<TaskBatch> micro_batches;
    for (int64_t m = 0; m < grad_accum_steps(); ++m) micro_batches.push_back(task_->prepare(next_batch(), comm_.device()));
    // The loss is normalised by the targets (tokens, or labelled rows) of the whole
    // global batch, so summing gradients over micro-batches and ranks gives the
    // gradient of the global mean, however the batch is split.
    const int64_t global_targets = global_target_count(micro_batches, comm_.dp(), config_.data.path);
    torch::manual_seed(dropout_seed());
    at::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(comm_.device()));
    {
      // One cast of each weight for all micro-batches, where weights stay in memory.
      WeightCastCache casts(autocast_dtype_.has_value() && data_parallel_->parameters_resident());
      for (size_t m = 0; m < micro_batches.size(); ++m) {
        data_parallel_->before_forward();
        at::Tensor loss;
        {
          AutocastScope autocast(comm_.device().type(), autocast_dtype_);
          loss = task_->loss_sum(micro_batches[m]);  // fp32: the cross-entropy runs on fp32 logits
        }
        data_parallel_->before_backward(/*completes_step=*/m + 1 == micro_batches.size());
        (loss * (scaler_.scale() / static_cast<double>(global_targets))).backward();
        data_parallel_->after_backward();
        loss_sum += loss.detach().to(torch::kFloat64);
      }
    }  // the optimizer changes the weights below
    data_parallel_->finish_gradients();
    comm_.dp().all_reduce(loss_sum, dist::ReduceOp::Sum);  // on the device: no host wait
    const double loss_scale = scaler_.scale();
    if (scaler_.enabled()) data_parallel_->scale_gradients(1.0 / loss_scale);
    const at::Tensor grad_norm = clip_gradient_norm(*data_parallel_, plan_, comm_, config_.train.grad_clip);
    // The norm is the same on every rank, so all skip or step together. Only fp16's
    // loss scaling reads it on the host within the step.
    const bool stepped = !scaler_.enabled() || scaler_.update(std::isfinite(grad_norm.item<double>()));
    ++step_;
    const double lr = learning_rate(config_.optim, config_.train.steps, step_);
    if (stepped) optimizer_->step(lr);
    data_parallel_->after_step();
    return StepOutcome{loss_sum / static_cast<double>(global_targets), grad_norm, lr, loss_scale, stepped};
  }

  // Dropout masks differ per data-parallel rank and step but depend on nothing else,
  // so a resumed run draws the same masks as an uninterrupted one, on CPU and GPU
  // alike. Tensor-parallel ranks draw alike: their replicated activations need the
  // same masks.
  uint64_t dropout_seed() const {
    return config_.run.seed + 1000003ULL * (comm_.layout().dp_rank(comm_.rank()) + 1) + 7919ULL * step_;
  }

  int train() {
    task_->module().train();
    const int64_t start_step = step_;
    log_->start();
    if (rank0() && step_ < config_.train.steps) {
      const double startup = seconds_since_process_start();
      log_->write({{"step", step_}, {"startup_s", startup}});
      std::printf("ftrain: first step starts %.2f s after the process started\n", startup);
    }
    while (step_ < config_.train.steps) {
      // The first step allocates what every later one reuses (gradients, optimizer
      // state). A phase is entered once, not every step: entering trims the heap, which
      // the steps keep on purpose (launch/main.cpp).
      const char* phase = step_ == start_step ? "first_step" : "train";
      if (phases_.current() != phase) phases_.enter(phase);
      watchdog_.begin("step " + std::to_string(step_ + 1));
      const auto step_start = Clock::now();
      profiler_.before_step(step_ + 1);
      const double bytes_before_step = comm_.stats().total_bytes_sent();

      const StepOutcome outcome = train_step();

      // Diagnostics. The loss and gradient norm are read once the next step is queued,
      // so the host never waits for the device mid-step; only a GPU runs ahead.
      const double step_bytes = comm_.stats().total_bytes_sent() - bytes_before_step;
      if (step_ == start_step + 1) report_held_memory();  // ZeRO-2/3's peaks are reached in a whole step
      const int64_t tokens = config_.train.global_batch_size * loader_->seq_len();
      tokens_seen_ += tokens;
      log_->hold({.step = step_, .start = step_start,
                  .figures = DeviceReadback(torch::stack({outcome.loss, outcome.grad_norm})),
                  .lr = outcome.lr, .loss_scale = outcome.loss_scale, .comm_bytes = step_bytes,
                  .stepped = outcome.stepped, .tokens = tokens, .tokens_seen = tokens_seen_,
                  .first = step_ == start_step + 1});
      if (!comm_.device().is_cuda()) log_->flush();
      samples_->end_step(step_, start_step);
      profiler_.after_step(step_, seconds_since(step_start));

      if (const auto exit_code = between_steps(start_step)) return *exit_code;
      if (stop_early_) break;
    }
    log_->flush();
    watchdog_.end();
    profiler_.finish();
    if (step_ == config_.train.steps) validate();
    finish();
    return 0;
  }

  // After each step: validation (and early stopping, which sets stop_early_), the
  // periodic save, and leaving after run.exit_after_steps or on a stop signal, with
  // the step saved. Returns the exit code when the process should leave now.
  std::optional<int> between_steps(int64_t start_step) {
    const bool last = step_ == config_.train.steps;
    // The end of the head-only stage is always validated, to show what it reached.
    const bool stage_end = step_ == config_.train.freeze_base_steps;
    if (((config_.train.eval_every > 0 && step_ % config_.train.eval_every == 0) || stage_end) && !last) {
      if (stage_end && rank0()) std::cout << "ftrain: head-only stage done (train.freeze_base_steps)\n";
      if (validate()) {
        if (rank0()) std::cout << "ftrain: stopping early at step " << step_ << ": " << evaluator_->stop_reason() << "\n";
        if (config_.checkpoint.at_end && checkpointer_->last_saved_step() != step_) save_checkpoint();
        stop_early_ = true;
        return std::nullopt;
      }
    }
    const bool leaving = config_.run.exit_after_steps > 0 && step_ - start_step >= config_.run.exit_after_steps;
    if (((config_.checkpoint.every > 0 && step_ % config_.checkpoint.every == 0) ||
         (last && config_.checkpoint.at_end) || (leaving && !last)) &&
        checkpointer_->last_saved_step() != step_)
      save_checkpoint();
    commit_saves(/*wait=*/false);  // as soon as every rank has written it
    if (leaving && !last) {
      leave();
      if (rank0()) std::cout << "ftrain: stopping after " << config_.run.exit_after_steps << " steps (run.exit_after_steps)\n";
      return 0;
    }
    // A stop request (SIGUSR1 before a time limit or pre-emption, SIGTERM, SIGINT) on
    // any rank stops every rank after the same step, with the step saved.
    const auto requested = last ? 0 : comm_.world().all_reduce(static_cast<int64_t>(stop_signal()), dist::ReduceOp::Max);
    if (requested == 0) return std::nullopt;
    if (checkpointer_->last_saved_step() != step_) save_checkpoint();
    leave();
    if (rank0())
      std::cout << "ftrain: received " << signal_name(static_cast<int>(requested)) << ": saved step " << step_
                << "; exiting with " << kExitSavedRequeue << " so the job can be requeued and resumed (run.resume=auto)"
                << std::endl;
    return kExitSavedRequeue;
  }

  // Leaving before train.steps: the log written, the save committed.
  void leave() {
    log_->flush();
    profiler_.finish();
    commit_saves(/*wait=*/true);
    log_->report_phases(step_, phases_);
  }

  // Validation at this step, keeping the best checkpoint (checkpoint.keep_best).
  // Returns whether early stopping says stop. Collective.
  bool validate() {
    log_->flush();  // the step's line before its validation's
    if (evaluator_->validate(step_) && config_.checkpoint.keep_best) {
      if (checkpointer_->last_saved_step() != step_) save_checkpoint();
      commit_saves(/*wait=*/true);
      const EarlyStopping& early = evaluator_->early_stopping();
      checkpointer_->mark_best(step_, {{"metric", early.metric()}, {"value", *early.best_value()}, {"step", step_}});
    }
    return evaluator_->early_stopping().should_stop();
  }

  // After training: the best weights (with keep_best), the test report, the export.
  void finish() {
    commit_saves(/*wait=*/true);
    const EarlyStopping& early = evaluator_->early_stopping();
    std::optional<fs::path> best;
    if (config_.checkpoint.keep_best && evaluator_->has_validation()) best = checkpointer_->best();
    if (best && early.best_step() != step_) {
      Watchdog::Scope watched(watchdog_, "loading the best checkpoint " + best->string());
      std::string problem;
      if (!checkpointer_->load(*best, {"model"}, problem))
        throw std::runtime_error("the best checkpoint cannot be loaded: " + problem);
      if (rank0())
        std::cout << "ftrain: finishing with the best model by validation " << early.metric() << ": "
                  << best->string() << "\n";
    }
    const int64_t weights_step = best ? early.best_step() : step_;
    evaluator_->test(weights_step);
    // Training is over and its checkpoints committed: the optimizer's moments and the
    // gradients are not needed again, and the export may have their memory (three
    // quarters of ZeRO-3's state).
    optimizer_.reset();
    data_parallel_->release_gradients();
    enter_phase("export");
    Watchdog::Scope watched(watchdog_, "exporting the model to " + config_.run.dir + "/final and ending the run");
    if (config_.checkpoint.export_hf) export_final(config_, *task_, *data_parallel_, plan_, comm_, weights_step);
    comm_.world().barrier();
    log_->report_phases(step_, phases_);
  }

  // The frozen-body stage: before step freeze_base_steps + 1 only the head trains.
  void set_body_frozen(bool frozen) {
    if (frozen == body_frozen_) return;
    body_frozen_ = frozen;
    task_->set_body_frozen(frozen, *optimizer_);
    if (rank0())
      std::cout << "ftrain: " << (frozen ? "training the head only (train.freeze_base_steps)" : "training the whole model")
                << " from step " << step_ + 1 << "\n";
  }

  void report_held_memory() {
    const auto held = data_parallel_->peak_held_bytes();
    log_->report_held(step_, held.parameters, held.gradients, optimizer_->state_bytes());
  }

  void enter_phase(const std::string& phase) {
    phases_.enter(phase);
    hang_if_asked(comm_.rank(), phase);
  }

  bool rank0() const { return comm_.rank() == 0; }
  int dp_size() const { return comm_.layout().dp_size; }
  int64_t grad_accum_steps() const {
    return config_.train.global_batch_size / (config_.data.micro_batch_size * dp_size());
  }

  const Config& config_;
  dist::Communicator& comm_;
  std::optional<c10::ScalarType> autocast_dtype_;  // none: fp32
  LossScaler scaler_;
  Watchdog watchdog_;
  StepProfiler profiler_;
  PhaseMemory phases_;  // each phase's measured peak memory
  std::unique_ptr<Task> task_;
  dist::TensorParallelPlan plan_;
  std::unique_ptr<dist::DataParallel> data_parallel_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<data::StreamingLoader> loader_;
  std::unique_ptr<RunLog> log_;
  std::unique_ptr<Evaluator> evaluator_;
  StateRegistry registry_;
  std::unique_ptr<Checkpointer> checkpointer_;
  std::unique_ptr<SampleLog> samples_;  // run.log_samples
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  bool body_frozen_ = false;
  bool stop_early_ = false;
};

}  // namespace

int run_training(const Config& config, dist::Communicator& comm) {
  torch::set_num_threads(intra_op_threads(config.run.threads, comm.local_size()));
  return Trainer(config, comm).run();
}

}  // namespace ftrain::launch
