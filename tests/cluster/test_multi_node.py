"""ftrain across nodes: a two-node cluster made of Linux namespaces (network.py), with one
slurmd per node (slurm.py), and what a cluster does to a long job.

- The nodes are hosts of their own: each sees its own host name and only its own
  address; the ranks' traffic crosses the veth links by TCP (Open MPI's btl is forced to
  tcp,self, so no shared memory can carry it, and the bytes on the links are read from
  the kernel's counters).
- `srun -N 2 --ntasks-per-node=2 --mpi=pmix` with dist.tp=2, in block and in cyclic
  placement: tensor-parallel groups stay inside nodes (ftrain reads the nodes from MPI's
  shared-memory split) and the losses and gradient norms equal one node's within 1e-5.
- `mpirun --host node1:2,node2:2` with tests/cluster/enter-node as Open MPI's launch
  agent in ssh's place: the same losses.
- slurm/ftrain.sbatch, unchanged, on both nodes: pre-empted with SIGUSR1 it saves and
  requeues itself, requeued with `scontrol requeue` its ranks save on SIGTERM; the next
  start resumes and the losses equal an uninterrupted run's within 1e-5.
- A node crash (every process of one node's namespace SIGKILLed) mid-step and
  mid-checkpoint-write; a network partition (its link down) mid-step; in each the
  surviving ranks end within 60 s, the committed checkpoints verify, and a half-written
  one is never `latest`. After the node is back, the next job runs normally.
- A node lost under slurm/ftrain.sbatch: Slurm takes it out of the allocation
  (--no-kill) and the script launches ftrain again on the node left, with half the
  ranks, resuming from the last committed checkpoint, resharded; pre-empted there, the
  job requeues itself and, the node back, runs on both nodes again. The losses equal
  an uninterrupted run's within 1e-5 and every step trains on the uninterrupted run's
  sample rows (run.log_samples).
- A slow node (its link throttled by tc): the job completes and its step time rises.

Each test bounds itself (TIMEOUT per command, 60 s for the survivors of a failure).
Skipped, saying why, where namespaces cannot be made (not root, no iproute2) or Slurm is
not installed; where they can, a cluster that does not start fails."""
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "launch"))
sys.path.insert(0, str(HERE.parent / "launch" / "tools"))
sys.path.insert(0, str(HERE.parent / "slurm"))
from network import Network, prerequisites  # noqa: E402
from slurm import Cluster, requirements, started, tail  # noqa: E402
from ftrain_jobs import (BUILD, ENV, FTRAIN, TIMEOUT, command, grad_norms, losses, prepare_corpus,  # noqa: E402
                         sample_rows, tiny_gpt2)
from test_slurm_cluster import preempt_and_resume, reference  # noqa: E402,F401
from test_slurm_cluster import workspace  # noqa: E402,F401  (the pre-emption test's job and data)

CKPT = BUILD / "ftrain-ckpt"
NODES = ("node1", "node2")
SURVIVE_S = 60  # the surviving ranks of a failed node end within this


def cluster_env(network):
    """Open MPI between nodes: TCP on the cluster's subnet only, no shared memory."""
    return {**ENV, "OMPI_MCA_btl": "tcp,self", "OMPI_MCA_btl_tcp_if_include": str(network.subnet),
            "OMPI_MCA_oob_tcp_if_include": str(network.subnet), "FTRAIN_CLUSTER_DIR": str(network.root)}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    for reason in (prerequisites(), requirements()):
        if reason:
            pytest.skip(reason)
    network = Network(tmp_path_factory.mktemp("nodes"), len(NODES))
    try:
        network.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        network.close()
        pytest.fail(f"this runs as root with iproute2, but the namespace nodes could not be made: {error}")
    yield network
    network.close()


