#include "dist/comm.h"

#include <climits>
#include <cstring>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "dist/nccl.h"
#include "dist/ring_reduce_scatter.h"

namespace ftrain::dist {

namespace {

// MPI counts are ints; long transfers go in pieces of this many elements.
constexpr std::int64_t kMaxMpiCount = std::int64_t{1} << 30;
// Point-to-point tags of the ring reduce-scatters; nothing else sends on a group's
// communicator. MPI guarantees tags up to 32767.
constexpr int kRingTagBase = 1000;
constexpr int kRingTags = 16384;

bool mpi_running() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  throw std::invalid_argument("unknown ReduceOp");
}

bool is_half(at::ScalarType type) { return type == at::kBFloat16 || type == at::kHalf; }

bool is_integer(at::ScalarType type) {
  return type == at::kByte || type == at::kChar || type == at::kShort || type == at::kInt ||
         type == at::kLong;
}

// The MPI type that reduces `type` on the CPU; half types are reduced as fp32.
MPI_Datatype mpi_reduce_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
    case at::kBFloat16:
    case at::kHalf:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kByte:
      return MPI_UINT8_T;
    case at::kChar:
      return MPI_INT8_T;
    case at::kShort:
      return MPI_INT16_T;
    case at::kInt:
      return MPI_INT32_T;
    case at::kLong:
      return MPI_INT64_T;
    default:
      return MPI_DATATYPE_NULL;
  }
}

// Moving without arithmetic only needs the element's width.
MPI_Datatype mpi_raw_type(std::size_t element_size) {
  switch (element_size) {
    case 1:
      return MPI_UINT8_T;
    case 2:
      return MPI_UINT16_T;
    case 4:
      return MPI_UINT32_T;
    case 8:
      return MPI_UINT64_T;
    default:
      return MPI_DATATYPE_NULL;
  }
}

char* bytes_of(const at::Tensor& t) { return static_cast<char*>(t.data_ptr()); }

double ring_fraction(int size) { return size > 1 ? double(size - 1) / double(size) : 0.0; }

}  // namespace

// ---- options and stats --------------------------------------------------------------

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Avg:
      return "avg";
    case ReduceOp::Max:
      return "max";
    case ReduceOp::Min:
      return "min";
  }
  return "?";
}

void CommOptions::validate() const {
  if (tp < 1) throw std::invalid_argument("dist.tp: must be at least 1, got " + std::to_string(tp));
  if (device != "cpu" && device != "cuda")
    throw std::invalid_argument("dist.device: must be cpu or cuda, got '" + device + "'");
  // Up to 1 TiB: beyond that the byte count would be meaningless for one all-reduce.
  if (!std::isfinite(bucket_mb) || bucket_mb <= 0 || bucket_mb > 1024.0 * 1024.0) {
    std::ostringstream message;
    message << "dist.bucket_mb: must be a positive number of MiB, at most 1048576, got " << bucket_mb;
    throw std::invalid_argument(message.str());
  }
}

std::size_t CommOptions::bucket_bytes() const {
  const double bytes = std::round(bucket_mb * 1024.0 * 1024.0);
  return bytes < 1 ? 1 : static_cast<std::size_t>(bytes);
}

double CommStats::total_bytes_sent() const {
  return all_reduce.bytes_sent + reduce_scatter.bytes_sent + all_gather.bytes_sent +
         broadcast.bytes_sent;
}

void CommStats::reset() { *this = CommStats{}; }

// ---- Group --------------------------------------------------------------------------

