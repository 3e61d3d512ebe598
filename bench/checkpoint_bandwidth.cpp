// ftrain-bench-checkpoint: how fast ftrain saves and loads a sharded checkpoint, against
// a raw write of the same bytes to the same disk (docs/checkpoint-bandwidth.md).
//
//   mpirun -np 4 ftrain-bench-checkpoint [--dir DIR] [--mib-per-rank 256] [--tensors 64]
//                                        [--repeats 3] [--tp 1] [--json FILE] [--drop-caches]
//   ftrain-bench-checkpoint --report FILE   the tables of the results appended to FILE
//
// Each rank holds --tensors float32 matrices of --mib-per-rank MiB in all: with --tp N,
// its rows of tensors split along dim 0 over N consecutive ranks, as tensor parallelism
// splits a weight. Every repeat measures, in --dir and on the same bytes:
//   raw     each rank write()s its bytes to one file and fsyncs it
//   save    prepare_rank_file, write_rank_file, rank 0's commit (sync), phase by phase
//   async   CheckpointWriter(async): how long start() blocks, and the time to commit
//   load    every rank reads the whole checkpoint with load_checkpoint (checksums checked)
//   verify  rank 0 runs verify_checkpoint, as a resume does
// and, apart, the two in-memory costs inside the save: the host copy of the pieces
// (pieces_to_write) and their crc32. A time is the slowest rank's; the tables report
// the median over the repeats. Speeds are GiB/s (2^30 bytes per second).
#include <fcntl.h>
#include <sched.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zlib.h>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dist/comm.h"
#include "dist/mpi_session.h"
#include "launch/checkpoint/store.h"
#include "launch/checkpoint/pieces.h"
#include "launch/checkpoint/writer.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;
using nlohmann::json;
using ftrain::dist::Group;
using ftrain::dist::ReduceOp;
using ftrain::launch::HeldTensor;
using ftrain::launch::NamedTensors;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kColumns = 1024;  // of every tensor, unless one holds fewer elements

struct BenchOptions {
  std::string dir = "build/bench/checkpoint";
  int64_t mib_per_rank = 256;  // MiB (2^20 bytes) of state on each rank, all tensors together
  int64_t tensors = 64;        // float32 matrices on each rank
  int repeats = 3;
  int tp = 1;                  // ranks per simulated tensor-parallel group
  std::string json_path;       // append the results as JSON lines
  bool drop_caches = false;
  std::string report_path;     // print the tables of these results and run nothing

  // Throws std::invalid_argument naming the option.
  void validate(int world_size) const {
    if (mib_per_rank < 1) throw std::invalid_argument("--mib-per-rank must be at least 1");
    if (tensors < 1) throw std::invalid_argument("--tensors must be at least 1");
    if (mib_per_rank * (1 << 20) / 4 < tensors)
      throw std::invalid_argument("--tensors " + std::to_string(tensors) + " is more than --mib-per-rank " +
                                  std::to_string(mib_per_rank) + " holds float32 values");
    if (repeats < 1) throw std::invalid_argument("--repeats must be at least 1");
    if (tp < 1 || world_size % tp != 0)
      throw std::invalid_argument("--tp " + std::to_string(tp) + " must divide the number of ranks (" +
                                  std::to_string(world_size) + ")");
  }
};

