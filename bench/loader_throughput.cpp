// ftrain-bench-loader: how many tokens per second the training data loader delivers on
// its own, with nothing consuming them, to compare with what training consumes
// (bench/compare.py prints both).
//
//   ftrain-bench-loader --data FILE [--split train] [--micro-batch-size 8] [--seconds 3]
//                       [--prefetch 4] [--no-shuffle] [--dp-size 1] [--json]
//
// It times StreamingLoader::next() as the trainer calls it (one rank of --dp-size,
// shuffled order by default, the read-ahead thread on) for at least --seconds, after
// one warm-up batch that opens the file and starts the thread.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include "data/streaming_loader.h"

namespace po = boost::program_options;

namespace {

struct BenchOptions {
  ftrain::data::LoaderOptions loader;
  double seconds = 3;
  int dp_size = 1;
  bool json = false;

  void validate() const {
    loader.validate();
    if (!(seconds > 0)) throw std::runtime_error("--seconds must be > 0");
    if (dp_size < 1) throw std::runtime_error("--dp-size must be >= 1");
  }
};

int run(const BenchOptions& options) {
  using Clock = std::chrono::steady_clock;
  ftrain::data::StreamingLoader loader(options.loader, /*dp_rank=*/0, options.dp_size);
  loader.next();  // warm-up: the first read opens the datasets and fills the read-ahead queue
  int64_t batches = 0, tokens = 0, checksum = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  while (elapsed < options.seconds) {
    const ftrain::data::Batch batch = loader.next();
    tokens += batch.batch_size * batch.seq_len;
    checksum += batch.input_ids.front();  // every batch is used, so no read is skipped
    ++batches;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  const double tokens_per_s = tokens / elapsed;
  if (options.json) {
    nlohmann::json out = {{"data", options.loader.path}, {"split", options.loader.split},
                          {"micro_batch_size", options.loader.micro_batch_size}, {"seq_len", loader.seq_len()},
                          {"shuffle", options.loader.shuffle}, {"prefetch", options.loader.prefetch},
                          {"batches", batches}, {"seconds", elapsed}, {"tokens_per_s", tokens_per_s},
                          {"batches_per_s", batches / elapsed}, {"checksum", checksum}};
    std::cout << out.dump() << "\n";
  } else {
    std::printf("%lld batches of %lld x %lld tokens in %.2f s: %.0f tokens/s, %.0f batches/s\n",
                static_cast<long long>(batches), static_cast<long long>(options.loader.micro_batch_size),
                static_cast<long long>(loader.seq_len()), elapsed, tokens_per_s, batches / elapsed);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  BenchOptions options;
  bool no_shuffle = false;
  po::options_description description("ftrain-bench-loader options");
  description.add_options()("help,h", "print this help")(
      "data", po::value(&options.loader.path)->required(), "ftrain dataset (HDF5) to read")(
      "split", po::value(&options.loader.split)->default_value(options.loader.split), "split to read")(
      "micro-batch-size", po::value(&options.loader.micro_batch_size)->default_value(8), "sequences per batch")(
      "seconds", po::value(&options.seconds)->default_value(options.seconds), "how long to read")(
      "prefetch", po::value(&options.loader.prefetch)->default_value(options.loader.prefetch),
      "batches read ahead by the loader's thread")(
      "no-shuffle", po::bool_switch(&no_shuffle), "rows in file order instead of the shuffled order")(
      "dp-size", po::value(&options.dp_size)->default_value(1), "read as rank 0 of this many data-parallel ranks")(
      "json", po::bool_switch(&options.json), "print one JSON object");
  try {
    po::variables_map values;
    po::store(po::parse_command_line(argc, argv, description), values);
    if (values.count("help")) {
      std::cout << "usage: ftrain-bench-loader --data FILE [options]\n\n" << description << "\n";
      return 0;
    }
    po::notify(values);
    options.loader.shuffle = !no_shuffle;
    options.validate();
    return run(options);
  } catch (const std::exception& error) {
    std::cerr << "ftrain-bench-loader: error: " << error.what() << "\n";
    return 1;
  }
}