Group::Group(MPI_Comm comm, std::string name, int world_rank, c10::Device device,
             CommStats& stats)
    : comm_(comm), name_(std::move(name)), world_rank_(world_rank), device_(device), stats_(&stats) {
  // Failures come back as codes, so that they can be reported with the rank and operation.
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);

  MPI_Group group;
  MPI_Group world_group;
  MPI_Comm_group(comm_, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  std::vector<int> members(size_);
  std::iota(members.begin(), members.end(), 0);
  world_ranks_.resize(size_);
  MPI_Group_translate_ranks(group, size_, members.data(), world_group, world_ranks_.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
}

Group::~Group() {
  nccl_.reset();
  if (comm_ != MPI_COMM_NULL && mpi_running()) MPI_Comm_free(&comm_);
}

std::string Group::who() const {
  return "ftrain::dist: rank " + std::to_string(world_rank_) + " (" + name_ + " group, rank " +
         std::to_string(rank_) + " of " + std::to_string(size_) + ")";
}

std::string Group::where(const char* op) const { return who() + ": " + op + ": "; }

void Group::check_mpi(int code, const char* op) const {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(where(op) + "MPI error: " + std::string(text, length));
}

void Group::check_tensor(const at::Tensor& t, const char* op, const char* what) const {
  if (!t.defined()) throw std::invalid_argument(where(op) + what + " is an undefined tensor");
  if (t.is_cuda()) {
    if (!device_.is_cuda()) {
      throw std::invalid_argument(where(op) + what +
                                  " is a CUDA tensor but dist.device is cpu; move it to the "
                                  "CPU or run with dist.device=cuda");
    }
    if (t.device() != device_) {
      throw std::invalid_argument(where(op) + what + " is on " + t.device().str() +
                                  " but this rank's device is " + device_.str());
    }
  } else if (!t.is_cpu()) {
    throw std::invalid_argument(where(op) + what + " is on " + t.device().str() +
                                "; collectives take CPU or CUDA tensors");
  }
}

namespace {

void check_reduce(const std::string& where, const at::Tensor& t, ReduceOp op) {
  const auto type = t.scalar_type();
  const bool reducible = mpi_reduce_type(type) != MPI_DATATYPE_NULL &&
                         !(t.is_cuda() && type == at::kShort);  // NCCL has no int16
  if (!reducible) {
    throw std::invalid_argument(where + "cannot reduce tensors of type " +
                                std::string(c10::toString(type)));
  }
  if (op == ReduceOp::Avg && is_integer(type)) {
    throw std::invalid_argument(where + "avg of an integer tensor (" +
                                std::string(c10::toString(type)) +
                                ") would truncate; reduce with sum and divide");
  }
}

void check_movable(const std::string& where, const at::Tensor& t) {
  if (mpi_raw_type(t.element_size()) == MPI_DATATYPE_NULL) {
    throw std::invalid_argument(where + "cannot move tensors of type " +
                                std::string(c10::toString(t.scalar_type())));
  }
}

void check_pair(const std::string& where, const at::Tensor& out, const at::Tensor& in) {
  if (out.scalar_type() != in.scalar_type()) {
    throw std::invalid_argument(where + "out is " + std::string(c10::toString(out.scalar_type())) +
                                " but in is " + std::string(c10::toString(in.scalar_type())));
  }
  if (out.device() != in.device()) {
    throw std::invalid_argument(where + "out is on " + out.device().str() + " but in is on " +
                                in.device().str());
  }
}

void check_count(const std::string& where, std::int64_t count) {
  if (count > INT_MAX) {
    throw std::invalid_argument(where + std::to_string(count) +
                                " elements per rank exceed what one MPI call moves (" +
                                std::to_string(INT_MAX) + ")");
  }
}

// `out` is rank `rank`'s chunk of `in`, both contiguous and of one dtype: a
// reduce-scatter can run in place.
bool is_own_chunk(const at::Tensor& out, const at::Tensor& in, int rank) {
  return out.numel() > 0 && out.is_alias_of(in) && out.is_contiguous() && in.is_contiguous() &&
         out.scalar_type() == in.scalar_type() &&
         bytes_of(out) == bytes_of(in) + rank * out.numel() * static_cast<std::int64_t>(out.element_size());
}

}  // namespace

detail::DeviceCollectives& Group::device_collectives(const char* op) {
#ifdef FTRAIN_WITH_NCCL
  if (!nccl_) nccl_ = detail::make_nccl_collectives(comm_, rank_, size_, device_, who());
  return *nccl_;
#else
  throw std::logic_error(where(op) + "CUDA tensors need ftrain built with CUDA and NCCL");
#endif
}

void Group::count(CollectiveStats& kind, double bytes) {
  kind.calls += 1;
  kind.bytes_sent += bytes;
}

void Group::all_reduce(at::Tensor& t, ReduceOp op) {
  constexpr const char* kOp = "all_reduce";
  check_tensor(t, kOp, "the tensor");
  check_reduce(where(kOp), t, op);

  if (t.is_cuda()) {
    at::Tensor work = t.contiguous();
    device_collectives(kOp).all_reduce(work, op, nullptr);
    if (!work.is_same(t)) t.copy_(work);
    count(stats_->all_reduce, 2.0 * ring_fraction(size_) * double(t.numel() * t.element_size()));
    return;
  }

  // (any layout, any reducible type) -> contiguous buffer of the MPI type
  at::Tensor work = is_half(t.scalar_type()) ? t.to(at::kFloat).contiguous() : t.contiguous();
  const MPI_Datatype type = mpi_reduce_type(work.scalar_type());
  const std::int64_t numel = work.numel();
  char* data = bytes_of(work);
  for (std::int64_t start = 0; start < numel; start += kMaxMpiCount) {
    const int n = static_cast<int>(std::min(kMaxMpiCount, numel - start));
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + start * work.element_size(), n, type, mpi_op(op),
                            comm_),
              kOp);
  }
  if (op == ReduceOp::Avg) work.div_(size_);
  if (!work.is_same(t)) t.copy_(work);
  count(stats_->all_reduce, 2.0 * ring_fraction(size_) * double(numel * work.element_size()));
}

