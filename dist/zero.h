// ZeRO-style sharding (Rajbhandari et al., 2020) over the data-parallel group of the
// optimizer state (stage 1), the gradients (stage 2) and the parameters (stage 3).
//
// The model is cut into units: one per transformer block, and the "root" (embeddings,
// final norm, head: every parameter in no block). Every parameter becomes a view into
// its unit's flat buffer, and its gradient a view into a second one, so a unit is
// reduced and gathered with single collectives. A unit's flat space is padded to a
// multiple of the data-parallel size N and cut into N equal contiguous shards; rank d
// owns shard d of every unit, and the optimizer updates only the parts of parameters
// inside its shards (`local_slices`).
//
//   stage 1: optimizer state sharded. Every unit's full gradients stay allocated and
//            accumulate over the micro-batches; during the backward pass that
//            completes the step each block's are reduce-scattered, in place into this
//            rank's chunk of them, as soon as the block's backward is done, the root's
//            (complete only at the end) by reduce_gradients(). After the step each
//            unit's updated shard is all-gathered.
//   stages 2, 3: the reduced gradients of this rank's shards live in one shard-sized
//            buffer. A unit's full gradients have memory only while its backward runs:
//            once a block's backward is done they are reduce-scattered, added into the
//            shard gradients (so micro-batches accumulate) and freed.
//   stage 2: parameters stay whole. The root's full gradients are held from
//            before_backward() to after_backward(), which reduces them, so every
//            micro-batch is reduced and, between backward passes, a rank holds
//            gradients only for its shard. After the step each unit's updated shard is
//            all-gathered.
//   stage 3: parameters sharded too. Between uses a rank holds only its shards; a
//            block's full parameters are all-gathered just before it runs (the next
//            block's gather starts meanwhile) and freed right after, gathered again
//            for its backward (prefetching the block before it), and freed with its
//            gradients once its backward is done. The root stays gathered, and its
//            gradients held, from before_forward() until reduce_gradients().
//
// Input unit (stage 3, when the caller names the parameters used only before the first
// block: embeddings not tied to the head). The root is then split in two, so a rank
// never holds both the embedding and the head whole, with their gradients: for a
// large vocabulary they are most of what a rank gathers.
//   input: gathered by before_forward(), freed as block 0 starts; gathered again, with
//          its gradients, once block 0's backward is done (the embedding's backward
//          comes last), and reduce-scattered and freed by after_backward().
//   root:  (final norm, head) gathered from the last block's forward on (prefetched as
//          it starts); once backward reaches the last block, the root's own backward is
//          done: its gradients are reduce-scattered and it is freed.
// Both are gathered and reduced in every micro-batch, as blocks are.
//
// Vocabulary units (stage 3, when the caller names the matrices indexed by token id: the
// token embedding, an untied head). Each such (V, C) parameter is a unit of its own,
// padded to N * R rows (R = ceil(V / N)) so that rank d's shard is rows [d R, (d+1) R).
// It is never gathered whole: dist/streamed_vocab.h looks tokens up and computes the
// head's loss window by window (the same slice of every rank's rows, all-gathered),
// and reduce-scatters each window's gradient into the shard gradients during backward.
// A vocabulary matrix used twice (tied to the head) streams for both uses.
//
// Overlap (set_overlap, the trainer's dist.overlap): a block's reduce-scatter is
// started when its backward is done and waited when the next block's is (one in
// flight), so it runs while the block before it computes its backward. The price is
// one more block's full gradients held meanwhile. Without overlap each reduce-scatter
// completes before backward goes on (stages 2, 3), or runs after it (stage 1).
//
// Communication per step and rank, in elements (psi = parameters, padded per unit),
// with k micro-batches (without an input unit):
//   stage 1: 2 psi (N-1)/N: the reduce-scatter of the accumulated gradients plus the
//            all-gather of the updated parameters, the volume of a plain all-reduce
//   stage 2: (k + 1) psi (N-1)/N: a reduce-scatter of every unit per micro-batch, one
//            all-gather of every unit per step (2 psi (N-1)/N at k = 1)
//   stage 3, one micro-batch: 3 psi_blocks (N-1)/N (all-gather in forward, all-gather
//            in backward, reduce-scatter) + 2 psi_root (N-1)/N (one all-gather, one
//            reduce-scatter); each further micro-batch adds 3 psi_blocks (N-1)/N.
//            With an input unit, per micro-batch: 3 psi_blocks + 3 psi_input +
//            2 psi_root, times (N-1)/N. A vocabulary unit of psi_v elements (padded
//            to whole windows) adds, per micro-batch, psi_v (N-1)/N per use in a forward
//            pass (the embedding, the head), once more for the head's backward, and
//            psi_v (N-1)/N per use for the reduce-scatters of its gradients.
//
// A training step:
//   model->set_block_runner(zero.block_runner(model::checkpoint_blocks()));  // once
//   for each micro-batch: before_forward(); loss = ...; before_backward(last);
//                         loss.backward(); after_backward();
//   reduce_gradients(); [gradient_square_sum, scale_gradients]; optimizer on
//   local_slices(); gather_parameters() (stage 3: no-op); zero_grad();
// and an evaluation: per batch before_forward() and a forward under no-grad; then
// release().
// At stage 3, until before_forward() the root's parameters have no memory: running the
// model without it reads freed storage.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dist/comm.h"
#include "model/block_runner.h"

