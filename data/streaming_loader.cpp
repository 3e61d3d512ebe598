#include "data/streaming_loader.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace ftrain::data {

namespace {

std::runtime_error option_error(const char* key, const std::string& what) {
  return std::runtime_error(std::string(key) + ": " + what);
}

void check_layout(int dp_rank, int dp_size) {
  if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size) {
    throw std::invalid_argument("data loader: dp_rank " + std::to_string(dp_rank) + " is not in [0, dp_size = " +
                                std::to_string(dp_size) + ")");
  }
}

const LoaderOptions& validated(const LoaderOptions& options) {
  options.validate();
  return options;
}

TokenDataset open_split(const std::string& path, const std::string& split, int dp_rank, int dp_size) {
  check_layout(dp_rank, dp_size);
  return TokenDataset(path, split);
}

}  // namespace

void LoaderOptions::validate() const {
  if (path.empty()) throw option_error("data.path", "is empty; name the .h5 file written by ftrain-prep");
  if (split.empty()) throw option_error("data.split", "is empty; expected train, validation or test");
  if (micro_batch_size < 1) {
    throw option_error("data.micro_batch_size", "must be >= 1, got " + std::to_string(micro_batch_size));
  }
  if (grad_accum_steps < 1) {
    throw option_error("grad_accum_steps", "must be >= 1, got " + std::to_string(grad_accum_steps));
  }
  if (prefetch < 0) throw option_error("data.prefetch", "must be >= 0, got " + std::to_string(prefetch));
}

Batch read_batch(const TokenDataset& dataset, std::span<const int64_t> rows) {
  Batch batch;
  batch.batch_size = static_cast<int64_t>(rows.size());
  batch.seq_len = dataset.seq_len();
  batch.sample_ids.assign(rows.begin(), rows.end());
  const auto cells = rows.size() * static_cast<std::size_t>(batch.seq_len);
  batch.input_ids.resize(cells);
  dataset.read_rows(rows, batch.input_ids.data());
  // An id outside the vocabulary would index past the embedding table; catching it here
  // names the file and row instead of failing inside the model.
  const int64_t vocab_size = dataset.info().vocab_size;
  for (std::size_t i = 0; i < cells; ++i) {
    const int32_t token = batch.input_ids[i];
    if (token < 0 || token >= vocab_size) {
      throw std::runtime_error(dataset.path().string() + ": row " + std::to_string(rows[i / batch.seq_len]) +
                               " of '/" + dataset.split() + "/input_ids' holds token id " + std::to_string(token) +
                               ", outside [0, vocab_size = " + std::to_string(vocab_size) + ")");
    }
  }
  if (dataset.has_loss_mask()) {
    batch.loss_mask.resize(cells);
    dataset.read_loss_mask(rows, batch.loss_mask.data());
  }
  if (dataset.has_attention_mask()) {
    batch.attention_mask.resize(cells);
    dataset.read_attention_mask(rows, batch.attention_mask.data());
  }
  if (dataset.has_token_type_ids()) {
    batch.token_type_ids.resize(cells);
    dataset.read_token_type_ids(rows, batch.token_type_ids.data());
  }
  if (dataset.labels() != LabelKind::kNone) {
    batch.labels.resize(rows.size() * static_cast<std::size_t>(dataset.label_width()));
    dataset.read_labels(rows, batch.labels.data());
  }
  return batch;
}

// =======================================================================================
// StreamingLoader

StreamingLoader::StreamingLoader(LoaderOptions options, int dp_rank, int dp_size)
    : options_(validated(options)),
      dp_rank_(dp_rank),
      dp_size_(dp_size),
      dataset_(open_split(options_.path, options_.split, dp_rank, dp_size)),
      order_(std::max<int64_t>(dataset_.num_rows(), 1), options_.seed, options_.shuffle) {
  if (dataset_.num_rows() == 0) {
    throw std::runtime_error(options_.path + ": split '/" + options_.split + "' has no rows to train on");
  }
  start_read_ahead();
}

StreamingLoader::~StreamingLoader() { stop_read_ahead(); }