PendingAllReduce Group::start_all_reduce(at::Tensor& t, ReduceOp op) {
  constexpr const char* kOp = "all_reduce";
  check_tensor(t, kOp, "the tensor");
  check_reduce(where(kOp), t, op);
  PendingAllReduce pending;
  if (!t.is_contiguous() || (!t.is_cuda() && is_half(t.scalar_type()))) {
    // Other layouts take the blocking path.
    all_reduce(t, op);
    return pending;
  }
  pending.group_ = this;
  pending.tensor_ = t;
  pending.received_ = t;
  if (t.is_cuda()) {
    device_collectives(kOp).all_reduce(t, op, &pending.device_work_);
  } else {
    const MPI_Datatype type = mpi_reduce_type(t.scalar_type());
    const std::int64_t numel = t.numel();
    char* data = bytes_of(t);
    for (std::int64_t start = 0; start < numel; start += kMaxMpiCount) {
      const int n = static_cast<int>(std::min(kMaxMpiCount, numel - start));
      MPI_Request request;
      check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data + start * t.element_size(), n, type, mpi_op(op), comm_,
                               &request),
                kOp);
      pending.requests_.push_back(request);
    }
    if (op == ReduceOp::Avg) pending.divide_by_size_ = op;
  }
  count(stats_->all_reduce, 2.0 * ring_fraction(size_) * double(t.numel() * t.element_size()));
  return pending;
}

PendingCollective::PendingCollective() = default;

PendingCollective::PendingCollective(PendingCollective&& other) noexcept
    : group_(std::exchange(other.group_, nullptr)),
      op_name_(other.op_name_),
      tensor_(std::move(other.tensor_)),
      received_(std::move(other.received_)),
      input_(std::move(other.input_)),
      divide_by_size_(other.divide_by_size_),
      requests_(std::move(other.requests_)),
      device_work_(std::move(other.device_work_)),
      ring_(std::move(other.ring_)) {}

PendingCollective& PendingCollective::operator=(PendingCollective&& other) noexcept {
  if (this != &other) {
    if (group_) {
      try {
        wait();
      } catch (...) {
      }
    }
    group_ = std::exchange(other.group_, nullptr);
    op_name_ = other.op_name_;
    tensor_ = std::move(other.tensor_);
    received_ = std::move(other.received_);
    input_ = std::move(other.input_);
    divide_by_size_ = other.divide_by_size_;
    requests_ = std::move(other.requests_);
    device_work_ = std::move(other.device_work_);
    ring_ = std::move(other.ring_);
  }
  return *this;
}

