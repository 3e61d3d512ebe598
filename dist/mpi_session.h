// The lifetime of MPI in one process, and the way a failing rank ends the whole job.
#pragma once

namespace ftrain::dist {

// Initialises MPI on construction and finalises it on destruction; create exactly one,
// first thing in main, and let every Communicator die before it.
// Asks for MPI_THREAD_MULTIPLE and refuses to start with less. That is the level ftrain
// uses: besides the main thread, the watchdog (launch/watchdog.h) and the NCCL error
// monitor (dist/nccl.cpp) end the job with MPI_Abort from threads of their own, and on
// a GPU a collective started inside backward (ZeRO's per-block reduction, the overlapped
// gradient buckets) may run on autograd's device thread.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // The level MPI granted: MPI_THREAD_MULTIPLE.
  int thread_level() const { return thread_level_; }

 private:
  int thread_level_ = 0;
};

// Ends every rank of the job with `code` (MPI_Abort on MPI_COMM_WORLD). Use it when
// this rank cannot go on, so that the others do not wait forever in a collective.
// Without MPI running it exits this process.
[[noreturn]] void abort_job(int code);

}  // namespace ftrain::dist
