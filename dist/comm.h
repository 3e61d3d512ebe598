// The communicator: the world, tensor-parallel and data-parallel groups of this rank,
// its device, and the collectives that move tensors between ranks.
//
// Made once at start-up (after the MpiSession) and passed by reference; there are no
// global groups. CPU tensors travel through MPI on the calling thread; CUDA tensors
// through NCCL on each group's own CUDA stream, ordered after the caller's current
// stream, which in turn waits for the collective, so callers use the result as if the
// collective had run on their stream.
#pragma once

#include <mpi.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/layout.h"

namespace ftrain::dist {

// Options of the [dist] section.
struct CommOptions {
  int tp = 1;                  // dist.tp: ranks per tensor-parallel group; divides the world size
  std::string device = "cpu";  // dist.device: "cpu", or "cuda" for one GPU per rank
                               //   (cuda:(local_rank % GPUs on the node))
  double bucket_mb = 25;       // dist.bucket_mb: MiB (2^20 bytes) of gradients per data-parallel
                               //   all-reduce
  bool overlap = true;         // dist.overlap: start each bucket's all-reduce during the backward pass
  bool sequence_parallel = false;  // dist.sequence_parallel: with tp > 1, split the norm and dropout
                                   //   regions of each block along the sequence over the tp group
                                   //   (dist/tensor_parallel.h); the sequence length must be a multiple of tp

  // Throws std::invalid_argument naming the offending key.
  void validate() const;
  std::size_t bucket_bytes() const;
};

// Avg is Sum divided by the group size; it is refused for integer tensors.
enum class ReduceOp { Sum, Avg, Max, Min };
const char* to_string(ReduceOp op);

// What one kind of collective cost this rank: calls, and the bytes this rank sent as
// the ring algorithm counts them, for a group of N ranks and a buffer of B bytes on the
// wire (B is the full buffer: the input of reduce-scatter, the output of all-gather):
//   all_reduce      2 (N-1)/N B
//   reduce_scatter    (N-1)/N B
//   all_gather        (N-1)/N B
//   broadcast       B, except the rank just before the root on the ring, which sends 0
// Bytes on the wire: bf16/fp16 reductions over MPI travel as fp32 (4 bytes an element);
// everything else travels in its own type. Scalar all-reduces count as 8-byte ones.
struct CollectiveStats {
  std::int64_t calls = 0;
  double bytes_sent = 0;
};

struct CommStats {
  CollectiveStats all_reduce;
  CollectiveStats reduce_scatter;
  CollectiveStats all_gather;
  CollectiveStats broadcast;

  double total_bytes_sent() const;
  void reset();
};

namespace detail {
class DeviceCollectives;
class DeviceWork;
class RingReduceScatter;
}

class Group;

// A collective in flight (Group::start_all_reduce, start_reduce_scatter,
// start_all_gather). wait() returns once the output holds the result (CUDA: once the
// caller's stream waits for it); the destructor of an unwaited one waits too, so a
// tensor is never left mid-transfer.
class PendingCollective {
 public:
  PendingCollective();
  PendingCollective(PendingCollective&&) noexcept;
  PendingCollective& operator=(PendingCollective&&) noexcept;
  ~PendingCollective();
  void wait();
  bool done() const { return group_ == nullptr; }
  // Lets MPI move the transfer on: Open MPI advances a non-blocking collective only
  // inside MPI calls, so a caller that computes between start and wait() calls this now
  // and then (between blocks). True once the data has arrived (wait() still finishes
  // it). On CUDA the NCCL stream needs no help: false until wait().
  bool progress();

 private:
  friend class Group;
  Group* group_ = nullptr;
  const char* op_name_ = "all_reduce";
  at::Tensor tensor_;    // the output, kept alive until wait()
  at::Tensor received_;  // where the data lands (tensor_, or a buffer copied into it at wait())
  at::Tensor input_;     // what this rank sends, kept alive until wait()
  std::optional<ReduceOp> divide_by_size_;  // Avg over MPI: divide after the sum
  std::vector<MPI_Request> requests_;
  std::unique_ptr<detail::DeviceWork> device_work_;  // CUDA: the stream wait still to do
  std::unique_ptr<detail::RingReduceScatter> ring_;   // a host reduce-scatter in flight
};
using PendingAllReduce = PendingCollective;

// One set of ranks that communicate together: an MPI communicator of its own, and for
// CUDA tensors an NCCL communicator made at the group's first CUDA collective (which,
// like every collective, all members must call).
//
// Every member calls each collective in the same order with tensors of the same dtype
// and number of elements. Errors (std::invalid_argument for a wrong call,
// std::runtime_error for a failed transfer) name the world rank, the group and the
// operation.
class Group {
 public:
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  const std::string& name() const { return name_; }  // "world", "tp" or "dp"
  int rank() const { return rank_; }
  int size() const { return size_; }
  // World ranks of the members, indexed by their rank in this group.
  const std::vector<int>& world_ranks() const { return world_ranks_; }
  MPI_Comm mpi_comm() const { return comm_; }