namespace ftrain::dist {

// The most bytes one gathered window of a vocabulary matrix holds ("Vocabulary units"):
// 64 MiB, and no more than a quarter of the largest block's full parameters, so that a
// window and its gradient hold half what a gathered block and its gradients do (unless
// one row of every rank is more). The head's windows run at the start of the backward
// pass, when the activations are at their largest.
// launch/tools/scaling_model.py counts with the same.
inline constexpr int64_t kStreamWindowBytes = int64_t{64} << 20;

class ZeroSharding {
 public:
  // The part of one parameter that lies in this rank's shard, as flat views.
  struct Slice {
    std::string name;        // the parameter's name
    at::Tensor param;        // 1-D view into the parameter (stage 3: into this rank's shard)
    at::Tensor grad;         // 1-D view into the reduced gradient of the same elements
    int64_t param_offset;    // where the slice starts inside the flattened parameter
    int64_t param_numel;     // elements of the whole parameter
    bool is_matrix;          // the parameter has two or more dimensions
    size_t param_index;      // position in the constructor's parameter list
  };

  // Moves every parameter (and its gradient) into flat buffers; all parameters must
  // share dtype and device, and be equal on every rank. block_param_names[i] names (as
  // in named_params) the parameters of transformer block i: each block is a unit, and
  // every other parameter the root unit (with none given, the whole model is one unit,
  // reduced after backward). No communication.
  // input_param_names: at stage 3, the parameters used only before block 0 (see
  // "Input unit" above); ignored at stages 1 and 2. vocabulary_param_names: at stage 3
  // with blocks, the (V, C) matrices that stream by rows ("Vocabulary units"); they
  // leave the input unit and the root. Ignored otherwise.
  ZeroSharding(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp, int stage,
               std::vector<std::vector<std::string>> block_param_names = {},
               std::vector<std::string> input_param_names = {},
               std::vector<std::string> vocabulary_param_names = {});