// Returns false when --help was printed.
bool parse_options(int argc, char** argv, BenchOptions& options) {
  po::options_description described("ftrain-bench-checkpoint options");
  described.add_options()
      ("help,h", "print this help")
      ("dir", po::value(&options.dir)->default_value(options.dir),
       "directory on the disk to measure; its checkpoints/ and raw/ are replaced")
      ("mib-per-rank", po::value(&options.mib_per_rank)->default_value(options.mib_per_rank),
       "MiB of state on each rank (all its tensors together)")
      ("tensors", po::value(&options.tensors)->default_value(options.tensors),
       "float32 matrices on each rank")
      ("repeats", po::value(&options.repeats)->default_value(options.repeats), "repeats; the tables report the median")
      ("tp", po::value(&options.tp)->default_value(options.tp),
       "ranks per simulated tensor-parallel group: the group's tensors are split along dim 0 over them")
      ("json", po::value(&options.json_path), "append each repeat and the medians to this file as JSON lines")
      ("drop-caches", po::bool_switch(&options.drop_caches),
       "empty the page cache (/proc/sys/vm/drop_caches, root only) before each load and verify")
      ("report", po::value(&options.report_path),
       "print the tables of the medians in this JSON-lines file (from --json) and measure nothing");
  po::variables_map values;
  po::store(po::parse_command_line(argc, argv, described), values);
  if (values.count("help")) {
    std::cout << "usage: mpirun -np N ftrain-bench-checkpoint [options]\n"
                 "       ftrain-bench-checkpoint --report FILE\n\n"
              << described << "\n";
    return false;
  }
  po::notify(values);
  return true;
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

std::string fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

std::string fixed(const json& value, int digits) { return fixed(value.get<double>(), digits); }

// ---------------------------------------------------------------------------------
// The machine: what the table's numbers depend on besides ftrain.

std::string first_line_with(const char* file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

// The filesystem `dir` lies on: the longest mount point above it in /proc/self/mounts
// (which names ext4 where statfs only knows the ext2/3/4 magic), else statfs's magic.
json filesystem_of(const fs::path& dir) {
  const std::string target = fs::canonical(dir).string();
  json found = {{"type", ""}, {"device", ""}, {"mount_point", ""}};
  std::ifstream mounts("/proc/self/mounts");
  std::string device, mount_point, type, rest;
  while (mounts >> device >> mount_point >> type && std::getline(mounts, rest)) {
    const bool above = mount_point == "/" || target == mount_point || target.rfind(mount_point + "/", 0) == 0;
    if (above && mount_point.size() >= found["mount_point"].get<std::string>().size())
      found = {{"type", type}, {"device", device}, {"mount_point", mount_point}};
  }
  if (found["type"].get<std::string>().empty()) {
    struct statfs info {};
    char magic[32] = "unknown";
    if (::statfs(target.c_str(), &info) == 0)
      std::snprintf(magic, sizeof(magic), "magic 0x%lx", static_cast<unsigned long>(info.f_type));
    found["type"] = magic;
  }
  return found;
}

json describe_machine(const fs::path& dir) {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int cores = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 0;  // as nproc counts
  struct utsname system {};
  ::uname(&system);
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGESIZE) / kGiB;
  return {{"cores", cores},
          {"cpu", first_line_with("/proc/cpuinfo", "model name")},
          {"memory_gib", std::round(memory * 10) / 10},
          {"kernel", std::string(system.sysname) + " " + system.release},
          {"dir", dir.string()},
          {"filesystem", filesystem_of(dir)}};
}

// ---------------------------------------------------------------------------------
// The state each rank saves.

struct BenchState {
  std::vector<HeldTensor> held;  // this rank's rows of its group's tensors
  NamedTensors everything;       // every tensor of the checkpoint, global shape: what a load reads into
  int64_t bytes_per_rank = 0;
  int64_t bytes_total = 0;
};

std::string tensor_name(int group, int64_t tensor) {
  char name[64];
  std::snprintf(name, sizeof(name), "model/group_%04d/tensor_%04lld", group, static_cast<long long>(tensor));
  return name;
}

// Tensor-parallel groups are consecutive ranks (dist/layout.h): group = rank / tp. Group g
// owns tensors model/group_g/tensor_i of (tp * rows, columns); its rank t holds rows
// [t * rows, (t + 1) * rows) of each and writes them.
BenchState make_state(const BenchOptions& options, ftrain::dist::Communicator& comm) {
  const auto& layout = comm.layout();
  const int group = layout.dp_rank(comm.rank()), tp_rank = layout.tp_rank(comm.rank());
  const int64_t elements = options.mib_per_rank * (1 << 20) / 4 / options.tensors;  // per tensor and rank
  const int64_t columns = std::min(kColumns, elements);
  const int64_t rows = elements / columns;

  BenchState state;
  torch::manual_seed(1000 + comm.rank());
  for (int64_t i = 0; i < options.tensors; ++i) {
    HeldTensor held;
    held.name = tensor_name(group, i);
    held.values = torch::rand({rows, columns});
    held.global_shape = {layout.tp_size * rows, columns};
    held.part_shape = {rows, columns};
    if (layout.tp_size > 1) {
      held.split_dim = 0;
      held.index = torch::arange(tp_rank * rows, (tp_rank + 1) * rows, torch::kLong);
    }
    state.bytes_per_rank += static_cast<int64_t>(held.values.nbytes());
    state.held.push_back(std::move(held));
  }
  state.bytes_total = state.bytes_per_rank * comm.world_size();
  // Zeroed now, so that a load is not timed faulting in fresh memory; a resume loads
  // into a model that is already there.
  for (int g = 0; g < layout.dp_size; ++g)
    for (int64_t i = 0; i < options.tensors; ++i)
      state.everything.emplace_back(tensor_name(g, i), torch::zeros({layout.tp_size * rows, columns}));
  return state;
}

// Throws unless the loaded checkpoint holds, where this rank's rows belong, its values.
void check_loaded(const BenchState& state, ftrain::dist::Communicator& comm) {
  const int tp_rank = comm.layout().tp_rank(comm.rank());
  std::map<std::string, at::Tensor> loaded(state.everything.begin(), state.everything.end());
  for (const HeldTensor& held : state.held) {
    const int64_t rows = held.part_shape[0];
    if (!loaded.at(held.name).narrow(0, tp_rank * rows, rows).equal(held.values))
      throw std::runtime_error("rank " + std::to_string(comm.rank()) + ": tensor '" + held.name +
                               "' loaded with other values than were saved");
  }
}

// ---------------------------------------------------------------------------------
// The disk

// Writes back everything dirty on the filesystem of `dir`, so that no measurement pays
// for the writes of the one before.
void flush_filesystem(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) throw std::runtime_error(dir.string() + ": cannot open: " + std::strerror(errno));
  const int rc = ::syncfs(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(dir.string() + ": syncfs failed: " + std::strerror(error));
}

constexpr const char* kDropCaches = "/proc/sys/vm/drop_caches";

void drop_page_cache() {
  ::sync();
  std::ofstream control(kDropCaches);
  control << "3\n";
  control.flush();
  if (!control) throw std::runtime_error(std::string(kDropCaches) + ": cannot write (--drop-caches needs root)");
}

// One file of plain write()s, then fsync: what the disk gives the same bytes without a
// checkpoint format.
void write_raw(const fs::path& path, const std::vector<HeldTensor>& held) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot create: " + std::strerror(errno));
  for (const HeldTensor& tensor : held) {
    const char* data = static_cast<const char*>(tensor.values.data_ptr());
    size_t left = tensor.values.nbytes();
    while (left > 0) {
      const ssize_t n = ::write(fd, data, left);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::runtime_error(path.string() + ": write failed: " + std::strerror(errno));
      data += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) throw std::runtime_error(path.string() + ": fsync failed: " + std::strerror(errno));
  ::close(fd);
}

std::string raw_file_name(int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "rank_%05d.bin", rank);
  return name;
}

