// Collectives, groups and gradient reduction under mpirun, checked against values
// computed from the rank formulas below.
//
// Arguments after `--`: --tp=N (tensor-parallel size, default 1), --device=cpu|cuda.
// With --device=cuda and no GPU the program exits with 77 (ctest: skipped).
//
// Every rank runs every test and makes the same collective calls whatever the checks
// find, so a failed check never leaves another rank waiting; an unexpected exception
// ends the whole job (abort_job) for the same reason.
#define BOOST_TEST_MODULE test_collectives
#include <boost/test/execution_monitor.hpp>
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/grad_reducer.h"
#include "dist/mpi_session.h"

namespace dist = ftrain::dist;
using dist::ReduceOp;

namespace {

struct AbortOnException : boost::unit_test::test_observer {
  void exception_caught(const boost::execution_exception& error) override {
    std::fprintf(stderr, "test_collectives: unexpected exception: %s\n",
                 std::string(error.what().begin(), error.what().end()).c_str());
    dist::abort_job(1);
  }
};

struct Job {
  static inline Job* instance = nullptr;
  dist::CommOptions options;
  std::unique_ptr<dist::MpiSession> session;
  std::unique_ptr<dist::Communicator> comm;
  AbortOnException observer;

  Job() {
    auto& suite = boost::unit_test::framework::master_test_suite();
    for (int i = 1; i < suite.argc; ++i) {
      const std::string arg = suite.argv[i];
      if (arg.rfind("--tp=", 0) == 0) options.tp = std::stoi(arg.substr(5));
      if (arg.rfind("--device=", 0) == 0) options.device = arg.substr(9);
    }
    if (options.device == "cuda" && torch::cuda::device_count() == 0) {
      std::printf("test_collectives: no CUDA device; skipped\n");
      std::exit(77);
    }
    at::set_num_threads(1);
    session = std::make_unique<dist::MpiSession>(suite.argc, suite.argv);
    comm = std::make_unique<dist::Communicator>(dist::Communicator::create(options));
    boost::unit_test::framework::register_observer(observer);
    instance = this;
  }
  ~Job() {
    boost::unit_test::framework::deregister_observer(observer);
    comm.reset();  // before MPI goes
    session.reset();
  }
};

BOOST_TEST_GLOBAL_FIXTURE(Job);

dist::Communicator& comm() { return *Job::instance->comm; }
at::TensorOptions on_device(at::ScalarType type) {
  return at::TensorOptions().dtype(type).device(comm().device());
}

// Tensor values as doubles on the CPU, for exact comparison with analytic values.
std::vector<double> values(const at::Tensor& t) {
  at::Tensor flat = t.to(at::kCPU).to(at::kDouble).contiguous().reshape(-1);
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

bool mentions(const std::exception& error, const std::string& what) {
  return std::string(error.what()).find(what) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_CASE(communicator_matches_the_launch) {
  int mpi_size = 0;
  int mpi_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
  BOOST_TEST(comm().world_size() == mpi_size);
  BOOST_TEST(comm().rank() == mpi_rank);
  BOOST_TEST(comm().world().size() == mpi_size);
  BOOST_TEST(comm().world().rank() == mpi_rank);
  BOOST_TEST(comm().layout().tp_size == Job::instance->options.tp);
  BOOST_TEST(comm().layout().dp_size * Job::instance->options.tp == mpi_size);
  BOOST_TEST(comm().device().is_cuda() == (Job::instance->options.device == "cuda"));
}

BOOST_AUTO_TEST_CASE(one_node_holds_every_rank) {
  // ctest runs every rank on this machine.
  BOOST_TEST(comm().local_size() == comm().world_size());
  BOOST_TEST(comm().local_rank() == comm().rank());
}

// Rank r holds x_i = (r+1) (i+1) s_i with s_i = +1 for even i, -1 for odd i (+1 always
// for unsigned types). Over N ranks:
//   sum = (i+1) s_i N(N+1)/2          avg = (i+1) s_i (N+1)/2
//   max = (i+1) N if s_i > 0, else -(i+1)      min = (i+1) if s_i > 0, else -(i+1) N
BOOST_AUTO_TEST_CASE(all_reduce_sum_avg_max_min) {
  const int n = comm().world_size();
  const int r = comm().rank();
  const std::vector<at::ScalarType> types = {at::kFloat, at::kDouble, at::kLong, at::kBFloat16,
                                             at::kInt, at::kByte};
  for (at::ScalarType type : types) {
    const bool is_signed = type != at::kByte;
    const bool is_float = at::isFloatingType(type);
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
      if (op == ReduceOp::Avg && !is_float) continue;
      BOOST_TEST_CONTEXT(c10::toString(type) << " " << dist::to_string(op)) {
        std::vector<double> mine;
        std::vector<double> expected;
        for (int i = 0; i < 6; ++i) {
          const double s = (is_signed && i % 2 == 1) ? -1.0 : 1.0;
          const double base = (i + 1) * s;
          mine.push_back(base * (r + 1));
          switch (op) {
            case ReduceOp::Sum: expected.push_back(base * n * (n + 1) / 2.0); break;
            case ReduceOp::Avg: expected.push_back(base * (n + 1) / 2.0); break;
            case ReduceOp::Max: expected.push_back(s > 0 ? base * n : base); break;
            case ReduceOp::Min: expected.push_back(s > 0 ? base : base * n); break;
          }
        }
        at::Tensor t = at::tensor(mine, at::kDouble).reshape({2, 3}).to(on_device(type));
        comm().world().all_reduce(t, op);
        BOOST_TEST(t.scalar_type() == type);
        BOOST_TEST((t.sizes() == at::IntArrayRef{2, 3}));
        BOOST_TEST(values(t) == expected, boost::test_tools::per_element());
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(avg_of_integers_is_refused_naming_rank_and_operation) {
  at::Tensor t = at::ones({4}, on_device(at::kLong));
  BOOST_CHECK_EXCEPTION(comm().world().all_reduce(t, ReduceOp::Avg), std::invalid_argument,
                        [](const std::invalid_argument& e) {
                          return mentions(e, "rank " + std::to_string(comm().rank())) &&
                                 mentions(e, "all_reduce");
                        });
  BOOST_CHECK_THROW(comm().world().all_reduce(std::int64_t{1}, ReduceOp::Avg), std::invalid_argument);
}

// Runs where a GPU is visible but the communicator was made for the CPU.
BOOST_AUTO_TEST_CASE(cuda_tensor_on_a_cpu_communicator_is_refused,
                     *boost::unit_test::precondition([](boost::unit_test::test_unit_id) {
                       return torch::cuda::device_count() > 0 && !comm().device().is_cuda();
                     })) {
  at::Tensor t = at::ones({4}, at::TensorOptions().device(at::kCUDA));
  BOOST_CHECK_EXCEPTION(comm().world().all_reduce(t), std::invalid_argument,
                        [](const std::invalid_argument& e) {
                          return mentions(e, "dist.device") && mentions(e, "all_reduce") &&
                                 mentions(e, "rank " + std::to_string(comm().rank()));
                        });
}

// Base (3, 4) holds (r+1)(4a+b) on rank r; reducing a non-contiguous view changes only
// the viewed elements, to N(N+1)/2 (4a+b).
BOOST_AUTO_TEST_CASE(all_reduce_of_non_contiguous_views) {
  const int n = comm().world_size();
  const int r = comm().rank();
  const double ranks_sum = n * (n + 1) / 2.0;
  auto make_base = [&] { return at::arange(12, on_device(at::kFloat)).reshape({3, 4}) * (r + 1); };

  at::Tensor base = make_base();
  at::Tensor transposed = base.t();
  BOOST_TEST(!transposed.is_contiguous());
  comm().world().all_reduce(transposed);
  std::vector<double> expected;
  for (int k = 0; k < 12; ++k) expected.push_back(k * ranks_sum);
  BOOST_TEST(values(base) == expected, boost::test_tools::per_element());

  base = make_base();
  at::Tensor column = base.select(1, 1);
  BOOST_TEST(!column.is_contiguous());
  comm().world().all_reduce(column);
  expected.clear();
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 4; ++b) expected.push_back((4 * a + b) * (b == 1 ? ranks_sum : r + 1));
  BOOST_TEST(values(base) == expected, boost::test_tools::per_element());
}

// in: (N*k, 2), flat element f on rank q is 100 q + f. Rank r receives flat elements
// f = 2kr + m (m < 2k) of the reduction:
//   sum = 100 N(N-1)/2 + N (2kr + m),  avg = sum / N,  max = 100 (N-1) + 2kr + m
// The same through start_reduce_scatter, with a second one started before the first
// is waited for, and counted alike; and in place, with `out` this rank's chunk of `in`.
// Run on 2, 3 and 4 ranks: the ring's steps alternate between its two buffers.
BOOST_AUTO_TEST_CASE(reduce_scatter_gives_each_rank_its_reduced_chunk) {
  const int n = comm().world_size();
  const int r = comm().rank();
  const int k = 3;
  for (bool in_place : {false, true})
  for (bool started : {false, true})
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
    for (at::ScalarType type : {at::kDouble, at::kFloat, at::kBFloat16}) {
      // bf16 holds integers exactly only up to 256.
      const double scale = type == at::kBFloat16 ? 10 : 100;
      BOOST_TEST_CONTEXT((in_place ? "in place " : "") << (started ? "started " : "") << c10::toString(type) << " "
                                                       << dist::to_string(op)) {
        at::Tensor in =
            (at::arange(2 * k * n, at::kDouble) + scale * r).reshape({n * k, 2}).to(on_device(type));
        at::Tensor out = in_place ? in.narrow(0, k * r, k) : at::zeros({k, 2}, on_device(type));
        comm().stats().reset();
        if (started) {
          at::Tensor ones = at::ones({n}, on_device(type));
          at::Tensor count = at::zeros({1}, on_device(type));
          dist::PendingCollective first = comm().world().start_reduce_scatter(out, in, op);
          dist::PendingCollective second = comm().world().start_reduce_scatter(count, ones, ReduceOp::Sum);
          BOOST_TEST(!first.done());
          first.wait();
          second.wait();
          BOOST_TEST((first.done() && second.done()));
          BOOST_TEST(count.item<double>() == double(n));
          BOOST_TEST(comm().stats().reduce_scatter.calls == 2);
        } else {
          comm().world().reduce_scatter(out, in, op);
          BOOST_TEST(comm().stats().reduce_scatter.calls == 1);
        }
        std::vector<double> expected;
        for (int m = 0; m < 2 * k; ++m) {
          const double f = 2 * k * r + m;
          const double sum = scale * n * (n - 1) / 2.0 + n * f;
          expected.push_back(op == ReduceOp::Sum ? sum
                             : op == ReduceOp::Avg ? sum / n
                                                   : scale * (n - 1) + f);
        }
        BOOST_TEST((out.sizes() == at::IntArrayRef{k, 2}));
        BOOST_TEST(values(out) == expected, boost::test_tools::per_element());
        if (comm().device().is_cpu()) {
          // The ring reads the input and writes only the output.
          at::Tensor original = (at::arange(2 * k * n, at::kDouble) + scale * r).reshape({n * k, 2}).to(type);
          if (in_place) original.narrow(0, k * r, k).copy_(out);
          BOOST_TEST(at::equal(in, original));
        }
      }
    }
  }
  at::Tensor in = at::zeros({n * k + 1}, on_device(at::kFloat));
  at::Tensor out = at::zeros({k}, on_device(at::kFloat));
  BOOST_CHECK_EXCEPTION(comm().world().reduce_scatter(out, in), std::invalid_argument,
                        [](const std::invalid_argument& e) { return mentions(e, "reduce_scatter"); });
  BOOST_CHECK_EXCEPTION(comm().world().start_reduce_scatter(out, in), std::invalid_argument,
                        [](const std::invalid_argument& e) { return mentions(e, "reduce_scatter"); });
}

// Started collectives move on when progress() is called: polled alone, an all-reduce, a
// reduce-scatter and an all-gather started together all arrive (CPU), and wait() then
// leaves the same results as the blocking calls. On CUDA progress() leaves it to wait().
BOOST_AUTO_TEST_CASE(started_collectives_arrive_under_progress) {
  const int n = comm().world_size();
  const int r = comm().rank();
  dist::Group& world = comm().world();
  at::Tensor summed = at::full({1000}, double(r + 1), on_device(at::kFloat));
  at::Tensor chunk = at::zeros({250}, on_device(at::kFloat));
  at::Tensor spread = at::full({250 * n}, double(r + 1), on_device(at::kFloat));
  at::Tensor gathered = at::zeros({3 * n}, on_device(at::kFloat));
  at::Tensor mine = at::full({3}, double(r), on_device(at::kFloat));
  std::vector<dist::PendingCollective> pending;
  pending.push_back(world.start_all_reduce(summed));
  pending.push_back(world.start_reduce_scatter(chunk, spread));
  pending.push_back(world.start_all_gather(gathered, mine));
  if (comm().device().is_cpu()) {
    for (auto& p : pending) {
      int polls = 0;
      while (!p.progress() && ++polls < 10'000'000) {
      }
      BOOST_TEST(polls < 10'000'000, "a started collective never arrived under progress()");
      BOOST_TEST(!p.done());  // arrived, but wait() still finishes it
    }
  } else {
    for (auto& p : pending) BOOST_TEST(!p.progress());
  }
  for (auto& p : pending) p.wait();
  for (auto& p : pending) BOOST_TEST(p.progress());  // done
  const double total = n * (n + 1) / 2.0;
  BOOST_TEST(values(summed) == std::vector<double>(1000, total), boost::test_tools::per_element());
  BOOST_TEST(values(chunk) == std::vector<double>(250, total), boost::test_tools::per_element());
  std::vector<double> expected;
  for (int q = 0; q < n; ++q) expected.insert(expected.end(), 3, double(q));
  BOOST_TEST(values(gathered) == expected, boost::test_tools::per_element());
}

// in: (2, 3) with flat element f on rank q = 10 q + f; out (2N, 3) holds at flat index
// 6q + f the value 10 q + f.
BOOST_AUTO_TEST_CASE(all_gather_concatenates_in_rank_order) {
  const int n = comm().world_size();
  const int r = comm().rank();
  std::vector<double> expected;
  for (int q = 0; q < n; ++q)
    for (int f = 0; f < 6; ++f) expected.push_back(10 * q + f);

  for (at::ScalarType type : {at::kLong, at::kFloat, at::kBFloat16}) {
    BOOST_TEST_CONTEXT(c10::toString(type)) {
      at::Tensor in = (at::arange(6, at::kDouble) + 10 * r).reshape({2, 3}).to(on_device(type));
      at::Tensor out = at::zeros({2 * n, 3}, on_device(type));
      comm().world().all_gather(out, in);
      BOOST_TEST((out.sizes() == at::IntArrayRef{2 * n, 3}));
      BOOST_TEST(values(out) == expected, boost::test_tools::per_element());
    }
  }

  // In place: this rank's input is already its chunk of the output.
  at::Tensor out = at::zeros({2 * n, 3}, on_device(at::kFloat));
  at::Tensor chunk = out.narrow(0, 2 * r, 2);
  chunk.copy_((at::arange(6, at::kFloat) + 10 * r).reshape({2, 3}));
  comm().world().all_gather(out, chunk);
  BOOST_TEST(values(out) == expected, boost::test_tools::per_element());

  // Bool moves by width: rank q contributes (q odd).
  at::Tensor odd = at::full({4}, r % 2 == 1, on_device(at::kBool));
  at::Tensor gathered = at::zeros({4 * n}, on_device(at::kBool));
  comm().world().all_gather(gathered, odd);
  std::vector<double> odd_expected;
  for (int q = 0; q < n; ++q)
    for (int i = 0; i < 4; ++i) odd_expected.push_back(q % 2);
  BOOST_TEST(values(gathered) == odd_expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(broadcast_from_the_last_rank) {
  const int n = comm().world_size();
  const int r = comm().rank();
  const int root = n - 1;
  for (at::ScalarType type : {at::kFloat, at::kLong, at::kBFloat16}) {
    BOOST_TEST_CONTEXT(c10::toString(type)) {
      at::Tensor t = (at::arange(5, at::kDouble) + 2 * r).to(on_device(type));
      comm().world().broadcast(t, root);
      std::vector<double> expected;
      for (int i = 0; i < 5; ++i) expected.push_back(i + 2 * root);
      BOOST_TEST(values(t) == expected, boost::test_tools::per_element());
    }
  }
  at::Tensor t = at::zeros({2}, on_device(at::kFloat));
  BOOST_CHECK_EXCEPTION(comm().world().broadcast(t, n), std::invalid_argument,
                        [](const std::invalid_argument& e) { return mentions(e, "broadcast"); });
}

// Rank r contributes r + 0.5 and r^2.
BOOST_AUTO_TEST_CASE(scalar_all_reduce) {
  const int n = comm().world_size();
  const double r = comm().rank();
  dist::Group& world = comm().world();
  BOOST_TEST(world.all_reduce(r + 0.5, ReduceOp::Sum) == n * (n - 1) / 2.0 + 0.5 * n);
  BOOST_TEST(world.all_reduce(r + 0.5, ReduceOp::Avg) == (n * (n - 1) / 2.0 + 0.5 * n) / n);
  BOOST_TEST(world.all_reduce(r + 0.5, ReduceOp::Max) == n - 0.5);
  BOOST_TEST(world.all_reduce(r + 0.5, ReduceOp::Min) == 0.5);
  const std::int64_t square = comm().rank() * comm().rank();
  BOOST_TEST(world.all_reduce(square, ReduceOp::Sum) == std::int64_t(n - 1) * n * (2 * n - 1) / 6);
  BOOST_TEST(world.all_reduce(square, ReduceOp::Max) == std::int64_t(n - 1) * (n - 1));
  BOOST_TEST(world.all_reduce(square, ReduceOp::Min) == 0);
  world.barrier();
}

// With tp ranks per block: rank = d tp + t. The tp group of rank is {d tp + t'}, the dp
// group {d' tp + t}; summing world ranks over them gives
//   tp: d tp^2 + tp(tp-1)/2        dp: tp D(D-1)/2 + D t      (D = N / tp)
BOOST_AUTO_TEST_CASE(tp_and_dp_groups_hold_the_right_ranks) {
  const int n = comm().world_size();
  const int rank = comm().rank();
  const int tp = Job::instance->options.tp;
  const int dp_size = n / tp;
  const int d = rank / tp;
  const int t = rank % tp;

  BOOST_TEST(comm().tp().size() == tp);
  BOOST_TEST(comm().dp().size() == dp_size);
  BOOST_TEST(comm().tp().rank() == t);
  BOOST_TEST(comm().dp().rank() == d);

  at::Tensor mine = at::full({1}, rank, on_device(at::kLong));
  at::Tensor over_tp = mine.clone();
  at::Tensor over_dp = mine.clone();
  comm().tp().all_reduce(over_tp);
  comm().dp().all_reduce(over_dp);
  BOOST_TEST(values(over_tp)[0] == d * tp * tp + tp * (tp - 1) / 2);
  BOOST_TEST(values(over_dp)[0] == tp * dp_size * (dp_size - 1) / 2 + dp_size * t);

  at::Tensor tp_members = at::zeros({tp}, on_device(at::kLong));
  comm().tp().all_gather(tp_members, mine);
  std::vector<double> expected_tp;
  std::vector<int> expected_tp_ranks;
  for (int i = 0; i < tp; ++i) {
    expected_tp.push_back(d * tp + i);
    expected_tp_ranks.push_back(d * tp + i);
  }
  BOOST_TEST(values(tp_members) == expected_tp, boost::test_tools::per_element());
  BOOST_TEST(comm().tp().world_ranks() == expected_tp_ranks, boost::test_tools::per_element());

  std::vector<int> expected_dp_ranks;
  for (int i = 0; i < dp_size; ++i) expected_dp_ranks.push_back(i * tp + t);
  BOOST_TEST(comm().dp().world_ranks() == expected_dp_ranks, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(options_name_the_offending_key) {
  dist::CommOptions good;
  BOOST_CHECK_NO_THROW(good.validate());
  BOOST_TEST(good.bucket_bytes() == std::size_t{25} << 20);

  auto refused_naming = [](dist::CommOptions options, const std::string& key) {
    try {
      options.validate();
    } catch (const std::invalid_argument& e) {
      return mentions(e, key);
    }
    return false;
  };
  dist::CommOptions bad_tp;
  bad_tp.tp = 0;
  BOOST_TEST(refused_naming(bad_tp, "dist.tp"));
  dist::CommOptions bad_device;
  bad_device.device = "gpu";
  BOOST_TEST(refused_naming(bad_device, "dist.device"));
  for (double mb : {0.0, -1.0, std::nan("")}) {
    dist::CommOptions bad_bucket;
    bad_bucket.bucket_mb = mb;
    BOOST_TEST(refused_naming(bad_bucket, "dist.bucket_mb"));
  }

  // N + 1 never divides N: every rank refuses alike, before any communication.
  dist::CommOptions indivisible = Job::instance->options;
  indivisible.tp = comm().world_size() + 1;
  BOOST_CHECK_EXCEPTION(dist::Communicator::create(indivisible), std::invalid_argument,
                        [](const std::invalid_argument& e) {
                          return mentions(e, "dist.tp") &&
                                 mentions(e, "rank " + std::to_string(comm().rank()));
                        });
}

// Parameters (registration order) and their gradients on data-parallel rank d of D:
//   p0 f32 (3,4), p1 f64 (5), p2 f32 (7) with no gradient on d = 0, p3 f32 (2,2) with no
//   gradient anywhere, p4 bf16 (4).
//   grad_k[i] = (d+1)(k+1) + i/4
// so the average is (k+1)(D+1)/2 + i/4; for p2 it is (3 (D(D+1)/2 - 1) + (D-1) i/4) / D,
// and for p3 zero. With 32-byte buckets, walking back from p4: {p4} (bf16, still open),
// {p3, p2} (16 + 28 bytes), {p1} (40), {p0} (48).
BOOST_AUTO_TEST_CASE(gradient_reducer_averages_over_data_parallel_ranks) {
  const int dp_size = comm().dp().size();
  const int d = comm().dp().rank();
  const std::vector<std::pair<at::ScalarType, std::vector<int64_t>>> shapes = {
      {at::kFloat, {3, 4}}, {at::kDouble, {5}}, {at::kFloat, {7}}, {at::kFloat, {2, 2}},
      {at::kBFloat16, {4}}};

  auto make_params = [&] {
    std::vector<at::Tensor> params;
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      at::Tensor p = at::zeros(shapes[k].second, on_device(shapes[k].first)).requires_grad_(true);
      const bool has_grad = k != 3 && !(k == 2 && d == 0);
      if (has_grad) {
        at::Tensor grad = (at::arange(p.numel(), at::kDouble) / 4 + double((d + 1) * (k + 1)))
                              .to(on_device(shapes[k].first))
                              .reshape(p.sizes());
        // The same values in column-major storage: the reducer must follow the strides.
        if (k == 0) grad = grad.t().contiguous().t();
        p.mutable_grad() = grad;
      }
      params.push_back(p);
    }
    return params;
  };

  std::vector<at::Tensor> params = make_params();
  dist::GradientReducer reducer(params, comm().dp(), 32);
  BOOST_TEST_REQUIRE(reducer.num_buckets() == 4u);
  const std::vector<std::vector<std::size_t>> expected_buckets = {{4}, {3, 2}, {1}, {0}};
  for (std::size_t b = 0; b < 4; ++b) {
    BOOST_TEST(reducer.bucket_params(b) == expected_buckets[b], boost::test_tools::per_element());
  }

  comm().stats().reset();
  reducer.reduce(ReduceOp::Avg);
  BOOST_TEST(comm().stats().all_reduce.calls == 4);

  for (std::size_t k = 0; k < shapes.size(); ++k) {
    BOOST_TEST_CONTEXT("p" << k) {
      const at::Tensor& grad = params[k].grad();
      BOOST_TEST_REQUIRE(grad.defined());
      BOOST_TEST(grad.scalar_type() == shapes[k].first);
      BOOST_TEST(grad.sizes() == at::IntArrayRef(shapes[k].second));
      std::vector<double> expected;
      for (int i = 0; i < params[k].numel(); ++i) {
        const double q = i / 4.0;
        if (k == 3) expected.push_back(0);
        else if (k == 2) expected.push_back((3 * (dp_size * (dp_size + 1) / 2.0 - 1) + (dp_size - 1) * q) / dp_size);
        else expected.push_back((k + 1) * (dp_size + 1) / 2.0 + q);
      }
      const std::vector<double> got = values(grad);
      BOOST_TEST_REQUIRE(got.size() == expected.size());
      for (std::size_t i = 0; i < got.size(); ++i) {
        BOOST_TEST(got[i] == expected[i], boost::test_tools::tolerance(1e-6));
      }
    }
  }

  // One bucket per dtype when the cap is large; Sum instead of Avg.
  std::vector<at::Tensor> fresh = make_params();
  dist::GradientReducer per_dtype(fresh, comm().dp(), std::size_t{1} << 20);
  BOOST_TEST(per_dtype.num_buckets() == 3u);
  per_dtype.reduce(ReduceOp::Sum);
  std::vector<double> p1_sum;
  for (int i = 0; i < 5; ++i) p1_sum.push_back(2.0 * dp_size * (dp_size + 1) / 2.0 + dp_size * (i / 4.0));
  BOOST_TEST(values(fresh[1].grad()) == p1_sum, boost::test_tools::per_element());
}

// Overlapped reduction: buckets start during the backward pass of the last micro-batch
// and the result equals reducing after backward, with accumulation over micro-batches
// and a parameter that gets no gradient in the armed pass.
BOOST_AUTO_TEST_CASE(overlapped_reduction_starts_during_backward_and_matches_reduce) {
  const int d = comm().dp().rank();
  auto make_layers = [&] {
    std::vector<at::Tensor> params;
    at::manual_seed(11);  // the same starting weights on every rank
    // First in registration order, so last in backward order: a bucket of its own.
    params.push_back(at::randn({6}, on_device(at::kFloat)).requires_grad_(true));  // unused in the armed pass
    for (int layer = 0; layer < 4; ++layer)
      params.push_back(at::randn({6, 6}, on_device(at::kFloat)).requires_grad_(true));
    return params;
  };
  auto forward = [&](const std::vector<at::Tensor>& params, int micro, bool use_last) {
    at::manual_seed(100 + 10 * d + micro);  // different data per rank and micro-batch
    at::Tensor x = at::randn({3, 6}, on_device(at::kFloat));
    for (int layer = 1; layer <= 4; ++layer) x = at::tanh(x.matmul(params[layer]));
    if (use_last) x = x + params[0];
    return x.pow(2).sum();
  };

  std::vector<at::Tensor> reference = make_layers();
  dist::GradientReducer after(reference, comm().dp(), 6 * 6 * 4);  // one matrix per bucket
  forward(reference, 0, true).backward();
  forward(reference, 1, false).backward();
  after.reduce(ReduceOp::Sum);

  std::vector<at::Tensor> overlapped = make_layers();
  dist::GradientReducer during(overlapped, comm().dp(), 6 * 6 * 4);
  BOOST_TEST_REQUIRE(during.num_buckets() == 5u);
  forward(overlapped, 0, true).backward();  // an ordinary micro-batch: nothing reduced
  during.arm(ReduceOp::Sum);
  comm().stats().reset();
  forward(overlapped, 1, false).backward();
  // The matrices' buckets come first in backward order and all started before backward
  // returned; the bias's bucket (no gradient in this pass) waits for finish().
  const std::size_t started = during.started_during_backward();
  BOOST_TEST(comm().stats().all_reduce.calls == static_cast<int64_t>(started));
  during.finish();
  BOOST_TEST(comm().stats().all_reduce.calls == 5);
  BOOST_TEST(started == 4u);
  for (std::size_t k = 0; k < reference.size(); ++k) {
    BOOST_TEST_CONTEXT("p" << k) {
      BOOST_TEST(at::allclose(overlapped[k].grad(), reference[k].grad(), 1e-6, 1e-6));
    }
  }
  BOOST_CHECK_THROW(during.finish(), std::logic_error);
}

// N ranks, B bytes: all_reduce 2 (N-1)/N B; reduce_scatter and all_gather (N-1)/N B of
// the full buffer; broadcast B except on the rank before the root, and (N-1) B in all.
BOOST_AUTO_TEST_CASE(stats_follow_the_ring_formulas) {
  const int n = comm().world_size();
  const int r = comm().rank();
  const double ring = double(n - 1) / n;
  dist::CommStats& stats = comm().stats();
  dist::Group& world = comm().world();
  stats.reset();

  at::Tensor t = at::ones({1000}, on_device(at::kFloat));
  world.all_reduce(t);
  BOOST_TEST(stats.all_reduce.calls == 1);
  BOOST_TEST(stats.all_reduce.bytes_sent == 2 * ring * 4000, boost::test_tools::tolerance(1e-12));

  // bf16 reductions over MPI travel as fp32; NCCL moves them as they are.
  at::Tensor half = at::ones({1000}, on_device(at::kBFloat16));
  world.all_reduce(half);
  const double half_wire = comm().device().is_cuda() ? 2000 : 4000;
  BOOST_TEST(stats.all_reduce.calls == 2);
  BOOST_TEST(stats.all_reduce.bytes_sent == 2 * ring * (4000 + half_wire),
             boost::test_tools::tolerance(1e-12));

  at::Tensor in = at::ones({250 * n}, on_device(at::kFloat));
  at::Tensor out = at::zeros({250}, on_device(at::kFloat));
  world.reduce_scatter(out, in);
  BOOST_TEST(stats.reduce_scatter.calls == 1);
  BOOST_TEST(stats.reduce_scatter.bytes_sent == ring * 1000 * n, boost::test_tools::tolerance(1e-12));

  at::Tensor gathered = at::zeros({250 * n}, on_device(at::kFloat));
  world.all_gather(gathered, out);
  BOOST_TEST(stats.all_gather.calls == 1);
  BOOST_TEST(stats.all_gather.bytes_sent == ring * 1000 * n, boost::test_tools::tolerance(1e-12));

  const int root = 0;
  world.broadcast(t, root);
  const double broadcast_bytes = stats.broadcast.bytes_sent;
  BOOST_TEST(stats.broadcast.calls == 1);
  BOOST_TEST(broadcast_bytes == (n > 1 && r != n - 1 ? 4000.0 : 0.0));
  BOOST_TEST(stats.total_bytes_sent() ==
                 stats.all_reduce.bytes_sent + stats.reduce_scatter.bytes_sent +
                     stats.all_gather.bytes_sent + broadcast_bytes,
             boost::test_tools::tolerance(1e-12));
  BOOST_TEST(world.all_reduce(broadcast_bytes, ReduceOp::Sum) == (n - 1) * 4000.0);

  stats.reset();
  BOOST_TEST(stats.all_reduce.calls == 0);
  BOOST_TEST(stats.total_bytes_sent() == 0.0);
}