  // Stage 3 for a model built without its values (model::SkipInitialisation, so their
  // memory was never written): the parameters' own storage is dropped unread, and
  // this rank's shards, on `device` in `dtype`, are filled by fill_shard() as each
  // parameter is read. The whole model never exists in this process. No communication.
  struct Unfilled {
    c10::Device device;
    c10::ScalarType dtype;
  };
  ZeroSharding(std::vector<std::pair<std::string, at::Tensor>> named_params, Group& dp,
               std::vector<std::vector<std::string>> block_param_names, Unfilled unfilled,
               std::vector<std::string> input_param_names = {},
               std::vector<std::string> vocabulary_param_names = {});
  // Copies this rank's flat range of parameter `name` out of `values` (the parameter's
  // whole value, any layout and dtype; only the elements of the range are read when it
  // is contiguous). Every parameter must be filled once before the model runs.
  void fill_shard(const std::string& name, const at::Tensor& values);
  // The parameters not filled yet, for a loader to report.
  std::vector<std::string> unfilled() const;
  // This rank's flat range [offset, offset + count) of parameter `name` (count 0 when
  // its shard holds none of it), and the filling of exactly that range: what a loader
  // that computes values element by element (a random initialisation) needs.
  std::pair<int64_t, int64_t> own_range(const std::string& name) const;
  std::vector<int64_t> parameter_shape(const std::string& name) const;  // as given to the constructor
  void fill_own_range(const std::string& name, const at::Tensor& values);
  ~ZeroSharding();
  ZeroSharding(const ZeroSharding&) = delete;
  ZeroSharding& operator=(const ZeroSharding&) = delete;

  const std::vector<Slice>& local_slices() const { return slices_; }
  int stage() const { return stage_; }

  // A vocabulary matrix sharded by rows (see "Vocabulary units"), as
  // dist/streamed_vocab.h reads it. Views stay valid for the object's life.
  struct RowShards {
    std::string name;
    Group* group = nullptr;
    at::Tensor param;       // the model's parameter (whether it trains: param.requires_grad())
    int64_t rows = 0;       // V
    int64_t cols = 0;       // C
    int64_t rows_per_rank = 0;  // R: rank d holds rows [d R, (d+1) R); those at V or past it are padding
    at::Tensor shard;       // (R, C) this rank's rows
    at::Tensor grad;        // (R, C) their reduced gradient; backward adds into it
    std::optional<c10::ScalarType> reduce_dtype;  // what the gradients travel in; none: theirs
    int64_t window_bytes = kStreamWindowBytes;  // the most a gathered window holds
  };
  // The vocabulary matrix `name`, or nullptr when it is not one (not named, or not
  // stage 3 with blocks).
  const RowShards* row_shards(const std::string& name) const;

  // The runner to install in the model (set_block_runner); block i of the runner is
  // block_param_names[i]. It runs `inner` (e.g. checkpoint_blocks()) inside the hooks
  // that reduce the block's gradients after its backward (and, at stage 3, inside the
  // gathered parameters).
  model::BlockRunner block_runner(model::BlockRunner inner = {});

  // Before every forward pass. Stage 3: gathers the root unit if it is freed (and,
  // while gradients are recorded, gives it a zeroed full gradient buffer); with an input
  // unit, gathers that instead (block 0 frees it). No-op at stages 1 and 2.
  void before_forward();
  // Brackets around loss.backward(), so the runner knows a block run during backward is
  // a recomputation. `completes_step`: this backward is the step's last micro-batch
  // (stage 1 reduces during it; a further backward before zero_grad() is refused).
  // before_backward() gives the root gradient memory (stages 2, 3); at stage 2
  // after_backward() reduce-scatters every unit still held (the root, blocks whose
  // backward did not run) and frees it.
  void before_backward(bool completes_step);
  void after_backward();

  // Start each block's reduce-scatter when its backward is done and let it run during
  // the next block's backward (default: off, each completes before backward goes on).
  void set_overlap(bool overlap) { overlap_ = overlap; }
  // Stage 3: gather the next block (forward) or the one before (backward) while a block
  // computes (default: on). Off, a rank holds one gathered block at a time, and each
  // gather waits.
  void set_prefetch(bool prefetch) { prefetch_enabled_ = prefetch; }
  // Reduce-scatters started inside backward passes and waited later, since zero_grad().
  std::size_t overlapped_reductions() const { return overlapped_reductions_; }

