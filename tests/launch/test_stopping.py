"""How a run stops short.

On request: SIGUSR1 (Slurm's --signal), SIGTERM and SIGINT make ftrain finish the step
it is in, save a checkpoint and exit with 75 ("saved; requeue me"); the run then
resumes from that checkpoint as if it had never stopped (launch/signals.h).

When a rank hangs: the others would wait in a collective forever; the watchdog aborts
the whole job after run.step_timeout, naming the rank and the operation
(launch/watchdog.h)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ftrain_jobs import ENV, FTRAIN, TIMEOUT, command, losses, tiny_gpt2_workspace

STEPS = 300

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    return tiny_gpt2_workspace(root)


def args(ws, run_dir, **overrides):
    # One intra-op thread: these runs are compared to the bit, and a one-process run
    # on two threads is not reproducible to the bit (its step-1 loss took three
    # different values in 24 runs, the last digits only); on one thread it is.
    options = {
        "run.dir": run_dir, "run.threads": 1, "model.path": ws["model"], "model.dropout": 0.1, "data.path": ws["data"],
        "data.micro_batch_size": 2, "train.global_batch_size": 4, "train.steps": STEPS, "train.eval_every": 0,
        "optim.lr": 1e-3, "optim.warmup_steps": 2, "checkpoint.every": 0, "checkpoint.export_hf": "false",
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def last_step(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def reference(ws, ranks):
    run_dir = ws["root"] / f"uninterrupted{ranks}"
    if not (run_dir / "metrics.jsonl").exists():
        subprocess.run(command(ranks, *args(ws, run_dir)), check=True, capture_output=True, timeout=TIMEOUT, env=ENV)
    return losses(run_dir)


@pytest.mark.parametrize("ranks,sent", [(2, signal.SIGUSR1), (0, signal.SIGTERM), (0, signal.SIGINT)],
                         ids=["mpirun-2-ranks-SIGUSR1", "one-rank-SIGTERM", "one-rank-SIGINT"])
def test_stop_request_saves_exits_75_and_resumes_exactly(workspace, ranks, sent):
    run_dir = workspace["root"] / f"stopped_{ranks}_{sent.name}"
    job = subprocess.Popen(command(ranks, *args(workspace, run_dir)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + TIMEOUT
    while last_step(run_dir) < 5:
        assert job.poll() is None, f"the job ended before it was signalled: {job.communicate()}"
        assert time.time() < deadline
        time.sleep(0.05)
    job.send_signal(sent)  # mpirun forwards SIGUSR1 to every rank
    stdout, stderr = job.communicate(timeout=TIMEOUT)
    assert job.returncode == 75, f"exit {job.returncode}\n{stdout}\n{stderr}"
    stopped_at = max(losses(run_dir))
    assert 5 <= stopped_at < STEPS, "the signal should stop the run before its end"
    assert sent.name in stdout and "requeue" in stdout
    assert (run_dir / "checkpoints" / f"step_{stopped_at:08d}").is_dir(), "the step it stopped at is saved"

    resumed = subprocess.run(command(ranks, *args(workspace, run_dir, **{"run.resume": "auto"})),
                             capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {stopped_at}" in resumed.stdout
    # Same layout: the same losses to the last bit, dropout included.
    assert losses(run_dir) == reference(workspace, ranks)


@pytest.mark.parametrize("phase,watched", [("load", "loading the model"), ("resume", "resuming from"),
                                           ("export", "exporting")])
def test_a_rank_hung_outside_the_steps_ends_the_job_through_the_watchdog(workspace, phase, watched):
    # FTRAIN_TEST_HANG stops rank 1 for good as it enters the phase. Rank 0 goes on to
    # the phase's first collective (the run directory's barrier, the resume's agreement,
    # the streamed export's gathers at ZeRO-3) and waits there until its watchdog ends
    # the job, naming rank 0 and what it was doing. Without the watchdog the job would
    # wait until the scheduler's time limit.
    run_dir = workspace["root"] / f"hung_{phase}"
    options = {"run.step_timeout": 5, "train.steps": 2, "dist.zero": 3, "checkpoint.export_hf": "true",
               "run.resume": "auto"}
    if phase == "resume":  # a checkpoint to resume from
        subprocess.run(command(2, *args(workspace, run_dir, **{**options, "run.step_timeout": 0})),
                       capture_output=True, text=True, timeout=TIMEOUT, env=ENV, check=True)
        options["train.steps"] = 3
    started = time.time()
    result = subprocess.run(command(2, *args(workspace, run_dir, **options)), capture_output=True, text=True,
                            timeout=TIMEOUT, env={**ENV, "FTRAIN_TEST_HANG": f"1:{phase}"})
    assert result.returncode != 0
    assert f"error on rank 0: watchdog: {watched}" in result.stderr, result.stderr
    assert "run.step_timeout" in result.stderr
    assert time.time() - started < 90, "the watchdog should end the job within seconds of the timeout"


def test_a_hung_rank_ends_the_job_through_the_watchdog(workspace):
    # Rank 1 is stopped (SIGSTOP) mid-run, as a hung process would be: rank 0 waits in
    # the step's collectives until its watchdog aborts the job, naming rank 0, the step
    # and the option; mpirun then ends every rank, the stopped one included.
    run_dir = workspace["root"] / "hung"
    job = subprocess.Popen(command(2, *args(workspace, run_dir, **{"run.step_timeout": 8, "checkpoint.every": 2})),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + TIMEOUT
    while last_step(run_dir) < 5:
        assert job.poll() is None, f"the job ended early: {job.communicate()}"
        assert time.time() < deadline
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(job.pid), "-f", str(FTRAIN)], capture_output=True, text=True)
    pids = sorted(int(pid) for pid in ranks.stdout.split())
    assert len(pids) == 2, ranks.stdout
    # Rank order: the ranks' ids are in their environment.
    rank_of = {pid: int(open(f"/proc/{pid}/environ", "rb").read().split(b"OMPI_COMM_WORLD_RANK=")[1].split(b"\0")[0])
               for pid in pids}
    hung = next(pid for pid, rank in rank_of.items() if rank == 1)
    stopped_at = time.time()
    os.kill(hung, signal.SIGSTOP)
    try:
        stdout, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert time.time() - stopped_at < 30, "the watchdog should end the job within seconds of the timeout"
    assert job.returncode != 0
    # Rank 0 waits in whatever collective came next: a step's, or a checkpoint save's
    # (every 2 steps); the watchdog names the one it was in.
    assert "error on rank 0: watchdog: " in stderr and "run.step_timeout" in stderr, stderr
    # The checkpoints written before the hang are intact.
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    assert checkpoints, "checkpoints every 2 steps were written before the hang"
    resumed = subprocess.run(command(0, *args(workspace, run_dir, **{"run.resume": "auto", "run.exit_after_steps": 1})),
                             capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stdout + resumed.stderr
