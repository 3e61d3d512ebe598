// Checkpoints of a run, sharded over the ranks and committed atomically. On disk:
//   <run.dir>/checkpoints/step_00000010/rank_00003.h5  the pieces rank 3 wrote
//   <run.dir>/checkpoints/step_00000010/state.h5       the index, written last: metadata,
//                                                      a manifest (every piece with a
//                                                      crc32 per 1 MiB block of its bytes),
//                                                      and each tensor as an HDF5 virtual
//                                                      dataset of its global shape
//   <run.dir>/checkpoints/step_00000010/COMMITTED      written after the rename; without
//                                                      it the checkpoint does not exist
//   <run.dir>/checkpoints/latest                       name of the newest committed one
//   <run.dir>/checkpoints/best                         JSON: the best one by validation
// Every tensor is stored once in its global shape, each element by one rank
// (launch/checkpoint/pieces.h), so a checkpoint loads under any layout. h5py reads
// state.h5 as if it held the whole tensors (docs/checkpoints.md).
//
// Saving goes in four steps, so that the slow part can run beside training:
//   begin (rank 0 makes step_XXXXXXXX.tmp) -> prepare_rank_file (every rank: host copies
//   of its pieces, the file's layout) -> write_rank_file (any thread: the bytes, fsync)
//   -> commit (rank 0, once every rank has written: index, fsync, rename, marker, latest).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "launch/checkpoint/pieces.h"

namespace ftrain::launch {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// 3: a crc32 per block of each piece, so that a rank reading a range verifies only the
// blocks it reads. 2 (one crc32 per piece) is refused with a message saying so.
inline constexpr int kCheckpointFormatVersion = 3;
// The bytes of a piece each crc32 covers (the last block of a piece may be shorter).
inline constexpr int64_t kCheckpointBlockBytes = int64_t{1} << 20;

// One rank's file of a checkpoint being saved: its pieces in host memory and where
// each one's bytes go in the file (HDF5 has laid the file out already).
struct PreparedRankFile {
  struct Entry {
    std::string tensor;    // "model/<param>"
    std::string dataset;   // "<tensor>/<k>" inside the rank file
    std::string dtype;     // c10 name, e.g. "Float", "BFloat16"
    std::vector<int64_t> global_shape;
    Piece piece;
    int64_t file_offset = 0;  // of the piece's bytes in the file
  };
  std::filesystem::path path;
  int rank = 0;
  int64_t step = 0;
  std::vector<Entry> entries;
  int64_t bytes() const;
};

// Creates `dir`/rank_RRRRR.h5 with a dataset for each piece this rank writes of `held`
// and copies those pieces to host memory. After it returns, `held` may change, unless
// `copies` is where_needed: then pieces already on the host are read where they lie by
// write_rank_file, and `held` must not change until it has returned.
PreparedRankFile prepare_rank_file(const std::filesystem::path& dir, int rank, int64_t step,
                                   const std::vector<HeldTensor>& held, PieceCopies copies = PieceCopies::always);

// Writes the pieces' bytes into their places and fsyncs the file. Uses no HDF5 and no
// LibTorch operations, so it may run on a background thread. Returns the manifest
// records of the pieces (tensor, dtype, global shape, dataset, offset, shape, block_crc32).
// Throws std::runtime_error naming the file and the system error (e.g. ENOSPC).
// For fault-injection tests, FTRAIN_TEST_FAULT=<kind>:<rank>:<step> makes that rank's
// write of that step fail with ENOSPC (kind enospc) or stall for an hour (kind stall)
// after its first piece.
nlohmann::json write_rank_file(const PreparedRankFile& file);

class CheckpointStore {
 public:
  CheckpointStore(std::filesystem::path directory, int64_t keep);

  // The directory a save of `step` writes into until it is committed.
  std::filesystem::path staging_directory(int64_t step) const;
  std::filesystem::path final_directory(int64_t step) const;

