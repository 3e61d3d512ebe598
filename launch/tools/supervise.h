// ftrain-supervise: runs a training command and runs it again, from the newest valid
// checkpoint, when it fails, as torchelastic restarts a job (its max_restarts). It is
// for plain mpirun, where no scheduler requeues a job whose rank died. No MPI and no
// LibTorch here: the supervised command is mpirun itself.
//
//   ftrain-supervise [--max-restarts N] [--backoff S] [--max-backoff S] [--log FILE]
//                    -- mpirun -np 4 ftrain --config configs/X.ini [...]
//
// docs/supervisor.md describes the exit statuses and what the supervisor does on each.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace ftrain::launch {

struct SuperviseOptions {
  int max_restarts = 3;               // restarts over the whole supervision, whatever their cause
  double backoff_seconds = 10;        // wait before the restart after the first failure; doubles per failure
  double max_backoff_seconds = 300;   // the longest wait
  std::string log_path;               // one JSON line per attempt, appended; empty: no log
  std::vector<std::string> command;   // what follows `--`
  void validate() const;
};

// A command line the supervisor cannot act on (or a log it cannot open): the message
// says which argument and what to do; the program exits with kExitUsage.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
inline constexpr int kExitUsage = 2;

// Fills `options` from argv. Returns false when --help was asked for, with the text in
// `help_out`. Throws UsageError.
bool parse_supervise_arguments(int argc, const char* const* argv, SuperviseOptions& options,
                               std::string& help_out);

// The command line of every restart: `command` continuing from the newest valid
// checkpoint. `--run.resume=none` (or `--resume=none`) becomes auto; a command that does
// not name run.resume gets `--run.resume=auto` appended (after the program's arguments,
// where mpirun passes it on); an explicit checkpoint directory is kept.
std::vector<std::string> restart_command(const std::vector<std::string>& command);

// Seconds to wait before the restart that follows the `failures`-th failure (>= 1):
// backoff, doubled per earlier failure, at most max_backoff.
double backoff_after_failures(const SuperviseOptions& options, int failures);

// Runs the command until it succeeds, is stopped on request, or has failed after
// max_restarts restarts; returns the supervisor's exit status.
int supervise(const SuperviseOptions& options);

}  // namespace ftrain::launch
