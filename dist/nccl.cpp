// Group collectives on CUDA tensors through NCCL.
//
// Each group owns one NCCL communicator and one CUDA stream from the c10 pool. A
// collective is ordered after the caller's current stream (event), runs on the group's
// stream, and the caller's stream then waits for it (event), so the caller sees the
// result in stream order without blocking the host.
//
// NCCL reports some failures only asynchronously (a peer that died, a broken network
// link): a collective then never completes and the host would wait on it forever. A
// thread per communicator polls ncclCommGetAsyncError; on an error it prints it, naming
// the rank and group, aborts the communicator and ends the job.
#include "dist/nccl.h"

#include <nccl.h>

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "dist/mpi_session.h"

namespace ftrain::dist::detail {

namespace {

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Avg:
      return ncclAvg;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  throw std::invalid_argument("unknown ReduceOp");
}

// The NCCL type that reduces `type`; false when NCCL has none.
bool nccl_reduce_type(at::ScalarType type, ncclDataType_t& out) {
  switch (type) {
    case at::kFloat: out = ncclFloat32; return true;
    case at::kDouble: out = ncclFloat64; return true;
    case at::kHalf: out = ncclFloat16; return true;
    case at::kBFloat16: out = ncclBfloat16; return true;
    case at::kChar: out = ncclInt8; return true;
    case at::kByte: out = ncclUint8; return true;
    case at::kInt: out = ncclInt32; return true;
    case at::kLong: out = ncclInt64; return true;
    default: return false;
  }
}

// Moving without arithmetic only needs the element's width.
bool nccl_raw_type(std::size_t element_size, ncclDataType_t& out) {
  switch (element_size) {
    case 1: out = ncclUint8; return true;
    case 2: out = ncclFloat16; return true;
    case 4: out = ncclUint32; return true;
    case 8: out = ncclUint64; return true;
    default: return false;
  }
}

class NcclCollectives final : public DeviceCollectives {
 public:
  NcclCollectives(MPI_Comm comm, int rank, int size, c10::Device device, std::string who)
      : device_(device),
        who_(std::move(who)),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {
    // Rank 0 makes the id and sends it with a flag, so that its failure reaches every
    // rank instead of leaving them waiting in ncclCommInitRank.
    struct {
      int ok;
      ncclUniqueId id;
    } message{};
    std::string id_error;
    if (rank == 0) {
      const ncclResult_t result = ncclGetUniqueId(&message.id);
      message.ok = result == ncclSuccess ? 1 : 0;
      if (!message.ok) id_error = ncclGetErrorString(result);
    }
    const int code = MPI_Bcast(&message, sizeof(message), MPI_BYTE, 0, comm);
    if (code != MPI_SUCCESS) fail("nccl init", "MPI_Bcast of the NCCL unique id failed");
    if (!message.ok) {
      fail("nccl init", rank == 0 ? "ncclGetUniqueId: " + id_error
                                  : std::string("rank 0 of the group could not make an NCCL id"));
    }
    c10::cuda::CUDAGuard guard(device_.index());
    check(ncclCommInitRank(&comm_, size, message.id, rank), "nccl init");
    monitor_ = std::thread([this] { watch_for_async_errors(); });
  }

  ~NcclCollectives() override {
    if (monitor_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(monitor_mutex_);
        stopping_ = true;
      }
      monitor_wake_.notify_all();
      monitor_.join();
    }
    if (comm_ == nullptr) return;
    // Work queued on the stream must finish before its communicator goes away.
    c10::cuda::CUDAGuard guard(device_.index());
    cudaStreamSynchronize(stream_.stream());
    ncclCommDestroy(comm_);
  }