  // Rank 0: makes an empty staging directory for `step`, removing any staging
  // directories left behind by saves that never committed.
  std::filesystem::path begin(int64_t step);
  // Rank 0, after every rank's write_rank_file returned: writes the index (`pieces`:
  // the records of all ranks; `meta`: the metadata) and commits the checkpoint: fsync,
  // rename, marker, `latest`, and removal of the oldest beyond `keep`. Throws, naming
  // the tensor, if the pieces do not cover a tensor exactly. Returns the directory.
  std::filesystem::path commit(int64_t step, const nlohmann::json& pieces, const nlohmann::json& meta);
  // Rank 0: removes the staging directory of a save that failed.
  void abandon(int64_t step);

  // One process, all at once: every tensor written whole by this process, committed.
  std::filesystem::path save(int64_t step, const NamedTensors& tensors, const nlohmann::json& meta);

  // Newest committed checkpoint whose pieces all verify; corrupt ones are reported on
  // stderr and skipped.
  std::optional<std::filesystem::path> latest_valid() const;

  // Committed checkpoints, oldest first.
  std::vector<std::filesystem::path> committed() const;

  // Records a committed checkpoint as the best so far (atomically; `record` says by
  // which metric and value) and keeps it from removal by `keep`.
  void mark_best(const std::filesystem::path& checkpoint, nlohmann::json record);
  // The checkpoint recorded as best, if it is still committed.
  std::optional<std::filesystem::path> best() const;

  const std::filesystem::path& directory() const { return directory_; }

 private:
  void remove_beyond_keep();  // all but the newest keep_ and the best

  std::filesystem::path directory_;
  int64_t keep_;
};

// Reads a committed checkpoint a tensor at a time, each rank only the parts it needs:
// of the pieces that overlap the range asked for, only the blocks holding it are read,
// each checked against its crc32. Not thread-safe.
class CheckpointReader {
 public:
  // Opens the index; throws std::runtime_error naming the file when the checkpoint is
  // not committed, its index is unreadable or of another format version.
  explicit CheckpointReader(const std::filesystem::path& checkpoint);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const nlohmann::json& meta() const;
  bool contains(const std::string& name) const;

  // Fills `part` (a CPU tensor of the stored dtype) with this rank's part of tensor
  // `name`: with split_dim -1 the whole tensor (part has the global shape); otherwise,
  // along split_dim, the global indices `index` (int64, one per entry of part along
  // that dimension; -1 entries are left as they are) and all of every other dimension.
  // Throws std::runtime_error naming the file, tensor and piece on any mismatch.
  void read_into(const std::string& name, at::Tensor& part, int64_t split_dim = -1, const at::Tensor& index = {});

  // Fills `values` (a contiguous CPU tensor of the stored dtype) with the flat elements
  // [flat_offset, flat_offset + values.numel()) of the part of tensor `name` that
  // read_into would fill, a part of shape `part_shape`: a ZeRO shard of it. Reads only
  // the blocks that hold those elements. Elements at padding entries are left as they are.
  void read_range_into(const std::string& name, at::Tensor& values, const std::vector<int64_t>& part_shape,
                       int64_t flat_offset, int64_t split_dim = -1, const at::Tensor& index = {});

  // Fills held.values with what `held` describes (pieces.h): its part, or the flat range
  // of it, of tensor held.name. Contiguous host values are read into in place; others
  // (a device, a strided view) through a host copy of their size. Padding entries read
  // as zero.
  void read_into(const HeldTensor& held);

  // Bytes of tensor data read from the rank files so far: whole blocks, each once per
  // range that needs it.
  int64_t bytes_read() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Reads a committed checkpoint: its metadata, and each requested tensor assembled from
// its pieces in place into the given tensor (global shape and dtype must match).
// Every block read is checked against its crc32. Throws std::runtime_error naming the
// file and tensor on any mismatch.
nlohmann::json load_checkpoint(const std::filesystem::path& checkpoint, const NamedTensors& into);

// Reads one tensor by name, whole, in its global shape.
at::Tensor read_checkpoint_tensor(const std::filesystem::path& checkpoint, const std::string& name);

// The names of the tensors a checkpoint holds, in its manifest's order.
std::vector<std::string> checkpoint_tensor_names(const std::filesystem::path& checkpoint);

// Whether `checkpoint` is committed and every piece of every tensor is present, covers
// its tensor exactly and matches its checksums.
bool verify_checkpoint(const std::filesystem::path& checkpoint, std::string* problem = nullptr);

}  // namespace ftrain::launch
