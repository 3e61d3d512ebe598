// ftrain: one process per rank.
//   mpirun -np N ftrain --config configs/X.ini [--section.key=value ...]
#include <malloc.h>

#include <mpi.h>

#include <cstdio>
#include <exception>
#include <string>
#include <iostream>

#include "dist/comm.h"
#include "dist/mpi_session.h"
#include "launch/options.h"
#include "launch/signals.h"
#include "launch/trainer.h"

int main(int argc, char** argv) {
  // A training step frees and allocates the same activation tensors over and over.
  // glibc would map each one of more than 128 KiB afresh from the kernel and unmap it
  // when freed, so every step paid a page fault per 4 KiB of activations to zero memory
  // again. Served from the heap and kept there when freed, they are reused. Only
  // allocations of 32 MiB and more are mapped: a vocabulary-sized gradient, which
  // comes and goes once a step, would otherwise leave a hole the heap never gives back
  // (GPT-2 124M at ZeRO-3 on 8 ranks: 0.7 fp32 models more per rank in every step,
  // bench/RESULTS.md), and its page faults are small beside the step that made it.
  // run.host_memory = release maps far smaller blocks too (below).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  ftrain::dist::MpiSession mpi(argc, argv);
  // From the start: a stop request while the model loads is honoured after the first
  // step instead of killing the rank.
  ftrain::launch::install_stop_handlers();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  try {
    ftrain::launch::Config config;
    std::string help;
    if (!ftrain::launch::parse_config(argc, argv, config, help)) {
      if (rank == 0) std::cout << help;
      return 0;
    }
    if (config.run.host_memory == ftrain::launch::HostMemory::release) {
      // Every block of 128 KiB or more is mapped from the kernel and unmapped when
      // freed, so a step's transients leave the process and only small objects stay in
      // the heap, where blocks of other sizes no longer fragment it. A page fault per
      // 4 KiB written is the price (bench/RESULTS.md, "run.host_memory").
      mallopt(M_MMAP_THRESHOLD, 128 << 10);
    }
    auto comm = ftrain::dist::Communicator::create(config.dist);
    return ftrain::launch::run_training(config, comm);
  } catch (const std::exception& e) {
    // Any failure on any rank ends the whole job at once, so no rank waits forever in
    // a collective for one that has gone.
    // One write per message, so lines from several ranks do not interleave.
    const std::string message = "ftrain: error on rank " + std::to_string(rank) + ": " + e.what() + "\n";
    std::fwrite(message.data(), 1, message.size(), stderr);
    std::fflush(stderr);
    ftrain::dist::abort_job(2);
  }
}