PendingCollective::~PendingCollective() {
  if (!group_) return;
  try {
    wait();
  } catch (...) {
  }
}

bool PendingCollective::progress() {
  if (!group_) return true;
  if (ring_) return ring_->advance(/*block=*/false);
  if (requests_.empty() || device_work_) return false;
  int arrived = 0;
  group_->check_mpi(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &arrived, MPI_STATUSES_IGNORE),
                    op_name_);
  return arrived != 0;
}

void PendingCollective::wait() {
  if (!group_) return;
  Group* group = std::exchange(group_, nullptr);
  if (ring_) {
    ring_->advance(/*block=*/true);
    ring_.reset();
  }
  if (!requests_.empty()) {
    group->check_mpi(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
                     op_name_);
    requests_.clear();
  }
  if (device_work_) {
    device_work_->wait();
    device_work_.reset();
  }
  if (divide_by_size_) received_.div_(group->size());
  if (!received_.is_same(tensor_)) tensor_.copy_(received_);
  tensor_ = at::Tensor();
  received_ = at::Tensor();
  input_ = at::Tensor();
}

void Group::reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) {
  run_reduce_scatter(out, in, op, /*start=*/false).wait();
}

PendingCollective Group::start_reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) {
  return run_reduce_scatter(out, in, op, /*start=*/true);
}

PendingCollective Group::run_reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op, bool start) {
  constexpr const char* kOp = "reduce_scatter";
  check_tensor(out, kOp, "out");
  check_tensor(in, kOp, "in");
  check_pair(where(kOp), out, in);
  check_reduce(where(kOp), in, op);
  if (in.numel() != out.numel() * size_) {
    throw std::invalid_argument(where(kOp) + "in has " + std::to_string(in.numel()) +
                                " elements, expected group size x out = " +
                                std::to_string(size_) + " x " + std::to_string(out.numel()));
  }
  const std::int64_t n = out.numel();
  PendingCollective pending;
  pending.group_ = this;
  pending.op_name_ = kOp;
  pending.tensor_ = out;
  // In place (out is this rank's chunk of in): NCCL takes out = in + rank * n as such;
  // MPI_IN_PLACE leaves the result at the start of `in`, and wait() moves it to this
  // rank's chunk. Otherwise the input must not change while it is read: a view of
  // `out` is copied first.
  const bool in_place = is_own_chunk(out, in, rank_) && (out.is_cuda() || !is_half(in.scalar_type()));
  at::Tensor send = in_place || !in.is_alias_of(out) ? in.contiguous() : in.clone(at::MemoryFormat::Contiguous);
  if (out.is_cuda()) {
    pending.received_ = in_place ? out : out.contiguous();
    pending.input_ = send;
    device_collectives(kOp).reduce_scatter(pending.received_, send, op, start ? &pending.device_work_ : nullptr);
    count(stats_->reduce_scatter, ring_fraction(size_) * double(in.numel() * in.element_size()));
    return pending;
  }

  check_count(where(kOp), n);
  if (is_half(send.scalar_type())) send = send.to(at::kFloat);  // 16-bit values are summed as fp32
  pending.input_ = send;
  // In place the ring writes this rank's chunk only after it has sent its values.
  pending.received_ =
      out.is_contiguous() && out.scalar_type() == send.scalar_type() ? out : send.new_empty(out.sizes());
  const int tag = kRingTagBase + rings_started_++ % kRingTags;
  pending.ring_ = std::make_unique<detail::RingReduceScatter>(comm_, rank_, size_, tag, send.view({-1}),
                                                              pending.received_.view({-1}), op, where(kOp));
  if (!start) pending.ring_->advance(/*block=*/true);
  if (op == ReduceOp::Avg) pending.divide_by_size_ = op;
  count(stats_->reduce_scatter, ring_fraction(size_) * double(send.numel() * send.element_size()));
  return pending;
}

