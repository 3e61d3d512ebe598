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

// Tensors given here are contiguous, on the group's device, with dtypes NCCL has.
class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  virtual void all_reduce(at::Tensor& t, ReduceOp op) = 0;
  virtual void reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) = 0;
  virtual void all_gather(at::Tensor& out, const at::Tensor& in) = 0;
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
#endif

}  // namespace ftrain::dist::detail