  // After the last micro-batch's backward: makes this rank's shard hold the gradients
  // summed over ranks: waits for the reduce-scatter in flight and reduce-scatters the
  // units not yet reduced; stage 3 then frees the root's full parameters and gradients.
  void reduce_gradients();
  // Stage 3: frees every gathered unit (after an evaluation). No-op at stages 1 and 2.
  void release();
  // Training is over: frees the gradients' memory (stages 2, 3: the shard's reduced
  // gradients; stage 1: every unit's full gradients), for an export to have it. Nothing
  // may read or accumulate gradients afterwards. No communication.
  void release_gradients();

  // The dtype gradients are reduce-scattered in (e.g. bf16 for fp32 gradients, to
  // halve the bytes); the shard gradients keep the parameters' dtype. None: theirs.
  void set_reduce_dtype(std::optional<c10::ScalarType> dtype) {
    reduce_dtype_ = dtype;
    for (RowShards& rows : row_shards_) rows.reduce_dtype = dtype;
  }

  // Sum of squares of the reduced gradients over the whole model (collective).
  double gradient_square_sum();
  void scale_gradients(double factor);  // this rank's shard
  void scale_gradients(const at::Tensor& factor);  // a scalar on the device: no host wait

  // After the optimizer updated the local slices: every rank gets every shard (stages
  // 1, 2; stage 3 gathers on use).
  void gather_parameters();

  void zero_grad();

  // Bytes this rank holds now for parameters and for gradients: stage 1 the whole
  // parameters and every unit's full gradients; stage 2
  // the whole parameters, and the shard's reduced gradients plus the units' full
  // gradients held at the moment; stage 3 the shards plus the units gathered or held
  // at the moment. The peaks are the maxima since construction or
  // reset_peaks(), counted as buffers are allocated and freed.
  std::int64_t parameter_bytes() const { return parameter_bytes_; }
  std::int64_t gradient_bytes() const { return gradient_bytes_; }
  std::int64_t peak_parameter_bytes() const { return peak_parameter_bytes_; }
  std::int64_t peak_gradient_bytes() const { return peak_gradient_bytes_; }
  void reset_peaks();

  // Full flat tensor (every rank's shard concatenated) of per-slice state tensors
  // laid out like local_slices(), cut back into one tensor per parameter with its
  // global shape. Collective. Used to save sharded optimizer state (and, with the
  // slices' param views, stage 3 parameters) in global form.
  std::vector<std::pair<std::string, at::Tensor>> gather_state(const std::vector<at::Tensor>& slice_states);

  // Parameter `name`'s whole value, in its shape, on every rank: at stage 3 every rank's
  // part summed over the data-parallel group; at stages 1 and 2 the parameter itself.
  // Collective at stage 3. One parameter at a time, for a streamed export: no rank holds
  // more than that one tensor beyond its shards.
  at::Tensor gather_parameter(const std::string& name);

  // This rank's slices of a state given per parameter in global form (inverse of
  // gather_state).
  std::vector<at::Tensor> shard_state(const std::vector<at::Tensor>& full_states) const;

 private:
  std::optional<c10::ScalarType> reduce_dtype_;
  // A set of parameters reduced (stage 3: gathered) and freed together.
  struct Unit {
    std::vector<size_t> params;  // indices into params_
    int64_t shard_numel = 0;     // this unit's elements per rank (numel padded / N)
    int64_t shard_offset = 0;    // where this unit's shard starts in the shard buffers
    at::Tensor full_params;      // (shard_numel * N); stage 3: storage released while not gathered
    at::Tensor full_grads;       // (shard_numel * N); stages 2, 3: storage released while not held
    bool gathered = false;       // full_params has memory (its gather may be in flight)
    bool grads_held = false;     // full_grads has memory
    bool reduced = false;        // stage 1: reduce-scattered (or started) this step
    bool streamed = false;       // a vocabulary unit: never gathered, reduced by rows
  };
  // A unit's reduce-scatter in flight.
  struct Reduction {
    size_t unit = 0;
    at::Tensor out;     // receives this rank's shard (stage 1: in place, its chunk of the full gradients)
    at::Tensor target;  // when defined, where `out` goes once it arrived: added (stages 2, 3) or copied
    bool add = false;
    PendingCollective pending;
  };
  friend struct ZeroBlockHooks;

