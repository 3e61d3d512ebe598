// Internal to dist/: the collectives of a Group on CUDA tensors, implemented with NCCL
// in nccl.cpp, which is compiled only when LibTorch has CUDA (FTRAIN_WITH_NCCL).
// Group checks every argument first; these functions only move the data.
#pragma once

#include <mpi.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>

#include "dist/comm.h"

namespace ftrain::dist::detail {

// A collective enqueued on the group's stream that the caller's stream does not wait
// for yet, so the caller's kernels run beside it.
class DeviceWork {
 public:
  virtual ~DeviceWork() = default;
  // Makes the caller's current stream wait for the collective; the host does not wait.
  virtual void wait() = 0;
};

// Tensors given here are contiguous, on the group's device, with dtypes NCCL has.
// Each collective is enqueued on the group's stream after the work already on the
// caller's stream. With `deferred` null the caller's stream then waits for it, so its
// next kernels see the result; otherwise *deferred receives the wait to do later, and
// the caller keeps the tensors alive and untouched until then.
class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  virtual void all_reduce(at::Tensor& t, ReduceOp op, std::unique_ptr<DeviceWork>* deferred) = 0;
  virtual void reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op,
                              std::unique_ptr<DeviceWork>* deferred) = 0;
  virtual void all_gather(at::Tensor& out, const at::Tensor& in, std::unique_ptr<DeviceWork>* deferred) = 0;
  virtual void broadcast(at::Tensor& t, int root) = 0;
};

#ifdef FTRAIN_WITH_NCCL
// Collective over `comm`: its rank 0 makes the NCCL unique id and broadcasts it.
// `who` begins error messages ("ftrain::dist: rank 3 (tp group, rank 1 of 2)").
std::unique_ptr<DeviceCollectives> make_nccl_collectives(MPI_Comm comm, int rank, int size,
                                                         c10::Device device, std::string who);
int cuda_device_count();
void set_cuda_device(int index);
int64_t cuda_peak_allocated_bytes(int index);
void reset_cuda_peak_allocated_bytes(int index);
#endif

}  // namespace ftrain::dist::detail