// ---------------------------------------------------------------------------------
// One repeat

// Waits for every rank without spinning. Open MPI polls inside its collectives, and
// with more ranks than cores (4 ranks on a 2-core runner) a rank waiting there takes
// CPU from the ranks still being timed. The ranks leave within about a millisecond.
void wait_quietly(Group& world) {
  MPI_Request request;
  if (MPI_Ibarrier(world.mpi_comm(), &request) != MPI_SUCCESS) throw std::runtime_error("MPI_Ibarrier failed");
  for (int done = 0; !done;) {
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) throw std::runtime_error("MPI_Test failed");
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// Every rank starts the timed section that follows at once.
void line_up(Group& world) {
  wait_quietly(world);
  world.barrier();
}

// Seconds of the slowest rank; the faster ones wait without taking its CPU.
double slowest(Group& world, double seconds) {
  wait_quietly(world);
  return world.all_reduce(seconds, ReduceOp::Max);
}

// A sync save in the four steps of launch/checkpoint/store.h, timed step by step, with the
// collectives CheckpointWriter(async=false) puts between them. Returns the committed
// checkpoint.
fs::path save_in_steps(ftrain::launch::CheckpointStore& store, Group& world, int64_t step,
                       const std::vector<HeldTensor>& held, std::map<std::string, double>& seconds) {
  line_up(world);
  const auto started = Clock::now();
  if (world.rank() == 0) store.begin(step);
  world.barrier();  // the staging directory exists before any rank lays out its file
  const double begun = seconds_since(started);

  auto phase = Clock::now();
  const auto file = ftrain::launch::prepare_rank_file(store.staging_directory(step), world.rank(), step, held);
  const double prepared = seconds_since(phase);
  world.barrier();  // CheckpointWriter agrees that every rank laid out its file before any writes
  phase = Clock::now();
  const json records = ftrain::launch::write_rank_file(file);
  const double written = seconds_since(phase);

  const auto all_records = world.gather(records.dump(), 0);
  double committed = 0;
  std::string path;
  if (world.rank() == 0) {
    json pieces = json::array();
    for (const auto& text : all_records)
      for (auto& record : json::parse(text)) pieces.push_back(std::move(record));
    phase = Clock::now();
    path = store.commit(step, pieces, {{"bench", "ftrain-bench-checkpoint"}}).string();
    committed = seconds_since(phase);
  }
  path = world.broadcast(path, 0);  // every rank returns once rank 0 has committed
  const double total = seconds_since(started);

  seconds["save"] = slowest(world, total);
  seconds["save_begin"] = slowest(world, begun);
  seconds["save_prepare"] = slowest(world, prepared);
  seconds["save_write"] = slowest(world, written);
  seconds["save_commit"] = slowest(world, committed);
  return path;
}

// The host copy and the crc32 of the save, alone: pieces_to_write as prepare_rank_file
// calls it, and zlib's crc32 over those pieces as write_rank_file computes it.
void time_in_memory_costs(Group& world, const std::vector<HeldTensor>& held, std::map<std::string, double>& seconds) {
  line_up(world);
  auto started = Clock::now();
  std::vector<ftrain::launch::Piece> pieces;
  for (const HeldTensor& tensor : held)
    for (auto& piece : ftrain::launch::pieces_to_write(tensor)) pieces.push_back(std::move(piece));
  const double copied = seconds_since(started);

  line_up(world);
  started = Clock::now();
  for (const auto& piece : pieces) crc32_z(0L, static_cast<const Bytef*>(piece.data.data_ptr()), piece.data.nbytes());
  const double summed = seconds_since(started);

  seconds["host_copy"] = slowest(world, copied);
  seconds["crc32"] = slowest(world, summed);
}

std::map<std::string, double> run_repeat(const BenchOptions& options, ftrain::dist::Communicator& comm,
                                         BenchState& state, int repeat) {
  Group& world = comm.world();
  const bool rank0 = comm.rank() == 0;
  const fs::path dir = options.dir;
  const fs::path raw_dir = dir / "raw";
  ftrain::launch::CheckpointStore store(dir / "checkpoints", /*keep=*/1000);  // removed here, untimed
  std::map<std::string, double> seconds;

  // Each repeat starts from an empty directory, with nothing left to write back.
  if (rank0) {
    fs::remove_all(raw_dir);
    fs::remove_all(store.directory());
    fs::create_directories(raw_dir);
  }
  world.barrier();
  flush_filesystem(dir);

  // 1. raw
  line_up(world);
  auto started = Clock::now();
  write_raw(raw_dir / raw_file_name(comm.rank()), state.held);
  seconds["raw"] = slowest(world, seconds_since(started));
  world.barrier();
  if (rank0) fs::remove_all(raw_dir);
  flush_filesystem(dir);

  // What the save does in memory, apart from the disk.
  time_in_memory_costs(world, state.held, seconds);

  // 2. sync save
  flush_filesystem(dir);
  const fs::path saved = save_in_steps(store, world, 2 * repeat + 1, state.held, seconds);

  // 3. async save: training is blocked until start() returns; the commit comes at a
  // poll(), here one that waits at once.
  flush_filesystem(dir);
  {
    ftrain::launch::CheckpointWriter writer(store, world, /*async=*/true);
    line_up(world);
    started = Clock::now();
    writer.start(2 * repeat + 2, state.held, {{"bench", "ftrain-bench-checkpoint"}});
    const double blocked = seconds_since(started);
    if (!writer.poll(/*wait=*/true)) throw std::runtime_error("the async save was not committed by poll(wait)");
    const double committed = seconds_since(started);
    seconds["async_blocking"] = slowest(world, blocked);
    seconds["async_commit"] = slowest(world, committed);
  }

  // 4. load (every rank, everything) and verify (rank 0, as a resume does)
  flush_filesystem(dir);
  if (options.drop_caches && comm.local_rank() == 0) drop_page_cache();
  line_up(world);
  started = Clock::now();
  ftrain::launch::load_checkpoint(saved, state.everything);
  seconds["load"] = slowest(world, seconds_since(started));
  check_loaded(state, comm);

  if (options.drop_caches && comm.local_rank() == 0) drop_page_cache();
  line_up(world);
  double verified = 0;
  if (rank0) {
    started = Clock::now();
    std::string problem;
    if (!ftrain::launch::verify_checkpoint(saved, &problem)) throw std::runtime_error(problem);
    verified = seconds_since(started);
  }
  seconds["verify"] = slowest(world, verified);
  return seconds;
}

// ---------------------------------------------------------------------------------
// Results

json speeds(const std::map<std::string, double>& seconds, int64_t bytes_total) {
  // Every rank reads the whole checkpoint in a load, and rank 0 alone in a verify, so
  // each of those moves bytes_total per reader too.
  json out;
  for (const char* key : {"raw", "save", "load", "verify"}) out[key] = bytes_total / seconds.at(key) / kGiB;
  return out;
}

std::string mib(int64_t bytes) {
  const double value = bytes / (1024.0 * 1024.0);
  return value == std::floor(value) ? std::to_string(static_cast<int64_t>(value)) + " MiB" : fixed(value, 2) + " MiB";
}

void print_tables(const std::vector<json>& results, std::ostream& out) {
  if (results.empty()) throw std::runtime_error("no median results to report");
  const json& first = results.front();
  out << "Checkpoint save and load, float32, " << mib(first["bytes_per_rank"].get<int64_t>()) << " in " << first["tensors_per_rank"]
      << " tensors per rank, tp " << first["tp"] << ", median of " << first["repeats"] << " repeat(s)\n\n";
  out << "| ranks | bytes total | raw write GiB/s | ftrain save GiB/s | save / raw | async blocking ms "
         "| async to commit s | load GiB/s | verify GiB/s |\n";
  out << "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const json& r : results) {
    const json& s = r["seconds"];
    const json& v = r["gib_per_s"];
    out << "| " << r["ranks"] << " | " << mib(r["bytes_total"].get<int64_t>()) << " | " << fixed(v["raw"], 2) << " | "
        << fixed(v["save"], 2) << " | " << fixed(v["save"].get<double>() / v["raw"].get<double>(), 2) << " | "
        << fixed(s["async_blocking"].get<double>() * 1000, 1) << " | " << fixed(s["async_commit"], 3) << " | "
        << fixed(v["load"], 2) << " | " << fixed(v["verify"], 2) << " |\n";
  }
  out << "\nWhere the sync save's time goes (seconds, slowest rank; host copy and crc32 timed apart over the same "
         "bytes):\n\n";
  out << "| ranks | raw write + fsync | ftrain save | begin | prepare | of which host copy | write | of which crc32 "
         "| commit (rank 0) |\n";
  out << "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const json& r : results) {
    const json& s = r["seconds"];
    out << "| " << r["ranks"];
    for (const char* key :
         {"raw", "save", "save_begin", "save_prepare", "host_copy", "save_write", "crc32", "save_commit"})
      out << " | " << fixed(s[key], 3);
    out << " |\n";
  }
  const json& machine = first["machine"];
  const json& filesystem = machine["filesystem"];
  out << "\nmachine: " << machine["cores"] << " cores (" << machine["cpu"].get<std::string>() << "), "
      << machine["memory_gib"] << " GiB memory, " << machine["kernel"].get<std::string>() << "; "
      << machine["dir"].get<std::string>() << " on " << filesystem["type"].get<std::string>();
  if (!filesystem["device"].get<std::string>().empty())
    out << " (" << filesystem["device"].get<std::string>() << " at " << filesystem["mount_point"].get<std::string>()
        << ")";
  out << "\n";
  // On a shared machine the repeats can differ a lot; the spread says how much.
  bool spread_header = false;
  for (const json& r : results) {
    if (!r.contains("seconds_of_each_repeat")) continue;
    if (!spread_header) out << "spread over the repeats (slowest and fastest repeat, GiB/s):\n";
    spread_header = true;
    const json& each = r["seconds_of_each_repeat"];
    const double bytes = r["bytes_total"].get<double>();
    out << "- " << r["ranks"] << " rank(s):";
    const char* separator = " ";
    for (const char* key : {"raw", "save", "load"}) {
      const auto times = each[key].get<std::vector<double>>();
      const auto [fastest, slowest_time] = std::minmax_element(times.begin(), times.end());
      out << separator << key << " " << fixed(bytes / *slowest_time / kGiB, 2) << " to "
          << fixed(bytes / *fastest / kGiB, 2);
      separator = ", ";
    }
    out << "\n";
  }
  const bool dropped = first["page_cache"] == "dropped";
  out << (dropped ? "page cache: emptied before each load and verify (--drop-caches): they read from the disk.\n"
                  : "page cache: load and verify read files just written, still in the page cache: they measure "
                    "HDF5, the crc32 and memory copies, not the disk (--drop-caches, as root, empties it first).\n");
  for (const json& r : results)
    if (r["tp"] != first["tp"] || r["bytes_per_rank"] != first["bytes_per_rank"] ||
        r["tensors_per_rank"] != first["tensors_per_rank"] || r["page_cache"] != first["page_cache"] ||
        r["machine"] != first["machine"])
      out << "note: the row of " << r["ranks"] << " ranks was measured with other options or on another machine: "
          << r.dump() << "\n";
}