void Group::all_gather(at::Tensor& out, const at::Tensor& in) {
  constexpr const char* kOp = "all_gather";
  check_tensor(out, kOp, "out");
  check_tensor(in, kOp, "in");
  check_pair(where(kOp), out, in);
  check_movable(where(kOp), in);
  if (out.numel() != in.numel() * size_) {
    throw std::invalid_argument(where(kOp) + "out has " + std::to_string(out.numel()) +
                                " elements, expected group size x in = " + std::to_string(size_) +
                                " x " + std::to_string(in.numel()));
  }
  const std::int64_t chunk_bytes = in.numel() * in.element_size();
  // `in` already sitting in this rank's chunk of `out` needs no copy.
  const bool in_place = in.numel() > 0 && in.is_alias_of(out) && in.is_contiguous() &&
                        out.is_contiguous() && bytes_of(in) == bytes_of(out) + rank_ * chunk_bytes;
  at::Tensor send = in.contiguous();
  if (!in_place && send.is_alias_of(out)) send = send.clone();
  at::Tensor recv = out.contiguous();

  if (out.is_cuda()) {
    device_collectives(kOp).all_gather(recv, send, nullptr);
  } else {
    check_count(where(kOp), in.numel());
    const MPI_Datatype type = mpi_raw_type(in.element_size());
    const int n = static_cast<int>(in.numel());
    check_mpi(MPI_Allgather(in_place ? MPI_IN_PLACE : send.data_ptr(), n, type, recv.data_ptr(), n,
                            type, comm_),
              kOp);
  }
  if (!recv.is_same(out)) out.copy_(recv);
  count(stats_->all_gather, ring_fraction(size_) * double(out.numel() * out.element_size()));
}

PendingCollective Group::start_all_gather(at::Tensor& out, const at::Tensor& in) {
  constexpr const char* kOp = "all_gather";
  check_tensor(out, kOp, "out");
  check_tensor(in, kOp, "in");
  check_pair(where(kOp), out, in);
  check_movable(where(kOp), in);
  PendingCollective pending;
  if (!out.is_contiguous()) {
    // Other layouts take the blocking path.
    all_gather(out, in);
    return pending;
  }
  if (out.numel() != in.numel() * size_) {
    throw std::invalid_argument(where(kOp) + "out has " + std::to_string(out.numel()) +
                                " elements, expected group size x in = " + std::to_string(size_) +
                                " x " + std::to_string(in.numel()));
  }
  const std::int64_t chunk_bytes = in.numel() * in.element_size();
  const bool in_place = in.numel() > 0 && in.is_alias_of(out) && in.is_contiguous() &&
                        bytes_of(in) == bytes_of(out) + rank_ * chunk_bytes;
  at::Tensor send = in.contiguous();
  if (!in_place && send.is_alias_of(out)) send = send.clone();
  pending.group_ = this;
  pending.op_name_ = kOp;
  pending.tensor_ = out;
  pending.received_ = out;
  pending.input_ = send;
  if (out.is_cuda()) {
    device_collectives(kOp).all_gather(out, send, &pending.device_work_);
  } else {
    check_count(where(kOp), in.numel());
    const MPI_Datatype type = mpi_raw_type(in.element_size());
    const int n = static_cast<int>(in.numel());
    MPI_Request request;
    check_mpi(MPI_Iallgather(in_place ? MPI_IN_PLACE : send.data_ptr(), n, type, out.data_ptr(), n, type, comm_,
                             &request),
              kOp);
    pending.requests_.push_back(request);
  }
  count(stats_->all_gather, ring_fraction(size_) * double(out.numel() * out.element_size()));
  return pending;
}

void Group::broadcast(at::Tensor& t, int root) {
  constexpr const char* kOp = "broadcast";
  check_tensor(t, kOp, "the tensor");
  check_movable(where(kOp), t);
  if (root < 0 || root >= size_) {
    throw std::invalid_argument(where(kOp) + "root " + std::to_string(root) +
                                " is not a rank of this group of " + std::to_string(size_));
  }
  at::Tensor work = t.contiguous();
  if (t.is_cuda()) {
    device_collectives(kOp).broadcast(work, root);
  } else {
    const MPI_Datatype type = mpi_raw_type(work.element_size());
    const std::int64_t numel = work.numel();
    char* data = bytes_of(work);
    for (std::int64_t start = 0; start < numel; start += kMaxMpiCount) {
      const int n = static_cast<int>(std::min(kMaxMpiCount, numel - start));
      check_mpi(MPI_Bcast(data + start * work.element_size(), n, type, root, comm_), kOp);
    }
  }
  if (!work.is_same(t)) t.copy_(work);
  // The ring starts at the root; its last rank, the one before the root, forwards nothing.
  const bool last_on_ring = rank_ == (root + size_ - 1) % size_;
  count(stats_->broadcast, size_ > 1 && !last_on_ring ? double(t.numel() * t.element_size()) : 0.0);
}

