// Reduce-scatter of host tensors around a ring of MPI point-to-point messages.
//
// Open MPI's reduce-scatter keeps temporaries of the whole input: libnbc's
// MPI_Ireduce_scatter_block two of them while it is in flight, the blocking
// algorithms one or two. ZeRO reduce-scatters a whole block's gradients, so that was
// one to two more blocks per rank during every backward pass. Around a ring, rank r
// sends chunk r-1 to rank r+1 and receives chunk r-2 from rank r-1, adds its own
// values of it and passes the partial sum on; after N-1 steps it has received the sum
// of chunk r. It holds two chunk-sized buffers (the partial being sent and the one
// arriving), 2/N of the input, and sends (N-1)/N of it, as the ring algorithm counts.
//
// Every rank adds the contributions in the same ring order for a given chunk, so the
// result is deterministic and the same on every run of the same layout.
#pragma once

#include <ATen/core/Tensor.h>
#include <mpi.h>

#include <array>
#include <string>

namespace ftrain::dist {

enum class ReduceOp;

namespace detail {

class RingReduceScatter {
 public:
  // Starts reducing `input` (N chunks of `output`'s size, contiguous, on the host) into
  // `output`, which may be this rank's chunk of `input`. `tag` must be the same on every
  // rank and not used by another ring in flight on `comm`. `where` begins error messages.
  RingReduceScatter(MPI_Comm comm, int rank, int size, int tag, at::Tensor input, at::Tensor output, ReduceOp op,
                    std::string where);
  ~RingReduceScatter();
  RingReduceScatter(const RingReduceScatter&) = delete;
  RingReduceScatter& operator=(const RingReduceScatter&) = delete;

  // Moves the ring on as far as the messages that have arrived allow (block: until it
  // is done). True once `output` holds the result.
  bool advance(bool block);

 private:
  at::Tensor chunk(int index) const;
  void post();    // the sends and receives of step_
  void finish();  // adds this rank's values into what arrived in step_
  void check(int code, const char* call) const;

  MPI_Comm comm_;
  int rank_, size_, tag_;
  at::Tensor input_, output_;
  ReduceOp op_;
  std::string where_;
  std::array<at::Tensor, 2> partial_;  // what arrives in even and odd steps
  std::array<MPI_Request, 2> requests_{MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  int step_ = 0;  // of size_ - 1
};

}  // namespace detail
}  // namespace ftrain::dist
