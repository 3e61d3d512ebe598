#include "launch/tools/supervise.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <boost/program_options.hpp>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "data/durable_file.h"
#include "launch/signals.h"

namespace po = boost::program_options;
using Json = nlohmann::ordered_json;

namespace ftrain::launch {
namespace {

constexpr unsigned kHelpWidth = 110;
constexpr const char* kExample = "ftrain-supervise --max-restarts 3 -- mpirun -np 4 ftrain --config configs/X.ini";

UsageError no_command() {
  return UsageError(std::string("no command to supervise: give it after --, e.g. ") + kExample);
}

// One write per message, so it does not interleave with the ranks' output.
void say(const std::string& text) {
  const std::string line = "ftrain-supervise: " + text + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

std::string seconds_text(double seconds) {
  std::ostringstream out;
  out << seconds << " s";
  return out.str();
}

std::string name_of(int signal) {
  const std::string name = signal_name(signal);
  return name.starts_with("SIG") ? name : "signal " + std::to_string(signal);
}

// The command as one could paste it into a shell.
std::string shell_text(const std::vector<std::string>& command) {
  std::string text;
  for (const std::string& word : command) {
    if (!text.empty()) text += ' ';
    const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./=:,+@%-", c) != nullptr;
    });
    if (plain) {
      text += word;
      continue;
    }
    text += '\'';
    for (char c : word) text += c == '\'' ? std::string("'\\''") : std::string(1, c);
    text += '\'';
  }
  return text;
}

// Wall-clock time for the log, ISO 8601 in UTC with milliseconds.
std::string utc_now() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  std::tm utc{};
  gmtime_r(&now.tv_sec, &utc);
  char text[40];
  const size_t length = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &utc);
  std::snprintf(text + length, sizeof(text) - length, ".%03ldZ", now.tv_nsec / 1000000);
  return text;
}

// A child's end as a shell reports it: its exit status, or 128 + the signal that killed it.
int exit_status_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

std::string describe(int wait_status) {
  if (WIFSIGNALED(wait_status))
    return name_of(WTERMSIG(wait_status)) + " (status " + std::to_string(exit_status_of(wait_status)) + ")";
  return "exit status " + std::to_string(exit_status_of(wait_status));
}

extern "C" void ignore_signal(int) {}

// The signals the supervisor acts on stay blocked and are taken one at a time with
// sigwaitinfo/sigtimedwait, so a stop request or the child's end can arrive at any
// moment (between fork and setpgid, during a back-off) without a race. Each gets a
// handler that is never run: an inherited SIG_IGN would otherwise let the kernel reap
// the child itself (SIGCHLD) or drop a stop request.
class SignalWaiter {
 public:
  static constexpr int kSignals[] = {SIGCHLD, SIGTERM, SIGINT, SIGUSR1};

  SignalWaiter() {
    sigemptyset(&waited_);
    struct sigaction action {};
    action.sa_handler = ignore_signal;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < std::size(kSignals); ++i) {
      sigaddset(&waited_, kSignals[i]);
      sigaction(kSignals[i], &action, &inherited_actions_[i]);
    }
    sigprocmask(SIG_BLOCK, &waited_, &inherited_mask_);
  }

  // In the child, between fork and exec (async-signal-safe): the command starts with
  // the signal mask and dispositions the supervisor was started with.
  void restore_inherited() const {
    for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &inherited_actions_[i], nullptr);
    sigprocmask(SIG_SETMASK, &inherited_mask_, nullptr);
  }

  // The next signal, or 0 when `timeout_seconds` (< 0: none) passed first.
  int next(double timeout_seconds) {
    siginfo_t info{};
    int signal = 0;
    if (timeout_seconds < 0) {
      signal = sigwaitinfo(&waited_, &info);
    } else {
      const double whole = std::floor(timeout_seconds);
      const timespec timeout{static_cast<time_t>(whole), static_cast<long>((timeout_seconds - whole) * 1e9)};
      signal = sigtimedwait(&waited_, &info, &timeout);
    }
    return signal < 0 ? 0 : signal;  // EAGAIN: timed out; EINTR: ask again
  }

 private:
  sigset_t waited_{};
  sigset_t inherited_mask_{};
  struct sigaction inherited_actions_[std::size(kSignals)] {};
};

