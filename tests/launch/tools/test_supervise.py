"""ftrain-supervise: runs a command again when it fails, as torchelastic does
(launch/tools/supervise.h, docs/supervisor.md).

With a fake command that plays a script of outcomes, one per attempt: restarts with
back-off and --run.resume=auto, the exit status when restarts run out, exit 75 restarted
at once, stop requests forwarded (as SIGUSR1) and ending with 75, bad arguments.

With ftrain on 2 ranks under mpirun: a rank killed with SIGKILL mid-run; the supervisor
restarts the job from its newest checkpoint and the run ends with the losses of an
uninterrupted one, bit for bit. A SIGTERM to the supervisor makes the job save and exit 75."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/launch: ftrain_jobs
from ftrain_jobs import BUILD, ENV, FTRAIN, TIMEOUT, command, losses, tiny_gpt2_workspace

SUPERVISE = BUILD / "ftrain-supervise"

# Plays one outcome per attempt, counted in STATE/attempts; records its arguments in
# STATE/argv.<attempt>.json. Outcomes: exit:N, kill:SIGNAL (itself), wait (until a
# stop request, which it records in STATE/stopped.<attempt> and answers with 75).
FAKE_COMMAND = r'''
import json, os, signal, sys, time
from pathlib import Path
state, plan = Path(sys.argv[1]), sys.argv[2].split(",")
counter = state / "attempts"
attempt = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(attempt))
(state / f"argv.{attempt}.json").write_text(json.dumps(sys.argv[3:]))
kind, _, value = plan[min(attempt, len(plan)) - 1].partition(":")
if kind == "exit":
    sys.exit(int(value))
if kind == "kill":
    os.kill(os.getpid(), getattr(signal, value))
def stop(received, frame):
    (state / f"stopped.{attempt}").write_text(signal.Signals(received).name)
    sys.exit(75)
for name in ("SIGUSR1", "SIGTERM", "SIGINT"):
    signal.signal(getattr(signal, name), stop)
(state / f"waiting.{attempt}").touch()
while True:
    time.sleep(0.01)
'''


def fake_command(state, plan, *arguments):
    script = state / "fake_command.py"
    script.write_text(FAKE_COMMAND)
    return [sys.executable, script, state, ",".join(plan), *arguments]


def supervise(*options, command):
    return [str(SUPERVISE), *map(str, options), "--", *map(str, command)]


def attempts_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def arguments_of(state, attempt):
    return json.loads((state / f"argv.{attempt}.json").read_text())


def run(arguments, timeout=60):
    return subprocess.run(arguments, capture_output=True, text=True, timeout=timeout, env=ENV)


def wait_for(condition, process, what, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"ended before {what}: {process.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_failures_are_restarted_with_backoff_and_resume_auto(tmp_path):
    log = tmp_path / "attempts.jsonl"
    result = run(supervise("--backoff", 0.1, "--log", log,
                           command=fake_command(tmp_path, ["exit:3", "exit:3", "exit:0"], "--config", "x.ini")))
    assert result.returncode == 0, result.stderr
    records = attempts_log(log)
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["exit_status"] for r in records] == [3, 3, 0]
    assert [r["action"] for r in records] == ["restart", "restart", "done"]
    assert [r["backoff_s"] for r in records[:2]] == [0.1, 0.2], "the back-off doubles after each failure"
    assert all(r["start"] <= r["end"] for r in records)
    # The first run as given; every restart continues from the newest checkpoint.
    assert arguments_of(tmp_path, 1) == ["--config", "x.ini"]
    assert arguments_of(tmp_path, 2) == arguments_of(tmp_path, 3) == ["--config", "x.ini", "--run.resume=auto"]
    assert records[1]["command"][-1] == records[2]["command"][-1] == "--run.resume=auto"
    assert "--run.resume=auto" not in records[0]["command"]
    assert "attempt 1 ended with exit status 3; restart 1 of 3 in 0.1 s" in result.stderr
    assert "attempt 2 ended with exit status 3; restart 2 of 3 in 0.2 s" in result.stderr
    assert all(line.startswith("ftrain-supervise: ") for line in result.stderr.splitlines())


def test_when_restarts_run_out_the_last_status_is_the_supervisors(tmp_path):
    log = tmp_path / "attempts.jsonl"
    result = run(supervise("--max-restarts", 2, "--backoff", 0.05, "--log", log,
                           command=fake_command(tmp_path, ["exit:3", "exit:4", "exit:5"])))
    assert result.returncode == 5, result.stderr
    assert [r["action"] for r in attempts_log(log)] == ["restart", "restart", "give_up"]
    assert "attempt 3 ended with exit status 5; no restarts left (2 used, --max-restarts); exiting with 5" in result.stderr


def test_a_log_that_cannot_be_written_does_not_stop_the_supervision(tmp_path):
    """/dev/full refuses every write with ENOSPC, as a full disk does."""
    result = run(supervise("--max-restarts", 1, "--backoff", 0.05, "--log", "/dev/full",
                           command=fake_command(tmp_path, ["exit:3", "exit:0"])))
    assert result.returncode == 0, result.stderr
    assert "/dev/full: write failed: No space left on device; no further records are logged" in result.stderr
    assert result.stderr.count("no further records are logged") == 1


def test_death_by_a_signal_is_reported_as_128_plus_the_signal(tmp_path):
    log = tmp_path / "attempts.jsonl"
    result = run(supervise("--max-restarts", 1, "--backoff", 0.05, "--log", log,
                           command=fake_command(tmp_path, ["kill:SIGKILL"])))
    assert result.returncode == 137, result.stderr
    records = attempts_log(log)
    assert [(r["exit_status"], r["signal"], r["action"]) for r in records] == [
        (137, "SIGKILL", "restart"), (137, "SIGKILL", "give_up")]
    assert "attempt 1 ended with SIGKILL (status 137); restart 1 of 1" in result.stderr


def test_exit_75_without_a_stop_request_is_restarted_at_once(tmp_path):
    # A back-off of a minute would show: 75 means "saved; requeue me", not a failure.
    log = tmp_path / "attempts.jsonl"
    started = time.time()
    result = run(supervise("--backoff", 60, "--log", log, command=fake_command(tmp_path, ["exit:75", "exit:0"])))
    assert result.returncode == 0, result.stderr
    assert time.time() - started < 30
    records = attempts_log(log)
    assert [(r["exit_status"], r["action"], r.get("backoff_s")) for r in records] == [
        (75, "restart", 0), (0, "done", None)]
    assert arguments_of(tmp_path, 2) == ["--run.resume=auto"]


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_stop_request_is_forwarded_and_ends_with_75(tmp_path, sent):
    log = tmp_path / "attempts.jsonl"
    supervisor = subprocess.Popen(supervise("--backoff", 0.05, "--log", log, command=fake_command(tmp_path, ["wait"])),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: (tmp_path / "waiting.1").exists(), supervisor, "the command to start")
    supervisor.send_signal(sent)
    _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 75, stderr
    # Sent on as SIGUSR1, which mpirun passes to every rank (it kills the job on SIGTERM).
    assert (tmp_path / "stopped.1").read_text() == "SIGUSR1"
    assert int((tmp_path / "attempts").read_text()) == 1, "a stopped job is not restarted"
    [record] = attempts_log(log)
    assert (record["exit_status"], record["action"], record["stop_signal"]) == (75, "stop", sent.name)
    assert f"received {sent.name}: asking the command to save and stop" in stderr


def test_a_stop_request_during_the_backoff_ends_with_the_last_status(tmp_path):
    log = tmp_path / "attempts.jsonl"
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as stderr_file:
        supervisor = subprocess.Popen(supervise("--backoff", 120, "--log", log, command=fake_command(tmp_path, ["exit:3"])),
                                      stderr=stderr_file, env=ENV)
        wait_for(lambda: "in 120 s" in stderr.read_text(), supervisor, "the back-off")
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=30)
    assert supervisor.returncode == 3, stderr.read_text()
    assert "received SIGTERM while waiting to restart: not restarting" in stderr.read_text()
    [record] = attempts_log(log)
    assert (record["exit_status"], record["action"], record["stop_signal"]) == (3, "stop", "SIGTERM")


@pytest.mark.parametrize("given,restarted", [
    (["--run.resume=none"], ["--run.resume=auto"]),
    (["--run.resume", "none"], ["--run.resume", "auto"]),
    (["--resume=none"], ["--resume=auto"]),
    (["--resume"], ["--resume"]),
    (["--run.resume=auto"], ["--run.resume=auto"]),
    (["--run.resume=run/checkpoints/step_00000010"], ["--run.resume=run/checkpoints/step_00000010"]),
], ids=["none", "none-separate", "alias-none", "alias-bare", "auto", "checkpoint-directory"])
def test_a_restart_resumes_from_the_newest_checkpoint(tmp_path, given, restarted):
    result = run(supervise("--backoff", 0.01, command=fake_command(tmp_path, ["exit:1", "exit:0"], "--run.dir=run", *given)))
    assert result.returncode == 0, result.stderr
    assert arguments_of(tmp_path, 1) == ["--run.dir=run", *given]
    assert arguments_of(tmp_path, 2) == ["--run.dir=run", *restarted]


@pytest.mark.parametrize("arguments,message", [
    ([], "no command to supervise: give it after --"),
    (["--max-restarts", 3], "no command to supervise: give it after --"),
    (["--"], "no command to supervise"),
    (["mpirun", "-np", "2", "ftrain"], "no command to supervise: give it after --"),
    (["--max-restarts=-1", "--", "true"], "--max-restarts must be >= 0, got -1"),
    (["--backoff=-0.5", "--", "true"], "--backoff must be a number of seconds >= 0"),
    (["--max-backoff=-1", "--", "true"], "--max-backoff must be a number of seconds >= 0"),
    (["--backoff", "soon", "--", "true"], "the argument ('soon') for option '--backoff' is invalid"),
    (["--frobnicate", "--", "true"], "unrecognised option '--frobnicate'"),
    (["--log", "/nonexistent/dir/log.jsonl", "--", "true"], "--log /nonexistent/dir/log.jsonl: cannot open"),
], ids=["nothing", "no-separator", "empty-command", "forgot-separator", "negative-restarts", "negative-backoff",
        "negative-max-backoff", "not-a-number", "unknown-option", "unwritable-log"])
def test_bad_arguments_exit_2_with_a_message(arguments, message):
    result = run([str(SUPERVISE), *map(str, arguments)])
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("ftrain-supervise: error: ") and message in result.stderr, result.stderr
    assert "attempt" not in result.stderr, "nothing is run"


def test_a_command_that_cannot_start_is_not_restarted(tmp_path):
    result = run(supervise("--backoff", 0.01, command=[tmp_path / "no-such-program"]))
    assert result.returncode == 127
    assert "cannot run" in result.stderr and "No such file or directory" in result.stderr
    assert result.stderr.count("attempt ") == 1


# End to end: ftrain on 2 ranks under mpirun, the tiny GPT-2 of test_stopping.py.
STEPS = 60


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("supervise")
    return tiny_gpt2_workspace(root)


def ftrain_job(ws, run_dir):
    options = {
        "run.dir": run_dir, "model.path": ws["model"], "model.dropout": 0.1, "data.path": ws["data"],
        "data.micro_batch_size": 2, "train.global_batch_size": 4, "train.steps": STEPS, "train.eval_every": 0,
        "optim.lr": 1e-3, "optim.warmup_steps": 2, "checkpoint.every": 3, "checkpoint.export_hf": "false",
    }
    return command(2, *[f"--{key}={value}" for key, value in options.items()])


def steps_logged(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            pass  # the line being written
    return max(steps)


def committed_checkpoints(run_dir):
    return sorted((Path(run_dir) / "checkpoints").glob("step_*/COMMITTED"))


def ranks_of(run_dir):
    """{world rank: pid} of the ftrain processes of the run in run_dir."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0] != bytes(FTRAIN) or f"--run.dir={run_dir}".encode() not in argv:
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # not a process, or one that has just ended
        rank = next((v.split(b"=", 1)[1] for v in environ if v.startswith(b"OMPI_COMM_WORLD_RANK=")), None)
        if rank is not None:
            ranks[int(rank)] = int(proc.name)
    return ranks


