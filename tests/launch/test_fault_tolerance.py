"""Fault injection: jobs that lose a rank, die while writing a checkpoint, find their
newest checkpoint torn or corrupt, or run out of disk. For each: the job ends promptly
(no hang), the checkpoints committed before are intact, and the resumed run matches the
uninterrupted one to the last bit (same layout, CPU, fp32).

Checkpoint writes are made to fail or stall with FTRAIN_TEST_FAULT=<enospc|stall>:<rank>:<step>
(launch/checkpoint/store.h); a real full filesystem is a small tmpfs where mounting one is
allowed."""
import json
import os
import random
import shutil
import signal
import subprocess
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftrain_jobs import BUILD, ENV, FTRAIN, TIMEOUT, command, losses, prepare_corpus, tiny_gpt2

CKPT = BUILD / "ftrain-ckpt"
STEPS = 120
EVERY = 20
RANKS = 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = prepare_corpus(root, 400)
    model = tiny_gpt2(root / "model")
    ws = {"root": root, "data": data, "model": model}
    reference = root / "uninterrupted"
    run(ws, reference)
    ws["reference"] = reference
    ws["reference_losses"] = losses(reference)
    assert sorted(ws["reference_losses"]) == list(range(1, STEPS + 1))
    return ws


def args(ws, run_dir, **overrides):
    options = {
        "run.dir": run_dir, "model.path": ws["model"], "model.dropout": 0.1, "data.path": ws["data"],
        "data.micro_batch_size": 2, "train.global_batch_size": 4, "train.steps": STEPS, "train.eval_every": 0,
        "optim.lr": 1e-3, "optim.warmup_steps": 2, "checkpoint.every": EVERY, "checkpoint.keep": 10,
        "checkpoint.export_hf": "false", "checkpoint.keep_best": "false",
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def run(ws, run_dir, env=None, check=True, **overrides):
    result = subprocess.run(command(RANKS, *args(ws, run_dir, **overrides)), capture_output=True, text=True,
                            timeout=TIMEOUT, env=env or ENV)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def start(ws, run_dir, env=None, **overrides):
    return subprocess.Popen(command(RANKS, *args(ws, run_dir, **overrides)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or ENV)


def last_step(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()), default=0)


def wait_for(job, condition, what):
    deadline = time.time() + TIMEOUT
    while not condition():
        assert job.poll() is None, f"the job ended before {what}: {job.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def rank_pids(job):
    """{rank: pid} of the ftrain processes mpirun started."""
    found = subprocess.run(["pgrep", "-P", str(job.pid), "-f", str(FTRAIN)], capture_output=True, text=True)
    pids = [int(pid) for pid in found.stdout.split()]
    ranks = {}
    for pid in pids:
        environ = open(f"/proc/{pid}/environ", "rb").read()
        ranks[int(environ.split(b"OMPI_COMM_WORLD_RANK=")[1].split(b"\0")[0])] = pid
    assert len(ranks) == RANKS, found.stdout
    return ranks


def finish_promptly(job, since, limit=60):
    try:
        stdout, stderr = job.communicate(timeout=limit)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert time.time() - since < limit, "the job should end within seconds of the failure"
    return stdout, stderr


def committed_steps(run_dir):
    return sorted(int(p.name[5:]) for p in (Path(run_dir) / "checkpoints").glob("step_*")
                  if p.is_dir() and "." not in p.name and (p / "COMMITTED").exists())


def verify(checkpoint):
    return subprocess.run([CKPT, "verify", checkpoint], capture_output=True, text=True, timeout=TIMEOUT, env=ENV)


def assert_intact(run_dir, steps):
    for step in steps:
        checkpoint = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
        result = verify(checkpoint)
        assert result.returncode == 0, f"{checkpoint}: {result.stdout}{result.stderr}"


def resume_and_compare(ws, run_dir, expected_from):
    result = run(ws, run_dir, **{"run.resume": "auto"})
    assert f"at step {expected_from}" in result.stdout, result.stdout + result.stderr
    assert losses(run_dir) == ws["reference_losses"]
    return result


def test_checkpoints_read_with_h5py_alone(workspace):
    """state.h5 shows every tensor in its global shape (virtual datasets over the rank
    files); each piece's block_crc32 in the manifest is zlib.crc32 of each block_bytes
    block of its bytes."""
    checkpoint = workspace["reference"] / "checkpoints" / f"step_{STEPS:08d}"
    with h5py.File(checkpoint / "state.h5", "r") as index:
        meta = json.loads(index["meta"][()])
        manifest = json.loads(index["manifest"][()])
        assert meta["step"] == STEPS and meta["layout"]["world_size"] == RANKS
        files = {path.name for path in checkpoint.glob("rank_*.h5")}
        assert files == {f"rank_{r:05d}.h5" for r in range(RANKS)}, "each rank wrote its own file"
        names = [t["name"] for t in manifest["tensors"]]
        assert any(n.startswith("optim/exp_avg_sq/") for n in names)
        writers = set()
        for tensor in manifest["tensors"]:
            whole = index[tensor["name"]][...]
            assert list(whole.shape) == tensor["shape"]
            assembled = np.zeros_like(whole)
            for piece in tensor["pieces"]:
                writers.add(piece["file"])
                with h5py.File(checkpoint / piece["file"], "r") as rank_file:
                    values = rank_file[piece["dataset"]][...]
                raw, block = values.tobytes(), manifest["block_bytes"]
                assert [zlib.crc32(raw[at:at + block]) for at in range(0, len(raw), block)] == piece["block_crc32"]
                box = tuple(slice(o, o + s) for o, s in zip(piece["offset"], piece["shape"]))
                assembled[box] = values
            np.testing.assert_array_equal(assembled, whole)
        assert writers == files, "both ranks share the writing of replicated tensors"
    # The weights are those of the run: the token embedding of the final export.
    with h5py.File(checkpoint / "state.h5", "r") as index:
        wte = index["model/transformer.wte.weight"][...]
    assert wte.shape == (1024, 32)


def test_kill_9_of_a_rank_mid_step_ends_the_job_and_resumes_exactly(workspace):
    run_dir = workspace["root"] / "killed"
    job = start(workspace, run_dir)
    wait_for(job, lambda: last_step(run_dir) >= 2 * EVERY + 7, "step 47")
    victim = random.Random(0).randrange(RANKS)
    killed_at = time.time()
    os.kill(rank_pids(job)[victim], signal.SIGKILL)
    stdout, stderr = finish_promptly(job, killed_at)
    assert job.returncode != 0
    # mpirun names the rank that died.
    assert f"rank {victim}" in stdout + stderr and "signal 9" in stdout + stderr, stdout + stderr
    saved = committed_steps(run_dir)
    assert saved[:2] == [EVERY, 2 * EVERY], saved
    assert_intact(run_dir, saved)
    other_layout = workspace["root"] / "killed_resumed_zero3"
    shutil.copytree(run_dir, other_layout)
    resume_and_compare(workspace, run_dir, saved[-1])

    # Onto another layout (ZeRO-3: parameters and moments sharded, same data-parallel
    # ranks, so the same dropout masks): equal within float rounding.
    resumed = run(workspace, other_layout, **{"run.resume": "auto", "dist.zero": 3})
    assert f"at step {saved[-1]}" in resumed.stdout
    got = losses(other_layout)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(saved[-1] + 1, STEPS + 1):
        assert got[step] == pytest.approx(workspace["reference_losses"][step], rel=1e-5), f"step {step}"


def test_kill_during_a_checkpoint_write_leaves_it_uncommitted(workspace):
    """Rank 1 stalls half-way through writing the checkpoint of step 40 and is killed
    there: that checkpoint never existed, the one before is used."""
    run_dir = workspace["root"] / "killed_writing"
    env = {**ENV, "FTRAIN_TEST_FAULT": f"stall:1:{2 * EVERY}"}
    job = start(workspace, run_dir, env=env, **{"run.step_timeout": 600})
    staging = run_dir / "checkpoints" / f"step_{2 * EVERY:08d}.tmp"
    wait_for(job, lambda: (staging / "rank_00001.h5").exists() and last_step(run_dir) > 2 * EVERY,
             "rank 1 writing the checkpoint of step 40")
    killed_at = time.time()
    os.kill(rank_pids(job)[1], signal.SIGKILL)
    finish_promptly(job, killed_at)
    assert job.returncode != 0
    assert committed_steps(run_dir) == [EVERY]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{EVERY:08d}"
    assert_intact(run_dir, [EVERY])
    resume_and_compare(workspace, run_dir, EVERY)
    assert not staging.exists(), "the resumed run replaced the half-written directory"


@pytest.mark.parametrize("damage", ["flipped_bit", "truncated"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(workspace, damage):
    run_dir = workspace["root"] / f"damaged_{damage}"
    shutil.copytree(workspace["reference"], run_dir)
    newest = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    target = newest / "rank_00001.h5"
    if damage == "flipped_bit":
        # Inside a tensor's bytes, not HDF5's own metadata: the largest piece's data.
        with h5py.File(target, "r") as rank_file:
            pieces = []
            rank_file.visititems(lambda name, obj: pieces.append((obj.id.get_storage_size(), obj.id.get_offset(), name))
                                 if isinstance(obj, h5py.Dataset) else None)
        size, offset, name = max(pieces)
        with open(target, "r+b") as f:
            f.seek(offset + size // 2)
            byte = f.read(1)
            f.seek(offset + size // 2)
            f.write(bytes([byte[0] ^ 0x10]))
    else:
        os.truncate(target, target.stat().st_size // 2)
    problem = verify(newest)
    assert problem.returncode == 1 and "rank_00001.h5" in problem.stdout + problem.stderr, problem.stdout + problem.stderr
    # Resuming at the last step, the run has no steps left: keep the steps where they were
    # by asking for the same total, and the previous checkpoint is used.
    result = resume_and_compare(workspace, run_dir, STEPS - EVERY)
    assert "skipping checkpoint" in result.stderr and "rank_00001.h5" in result.stderr, result.stderr
    assert (run_dir / "checkpoints" / f"step_{STEPS:08d}.stale").is_dir(), "the damaged one is set aside, not deleted"


def test_a_failed_checkpoint_write_ends_the_job_naming_the_rank(workspace):
    run_dir = workspace["root"] / "enospc"
    env = {**ENV, "FTRAIN_TEST_FAULT": f"enospc:1:{2 * EVERY}"}
    began = time.time()
    result = run(workspace, run_dir, env=env, check=False)
    assert result.returncode != 0
    assert time.time() - began < TIMEOUT
    assert "rank 1" in result.stderr and "No space left on device" in result.stderr, result.stderr
    assert committed_steps(run_dir) == [EVERY]
    assert not (run_dir / "checkpoints" / f"step_{2 * EVERY:08d}.tmp").exists(), "the failed save is cleaned up"
    assert_intact(run_dir, [EVERY])
    resume_and_compare(workspace, run_dir, EVERY)


def test_a_full_filesystem(workspace, tmp_path):
    """A real ENOSPC: the run directory on a tmpfs with room for two checkpoints."""
    mount = tmp_path / "small"
    mount.mkdir()
    one_checkpoint = sum(p.stat().st_size for p in (workspace["reference"] / "checkpoints" / f"step_{EVERY:08d}").iterdir())
    size_kib = (2 * one_checkpoint + one_checkpoint // 2) // 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
                    "test_a_failed_checkpoint_write_ends_the_job_naming_the_rank covers ENOSPC by injection")
    try:
        run_dir = mount / "run"
        result = run(workspace, run_dir, check=False)
        assert result.returncode != 0
        assert "No space left on device" in result.stderr or "disk full" in result.stderr, result.stderr
        saved = committed_steps(run_dir)
        assert saved == [EVERY, 2 * EVERY], saved
        assert_intact(run_dir, saved)
        # Which write meets the full disk first is a race: the save's (then it fails on
        # every rank and rank 0 removes its staging directory) or another file's, such as
        # metrics.jsonl appended while the save is in flight (then the job ends at once
        # and the next save removes the directory; it is never taken for a checkpoint).
        staged = list((run_dir / "checkpoints").glob("*.tmp"))
        if "of step" in result.stderr and "failed on" in result.stderr:
            assert not staged, f"the failed save is cleaned up:\n{result.stderr}"
        moved = tmp_path / "moved"
        shutil.copytree(run_dir, moved)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    resume_and_compare(workspace, moved, 2 * EVERY)
    assert not list((moved / "checkpoints").glob("*.tmp")), "the next save removes what a dead job staged"