double Group::all_reduce(double value, ReduceOp op) {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, mpi_op(op), comm_), "all_reduce");
  count(stats_->all_reduce, 2.0 * ring_fraction(size_) * sizeof(double));
  return op == ReduceOp::Avg ? value / size_ : value;
}

std::int64_t Group::all_reduce(std::int64_t value, ReduceOp op) {
  if (op == ReduceOp::Avg) {
    throw std::invalid_argument(where("all_reduce") +
                                "avg of an integer would truncate; reduce with sum and divide");
  }
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT64_T, mpi_op(op), comm_), "all_reduce");
  count(stats_->all_reduce, 2.0 * ring_fraction(size_) * sizeof(std::int64_t));
  return value;
}

std::vector<std::string> Group::gather(const std::string& text, int root) {
  if (root < 0 || root >= size_) throw std::invalid_argument(where("gather") + "root " + std::to_string(root) + " is not a member");
  if (text.size() > static_cast<size_t>(INT_MAX)) throw std::invalid_argument(where("gather") + "text beyond 2 GiB");
  const int length = static_cast<int>(text.size());
  std::vector<int> lengths(rank_ == root ? size_ : 0);
  check_mpi(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, root, comm_), "gather");
  std::vector<int> displacements(lengths.size());
  long long total = 0;
  for (size_t r = 0; r < lengths.size(); ++r) {
    displacements[r] = static_cast<int>(total);
    total += lengths[r];
  }
  if (total > INT_MAX) throw std::runtime_error(where("gather") + "texts beyond 2 GiB in all");
  std::string joined(static_cast<size_t>(total), '\0');
  check_mpi(MPI_Gatherv(text.data(), length, MPI_CHAR, joined.data(), lengths.data(), displacements.data(), MPI_CHAR,
                        root, comm_),
            "gather");
  std::vector<std::string> out;
  for (size_t r = 0; r < lengths.size(); ++r) out.push_back(joined.substr(displacements[r], lengths[r]));
  return out;
}

std::string Group::broadcast(const std::string& text, int root) {
  if (root < 0 || root >= size_) throw std::invalid_argument(where("broadcast") + "root " + std::to_string(root) + " is not a member");
  long long length = static_cast<long long>(text.size());
  check_mpi(MPI_Bcast(&length, 1, MPI_LONG_LONG, root, comm_), "broadcast");
  if (length > INT_MAX) throw std::invalid_argument(where("broadcast") + "text beyond 2 GiB");
  std::string out = rank_ == root ? text : std::string(static_cast<size_t>(length), '\0');
  check_mpi(MPI_Bcast(out.data(), static_cast<int>(length), MPI_CHAR, root, comm_), "broadcast");
  return out;
}

void Group::barrier() { check_mpi(MPI_Barrier(comm_), "barrier"); }

// ---- Communicator -------------------------------------------------------------------

Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&&) noexcept = default;
Communicator::~Communicator() = default;

int64_t Communicator::peak_device_bytes() const {
  if (!device_.is_cuda()) return -1;
#ifdef FTRAIN_WITH_NCCL
  return detail::cuda_peak_allocated_bytes(device_.index());
#else
  return -1;
#endif
}

void Communicator::reset_peak_device_bytes() {
  if (!device_.is_cuda()) return;
#ifdef FTRAIN_WITH_NCCL
  detail::reset_cuda_peak_allocated_bytes(device_.index());
#endif
}

