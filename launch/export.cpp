#include "launch/export.h"

#include <torch/torch.h>

#include <iostream>
#include <string>

#include "launch/task.h"

namespace fs = std::filesystem;

namespace ftrain::launch {
namespace {

// The whole value of parameter `name` on every rank. Collective; one tensor's memory.
at::Tensor whole_parameter(const std::string& name, dist::DataParallel& data_parallel,
                           const dist::TensorParallelPlan& plan, dist::Communicator& comm) {
  return plan.gather(name, data_parallel.whole_parameter(name), comm.tp());
}

}  // namespace

void export_final(const Config& config, Task& task, dist::DataParallel& data_parallel,
                  const dist::TensorParallelPlan& plan, dist::Communicator& comm, int64_t weights_step) {
  const fs::path final_dir = fs::path(config.run.dir) / "final";
  const bool rank0 = comm.rank() == 0;
  const bool split = comm.layout().tp_size > 1 || !data_parallel.parameters_resident();
  if (split) {
    dist::Group& world = comm.world();
    if (rank0) {
      task.save_streamed(final_dir, model::ExistingDirectory::overwrite, [&](const std::string& name) {
        world.broadcast(name, 0);
        return whole_parameter(name, data_parallel, plan, comm);
      });
      world.broadcast(std::string(), 0);  // done (a failure above ends the whole job)
    } else {
      for (std::string name = world.broadcast(std::string(), 0); !name.empty(); name = world.broadcast(std::string(), 0))
        whole_parameter(name, data_parallel, plan, comm);
    }
  } else if (rank0) {
    task.save(final_dir, model::ExistingDirectory::overwrite);
  }
  if (!rank0) return;
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                           "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json"}) {
    const fs::path source = fs::path(config.model.path) / file;
    if (fs::exists(source)) fs::copy_file(source, final_dir / file, fs::copy_options::overwrite_existing);
  }
  std::cout << "ftrain: model of step " << weights_step << " written to " << final_dir.string()
            << " (Hugging Face format)\n";
}

}  // namespace ftrain::launch