  void all_reduce(at::Tensor& t, ReduceOp op, std::unique_ptr<DeviceWork>* deferred) override {
    const ncclDataType_t type = reduce_type(t, "all_reduce");
    launch("all_reduce", deferred, [&](cudaStream_t stream) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), type, nccl_op(op), comm_, stream);
    });
  }

  void reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op,
                      std::unique_ptr<DeviceWork>* deferred) override {
    const ncclDataType_t type = reduce_type(in, "reduce_scatter");
    launch("reduce_scatter", deferred, [&](cudaStream_t stream) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), type, nccl_op(op), comm_,
                               stream);
    });
  }

  void all_gather(at::Tensor& out, const at::Tensor& in, std::unique_ptr<DeviceWork>* deferred) override {
    const ncclDataType_t type = raw_type(in, "all_gather");
    launch("all_gather", deferred, [&](cudaStream_t stream) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), type, comm_, stream);
    });
  }

  void broadcast(at::Tensor& t, int root) override {
    const ncclDataType_t type = raw_type(t, "broadcast");
    launch("broadcast", nullptr, [&](cudaStream_t stream) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), type, root, comm_, stream);
    });
  }

 private:
  [[noreturn]] void fail(const char* op, const std::string& what) const {
    throw std::runtime_error(who_ + ": " + op + ": " + what);
  }

  void check(ncclResult_t result, const char* op) const {
    if (result == ncclSuccess) return;
    std::string what = std::string("NCCL error: ") + ncclGetErrorString(result);
    const char* detail = comm_ != nullptr ? ncclGetLastError(comm_) : ncclGetLastError(nullptr);
    if (detail != nullptr && *detail != '\0') what += " (" + std::string(detail) + ")";
    fail(op, what);
  }

  ncclDataType_t reduce_type(const at::Tensor& t, const char* op) const {
    ncclDataType_t type;
    if (!nccl_reduce_type(t.scalar_type(), type)) {
      fail(op, std::string("NCCL cannot reduce ") + c10::toString(t.scalar_type()));
    }
    return type;
  }

  ncclDataType_t raw_type(const at::Tensor& t, const char* op) const {
    ncclDataType_t type;
    if (!nccl_raw_type(t.element_size(), type)) {
      fail(op, std::string("NCCL cannot move ") + c10::toString(t.scalar_type()));
    }
    return type;
  }

  // The event a deferred collective's caller waits on.
  class Work final : public DeviceWork {
   public:
    Work(c10::cuda::CUDAEvent done, c10::DeviceIndex device) : done_(std::move(done)), device_(device) {}
    void wait() override { done_.block(c10::cuda::getCurrentCUDAStream(device_)); }

   private:
    c10::cuda::CUDAEvent done_;
    c10::DeviceIndex device_;
  };

  template <class Call>
  void launch(const char* op, std::unique_ptr<DeviceWork>* deferred, Call&& call) {
    c10::cuda::CUDAGuard guard(device_.index());
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device_.index());
    c10::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(current);
    inputs_ready.block(stream_);

    check(call(stream_.stream()), op);

    // The caller's stream waits for the collective (now, or at the deferred wait, until
    // which the caller keeps the tensors alive), and the caching allocator reuses a
    // freed block only on the stream that allocated it, so the tensors need no
    // recordStream on the group's stream.
    c10::cuda::CUDAEvent done;
    done.record(stream_);
    if (deferred != nullptr) {
      *deferred = std::make_unique<Work>(std::move(done), device_.index());
    } else {
      done.block(current);
    }
  }

  // Polls every 100 ms until the destructor stops it. Exit status 4: an NCCL failure.
  void watch_for_async_errors() {
    std::unique_lock<std::mutex> lock(monitor_mutex_);
    while (!monitor_wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stopping_; })) {
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess || state == ncclSuccess || state == ncclInProgress)
        continue;
      std::string message = "ftrain: error on " + who_ + ": NCCL asynchronous error: " + ncclGetErrorString(state);
      const char* detail = ncclGetLastError(comm_);
      if (detail != nullptr && *detail != '\0') message += " (" + std::string(detail) + ")";
      message += "; aborting the job\n";
      std::fwrite(message.data(), 1, message.size(), stderr);
      std::fflush(stderr);
      ncclCommAbort(comm_);
      abort_job(4);
    }
  }

  c10::Device device_;
  std::string who_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t comm_ = nullptr;
  std::thread monitor_;
  std::mutex monitor_mutex_;
  std::condition_variable monitor_wake_;
  bool stopping_ = false;
};

}  // namespace

std::unique_ptr<DeviceCollectives> make_nccl_collectives(MPI_Comm comm, int rank, int size,
                                                         c10::Device device, std::string who) {
  return std::make_unique<NcclCollectives>(comm, rank, size, device, std::move(who));
}

int cuda_device_count() { return c10::cuda::device_count(); }

void set_cuda_device(int index) { c10::cuda::set_device(static_cast<c10::DeviceIndex>(index)); }

int64_t cuda_peak_allocated_bytes(int index) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
}

void reset_cuda_peak_allocated_bytes(int index) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
}

}  // namespace ftrain::dist::detail