int64_t StreamingLoader::global_batch_size() const {
  return options_.micro_batch_size * options_.grad_accum_steps * dp_size_;
}

StreamingLoader::Cursor StreamingLoader::advanced(Cursor cursor) const {
  if (++cursor.micro_step == options_.grad_accum_steps) {
    cursor.micro_step = 0;
    cursor.step_position += global_batch_size();
  }
  return cursor;
}

Batch StreamingLoader::read_micro_batch(Cursor cursor) const {
  const int64_t batch = options_.micro_batch_size;
  const int64_t first = cursor.step_position + (cursor.micro_step * dp_size_ + dp_rank_) * batch;
  std::vector<int64_t> rows(static_cast<std::size_t>(batch));
  for (int64_t j = 0; j < batch; ++j) rows[j] = order_.at(first + j);
  return read_batch(dataset_, rows);
}

Batch StreamingLoader::next() {
  if (failed_) std::rethrow_exception(failed_);
  Batch batch;
  if (options_.prefetch == 0) {
    try {
      batch = read_micro_batch(cursor_);
    } catch (...) {
      failed_ = std::current_exception();
      throw;
    }
  } else {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !ready_.empty() || worker_error_; });
    if (ready_.empty()) {
      failed_ = worker_error_;
      std::rethrow_exception(failed_);
    }
    batch = std::move(ready_.front());
    ready_.pop_front();
    lock.unlock();
    changed_.notify_all();
  }
  cursor_ = advanced(cursor_);
  return batch;
}

LoaderState StreamingLoader::state() const { return LoaderState{cursor_.step_position}; }

void StreamingLoader::restore(const LoaderState& state) {
  if (state.global_position < 0) {
    throw std::invalid_argument("data loader: cannot restore to negative global_position " +
                                std::to_string(state.global_position));
  }
  stop_read_ahead();
  cursor_ = Cursor{state.global_position, 0};
  failed_ = nullptr;
  start_read_ahead();
}

void StreamingLoader::start_read_ahead() {
  if (options_.prefetch == 0) return;
  worker_ = std::thread([this, from = cursor_] { read_ahead(from); });
}

void StreamingLoader::stop_read_ahead() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) worker_.join();
  std::lock_guard lock(mutex_);
  ready_.clear();
  worker_error_ = nullptr;
  stopping_ = false;
}

void StreamingLoader::read_ahead(Cursor cursor) {
  const auto capacity = static_cast<std::size_t>(options_.prefetch);
  for (;;) {
    {
      // Wait for room first, so at most `prefetch` batches exist beyond the consumer's.
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || ready_.size() < capacity; });
      if (stopping_) return;
    }
    Batch batch;
    try {
      batch = read_micro_batch(cursor);
    } catch (...) {
      std::lock_guard lock(mutex_);
      worker_error_ = std::current_exception();
      changed_.notify_all();
      return;
    }
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      ready_.push_back(std::move(batch));
    }
    changed_.notify_all();
    cursor = advanced(cursor);
  }
}

// =======================================================================================
// EvalReader

EvalReader::EvalReader(const std::string& path, const std::string& split, int64_t micro_batch_size,
                       int64_t max_samples, int dp_rank, int dp_size)
    : dataset_(open_split(path, split, dp_rank, dp_size)), micro_batch_size_(micro_batch_size) {
  if (micro_batch_size < 1) {
    throw option_error("data.micro_batch_size", "must be >= 1 for evaluation, got " + std::to_string(micro_batch_size));
  }
  total_rows_ = max_samples < 0 ? dataset_.num_rows() : std::min(max_samples, dataset_.num_rows());
  shard_begin_ = total_rows_ * dp_rank / dp_size;
  shard_end_ = total_rows_ * (dp_rank + 1) / dp_size;
  slots_per_rank_ = (total_rows_ + dp_size - 1) / dp_size;
  num_batches_ = (slots_per_rank_ + micro_batch_size_ - 1) / micro_batch_size_;
}

void EvalReader::reset() { next_batch_ = 0; }