def test_a_killed_rank_is_restarted_and_the_run_continues_exactly(workspace):
    reference_dir = workspace["root"] / "uninterrupted"
    subprocess.run(ftrain_job(workspace, reference_dir), check=True, capture_output=True, timeout=TIMEOUT, env=ENV)

    run_dir = workspace["root"] / "supervised"
    log = workspace["root"] / "supervised.jsonl"
    supervisor = subprocess.Popen(supervise("--backoff", 0.5, "--log", log, command=ftrain_job(workspace, run_dir)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(lambda: steps_logged(run_dir) >= 8 and committed_checkpoints(run_dir), supervisor,
                 "steps and a checkpoint")
        wait_for(lambda: 1 in ranks_of(run_dir), supervisor, "rank 1's process")
        os.kill(ranks_of(run_dir)[1], signal.SIGKILL)
        stdout, stderr = supervisor.communicate(timeout=TIMEOUT)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 0, f"{stdout}\n{stderr}"
    first, second = attempts_log(log)
    assert first["exit_status"] != 0 and first["action"] == "restart", first
    assert "--run.resume=auto" not in first["command"] and second["command"][-1] == "--run.resume=auto"
    assert second["action"] == "done"
    assert "ftrain: resumed from" in stdout, stdout
    resumed_at = int(stdout.split("ftrain: resumed from")[1].split(" at step ")[1].split()[0])
    assert 3 <= resumed_at < STEPS, "the restart continued from a checkpoint written before the kill"
    # Same layout, CPU, fp32: the same losses to the last bit, dropout included.
    assert losses(run_dir) == losses(reference_dir)


def test_a_stop_request_makes_the_job_under_mpirun_save_and_exit_75(workspace):
    # SIGTERM to mpirun would kill the ranks; sent on as SIGUSR1, they save first.
    run_dir = workspace["root"] / "stopped"
    log = workspace["root"] / "stopped.jsonl"
    supervisor = subprocess.Popen(supervise("--log", log, command=ftrain_job(workspace, run_dir)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(lambda: steps_logged(run_dir) >= 2, supervisor, "the first steps")
        supervisor.send_signal(signal.SIGTERM)
        stdout, stderr = supervisor.communicate(timeout=TIMEOUT)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 75, f"{stdout}\n{stderr}"
    assert "ftrain: received SIGUSR1: saved step" in stdout, stdout
    stopped_at = max(losses(run_dir))
    assert stopped_at < STEPS and (run_dir / "checkpoints" / f"step_{stopped_at:08d}" / "COMMITTED").exists()
    [record] = attempts_log(log)
    assert (record["exit_status"], record["action"], record["stop_signal"]) == (75, "stop", "SIGTERM")