class AttemptLog {
 public:
  explicit AttemptLog(const std::string& path) {
    if (path.empty()) return;
    // Appended: a requeued job's supervisor continues the same history.
    try {
      file_ = data::AppendFile(path);
    } catch (const std::runtime_error& error) {
      throw UsageError(std::string("--log ") + error.what());
    }
  }

  // A record that cannot be written (a full disk) is reported on stderr, once, and the
  // supervision goes on: the job matters more than its history.
  void write(const Json& record) {
    if (!file_.is_open()) return;
    try {
      file_.write(record.dump() + "\n");
    } catch (const std::runtime_error& error) {
      say(std::string(error.what()) + "; no further records are logged");
      file_ = data::AppendFile();
    }
  }

 private:
  data::AppendFile file_;
};

struct Attempt {
  int wait_status = 0;  // as waitpid reports it
  int exec_error = 0;   // errno of a command that could not be started; 0 when it ran
  int stop_signal = 0;  // the first stop request received while it ran; 0 when none
};

// A stop request goes to the child's whole process group. The first one, whatever
// signal it came as, is sent as SIGUSR1: mpirun forwards SIGUSR1 to every rank, where
// ftrain saves and exits 75, but answers SIGTERM and SIGINT by killing the job at once.
// A later SIGTERM or SIGINT is sent as itself, so asking twice still ends the job now.
void forward_stop_request(int signal, pid_t group, int requests) {
  const int sent = requests == 1 || signal == SIGUSR1 ? SIGUSR1 : signal;
  if (requests == 1)
    say("received " + name_of(signal) + ": asking the command to save and stop (" + name_of(sent) +
        " to its process group); it will not be restarted");
  else
    say("received " + name_of(signal) + " again: passing " + name_of(sent) + " to the command's process group");
  kill(-group, sent);
}

Attempt run_attempt(const std::vector<std::string>& command, SignalWaiter& signals) {
  std::vector<char*> argv;
  for (const std::string& word : command) argv.push_back(const_cast<char*>(word.c_str()));
  argv.push_back(nullptr);

  // exec's errno comes back through a pipe that a successful exec closes.
  int exec_errors[2];
  if (pipe(exec_errors) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  for (int fd : exec_errors) fcntl(fd, F_SETFD, FD_CLOEXEC);
  const pid_t supervisor = getpid();
  const pid_t child = fork();
  if (child < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    close(exec_errors[0]);
    // Its own process group, so a stop request reaches the command and all it started.
    setpgid(0, 0);
#ifdef __linux__
    // A supervisor that is killed outright does not leave the job running unsupervised:
    // the command is asked to save and stop, as on a stop request.
    prctl(PR_SET_PDEATHSIG, SIGUSR1);
    if (getppid() != supervisor) _exit(1);
#endif
    // A process group other than the terminal's is stopped (SIGTTIN) when it reads the
    // terminal; training reads no input.
    if (isatty(STDIN_FILENO)) {
      const int null = open("/dev/null", O_RDONLY);
      if (null >= 0) dup2(null, STDIN_FILENO);
    }
    signals.restore_inherited();
    execvp(argv[0], argv.data());
    const int error = errno;
    [[maybe_unused]] const ssize_t written = write(exec_errors[1], &error, sizeof(error));
    _exit(127);
  }
  // Also here, so the group exists before a stop request is forwarded to it (fails
  // harmlessly when the child has already exec'd).
  setpgid(child, child);
  close(exec_errors[1]);
  Attempt attempt;
  ssize_t got = 0;
  do got = read(exec_errors[0], &attempt.exec_error, sizeof(attempt.exec_error));
  while (got < 0 && errno == EINTR);
  close(exec_errors[0]);
  if (got != sizeof(attempt.exec_error)) attempt.exec_error = 0;

  int stop_requests = 0;
  for (;;) {
    const int signal = signals.next(-1);
    if (signal == 0) continue;
    if (signal == SIGCHLD) {
      // Also sent when the child is stopped or continued; only its end counts.
      if (waitpid(child, &attempt.wait_status, WNOHANG) == child) return attempt;
      continue;
    }
    forward_stop_request(signal, child, ++stop_requests);
    if (attempt.stop_signal == 0) attempt.stop_signal = signal;
  }
}

// Waits `seconds` (0: only looks); returns the stop signal that came first, or 0.
int wait_unless_stopped(double seconds, SignalWaiter& signals) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    const double left =
        std::max(0.0, std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count());
    const int signal = signals.next(left);
    if (signal != 0 && signal != SIGCHLD) return signal;
    if (signal == 0 && left == 0) return 0;
  }
}

}  // namespace