  // t = op over ranks of t, in place. Any layout; non-contiguous tensors go through a
  // contiguous copy.
  void all_reduce(at::Tensor& t, ReduceOp op = ReduceOp::Sum);
  // all_reduce that returns before the data has moved, so that computation can go on
  // meanwhile (gradient buckets during the backward pass). `t` must be contiguous and
  // stay untouched until wait(). CPU: MPI_Iallreduce; CUDA: enqueued on the NCCL
  // stream, which runs beside the compute stream until wait() makes the compute stream
  // wait for it.
  PendingAllReduce start_all_reduce(at::Tensor& t, ReduceOp op = ReduceOp::Sum);
  // `in` holds size() * out.numel() elements; rank r receives the reduction of chunk r
  // of the flattened `in` into `out` (which keeps its shape). When `out` is this rank's
  // chunk of `in` (both contiguous, one dtype; ZeRO-1's gradient buffer) the reduction
  // runs in place, without a copy of `in`. CPU: around a ring of point-to-point
  // messages (dist/ring_reduce_scatter.h), with two chunks of temporaries where MPI's
  // own reduce-scatter holds one or two copies of `in`; the other chunks of `in` are
  // left as they were. CUDA: NCCL.
  void reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op = ReduceOp::Sum);
  // reduce_scatter that returns before the data has moved (ZeRO reduces a block's
  // gradients while the blocks before it run backward). Neither tensor may be touched
  // until wait(). CPU: the ring, moved on by progress() and wait(); CUDA: enqueued on
  // the NCCL stream.
  // Counted in CommStats::reduce_scatter like reduce_scatter.
  PendingCollective start_reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op = ReduceOp::Sum);
  // `out` (size() * in.numel() elements) = every rank's `in`, flattened and concatenated
  // in rank order: for dim-0 stacking, out has shape (size() * in.size(0), ...).
  // `in` may be this rank's own chunk of `out`.
  void all_gather(at::Tensor& out, const at::Tensor& in);
  // all_gather that returns before the data has moved (ZeRO-3 prefetches the next
  // block's parameters while the current one computes). `out` must be contiguous, and
  // neither tensor may be touched until wait(). CPU: MPI_Iallgather; CUDA: enqueued on
  // the NCCL stream. Counted in CommStats::all_gather like all_gather.
  PendingCollective start_all_gather(at::Tensor& out, const at::Tensor& in);
  // t = root's t on every rank; root is a rank of this group.
  void broadcast(at::Tensor& t, int root);

  double all_reduce(double value, ReduceOp op);
  std::int64_t all_reduce(std::int64_t value, ReduceOp op);  // Avg refused
  // Every member's text, in rank order, on `root`; other members get an empty vector.
  // Host bytes over MPI whatever the device (checkpoint manifests, error messages).
  std::vector<std::string> gather(const std::string& text, int root);
  // Root's text on every member.
  std::string broadcast(const std::string& text, int root);
  void barrier();

 private:
  friend class Communicator;
  friend class PendingCollective;
  Group(MPI_Comm comm, std::string name, int world_rank, c10::Device device, CommStats& stats);

  std::string who() const;                    // "ftrain::dist: rank 3 (tp group, rank 1 of 2)"
  std::string where(const char* op) const;    // who() + ": op: "
  void check_mpi(int code, const char* op) const;
  void check_tensor(const at::Tensor& t, const char* op, const char* what) const;
  detail::DeviceCollectives& device_collectives(const char* op);
  void count(CollectiveStats& kind, double bytes);
  // reduce_scatter (start = false: complete when it returns, after wait()) and
  // start_reduce_scatter.
  PendingCollective run_reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op, bool start);

  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string name_;
  int world_rank_ = 0;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> world_ranks_;
  c10::Device device_;
  CommStats* stats_;
  std::unique_ptr<detail::DeviceCollectives> nccl_;
  int rings_started_ = 0;  // tags the ring reduce-scatters apart (same count on every member)
};

class Communicator {
 public:
  // Collective over MPI_COMM_WORLD: every rank calls it with the same options. Needs a
  // live MpiSession. With device "cuda" it also makes this rank's GPU the current one.
  static Communicator create(const CommOptions& options);

  Communicator(Communicator&&) noexcept;
  Communicator& operator=(Communicator&&) noexcept;
  ~Communicator();

  const CommOptions& options() const { return options_; }
  const Layout& layout() const { return layout_; }
  int rank() const { return rank_; }
  int world_size() const { return layout_.world_size; }
  // This rank among the ranks on its node (ranks sharing memory).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // The host name rank `rank` runs on (MPI_Get_processor_name).
  const std::string& host(int rank) const { return hosts_.at(rank); }

  Group& world() { return *world_; }
  Group& tp() { return *tp_; }
  Group& dp() { return *dp_; }

  c10::Device device() const { return device_; }
  // The most memory the caching allocator has held allocated on this rank's GPU since
  // the process started or the last reset; -1 on the CPU, where the process's peak resident set says it.
  int64_t peak_device_bytes() const;
  // Starts peak_device_bytes() again from what is allocated now (no-op on the CPU).
  void reset_peak_device_bytes();
  // Summed over all three groups.
  CommStats& stats() { return *stats_; }

 private:
  Communicator() = default;

  CommOptions options_;
  Layout layout_;
  int rank_ = 0;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::vector<std::string> hosts_;
  c10::Device device_{c10::kCPU};
  // Behind pointers so that references to the groups and the stats stay valid when the
  // communicator moves.
  std::unique_ptr<CommStats> stats_;
  std::unique_ptr<Group> world_;
  std::unique_ptr<Group> tp_;
  std::unique_ptr<Group> dp_;
};

}  // namespace ftrain::dist
