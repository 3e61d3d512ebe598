"""ftrain under a real Slurm: a one-node cluster (munged, slurmctld, slurmd) started for
these tests in a temporary directory and stopped after them.

- `srun --mpi=pmix` starts a 2-rank job: Open MPI takes its world from Slurm's PMIx.
- slurm/ftrain.sbatch, pre-empted with SIGUSR1 to its batch shell (what
  `--signal=B:USR1@...` sends before the time limit), passes the signal to every rank;
  ftrain saves and exits 75, the script requeues the job, and the second start
  (SLURM_RESTART_COUNT=1) resumes and completes with the losses of an uninterrupted run,
  bit for bit, both with srun and with LAUNCHER=mpirun. Requeued by `scontrol requeue`
  instead, the ranks save on Slurm's SIGTERM and the job resumes the same way.
- `ftrain-sweep run --launcher slurm` submits a sweep of 1 and 2 ranks as jobs of that
  script, waits for them on a cluster without job accounting, and gathers them; the
  bytes each run sent are the analytic model's.

Needs root (munged runs as the munge user, slurmd as root) and Debian's slurm-wlm and
munge, which scripts/setup.sh installs; skipped, saying why, where they are missing.
Where they are all present, daemons that do not start fail the test."""
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch" / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from slurm import Cluster, requirements, started, tail  # noqa: E402
from ftrain_jobs import ENV, FTRAIN, SOURCE, TIMEOUT, command, losses, prepare_corpus, tiny_gpt2  # noqa: E402
from test_sweep import run_sweep, spec  # noqa: E402

# Long enough that the pre-emption lands before the end: two ranks run the tiny model's
# 300 steps in about 1 s here, and once a 300-step job ended before its SIGUSR1 arrived.
STEPS = 1500


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if reason := requirements():
        pytest.skip(reason)
    cluster = started(Cluster(tmp_path_factory.mktemp("slurm"), ENV), "the test cluster's daemons")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    data = prepare_corpus(root, 400)
    model = tiny_gpt2(root / "model")
    # The job's settings as the INI file `sbatch slurm/ftrain.sbatch CONFIG.ini` takes;
    # run.dir is given per job on the command line.
    config = root / "tiny.ini"
    config.write_text(f"""\
[run]
threads = 1
[model]
path = {model}
dropout = 0.1
[data]
path = {data}
micro_batch_size = 2
[train]
global_batch_size = 4
steps = {STEPS}
eval_every = 0
[optim]
lr = 1e-3
warmup_steps = 2
[checkpoint]
every = 0
export_hf = false
""")
    return {"root": root, "config": config, "data": data}


def last_step(run_dir):
    return max(losses(run_dir), default=0) if (Path(run_dir) / "metrics.jsonl").exists() else 0


def test_srun_pmix_starts_one_two_rank_job(cluster, workspace):
    plugins = cluster.slurm("srun", "--mpi=list")
    listed = plugins.stdout + plugins.stderr
    assert "pmix" in listed, f"Slurm's mpi/pmix plugin is missing:\n{listed}"
    run_dir = workspace["root"] / "srun"
    result = cluster.slurm("srun", "--mpi=pmix", "-n", "2", "--cpus-per-task=1", FTRAIN,
                           "--config", workspace["config"], f"--run.dir={run_dir}", "--train.steps=5",
                           timeout=TIMEOUT)
    # Both tasks joined one world: a task that missed PMIx would be a world of its own.
    assert "ftrain: 2 rank(s)" in result.stdout and "1 rank(s)" not in result.stdout, result.stdout
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5]


# usr1: what --signal=B:USR1@... does before the time limit, SIGUSR1 to the batch shell
# only; the script passes it on, sees 75 and requeues the job. requeue: what an
# administrator's `scontrol requeue` or a pre-emption with PreemptMode=REQUEUE does,
# SIGTERM to every process of the job (the batch shell included) and SIGKILL after
# KillWait; the ranks save within it and Slurm requeues the job itself. Under mpirun
# only the first saves: mpirun answers SIGTERM by killing the ranks.
@pytest.mark.parametrize("launcher,preemption", [("srun", "usr1"), ("mpirun", "usr1"), ("srun", "requeue")],
                         ids=["srun-usr1", "mpirun-usr1", "srun-scontrol-requeue"])
def test_batch_job_is_preempted_saves_requeues_and_resumes_exactly(cluster, workspace, launcher, preemption):
    run_dir = preempt_and_resume(cluster, workspace, launcher, preemption)
    # Same layout as mpirun -np 2: the same losses to the last bit, dropout included.
    assert losses(run_dir) == reference(workspace, 2)