std::vector<json> read_medians(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<json> medians;
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.empty()) continue;
    json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded())
      throw std::runtime_error(path + ":" + std::to_string(line_number) + ": not a JSON line");
    if (record.value("kind", "") == "median") medians.push_back(std::move(record));
  }
  return medians;
}

int run(const BenchOptions& options, ftrain::dist::Communicator& comm) {
  Group& world = comm.world();
  const bool rank0 = comm.rank() == 0;
  if (options.drop_caches && comm.local_rank() == 0 && ::access(kDropCaches, W_OK) != 0)
    throw std::runtime_error(std::string("--drop-caches: cannot write ") + kDropCaches + " (run as root, or leave it out)");
  if (rank0) fs::create_directories(options.dir);
  world.barrier();

  BenchState state = make_state(options, comm);
  json base = {{"ranks", comm.world_size()},
               {"tp", options.tp},
               {"tensors_per_rank", options.tensors},
               {"bytes_per_rank", state.bytes_per_rank},
               {"bytes_total", state.bytes_total},
               {"page_cache", options.drop_caches ? "dropped" : "warm"},
               {"machine", describe_machine(options.dir)}};
  std::ofstream json_out;
  if (rank0 && !options.json_path.empty()) {
    json_out.open(options.json_path, std::ios::app);
    if (!json_out) throw std::runtime_error(options.json_path + ": cannot open to append (--json)");
  }

  std::map<std::string, std::vector<double>> all;
  for (int repeat = 0; repeat < options.repeats; ++repeat) {
    const auto seconds = run_repeat(options, comm, state, repeat);
    for (const auto& [key, value] : seconds) all[key].push_back(value);
    if (!rank0) continue;
    const json speed = speeds(seconds, state.bytes_total);
    std::cerr << "ftrain-bench-checkpoint: " << comm.world_size() << " ranks, repeat " << repeat + 1 << "/"
              << options.repeats << ": raw " << fixed(speed["raw"], 2) << " GiB/s, save " << fixed(speed["save"], 2)
              << " GiB/s, load " << fixed(speed["load"], 2) << " GiB/s\n";
    if (json_out.is_open()) {
      json record = base;
      record["kind"] = "repeat";
      record["repeat"] = repeat + 1;
      record["seconds"] = seconds;
      record["gib_per_s"] = speed;
      json_out << record.dump() << "\n" << std::flush;
    }
  }
  if (rank0) fs::remove_all(fs::path(options.dir) / "raw");
  if (!rank0) return 0;

  std::map<std::string, double> medians;
  for (const auto& [key, values] : all) medians[key] = median(values);
  json result = base;
  result["kind"] = "median";
  result["repeats"] = options.repeats;
  result["seconds"] = medians;
  result["gib_per_s"] = speeds(medians, state.bytes_total);
  result["seconds_of_each_repeat"] = all;
  if (json_out.is_open()) json_out << result.dump() << "\n" << std::flush;
  print_tables({result}, std::cout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  BenchOptions options;
  try {
    if (!parse_options(argc, argv, options)) return 0;
    if (!options.report_path.empty()) {
      print_tables(read_medians(options.report_path), std::cout);
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "ftrain-bench-checkpoint: " << e.what() << "\n";
    return 2;
  }

  ftrain::dist::MpiSession mpi(argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  try {
    int world_size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    options.validate(world_size);
    ftrain::dist::CommOptions comm_options;
    comm_options.tp = options.tp;
    auto comm = ftrain::dist::Communicator::create(comm_options);
    return run(options, comm);
  } catch (const std::exception& e) {
    // One write per message, so lines from several ranks do not interleave; then the
    // whole job ends, so no rank waits in a collective for this one.
    const std::string message = "ftrain-bench-checkpoint: error on rank " + std::to_string(rank) + ": " + e.what() + "\n";
    std::fwrite(message.data(), 1, message.size(), stderr);
    std::fflush(stderr);
    ftrain::dist::abort_job(2);
  }
}
