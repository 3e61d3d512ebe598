#include "dist/ring_reduce_scatter.h"

#include <ATen/ATen.h>

#include <climits>
#include <stdexcept>

#include "dist/comm.h"

namespace ftrain::dist::detail {

RingReduceScatter::RingReduceScatter(MPI_Comm comm, int rank, int size, int tag, at::Tensor input, at::Tensor output,
                                     ReduceOp op, std::string where)
    : comm_(comm), rank_(rank), size_(size), tag_(tag), input_(std::move(input)), output_(std::move(output)), op_(op),
      where_(std::move(where)) {
  if (!input_.is_contiguous() || !output_.is_contiguous() || input_.numel() != output_.numel() * size_ ||
      input_.scalar_type() != output_.scalar_type())
    throw std::invalid_argument(where_ + "ring reduce-scatter needs contiguous tensors of one dtype, in = N x out");
  if (static_cast<int64_t>(output_.nbytes()) > INT_MAX)
    throw std::invalid_argument(where_ + "a chunk of more than 2 GiB");
  if (size_ == 1) {
    if (!output_.is_same(input_)) output_.copy_(input_);
    step_ = 0;
    return;
  }
  partial_[0] = at::empty_like(output_);
  if (size_ > 2) partial_[1] = at::empty_like(output_);
  post();
}

RingReduceScatter::~RingReduceScatter() {
  // Messages still in flight read and write the buffers this object owns.
  for (MPI_Request& request : requests_)
    if (request != MPI_REQUEST_NULL) MPI_Wait(&request, MPI_STATUS_IGNORE);
}

at::Tensor RingReduceScatter::chunk(int index) const {
  const int64_t n = output_.numel();
  return input_.narrow(0, ((index % size_) + size_) % size_ * n, n);
}

void RingReduceScatter::post() {
  const int right = (rank_ + 1) % size_, left = (rank_ - 1 + size_) % size_;
  // Step 0 sends this rank's own values of chunk r-1; later steps the partial sum that
  // arrived in the step before.
  const at::Tensor& send = step_ == 0 ? chunk(rank_ - 1) : partial_[(step_ - 1) % 2];
  at::Tensor& receive = partial_[step_ % 2];
  const int bytes = static_cast<int>(output_.nbytes());
  check(MPI_Irecv(receive.data_ptr(), bytes, MPI_BYTE, left, tag_, comm_, &requests_[0]), "MPI_Irecv");
  check(MPI_Isend(send.data_ptr(), bytes, MPI_BYTE, right, tag_, comm_, &requests_[1]), "MPI_Isend");
}

void RingReduceScatter::finish() {
  // What arrived is the partial sum of chunk r-2-step; add this rank's values of it. The
  // last step's chunk is r itself: the sum goes to the output.
  const bool last = step_ == size_ - 2;
  const at::Tensor& arrived = partial_[step_ % 2];
  const at::Tensor mine = chunk(rank_ - 2 - step_);
  at::Tensor into = last ? output_ : arrived;
  switch (op_) {
    case ReduceOp::Max: at::maximum_out(into, arrived, mine); break;
    case ReduceOp::Min: at::minimum_out(into, arrived, mine); break;
    default: at::add_out(into, arrived, mine); break;  // Sum, and Avg (divided by the caller)
  }
}

bool RingReduceScatter::advance(bool block) {
  while (step_ < size_ - 1) {
    if (block) {
      check(MPI_Waitall(2, requests_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    } else {
      int arrived = 0;
      check(MPI_Testall(2, requests_.data(), &arrived, MPI_STATUSES_IGNORE), "MPI_Testall");
      if (!arrived) return false;
    }
    finish();
    if (++step_ < size_ - 1) post();
  }
  // The buffers go as soon as the result is in place.
  partial_ = {};
  return true;
}

void RingReduceScatter::check(int code, const char* call) const {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(where_ + call + " failed: " + std::string(text, length));
}

}  // namespace ftrain::dist::detail
