// Reads a Hugging Face causal LM split over a tensor-parallel group of every rank, and
// prints how much each rank's resident memory grew while it did, as one JSON line per
// rank. Driven by test_tensor_parallel_load.py, which starts a fresh job per way of
// reading so that neither sees memory the other left behind.
//
//   tensor_parallel_load_memory <model dir> whole|split
//     whole: the whole model is loaded, then apply_tensor_parallel keeps this rank's part
//     split: dist::load_tensor_parallel, each rank reading only its part
//
// Growth is the peak resident set (VmHWM, reset just before loading through
// /proc/self/clear_refs) minus the resident set just before loading; file pages the
// mapping brings in count, as they are resident too.
#include <mpi.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "dist/comm.h"
#include "dist/mpi_session.h"
#include "dist/tensor_parallel.h"
#include "model/causal_lm.h"

namespace dist = ftrain::dist;
namespace model = ftrain::model;

namespace {

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
int64_t status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::istringstream values(line.substr(field.size() + 1));
    int64_t kilobytes = 0;
    values >> kilobytes;
    return kilobytes * 1024;
  }
  throw std::runtime_error("/proc/self/status has no " + field);
}

// The first use of a kernel or of the allocator maps code and arenas; do it before
// measuring, on tensors too small to matter.
void warm_up() {
  torch::NoGradGuard no_grad;
  at::Tensor a = torch::randn({64, 64}).to(at::kBFloat16);
  at::Tensor b = torch::empty({32, 64});
  b.copy_(a.index_select(0, torch::arange(32)));
  b.copy_(a.narrow(1, 0, 64).narrow(0, 0, 32).t().t());
  (a.to(at::kFloat) * (torch::arange(64) >= 0).view({64, 1}).to(at::kFloat)).sum().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  dist::MpiSession session(argc, argv);
  if (argc != 3 || (std::string(argv[2]) != "whole" && std::string(argv[2]) != "split")) {
    std::cerr << "usage: tensor_parallel_load_memory <model dir> whole|split\n";
    return 2;
  }
  at::set_num_threads(1);
  dist::CommOptions options;
  MPI_Comm_size(MPI_COMM_WORLD, &options.tp);
  dist::Communicator comm = dist::Communicator::create(options);
  const std::string how = argv[2];
  warm_up();
  comm.world().barrier();

  std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
  const int64_t before = status_bytes("VmRSS");
  dist::TensorParallelPlan plan;
  std::optional<model::CausalLm> lm;
  if (how == "whole") {
    lm = model::CausalLm::load({.path = argv[1]});
    plan = dist::apply_tensor_parallel(*lm, comm);
  } else {
    lm = dist::load_tensor_parallel(model::CausalLmOptions{.path = argv[1]}, comm, plan);
  }
  const int64_t peak = status_bytes("VmHWM");
  const int64_t after = status_bytes("VmRSS");

  int64_t local_bytes = 0;
  for (const auto& p : lm->module().parameters()) local_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  nlohmann::json line = {{"rank", comm.rank()},        {"how", how},
                         {"before_bytes", before},     {"peak_growth_bytes", peak - before},
                         {"after_growth_bytes", after - before}, {"local_parameter_bytes", local_bytes}};
  // One rank at a time, so lines do not interleave.
  for (int r = 0; r < comm.world_size(); ++r) {
    if (r == comm.rank()) std::cout << line.dump() << std::endl;
    comm.world().barrier();
  }
  return 0;
}
