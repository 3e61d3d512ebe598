"""Rank 0's TensorBoard event files (run.tensorboard), read back with the tensorboard
package's own reader, which checks the framing's CRCs: every scalar equals the value
metrics.jsonl holds for the same step, to float32 (the type of TensorBoard's scalars)."""
import numpy as np
import pytest

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/launch: ftrain_jobs
from ftrain_jobs import as_options, records, run_ftrain, tiny_gpt2_workspace

STEPS = 12
EVAL_EVERY = 4


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    return tiny_gpt2_workspace(root)


def options(ws, run_dir, **overrides):
    values = {
        "run.dir": run_dir, "model.path": ws["model"], "data.path": ws["data"], "data.micro_batch_size": 2,
        "train.global_batch_size": 4, "train.steps": STEPS, "train.eval_every": EVAL_EVERY,
        "train.eval_samples": 16, "optim.lr": 1e-3, "optim.warmup_steps": 2, "checkpoint.export_hf": "false",
    }
    values.update(overrides)
    return as_options(values)


def scalars(run_dir):
    """{tag: {step: value}} from every event file of the run, as TensorBoard loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    out = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        out[tag] = {event.step: event.value for event in events}
        assert len(out[tag]) == len(events), f"{tag}: a step written twice"
    return out


def as_float32(value):
    return float(np.float32(value))


def check_against_metrics(run_dir):
    logged = scalars(run_dir)
    steps = [r for r in records(run_dir) if "loss" in r]
    validations = [r for r in records(run_dir) if "val_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [r["step"] for r in validations] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "step_time_s"):
        assert logged[f"train/{key}"] == {r["step"]: as_float32(r[key]) for r in steps}, key
    for key in ("loss", "perplexity"):
        assert logged[f"validation/{key}"] == {r["step"]: as_float32(r[f"val_{key}"]) for r in validations}, key

    # One memory record per process: at the first step it runs.
    memory = [r for r in records(run_dir) if "memory" in r]
    assert memory, "metrics.jsonl has a memory record"
    for rank in (0, 1):
        for kind in ("parameter_bytes", "gradient_bytes", "optimizer_bytes"):
            tag = f"memory/rank{rank}/{kind}"
            assert logged[tag] == {r["step"]: as_float32(r["memory"][rank][kind]) for r in memory}, tag
            assert all(value > 0 for value in logged[tag].values()), tag
    assert {tag.split("/")[1] for tag in logged if tag.startswith("memory/")} == {"rank0", "rank1"}

    # Each phase's measured peak resident set, per rank, at the step its record was written.
    phases = [r for r in records(run_dir) if "memory_phases" in r]
    assert phases, "metrics.jsonl has a record of the memory phases"
    for record in phases:
        for peak in record["memory_phases"]:
            tag = f"memory/rank{peak['rank']}/{peak['phase']}/host_peak_bytes"
            assert logged[tag][record["step"]] == as_float32(peak["host_peak_bytes"]), tag
            assert peak["host_peak_bytes"] >= peak["host_start_bytes"] > 0, peak
            if peak["phase"] == "train":
                # Entered when training resumes after an evaluation or a save, not at
                # every step: entering a phase trims the heap the steps reuse.
                assert peak["entries"] < STEPS - 1, peak
    return logged


def test_two_rank_run_writes_every_metric_to_tensorboard(workspace):
    run_dir = workspace["root"] / "run"
    run_ftrain(2, *options(workspace, run_dir))
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    check_against_metrics(run_dir)


def test_a_resumed_run_adds_an_event_file_and_continues_the_curves(workspace):
    run_dir = workspace["root"] / "resumed"
    run_ftrain(2, *options(workspace, run_dir, **{"run.exit_after_steps": 6}))
    run_ftrain(2, *options(workspace, run_dir, **{"run.resume": "auto"}))
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2, files
    check_against_metrics(run_dir)


def test_off_writes_no_event_files(workspace):
    run_dir = workspace["root"] / "off"
    run_ftrain(2, *options(workspace, run_dir, **{"run.tensorboard": "false", "train.steps": 2,
                                                  "train.eval_every": 0}))
    assert (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "tensorboard").exists()
