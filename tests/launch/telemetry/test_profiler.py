"""run.profile_from traces the steps asked for with the PyTorch profiler, on every rank,
without changing the training; rank 0 prints where the time went."""
import json

import pytest

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/launch: ftrain_jobs
from ftrain_jobs import losses, run_ftrain, tiny_gpt2_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_gpt2_workspace(tmp_path_factory.mktemp("profiler"))


def args(ws, run_dir, **overrides):
    options = {"run.dir": run_dir, "model.path": ws["model"], "model.init": "pretrained", "data.path": ws["data"],
               "data.micro_batch_size": 2, "train.global_batch_size": 8, "train.steps": 6, "train.eval_every": 0,
               "train.eval_samples": 8, "optim.warmup_steps": 1, "checkpoint.every": 0, "checkpoint.at_end": "false",
               "checkpoint.export_hf": "false"}
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def traced_steps(trace_file):
    trace = json.loads(trace_file.read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    return sorted(name for name in names if name.startswith("ftrain step ")), names


def test_the_window_traces_its_steps_on_every_rank_and_changes_nothing(workspace):
    plain = workspace["root"] / "plain"
    run_ftrain(2, *args(workspace, plain))
    traced = workspace["root"] / "traced"
    result = run_ftrain(2, *args(workspace, traced, **{"run.profile_from": 3, "run.profile_steps": 2}))
    assert losses(traced) == losses(plain)
    assert not (plain / "profile").exists(), "no trace without the option"
    for rank in (0, 1):
        steps, names = traced_steps(traced / f"profile/rank_{rank:05d}_steps_3-4.json")
        assert steps == ["ftrain step 3", "ftrain step 4"], f"rank {rank}"
        assert "aten::mm" in names and any(name.startswith("autograd::engine") for name in names), f"rank {rank}"
    # Rank 0 alone reports: the window, the wall time per step, and the busiest operators.
    assert result.stdout.count("ftrain: profiled steps 3-4; trace in") == 1
    assert "ms wall" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().split()[-1:] == ["aten::mm"]]
    assert len(rows) == 1 and float(rows[0][0]) > 0, result.stdout


def test_a_window_past_the_last_step_closes_at_the_end(workspace):
    run_dir = workspace["root"] / "late"
    result = run_ftrain(1, *args(workspace, run_dir, **{"run.profile_from": 5, "run.profile_steps": 10}))
    steps, _ = traced_steps(run_dir / "profile/rank_00000_steps_5-6.json")
    assert steps == ["ftrain step 5", "ftrain step 6"]
    assert "ftrain: profiled steps 5-6" in result.stdout


def test_a_stopped_run_writes_its_part_and_a_resumed_run_traces_the_rest(workspace):
    run_dir = workspace["root"] / "resumed"
    window = {"run.profile_from": 2, "run.profile_steps": 4, "checkpoint.every": 3}
    first = run_ftrain(1, *args(workspace, run_dir, **window, **{"run.exit_after_steps": 3}))
    steps, _ = traced_steps(run_dir / "profile/rank_00000_steps_2-3.json")
    assert steps == ["ftrain step 2", "ftrain step 3"]
    assert "ftrain: profiled steps 2-3" in first.stdout
    # Resumed after step 3: the window's steps 4 and 5 remain; the first part's trace stays.
    second = run_ftrain(1, *args(workspace, run_dir, **window), "--resume")
    steps, _ = traced_steps(run_dir / "profile/rank_00000_steps_4-5.json")
    assert steps == ["ftrain step 4", "ftrain step 5"]
    assert sorted(p.name for p in (run_dir / "profile").iterdir()) == ["rank_00000_steps_2-3.json",
                                                                      "rank_00000_steps_4-5.json"]
    assert "ftrain: profiled steps 4-5" in second.stdout
