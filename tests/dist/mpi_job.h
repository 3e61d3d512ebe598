// The start of a multi-rank Boost.Test program under mpirun: one MPI session, one
// communicator for the whole program, and an observer that ends the whole job when a
// test throws unexpectedly, so no rank is left waiting in a collective for one that
// has gone.
//
//   BOOST_TEST_GLOBAL_FIXTURE(ftrain::testing::MpiJob<Options>);
//   ftrain::dist::Communicator& comm() { return ftrain::testing::MpiJob<Options>::comm(); }
//
// `Options` names the program (`static constexpr const char* program`) and makes the
// communicator's options once MPI is up (`static ftrain::dist::CommOptions make()`).
#pragma once

#include <boost/test/execution_monitor.hpp>
#include <boost/test/unit_test.hpp>

#include <ATen/Parallel.h>

#include <cstdio>
#include <memory>
#include <string>

#include "dist/comm.h"
#include "dist/mpi_session.h"

namespace ftrain::testing {

template <typename Options>
class MpiJob {
 public:
  MpiJob() {
    auto& suite = boost::unit_test::framework::master_test_suite();
    at::set_num_threads(1);  // ranks share the cores
    session_ = std::make_unique<dist::MpiSession>(suite.argc, suite.argv);
    comm_ = std::make_unique<dist::Communicator>(dist::Communicator::create(Options::make()));
    boost::unit_test::framework::register_observer(observer_);
    instance_ = this;
  }
  ~MpiJob() {
    boost::unit_test::framework::deregister_observer(observer_);
    comm_.reset();  // before MPI goes
    session_.reset();
    instance_ = nullptr;
  }
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;

  static dist::Communicator& comm() { return *instance_->comm_; }

 private:
  struct AbortOnException : boost::unit_test::test_observer {
    void exception_caught(const boost::execution_exception& error) override {
      std::fprintf(stderr, "%s: unexpected exception: %s\n", Options::program,
                   std::string(error.what().begin(), error.what().end()).c_str());
      dist::abort_job(1);
    }
  };

  static inline MpiJob* instance_ = nullptr;
  std::unique_ptr<dist::MpiSession> session_;
  std::unique_ptr<dist::Communicator> comm_;
  AbortOnException observer_;
};

}  // namespace ftrain::testing
