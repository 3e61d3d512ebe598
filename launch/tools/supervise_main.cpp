// ftrain-supervise: restarts a training command after failures (launch/tools/supervise.h).
//   ftrain-supervise [--max-restarts N] [--backoff S] [--log FILE] -- mpirun -np 4 ftrain --config X.ini
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include "launch/tools/supervise.h"

int main(int argc, char** argv) {
  try {
    ftrain::launch::SuperviseOptions options;
    std::string help;
    if (!ftrain::launch::parse_supervise_arguments(argc, argv, options, help)) {
      std::cout << help;
      return 0;
    }
    return ftrain::launch::supervise(options);
  } catch (const ftrain::launch::UsageError& e) {
    std::cerr << "ftrain-supervise: error: " << e.what() << " (ftrain-supervise --help lists the options)\n";
    return ftrain::launch::kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "ftrain-supervise: error: " << e.what() << "\n";
    return 1;
  }
}