@pytest.fixture(scope="module")
def cluster(network):
    cluster = started(Cluster(network.root / "slurm", cluster_env(network), network=network), "the two-node cluster")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny GPT-2 and its data; dropout 0, so that layouts that reduce in another order
    agree within rounding whatever the data-parallel size."""
    root = tmp_path_factory.mktemp("multinode")
    return {"root": root, "data": prepare_corpus(root, 400), "model": tiny_gpt2(root / "model")}


def options(job, run_dir, steps, **overrides):
    values = {"run.dir": run_dir, "run.threads": 1, "model.path": job["model"], "model.dropout": 0,
              "data.path": job["data"], "data.micro_batch_size": 2, "train.global_batch_size": 4,
              "train.steps": steps, "train.eval_every": 0, "optim.lr": 1e-3, "optim.warmup_steps": 2,
              "checkpoint.every": 0, "checkpoint.export_hf": "false", "checkpoint.keep_best": "false",
              "run.tensorboard": "false", "dist.tp": 2}
    values.update(overrides)
    return [f"--{key}={value}" for key, value in values.items()]


def one_node(job, name, steps, ranks=4, **overrides):
    """The same job under mpirun on this machine's own namespace: the reference."""
    run_dir = job["root"] / name
    if not (run_dir / "metrics.jsonl").exists():
        result = subprocess.run(command(ranks, *options(job, run_dir, steps, **overrides)), capture_output=True,
                                text=True, timeout=TIMEOUT, env=ENV)
        assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def assert_close(run_dir, reference_dir, steps=None):
    got, want = losses(run_dir), losses(reference_dir)
    steps = steps or sorted(want)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=1e-5), f"loss of step {step}"
    got_norms, want_norms = grad_norms(run_dir), grad_norms(reference_dir)
    for step in steps:
        assert got_norms[step] == pytest.approx(want_norms[step], rel=1e-5), f"grad_norm of step {step}"


def placement(stdout):
    """{node: (ranks, dp ranks)} from ftrain's banner."""
    found = re.findall(r"ftrain: node (\S+): rank\(s\) ([\d,]+) = tp group\(s\) of dp rank\(s\) ([\d,]+)", stdout)
    return {node: ([int(r) for r in ranks.split(",")], [int(d) for d in dps.split(",")]) for node, ranks, dps in found}


def link_bytes(network, node):
    stats = Path("/sys/class/net") / network.veth(node) / "statistics"
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


