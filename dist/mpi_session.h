// The lifetime of MPI in one process, and the way a failing rank ends the whole job.
#pragma once

namespace ftrain::dist {

// Initialises MPI on construction and finalises it on destruction; create exactly one,
// first thing in main, and let every Communicator die before it.
// Asks for MPI_THREAD_MULTIPLE and accepts down to MPI_THREAD_FUNNELED (all MPI calls
// from the thread that made the session); anything less is an error.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // The level MPI granted: MPI_THREAD_FUNNELED, _SERIALIZED or _MULTIPLE.
  int thread_level() const { return thread_level_; }

 private:
  int thread_level_ = 0;
};

// Ends every rank of the job with `code` (MPI_Abort on MPI_COMM_WORLD). Use it when
// this rank cannot go on, so that the others do not wait forever in a collective.
// Without MPI running it exits this process.
[[noreturn]] void abort_job(int code);

}  // namespace ftrain::dist