  void build_units(const std::vector<std::vector<std::string>>& block_param_names,
                   std::vector<std::string> input_param_names, const std::vector<std::string>& vocabulary_param_names,
                   bool with_values, const at::TensorOptions& options);
  // Units 1..num_blocks() are the blocks; the input unit, if any, comes after them, then
  // the vocabulary units.
  size_t num_blocks() const { return num_blocks_; }
  bool trainable(const Unit& unit) const;
  void gather(size_t unit, bool prefetch);
  void ensure_gathered(size_t unit);
  void prefetch(size_t unit);
  void finish_prefetch();
  void free_params(size_t unit);
  void hold_grads(size_t unit);
  bool needs_reduction(const Unit& unit) const;
  // Reduce-scatter the unit's full gradients into the shard (added at stages 2, 3) and
  // free them (stages 2, 3), waiting first for the reduction in flight. In the
  // background: return once started; finish_reduction() completes it.
  void reduce_unit(size_t unit, bool in_background = false);
  void finish_reduction();
  // Lets the collectives in flight move on (MPI advances them only inside MPI calls).
  void progress();
  void count_parameters(std::int64_t bytes);
  void count_gradients(std::int64_t bytes);

  enum class Phase { Forward, Backward };

  Group& dp_;
  int stage_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::map<std::string, size_t> param_index_;  // name -> position in params_
  // The position of parameter `name`; throws std::invalid_argument naming `caller`.
  size_t index_of(const std::string& name, const char* caller) const;
  std::vector<int64_t> offsets_;  // of each parameter in its unit's flat space
  std::vector<size_t> unit_of_;   // the unit of each parameter
  std::vector<int64_t> slice_shard_offsets_;  // where each slice starts in this rank's shard space
  int64_t shard_numel_ = 0;  // elements of this rank's shard space: all units' shards
  at::Tensor shard_params_;  // stage 3: (shard_numel), this rank's shards of every unit
  at::Tensor shard_grads_;   // stages 2, 3: (shard_numel), the reduced gradients of this rank's shards
  std::vector<at::Tensor> own_grads_;  // the reduced gradients this rank's optimizer reads, flat pieces
  std::vector<Slice> slices_;
  std::vector<bool> filled_;  // per parameter, built Unfilled: fill_shard() has run

  std::vector<Unit> units_;  // the root, then block 0, 1, ..., then the input unit if any
  std::optional<size_t> input_unit_;  // stage 3 with input parameters named
  size_t num_blocks_ = 0;
  std::vector<RowShards> row_shards_;  // one per vocabulary unit
  std::optional<size_t> prefetching_;  // the unit whose gather is in flight
  PendingCollective prefetch_;
  std::optional<Reduction> reducing_;  // the reduce-scatter in flight
  bool overlap_ = false;
  bool prefetch_enabled_ = true;
  bool reduce_in_backward_ = false;  // stage 1: this backward completes the step
  std::size_t overlapped_reductions_ = 0;
  Phase phase_ = Phase::Forward;
  at::Tensor anchor_;  // (0) requiring grad: puts a trainable block's hooks in the graph

  std::int64_t parameter_bytes_ = 0;
  std::int64_t gradient_bytes_ = 0;
  std::int64_t peak_parameter_bytes_ = 0;
  std::int64_t peak_gradient_bytes_ = 0;
};

}  // namespace ftrain::dist