void SuperviseOptions::validate() const {
  if (max_restarts < 0) throw UsageError("--max-restarts must be >= 0, got " + std::to_string(max_restarts));
  if (!(std::isfinite(backoff_seconds) && backoff_seconds >= 0))
    throw UsageError("--backoff must be a number of seconds >= 0, got " + std::to_string(backoff_seconds));
  if (!(std::isfinite(max_backoff_seconds) && max_backoff_seconds >= 0))
    throw UsageError("--max-backoff must be a number of seconds >= 0, got " + std::to_string(max_backoff_seconds));
  if (command.empty()) throw no_command();
}

bool parse_supervise_arguments(int argc, const char* const* argv, SuperviseOptions& options,
                               std::string& help_out) {
  // Everything after the first `--` is the command, whatever it looks like.
  std::vector<std::string> own;
  int separator = 1;
  for (; separator < argc && std::string_view(argv[separator]) != "--"; ++separator) own.emplace_back(argv[separator]);
  const bool has_command_part = separator < argc;
  options.command.assign(argv + std::min(separator + 1, argc), argv + argc);

  po::options_description described("ftrain-supervise options", kHelpWidth, kHelpWidth / 2);
  described.add_options()("help,h", "print this help")(
      "max-restarts", po::value<int>(&options.max_restarts)->default_value(options.max_restarts),
      "restarts allowed over the whole supervision, whatever their cause (torchelastic's max_restarts); "
      "0 runs the command once")(
      "backoff", po::value<double>(&options.backoff_seconds)->default_value(options.backoff_seconds),
      "seconds to wait before restarting after the first failure; doubles after each further failure "
      "(none after exit status 75)")(
      "max-backoff", po::value<double>(&options.max_backoff_seconds)->default_value(options.max_backoff_seconds),
      "the longest wait before a restart, in seconds")(
      "log", po::value<std::string>(&options.log_path),
      "append one JSON line per attempt to this file (attempt, command, start, end, exit_status, signal, action)");
  po::options_description hidden;
  hidden.add_options()("stray", po::value<std::vector<std::string>>());
  po::options_description all;
  all.add(described).add(hidden);
  po::positional_options_description positional;
  positional.add("stray", -1);

  po::variables_map values;
  try {
    po::store(po::command_line_parser(own).options(all).positional(positional).run(), values);
    po::notify(values);
  } catch (const po::error& e) {
    // `ftrain-supervise mpirun -np 4 ...` fails on mpirun's options; the missing `--` is the news.
    throw has_command_part ? UsageError(e.what()) : no_command();
  }
  if (values.count("help")) {
    std::ostringstream out;
    out << "usage: ftrain-supervise [options] -- COMMAND [ARGUMENTS...]\n"
        << "  e.g. " << kExample << "\n\n"
        << "Runs COMMAND in a process group of its own. Exit status 0: done. 75 (saved; requeue me): run it\n"
        << "again at once. Anything else, or death by a signal: wait the back-off and run it again with\n"
        << "--run.resume=auto, until --max-restarts restarts are used. SIGTERM, SIGINT or SIGUSR1 ask the\n"
        << "command to save and stop (as SIGUSR1) and end the supervision with 75. See docs/supervisor.md.\n\n"
        << described;
    help_out = out.str();
    return false;
  }
  if (values.count("stray"))
    throw UsageError("'" + values["stray"].as<std::vector<std::string>>().front() +
                     "' is not an option of ftrain-supervise; the command to supervise goes after --, e.g. " +
                     kExample);
  if (!has_command_part) throw no_command();
  options.validate();
  return true;
}

