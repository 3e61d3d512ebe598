// A few values computed on the device, on their way to the host without the host
// waiting for them: on CUDA they are copied into pinned memory on the current stream and
// an event marks their arrival, so reading them later waits for that step's work only,
// not for what was queued after it. On the CPU they are simply there.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <optional>

namespace ftrain::launch {

class DeviceReadback {
 public:
  DeviceReadback() = default;
  // values: any shape, read back as float64.
  explicit DeviceReadback(const at::Tensor& values) {
    const at::Tensor doubles = values.detach().to(at::kDouble).contiguous();
    if (!doubles.is_cuda()) {
      host_ = doubles.clone();
      return;
    }
    host_ = at::empty(doubles.sizes(), at::TensorOptions().dtype(at::kDouble).pinned_memory(true));
    host_.copy_(doubles, /*non_blocking=*/true);
    arrived_.emplace(c10::DeviceType::CUDA);
    arrived_->record(c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(doubles.device()));
  }

  // Waits until the values are on the host; they stay valid while this object lives.
  const double* values() {
    if (arrived_) {
      arrived_->synchronize();
      arrived_.reset();
    }
    return host_.data_ptr<double>();
  }

 private:
  at::Tensor host_;
  std::optional<c10::Event> arrived_;
};

}  // namespace ftrain::launch
