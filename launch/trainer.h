// The training loop of `ftrain`: model, data, optimizer, schedule, evaluation,
// metrics and checkpoints for one run, on the ranks of one communicator.
#pragma once

#include "dist/comm.h"
#include "launch/options.h"

namespace ftrain::launch {

// Runs (or resumes) the job described by `config`. Collective over `comm`.
// Returns the process exit code.
int run_training(const Config& config, dist::Communicator& comm);

}  // namespace ftrain::launch