def test_each_node_is_a_host_of_its_own(cluster, network):
    assert cluster.idle() == set(NODES), cluster.node_states()
    hosts = cluster.slurm("srun", "-N", "2", "--ntasks-per-node=1", "hostname").stdout.split()
    assert sorted(hosts) == list(NODES)
    for node in NODES:
        addresses = network.run(node, ["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
        assert re.findall(r"inet (\S+)/", addresses) == ["127.0.0.1", network.address[node]], addresses


@pytest.mark.parametrize("distribution", ["block", "cyclic"])
def test_srun_across_two_nodes_keeps_tensor_parallel_groups_inside_nodes(cluster, network, job, distribution):
    steps = 12
    run_dir = job["root"] / f"srun_{distribution}"
    before = link_bytes(network, "node2")
    result = cluster.slurm("srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", f"--distribution={distribution}",
                           "--cpus-per-task=1", FTRAIN, *options(job, run_dir, steps), timeout=TIMEOUT)
    crossed = link_bytes(network, "node2") - before
    # block: ranks 0 1 on node1, 2 3 on node2; cyclic: 0 2 on node1, 1 3 on node2. Either
    # way each node holds one whole tensor-parallel group, and data parallelism crosses.
    expected = {"block": {"node1": ([0, 1], [0]), "node2": ([2, 3], [1])},
                "cyclic": {"node1": ([0, 2], [0]), "node2": ([1, 3], [1])}}[distribution]
    assert placement(result.stdout) == expected, result.stdout
    assert "span two nodes" not in result.stdout
    assert_close(run_dir, one_node(job, "one_node_12", steps))
    # Every step all-reduces the gradients between the nodes: at least half a gradient
    # (4 bytes per parameter, tp 2) each way per step went over node2's link.
    parameters = int(re.search(r"(\d+) parameters", result.stdout).group(1))
    assert crossed > steps * parameters * 4 / 2, f"{crossed} bytes on node2's link"
    print(f"{distribution}: {crossed} bytes crossed node2's link in {steps} steps ({parameters} parameters)")


def test_mpirun_across_two_nodes_through_a_launch_agent(network, job):
    steps = 12
    run_dir = job["root"] / "mpirun_hosts"
    env = {**cluster_env(network), "OMPI_MCA_plm_rsh_agent": str(HERE / "enter-node")}
    result = subprocess.run(["mpirun", "--host", "node1:2,node2:2", "-np", "4", "--bind-to", "none", FTRAIN,
                             *options(job, run_dir, steps)], capture_output=True, text=True, timeout=TIMEOUT,
                            env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert placement(result.stdout) == {"node1": ([0, 1], [0]), "node2": ([2, 3], [1])}, result.stdout
    assert_close(run_dir, one_node(job, "one_node_12", steps))


PREEMPT_STEPS = 300


@pytest.mark.parametrize("launcher,preemption", [("srun", "usr1"), ("mpirun", "usr1"), ("srun", "requeue")],
                         ids=["srun-usr1", "mpirun-usr1", "srun-scontrol-requeue"])
def test_batch_script_on_two_nodes_is_preempted_and_resumes(cluster, workspace, launcher, preemption):  # noqa: F811
    # Four ranks over the nodes' links step more slowly than two on one node: 300 steps
    # have outlasted the signal in every run so far.
    run_dir = preempt_and_resume(cluster, workspace, launcher, preemption, nodes=2, options=["--dist.tp=2"],
                                 steps=PREEMPT_STEPS)
    want = reference(workspace, 4, f"--train.steps={PREEMPT_STEPS}", "--dist.tp=2")
    got = losses(run_dir)
    assert sorted(got) == list(range(1, PREEMPT_STEPS + 1))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), f"step {step}"


# -- failures --------------------------------------------------------------------------------------

def last_step(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()), default=0)


def committed(run_dir):
    return sorted(int(p.name[5:]) for p in (Path(run_dir) / "checkpoints").glob("step_*")
                  if p.is_dir() and "." not in p.name and (p / "COMMITTED").exists())


def assert_checkpoints_intact(run_dir):
    steps = committed(run_dir)
    assert steps, "no checkpoint was committed"
    for step in steps:
        checkpoint = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
        result = subprocess.run([CKPT, "verify", checkpoint], capture_output=True, text=True, timeout=TIMEOUT,
                                env=ENV)
        assert result.returncode == 0, f"{checkpoint}: {result.stdout}{result.stderr}"
    latest = (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{steps[-1]:08d}", f"latest is {latest}, the newest committed step {steps[-1]}"
    return steps


def ftrain_pids(network, node):
    mine = []
    for pid in network.pids(node):
        try:
            if os.readlink(f"/proc/{pid}/exe") == str(FTRAIN):
                mine.append(pid)
        except OSError:
            pass
    return mine


def wait_until(condition, seconds, what):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


def start_srun(cluster, job, run_dir, steps, env=None, **overrides):
    log = open(Path(run_dir).with_suffix(".log"), "w")
    process = subprocess.Popen(["srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", "--cpus-per-task=1",
                                "--kill-on-bad-exit=1", FTRAIN, *options(job, run_dir, steps, **overrides)],
                               stdout=log, stderr=subprocess.STDOUT, env={**cluster.env, **(env or {})})
    log.close()
    return process


def bring_back(cluster, network, node):
    """The node reboots: its link up, its slurmd started again; Slurm returns it to
    service (ReturnToService=2) once it registers."""
    network.link(node, up=True)
    if not network.pids(node):
        cluster.start_slurmd([node])
    wait_until(lambda: node in cluster.idle(), 120, f"{node} to be idle again: {cluster.node_states()}")


@pytest.mark.parametrize("when", ["mid_step", "mid_checkpoint_write", "partition"])
def test_a_node_lost_ends_the_job_and_loses_no_checkpoint(cluster, network, job, when):
    run_dir = job["root"] / f"lost_{when}"
    every = 10
    env = {}
    if when == "mid_checkpoint_write":
        # Rank 2 (node2, block placement) stalls half-way through writing step 30's
        # checkpoint: the node dies while that checkpoint is being written.
        env["FTRAIN_TEST_FAULT"] = f"stall:2:{3 * every}"
    srun = start_srun(cluster, job, run_dir, 100000, env=env, **{"checkpoint.every": every, "run.step_timeout": 20})
    try:
        if when == "mid_checkpoint_write":
            staging = run_dir / "checkpoints" / f"step_{3 * every:08d}.tmp"
            wait_until(lambda: (staging / "rank_00002.h5").exists() and last_step(run_dir) > 3 * every, TIMEOUT,
                       "rank 2 writing the checkpoint of step 30")
        else:
            wait_until(lambda: last_step(run_dir) >= 3 * every + 5, TIMEOUT, "step 35")
        survivors = ftrain_pids(network, "node1")
        assert len(survivors) == 2
        failed_at = time.time()
        if when == "partition":
            network.link("node2", up=False)
        else:
            assert network.crash("node2"), f"processes left in node2: {network.pids('node2')}"
        wait_until(lambda: not ftrain_pids(network, "node1"), SURVIVE_S, "node1's ranks to end")
        ended_s = time.time() - failed_at
        if when == "partition":
            # The ranks on the far side of the partition end too (their watchdog).
            wait_until(lambda: not ftrain_pids(network, "node2"), SURVIVE_S, "node2's ranks to end")
        srun.wait(timeout=TIMEOUT)
    finally:
        if srun.poll() is None:
            srun.kill()
            srun.wait()
        bring_back(cluster, network, "node2")
    print(f"{when}: node1's ranks ended {ended_s:.1f} s after the failure")
    steps = assert_checkpoints_intact(run_dir)
    if when == "mid_checkpoint_write":
        assert steps == [every, 2 * every], steps
    else:
        assert steps[-1] >= 3 * every, steps
    log = Path(run_dir).with_suffix(".log").read_text(errors="replace")
    assert srun.returncode != 0, log
    # The next job on both nodes runs normally.
    after = job["root"] / f"after_{when}"
    result = cluster.slurm("srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", "--cpus-per-task=1", FTRAIN,
                           *options(job, after, 12), timeout=TIMEOUT)
    assert placement(result.stdout).keys() == set(NODES), result.stdout
    assert_close(after, one_node(job, "one_node_12", 12))


def test_after_a_node_loss_the_job_goes_on_with_fewer_nodes_and_back_and_resumes_exactly(cluster, network, job):
    """slurm/ftrain.sbatch on both nodes (--no-kill). node2 crashes; its ranks' peers end
    (watchdog), Slurm takes node2 out of the allocation, and the script launches ftrain
    again on node1 alone (2 ranks: tp 2 x dp 1 instead of dp 2), which resumes from the
    last committed checkpoint, resharded. Pre-empted there, the job requeues itself and
    waits for node2; node2 comes back and the job resumes on both nodes. Losses,
    gradient norms and sample rows equal an uninterrupted run's. Bounded by the waits
    below (about 3 min)."""
    # Steps enough that the job is still running on node1 when node2 is back (about
    # 20 steps/s on this machine).
    steps, every = 1000, 50
    run_dir = job["root"] / "requeued"
    config = job["root"] / "requeued.ini"
    # The job's options as the INI file the batch script takes.
    sections = {}
    for arg in options(job, run_dir, steps, **{"checkpoint.every": every, "run.log_samples": "true",
                                                "run.step_timeout": 20}):
        key, value = arg[2:].split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append(f"{name} = {value}")
    config.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    log = job["root"] / "requeued-%j.log"
    submitted = cluster.slurm("sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                              "--gpus-per-task=0", "--time=10", f"--output={log}",
                              HERE.parent.parent / "slurm/ftrain.sbatch", config, cwd=job["root"],
                              env={"FTRAIN": str(FTRAIN), "LAUNCHER": "srun"})
    job_id = submitted.stdout.strip().split(";")[0]
    log = Path(str(log).replace("%j", job_id))
    state = lambda: cluster.job(job_id)  # noqa: E731
    try:
        wait_until(lambda: last_step(run_dir) >= 2 * every + 5, TIMEOUT, "step 105")
        assert state()["NumNodes"] == "2", state()
        assert network.crash("node2")
        # The survivors' watchdog (20 s), Slurm's SlurmdTimeout (20 s), then the relaunch.
        wait_until(lambda: "relaunch:" in log.read_text(), 180, f"the relaunch on node1: {tail(log, 30)}")
        down_at = time.time()
        assert state()["NodeList"] == "node1", state()
        resumed_at = committed(run_dir)[-1]
        wait_until(lambda: log.read_text().count("resumed from") == 1, TIMEOUT, "the job to resume on node1")
        # Pre-empted on node1 (as before a time limit), the job saves and the script
        # requeues it; it then waits for both nodes (--nodes=2).
        cluster.slurm("scancel", "--signal=USR1", "--batch", job_id)
        wait_until(lambda: state()["Restarts"] == "1", TIMEOUT, f"the requeue: {tail(log, 30)}")
        # node2 returns as a rebooted node would, over a minute after it was found down.
        # (Sooner, the requeued job's first step was cancelled about 60 s after node2
        # was marked down: it seems slurmctld's retried kill of the step that lost node2,
        # whose job and step ids the new step shares; docs/multi-node.md.)
        time.sleep(max(0.0, down_at + 75 - time.time()))
        bring_back(cluster, network, "node2")
        wait_until(lambda: state()["JobState"] == "COMPLETED", TIMEOUT, f"the job to end: {state()} {tail(log, 30)}")
    finally:
        cluster.slurm("scancel", job_id, check=False)
    text = log.read_text()
    final = state()
    assert final["JobState"] == "COMPLETED", f"{final}\n{text}"
    starts = re.findall(r"(\d+) ranks on (\d+) node\(s\)", text)
    assert starts == [("4", "2"), ("2", "1"), ("4", "2")], text
    resumes = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]
    assert len(resumes) == 2 and resumes[0] == resumed_at, text
    reference_dir = one_node(job, "one_node_requeued", steps, **{"run.log_samples": "true"})
    assert_close(run_dir, reference_dir)
    # The data position is exact: each step trained on the uninterrupted run's rows,
    # and within an epoch no row twice.
    got, want = sample_rows(run_dir), sample_rows(reference_dir)
    assert sorted(got) == list(range(1, steps + 1))
    assert got == want


def test_a_slow_node_slows_the_job_which_still_completes(cluster, network, job):
    steps = 15
    normal = job["root"] / "not_slowed"
    cluster.slurm("srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", "--cpus-per-task=1", FTRAIN,
                  *options(job, normal, steps), timeout=TIMEOUT)
    slowed = job["root"] / "slowed"
    applied = network.slow("node2")
    try:
        cluster.slurm("srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", "--cpus-per-task=1", FTRAIN,
                      *options(job, slowed, steps), timeout=TIMEOUT)
    finally:
        network.slow("node2", on=False)
    assert_close(slowed, normal)

    def median_step_s(run_dir):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["step_time_s"] for r in records if "step_time_s" in r and r["step"] > 1)
    fast, slow = median_step_s(normal), median_step_s(slowed)
    print(f"slow node ({applied}): median step {fast * 1e3:.1f} ms -> {slow * 1e3:.1f} ms ({slow / fast:.1f}x)")
    assert slow > 2 * fast, (fast, slow)