std::optional<Batch> EvalReader::next() {
  if (next_batch_ >= num_batches_) return std::nullopt;
  const int64_t first_slot = next_batch_ * micro_batch_size_;
  const int64_t end_slot = std::min(first_slot + micro_batch_size_, slots_per_rank_);
  ++next_batch_;

  // Fillers copy a real row (this shard's first, or row 0 when the shard is empty), so
  // their attention pattern is an ordinary one; only their loss_mask differs.
  const int64_t filler_source = shard_end_ > shard_begin_ ? shard_begin_ : 0;
  std::vector<int64_t> rows;
  std::vector<bool> is_filler;
  for (int64_t slot = first_slot; slot < end_slot; ++slot) {
    const bool filler = shard_begin_ + slot >= shard_end_;
    rows.push_back(filler ? filler_source : shard_begin_ + slot);
    is_filler.push_back(filler);
  }
  Batch batch = read_batch(dataset_, rows);
  if (std::find(is_filler.begin(), is_filler.end(), true) != is_filler.end()) {
    const auto seq_len = static_cast<std::size_t>(batch.seq_len);
    if (batch.loss_mask.empty()) batch.loss_mask.assign(rows.size() * seq_len, 1);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (!is_filler[i]) continue;
      batch.sample_ids[i] = -1;
      std::fill_n(batch.loss_mask.begin() + static_cast<std::ptrdiff_t>(i * seq_len), seq_len, uint8_t{0});
      const std::size_t per_row = batch.labels.size() / rows.size();  // TokenDataset::label_width()
      std::fill_n(batch.labels.begin() + static_cast<std::ptrdiff_t>(i * per_row), per_row, format::kIgnoreLabel);
    }
  }
  return batch;
}

std::vector<Batch> read_eval_batches(const std::string& path, const std::string& split, int64_t micro_batch_size,
                                     int64_t max_samples, int dp_rank, int dp_size) {
  EvalReader reader(path, split, micro_batch_size, max_samples, dp_rank, dp_size);
  std::vector<Batch> batches;
  batches.reserve(static_cast<std::size_t>(reader.num_batches()));
  while (auto batch = reader.next()) batches.push_back(std::move(*batch));
  return batches;
}

namespace {

// The first `columns` columns of a (rows, width) row-major buffer.
template <typename T>
std::vector<T> first_columns(const std::vector<T>& values, int64_t rows, int64_t width, int64_t columns) {
  if (values.empty()) return values;
  std::vector<T> out;
  out.reserve(static_cast<std::size_t>(rows * columns));
  for (int64_t row = 0; row < rows; ++row)
    out.insert(out.end(), values.begin() + row * width, values.begin() + row * width + columns);
  return out;
}

}  // namespace

std::optional<Batch> cut_padding(const Batch& batch, bool labels_per_position, int64_t multiple) {
  if (multiple < 1) throw std::invalid_argument("cut_padding: multiple must be >= 1");
  const int64_t rows = batch.batch_size, width = batch.seq_len;
  if (batch.attention_mask.empty()) return std::nullopt;
  const bool tags = labels_per_position && batch.labels.size() == static_cast<std::size_t>(rows * width);
  int64_t needed = 1;
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t position = width - 1; position >= needed; --position) {
      const auto at = static_cast<std::size_t>(row * width + position);
      if (batch.attention_mask[at] != 0 || (tags && batch.labels[at] != format::kIgnoreLabel)) {
        needed = position + 1;
        break;
      }
    }
  const int64_t columns = std::min(width, (needed + multiple - 1) / multiple * multiple);
  if (columns == width) return std::nullopt;
  Batch out = batch;
  out.seq_len = columns;
  out.input_ids = first_columns(batch.input_ids, rows, width, columns);
  out.loss_mask = first_columns(batch.loss_mask, rows, width, columns);
  out.attention_mask = first_columns(batch.attention_mask, rows, width, columns);
  out.token_type_ids = first_columns(batch.token_type_ids, rows, width, columns);
  if (tags) out.labels = first_columns(batch.labels, rows, width, columns);
  return out;
}

}  // namespace ftrain::data