Communicator Communicator::create(const CommOptions& options) {
  if (!mpi_running()) {
    throw std::logic_error("Communicator::create: MPI is not running; create an MpiSession first");
  }
  int world_size = 1;
  int rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string on_rank = "ftrain::dist: rank " + std::to_string(rank) + ": ";

  // Options are the same on every rank, so every rank throws here alike.
  Communicator comm;
  try {
    options.validate();
    comm.layout_ = Layout::make(world_size, options.tp);
  } catch (const std::invalid_argument& error) {
    throw std::invalid_argument(on_rank + error.what());
  }
  comm.options_ = options;
  comm.rank_ = rank;

  // The node of each rank, from which ranks share memory (not from rank arithmetic:
  // the launcher may place ranks cyclically), named by the node's lowest rank.
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &comm.local_rank_);
  MPI_Comm_size(node, &comm.local_size_);
  int node_id = rank;
  MPI_Bcast(&node_id, 1, MPI_INT, 0, node);
  MPI_Comm_free(&node);
  std::vector<int> node_of_rank(world_size);
  MPI_Allgather(&node_id, 1, MPI_INT, node_of_rank.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<char> hosts(size_t(world_size) * MPI_MAX_PROCESSOR_NAME, '\0');
  {
    char host[MPI_MAX_PROCESSOR_NAME] = {};
    int length = 0;
    MPI_Get_processor_name(host, &length);
    MPI_Allgather(host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, hosts.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                  MPI_COMM_WORLD);
  }
  for (int r = 0; r < world_size; ++r)
    comm.hosts_.emplace_back(hosts.data() + size_t(r) * MPI_MAX_PROCESSOR_NAME,
                             strnlen(hosts.data() + size_t(r) * MPI_MAX_PROCESSOR_NAME, MPI_MAX_PROCESSOR_NAME));
  comm.layout_ = Layout::by_node(node_of_rank, options.tp);

  // A device problem may hit only some ranks; agree on it so that no rank goes on alone
  // into the collectives below.
  std::string device_error;
  if (options.device == "cuda") {
#ifdef FTRAIN_WITH_NCCL
    try {
      const int devices = detail::cuda_device_count();
      if (devices == 0) {
        char host[MPI_MAX_PROCESSOR_NAME];
        int length = 0;
        MPI_Get_processor_name(host, &length);
        device_error = on_rank + "dist.device = cuda but no CUDA device is visible on " +
                       std::string(host, length);
      } else {
        comm.device_ = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(comm.local_rank_ % devices));
        detail::set_cuda_device(comm.device_.index());
      }
    } catch (const std::exception& error) {
      device_error = on_rank + "dist.device = cuda: " + error.what();
    }
#else
    device_error = on_rank + "dist.device = cuda but ftrain was built without CUDA; build it "
                             "against a CUDA LibTorch or set dist.device = cpu";
#endif
  }
  int failed = device_error.empty() ? 0 : 1;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (!device_error.empty()) throw std::runtime_error(device_error);
  if (failed) {
    throw std::runtime_error(on_rank + "dist.device = " + options.device +
                             ": another rank could not set up its device (see its message)");
  }

  comm.stats_ = std::make_unique<CommStats>();
  MPI_Comm world;
  MPI_Comm tp;
  MPI_Comm dp;
  MPI_Comm_dup(MPI_COMM_WORLD, &world);
  // tp: ranks of one dp_rank, ordered by tp_rank; dp: ranks of one tp_rank, by dp_rank.
  MPI_Comm_split(MPI_COMM_WORLD, comm.layout_.dp_rank(rank), comm.layout_.tp_rank(rank), &tp);
  MPI_Comm_split(MPI_COMM_WORLD, comm.layout_.tp_rank(rank), comm.layout_.dp_rank(rank), &dp);
  comm.world_.reset(new Group(world, "world", rank, comm.device_, *comm.stats_));
  comm.tp_.reset(new Group(tp, "tp", rank, comm.device_, *comm.stats_));
  comm.dp_.reset(new Group(dp, "dp", rank, comm.device_, *comm.stats_));
  return comm;
}

}  // namespace ftrain::dist
