// Stop requests from the scheduler or the user: SIGUSR1 (what Slurm's --signal sends
// before a time limit or pre-emption), SIGTERM and SIGINT. The handler only records the
// signal; the training loop asks after every step, all ranks agree, and the job saves a
// checkpoint and exits with kExitSavedRequeue so a batch script knows to requeue it.
#pragma once

namespace ftrain::launch {

// The exit status of a job that stopped on request after saving: "saved; requeue me"
// (EX_TEMPFAIL of sysexits.h).
inline constexpr int kExitSavedRequeue = 75;

// Installs the handlers for SIGUSR1, SIGTERM and SIGINT in this process. A second
// SIGINT or SIGTERM while a stop is already pending restores the default action and
// re-raises, so a user can still kill a job that does not stop.
void install_stop_handlers();

// The signal received since installation (0 when none). Async-signal-safe to set,
// cheap to read.
int stop_signal();

// The signal's name, e.g. "SIGUSR1"; "a signal" for one it does not know.
const char* signal_name(int signal);

}  // namespace ftrain::launch
