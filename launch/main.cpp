// ftrain: one process per rank.
//   mpirun -np N ftrain --config configs/X.ini [--section.key=value ...]
#include <mpi.h>

#include <exception>
#include <iostream>

#include "dist/comm.h"
#include "dist/mpi_session.h"
#include "launch/options.h"
#include "launch/trainer.h"

int main(int argc, char** argv) {
  ftrain::dist::MpiSession mpi(argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  try {
    ftrain::launch::Config config;
    std::string help;
    if (!ftrain::launch::parse_config(argc, argv, config, help)) {
      if (rank == 0) std::cout << help;
      return 0;
    }
    auto comm = ftrain::dist::Communicator::create(config.dist);
    ftrain::launch::validate_for_layout(config, comm.layout().dp_size);
    return ftrain::launch::run_training(config, comm);
  } catch (const std::exception& e) {
    // Any failure on any rank ends the whole job at once, so no rank waits forever in
    // a collective for one that has gone.
    std::cerr << "ftrain: error on rank " << rank << ": " << e.what() << std::endl;
    ftrain::dist::abort_job(2);
  }
}
