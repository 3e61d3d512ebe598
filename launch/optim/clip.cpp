#include "launch/optim/clip.h"

#include <torch/torch.h>

#include <vector>

namespace ftrain::launch {

at::Tensor clip_gradient_norm(dist::DataParallel& data_parallel, const dist::TensorParallelPlan& plan,
                              dist::Communicator& comm, double limit) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  std::vector<double> weights;
  for (auto& [name, grad] : data_parallel.gradients()) {
    grads.push_back(grad);
    weights.push_back(1.0 / plan.replicas(name));
  }
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(comm.device());
  at::Tensor square_sum = torch::zeros({}, f64);
  if (!grads.empty()) {
    const at::Tensor norms = torch::stack(at::_foreach_norm(grads, 2)).to(torch::kFloat64);
    at::Tensor scale = torch::tensor(weights, torch::kFloat64);
    if (scale.device() != norms.device()) scale = scale.pin_memory().to(norms.device(), /*non_blocking=*/true);
    square_sum = (norms.pow(2) * scale).sum();
  }
  if (data_parallel.shards_state()) comm.dp().all_reduce(square_sum, dist::ReduceOp::Sum);
  if (comm.layout().tp_size > 1) comm.tp().all_reduce(square_sum, dist::ReduceOp::Sum);
  const at::Tensor norm = square_sum.sqrt();
  if (limit > 0) {
    const at::Tensor factor =
        torch::where(torch::isfinite(norm) & (norm > limit), limit / (norm + 1e-6), torch::ones_like(norm))
            .to(torch::kFloat);
    data_parallel.scale_gradients(factor);
  }
  return norm;
}

}  // namespace ftrain::launch
