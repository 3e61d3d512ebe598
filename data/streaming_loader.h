#pragma once
// Training and evaluation readers over a token dataset.
//
// StreamingLoader is the training reader. One optimizer step consumes
// G = micro_batch_size * grad_accum_steps * dp_size consecutive positions of the
// global sample order (data/sample_order.h), starting at the step's position p. In
// micro-step m, data-parallel rank d reads positions
//     p + (m * dp_size + d) * micro_batch_size + j,   j < micro_batch_size.
// A step's samples therefore depend only on (seed, p, G): one rank accumulating four
// micro-batches sees the same samples per step as four ranks accumulating one, and a
// job resumed with another dp_size but the same G continues the same order. Epochs wrap
// transparently (the order is re-keyed per epoch).
//
// EvalReader is the evaluation reader: the first max_samples rows of a split in file
// order, each evaluated by exactly one rank.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/sample_order.h"
#include "data/token_dataset.h"

namespace ftrain::data {

// Keys data.path, data.split, data.micro_batch_size, data.seed, data.shuffle and
// data.prefetch of the trainer's configuration; grad_accum_steps comes from the
// training section.
struct LoaderOptions {
  std::string path;
  std::string split = "train";
  int64_t micro_batch_size = 8;  // sequences per rank per micro-step (not global)
  int64_t grad_accum_steps = 1;
  uint64_t seed = 1234;
  bool shuffle = true;  // false: rows in file order, epoch after epoch
  int prefetch = 4;     // micro-batches read ahead by a background thread; 0 = none
  // Padded tasks (classification, token classification): each micro-batch is cut to its
  // longest real row, rounded up to a multiple of 8, before it runs (launch/task.h).
  bool dynamic_padding = true;
  // data.packing: how the dataset's rows must hold their examples; nullopt (auto) takes
  // them as ftrain-prep packed them. Checked against the dataset by launch's validate_for.
  std::optional<Packing> packing;

  // Throws std::runtime_error naming the offending key.
  void validate() const;
};

struct Batch {
  int64_t batch_size = 0, seq_len = 0;
  std::vector<int32_t> input_ids;      // (batch_size, seq_len) row-major
  // Same shape; 1 = the token at this position is a prediction target (predicted from
  // the tokens before it in the row). Empty = every position.
  std::vector<uint8_t> loss_mask;
  // Same shape; 0 = padding. Empty = no padding.
  std::vector<uint8_t> attention_mask;
  // Same shape; segment of each position (BERT token types). Empty = all 0.
  std::vector<uint8_t> token_type_ids;
  // (batch_size) class per row, (batch_size, 2) answer span (first and last position),
  // (batch_size, target_len) a sequence-to-sequence target,
  // or (batch_size, seq_len) tag per position; -100 = no
  // target. Empty = the split has no labels.
  std::vector<int64_t> labels;
  std::vector<int64_t> sample_ids;     // dataset row of each sequence; -1 = filler row
};

// Dynamic padding: `batch` cut to the columns its rows use, up to the last position any
// row attends to (attention_mask) or, with per-position labels, labels; rounded up to a
// multiple of `multiple`, at most the batch's seq_len. The columns dropped are padding:
// no real token attends to them and no label counts them, so a model run on the cut
// batch gives the real positions the same outputs. Nothing (no copy) when no column
// would be cut, or the batch has no attention_mask.
std::optional<Batch> cut_padding(const Batch& batch, bool labels_per_position, int64_t multiple);

// Samples of the global order consumed by completed optimizer steps.
struct LoaderState {
  int64_t global_position = 0;
};

class StreamingLoader {
 public:
  // Opens the split (errors name the file) and starts the read-ahead thread.
  StreamingLoader(LoaderOptions options, int dp_rank, int dp_size);
  ~StreamingLoader();
  StreamingLoader(const StreamingLoader&) = delete;
  StreamingLoader& operator=(const StreamingLoader&) = delete;

  // This rank's next micro-batch. Rethrows an error of the read-ahead thread.
  Batch next();

  // Meant for optimizer-step boundaries (after grad_accum_steps calls of next()). Inside
  // a step it returns that step's start, so a restore replays the unfinished step.
  LoaderState state() const;
  // Continues from `state`, also under another dp_size or micro-batch split as long as
  // the global batch size G is the same; restarts the read-ahead thread.
  void restore(const LoaderState& state);

  int64_t num_samples() const { return dataset_.num_rows(); }
  int64_t seq_len() const { return dataset_.seq_len(); }
  int64_t global_batch_size() const;
  const DatasetInfo& info() const { return dataset_.info(); }

 private:
  struct Cursor {
    int64_t step_position = 0;
    int64_t micro_step = 0;
  };

  Cursor advanced(Cursor cursor) const;
  Batch read_micro_batch(Cursor cursor) const;
  void start_read_ahead();
  void stop_read_ahead();
  void read_ahead(Cursor from);

  LoaderOptions options_;
  int dp_rank_;
  int dp_size_;
  TokenDataset dataset_;
  SampleOrder order_;
  Cursor cursor_;  // position of the next micro-batch next() returns

  std::thread worker_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> ready_;         // guarded by mutex_
  std::exception_ptr worker_error_; // guarded by mutex_; raised after the batches before it
  bool stopping_ = false;           // guarded by mutex_
  std::exception_ptr failed_;       // sticky: once next() threw, it keeps throwing
};

// Reads the given rows of a split into a batch, with loss_mask / attention_mask when the
// split has them. Throws if a token id lies outside [0, vocab_size), naming the row.
Batch read_batch(const TokenDataset& dataset, std::span<const int64_t> rows);

// Evaluation over the first max_samples rows of a split (all rows if max_samples < 0),
// split into contiguous shards, one per data-parallel rank, each row in exactly one.
//
// Uneven counts: a shard holds floor or ceil(M / dp_size) rows. So that every rank runs
// the same number of forward passes with the same batch shapes (collectives inside the
// model stay in lockstep), shorter shards are completed with filler rows: a copy of a
// real row with sample_id -1, loss_mask all 0 and labels -100. A batch holding fillers therefore always
// carries a loss_mask. Sum losses and target counts over positions with loss_mask 1 and
// over ranks; fillers add nothing to either.
class EvalReader {
 public:
  EvalReader(const std::string& path, const std::string& split, int64_t micro_batch_size, int64_t max_samples,
             int dp_rank, int dp_size);

  std::optional<Batch> next();  // nullopt after num_batches() batches
  void reset();                 // back to the first batch

  int64_t num_batches() const { return num_batches_; }     // the same on every rank
  int64_t num_rows() const { return shard_end_ - shard_begin_; }  // real rows of this rank
  int64_t total_rows() const { return total_rows_; }       // real rows over all ranks
  int64_t seq_len() const { return dataset_.seq_len(); }

 private:
  TokenDataset dataset_;
  int64_t micro_batch_size_;
  int64_t total_rows_ = 0;
  int64_t shard_begin_ = 0, shard_end_ = 0;
  int64_t slots_per_rank_ = 0;  // ceil(total_rows / dp_size)
  int64_t num_batches_ = 0;
  int64_t next_batch_ = 0;
};

// All of this rank's evaluation batches at once; see EvalReader.
std::vector<Batch> read_eval_batches(const std::string& path, const std::string& split, int64_t micro_batch_size,
                                     int64_t max_samples, int dp_rank, int dp_size);

}  // namespace ftrain::data