std::vector<std::string> restart_command(const std::vector<std::string>& command) {
  std::vector<std::string> restarted = command;
  bool names_resume = false;
  for (size_t i = 0; i < restarted.size(); ++i) {
    std::string& word = restarted[i];
    for (const std::string flag : {"--run.resume", "--resume"}) {
      if (word == flag) {
        names_resume = true;
        // --run.resume takes the next word as its value; a bare --resume means auto.
        if (flag == "--run.resume" && i + 1 < restarted.size() && restarted[i + 1] == "none")
          restarted[i + 1] = "auto";
      } else if (word == flag + "=none") {
        names_resume = true;
        word = flag + "=auto";
      } else if (word.starts_with(flag + "=")) {
        names_resume = true;  // auto already, or a checkpoint directory the user chose
      }
    }
  }
  if (!names_resume) restarted.push_back("--run.resume=auto");
  return restarted;
}

double backoff_after_failures(const SuperviseOptions& options, int failures) {
  double wait = options.backoff_seconds;
  for (int i = 1; i < failures && wait < options.max_backoff_seconds; ++i) wait *= 2;
  return std::min(wait, options.max_backoff_seconds);
}

int supervise(const SuperviseOptions& options) {
  options.validate();
  AttemptLog log(options.log_path);
  SignalWaiter signals;
  const std::string of_restarts = " of " + std::to_string(options.max_restarts);
  int failures = 0;  // exits other than 0 and 75: they set the back-off
  std::vector<std::string> command = options.command;
  for (int attempt = 1;; ++attempt) {
    const int restarts = attempt - 1;
    say("attempt " + std::to_string(attempt) + (restarts == 0 ? "" : " (restart " + std::to_string(restarts) + of_restarts + ")") +
        ": " + shell_text(command));
    Json record = {{"attempt", attempt}, {"command", command}, {"start", utc_now()}};
    const Attempt result = run_attempt(command, signals);
    record["end"] = utc_now();

    if (result.exec_error != 0) {
      say("cannot run '" + command.front() + "': " + std::strerror(result.exec_error) +
          "; not restarting, since it would not start the next time either; exiting with 127");
      record.update({{"exit_status", 127}, {"signal", nullptr}, {"action", "cannot_run"}});
      log.write(record);
      return 127;
    }
    const int status = exit_status_of(result.wait_status);
    const std::string ended = "attempt " + std::to_string(attempt) + " ended with " + describe(result.wait_status);
    record["exit_status"] = status;
    record["signal"] = WIFSIGNALED(result.wait_status) ? Json(name_of(WTERMSIG(result.wait_status))) : Json(nullptr);

    if (result.stop_signal != 0) {
      record["stop_signal"] = name_of(result.stop_signal);
      if (status == 0) {
        say(ended + ": it finished before it could stop; nothing is left to requeue; exiting with 0");
        record["action"] = "done";
        log.write(record);
        return 0;
      }
      say(ended + " after the " + name_of(result.stop_signal) + " stop request; not restarting; exiting with " +
          std::to_string(kExitSavedRequeue) + " so whoever stopped the job can requeue it (--run.resume=auto " +
          "continues from the newest valid checkpoint)");
      record["action"] = "stop";
      log.write(record);
      return kExitSavedRequeue;
    }
    if (status == 0) {
      say(ended + ": done");
      record["action"] = "done";
      log.write(record);
      return 0;
    }
    if (restarts == options.max_restarts) {
      say(ended + "; no restarts left (" + std::to_string(options.max_restarts) +
          " used, --max-restarts); exiting with " + std::to_string(status));
      record["action"] = "give_up";
      log.write(record);
      return status;
    }

    double wait = 0;
    if (status == kExitSavedRequeue) {
      say(ended + " (saved; requeue me) without a stop request; restart " + std::to_string(restarts + 1) +
          of_restarts + " now, from the newest valid checkpoint");
    } else {
      wait = backoff_after_failures(options, ++failures);
      say(ended + "; restart " + std::to_string(restarts + 1) + of_restarts + " in " + seconds_text(wait) +
          ", from the newest valid checkpoint (--run.resume=auto)");
    }
    record.update({{"action", "restart"}, {"backoff_s", wait}});
    // A stop request that came as the attempt ended is honoured too, even with no wait.
    if (const int stop = wait_unless_stopped(wait, signals); stop != 0) {
      say("received " + name_of(stop) + " while waiting to restart: not restarting; exiting with the status of " +
          "attempt " + std::to_string(attempt) + ", " + std::to_string(status));
      record.update({{"action", "stop"}, {"stop_signal", name_of(stop)}});
      log.write(record);
      return status;
    }
    log.write(record);
    command = restart_command(options.command);
  }
}

}  // namespace ftrain::launch
