#include "dist/mpi_session.h"

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

namespace ftrain::dist {

namespace {

bool mpi_running() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

}  // namespace

MpiSession::MpiSession(int& argc, char**& argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    throw std::logic_error("MpiSession: MPI is already initialised; create one session per process");
  }
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &thread_level_) != MPI_SUCCESS) {
    throw std::runtime_error("MpiSession: MPI_Init_thread failed");
  }
  if (thread_level_ < MPI_THREAD_MULTIPLE) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr,
                 "ftrain: rank %d: MPI grants thread level %d, below MPI_THREAD_MULTIPLE (%d), which ftrain needs: "
                 "its watchdog and error monitors call MPI from their own threads; use an MPI built with "
                 "thread support (Open MPI's default)\n",
                 rank, thread_level_, MPI_THREAD_MULTIPLE);
    abort_job(1);
  }
}

MpiSession::~MpiSession() {
  if (!mpi_running()) return;
  // Leaving the session's scope by an exception means this rank failed: the others may
  // be inside a collective that will never complete, and MPI_Finalize would wait on
  // them. End the job instead.
  if (std::uncaught_exceptions() > 0) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "ftrain: rank %d: failed; aborting the job\n", rank);
    abort_job(1);
  }
  MPI_Finalize();
}

void abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  // MPI_Abort asks the launcher to end every rank. Where the launcher cannot be reached
  // (this node is cut off from the others) it may never return: the process then ends
  // itself after a grace period, and the launcher sees the others' exit.
  std::thread([code] {
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::_Exit(code);
  }).detach();
  if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace ftrain::dist