def preempt_and_resume(cluster, workspace, launcher, preemption, nodes=1, tasks_per_node=2, options=(), steps=STEPS):
    """Submits slurm/ftrain.sbatch, unchanged, to `nodes` nodes; pre-empts it after step
    5 as `preemption` says (usr1: what --signal=B:USR1@... does before the time limit,
    SIGUSR1 to the batch shell only, and the script passes it on, sees 75 and requeues
    the job; requeue: what an administrator's `scontrol requeue` or a pre-emption with
    PreemptMode=REQUEUE does, SIGTERM to every process of the job and SIGKILL after
    KillWait, and Slurm requeues the job itself); checks that the job saved, was
    requeued once, resumed from its checkpoint and completed. Returns its run directory."""
    root = workspace["root"]
    name = f"sbatch_{launcher}_{preemption}_{nodes}n"
    run_dir = root / name
    log_pattern = root / f"{name}-%j.log"
    # The repository's script with its #SBATCH lines overridden for this cluster's
    # nodes, without GPUs.
    submitted = cluster.slurm(
        "sbatch", "--parsable", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--cpus-per-task=1",
        "--gpus-per-task=0", "--time=10", f"--output={log_pattern}", SOURCE / "slurm/ftrain.sbatch",
        workspace["config"], f"--run.dir={run_dir}", f"--train.steps={steps}", *options, cwd=root,
        env={"FTRAIN": str(FTRAIN), "LAUNCHER": launcher})
    job_id = submitted.stdout.strip().split(";")[0]
    log = Path(str(log_pattern).replace("%j", job_id))

    deadline = time.time() + TIMEOUT
    while last_step(run_dir) < 5:
        state = cluster.job(job_id)["JobState"]
        assert state in ("PENDING", "RUNNING"), f"the job ended before it was pre-empted: {state}\n{tail(log, 60)}"
        assert time.time() < deadline, f"no steps after {TIMEOUT} s:\n{tail(log, 60)}"
        time.sleep(0.05)
    if preemption == "usr1":
        cluster.slurm("scancel", "--signal=USR1", "--batch", job_id)
    else:
        cluster.slurm("scontrol", "requeue", job_id)

    # Requeued, it waits for its old credential to expire (cred_expire), then runs again.
    while (job := cluster.job(job_id))["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED",
                                                       "COMPLETING"):
        assert time.time() < deadline, f"still {job['JobState']} after {TIMEOUT} s:\n{tail(log, 60)}"
        time.sleep(0.5)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", \
        f"{job['JobState']} after {job['Restarts']} restarts:\n{tail(log, 60)}\n{cluster.logs()}"

    # One log, appended to by both starts.
    text = log.read_text()
    assert "start 1 (SLURM_RESTART_COUNT=0)" in text and "start 2 (SLURM_RESTART_COUNT=1)" in text, text
    assert f"{nodes * tasks_per_node} ranks on {nodes} node(s)" in text, text
    sent = "SIGUSR1" if preemption == "usr1" else "SIGTERM"
    stopped = re.search(rf"received {sent}: saved step (\d+); exiting with 75", text)
    assert stopped, text
    stopped_at = int(stopped.group(1))
    assert 5 <= stopped_at < steps, "the signal should stop the run before its end"
    if preemption == "usr1":
        assert f"requeueing job {job_id} (restart 1)" in text, text
    assert f"resumed from {run_dir}/checkpoints/step_{stopped_at:08d} at step {stopped_at}" in text, text
    assert "ftrain ended with exit status 0" in text, text
    assert job["ExitCode"] == "0:0"
    return run_dir


def reference(workspace, ranks, *options):
    """The losses of an uninterrupted mpirun run of `ranks` ranks on this machine."""
    run_dir = workspace["root"] / "_".join(["uninterrupted", str(ranks), *(o.strip("-") for o in options)])
    if not (run_dir / "metrics.jsonl").exists():
        subprocess.run(command(ranks, "--config", workspace["config"], f"--run.dir={run_dir}", *options), check=True,
                       capture_output=True, timeout=TIMEOUT, env=ENV)
    return losses(run_dir)


def test_sweep_on_the_cluster_runs_each_layout_as_a_job(cluster, workspace):
    # The cluster keeps no job accounting (sacct has nothing to say), so the sweep reads
    # each job's end from `scontrol show job`. Two CPUs suffice: 1 and 2 ranks of one
    # CPU each, no GPUs. The jobs are chained (slurm.chain): the second starts only once
    # the first has ended, so no run is timed beside another.
    root = workspace["root"]
    path = spec(root, "sweep", data={"path": str(workspace["data"])}, ranks=[1, 2], tp=[1], zero=[0],
                scaling=["strong"], steps=4, timing_warmup_steps=1,
                slurm={"tasks_per_node": 2, "gpus_per_task": 0, "cpus_per_task": 1, "time": "00:10:00",
                       "poll_s": 0.5, "wait_timeout_s": TIMEOUT})
    out = root / "sweep"
    result = run_sweep("run", path, "--out", out, "--launcher", "slurm", env=cluster.env, timeout=TIMEOUT + 60)
    jobs = json.loads((out / "slurm_jobs.json").read_text())
    assert sorted(jobs.values()) == ["tiny-gpt2_r1_tp1_z0_gb4", "tiny-gpt2_r2_tp1_z0_gb4"], result.stdout
    for job_id, run in jobs.items():
        assert f"{run}: Slurm job {job_id} COMPLETED (scontrol)" in result.stdout, result.stdout
        log = (out / "runs" / run / f"slurm-{job_id}.log").read_text()
        assert "ftrain ended with exit status 0" in log, log
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert sorted(int(r["ranks"]) for r in rows) == [1, 2]
    for row in rows:
        assert row["status"] == "ok" and row["memory_matches"] == "True", row
        assert math.isclose(float(row["comm_bytes"]), float(row["predicted_comm_bytes"]), abs_tol=1e-6), row
    assert float(next(r for r in rows if r["ranks"] == "2")["comm_bytes"]) > 0
    first, second = (out / "runs" / run for run in jobs.values())
    assert (second / "config.ini").stat().st_mtime >= (first / "metrics.jsonl").stat().st_mtime, \
        "the second job started before the first had ended"
    # Labelled with what Slurm says of the node the jobs ran on.
    hardware = json.loads((out / "sweep.json").read_text())["hardware"]
    assert hardware.startswith(f"Slurm nodes localhost: 1 node(s) of {os.cpu_count()} CPUs, no GPUs"), hardware
    assert hardware in (out / "sweep.md").read_text()
