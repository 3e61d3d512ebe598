"""ftrain-sweep and its analytic model (docs/scaling.md): a tiny sweep on this machine
completes and is reported; the model's communication bytes per step and training-state
bytes per rank equal what ftrain counted in every run (dist::CommStats and the
memory record are bookkeeping, not measurements); the model's formulas against
values worked out by hand; the Slurm launcher against a stand-in cluster (and a real
one when one answers)."""
import csv
import json
import math
import os
import shutil
import stat
import subprocess
import sys

import pytest

from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/launch: ftrain_jobs
from ftrain_jobs import BUILD, ENV, SOURCE, records

sys.path.insert(0, str(SOURCE / "launch" / "tools"))
import scaling_model as sm  # noqa: E402

SWEEP = BUILD / "ftrain-sweep"
STEPS = 8
MICRO_BATCH = 2
SEQ_LEN = 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_sweep(*arguments, env=ENV, timeout=600):
    result = subprocess.run([str(SWEEP), *map(str, arguments)], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"ftrain-sweep {' '.join(map(str, arguments))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def spec(root, name, **changes):
    """A tiny GPT-2 sweep spec: 1 and 2 ranks, ZeRO 0 and 2, tp 2; weak and strong."""
    values = {
        "name": name, "base_config": "configs/tiny-gpt2.ini",
        "overrides": {"run.threads": 1, "train.eval_every": 0, "train.eval_samples": 8, "train.log_every": 1000,
                      "optim.warmup_steps": 2, "checkpoint.every": 0, "checkpoint.at_end": False,
                      "checkpoint.export_hf": False},
        "data": {"path": str(root / "data.h5")},
        "models": [{"name": "tiny-gpt2", "path": "configs/models/tiny-gpt2"}],
        "ranks": [1, 2], "tp": [1, 2], "zero": [0, 2], "scaling": ["weak", "strong"],
        "micro_batch_size": MICRO_BATCH, "batch_per_replica": 4, "global_batch_size": 4, "steps": STEPS,
        "timing_warmup_steps": 2, "mpirun": {"args": ["--oversubscribe", "--bind-to", "none"]},
    }
    values.update(changes)
    path = root / f"{name}.json"
    path.write_text(json.dumps(values, indent=1))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    from ftrain_jobs import prepare_corpus
    prepare_corpus(root, 300)  # root/data.h5, 32-token rows
    return root


@pytest.fixture(scope="module")
def sweep(workspace):
    out = workspace / "local"
    run_sweep("run", spec(workspace, "local"), "--out", out)
    return out


def test_layouts_that_cannot_run_are_named_and_left_out(workspace):
    import ftrain_sweep
    runs, series, skipped = ftrain_sweep.plan_runs(ftrain_sweep.load_spec(spec(workspace, "plan")))
    assert sorted((r.ranks, r.tp, r.zero, r.global_batch_size) for r in runs) == [
        (1, 1, 0, 4), (2, 1, 0, 4), (2, 1, 0, 8), (2, 1, 2, 4), (2, 1, 2, 8), (2, 2, 0, 4)]
    # One rank is the baseline of both series; tp 2 uses one replica, so weak = strong.
    assert series["tiny-gpt2_r1_tp1_z0_gb4"] == ["weak", "strong"]
    assert series["tiny-gpt2_r2_tp1_z0_gb8"] == ["weak"]
    assert any("tp does not divide" in reason for reason in skipped)
    assert any("ZeRO shards over data-parallel ranks" in reason for reason in skipped)


def test_an_unknown_spec_key_is_refused(workspace):
    path = workspace / "typo.json"
    path.write_text(json.dumps({"base_config": "configs/tiny-gpt2.ini", "models": [{"name": "m", "path": "x"}],
                                "rank": [1]}))
    result = subprocess.run([str(SWEEP), "run", path, "--out", workspace / "typo"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "rank" in result.stderr and str(path) in result.stderr


def test_sweep_completes_and_writes_its_report(sweep):
    rows = list(csv.DictReader(open(sweep / "sweep.csv")))
    assert len(rows) == 8  # 6 runs; the one-rank and the tp-2 runs belong to both series
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["scaling"] for r in rows} == {"weak", "strong"}
    for r in rows:
        assert float(r["tokens_per_s_per_rank"]) > 0 and float(r["step_time_s"]) > 0
        assert r["memory_matches"] == "True"
        if r["ranks"] == "1":
            assert float(r["efficiency"]) == 1.0
    markdown = (sweep / "sweep.md").read_text()
    hardware = json.loads((sweep / "sweep.json").read_text())["hardware"]
    assert "cores" in hardware and hardware in markdown
    assert markdown.count("| tiny-gpt2 |") == 8
    for plot in ("throughput.png", "efficiency.png", "memory.png"):
        assert (sweep / plot).read_bytes()[:8] == PNG_MAGIC, plot


def test_repeats_are_run_round_robin_and_pooled(workspace):
    # Two repeats of one layout: two run directories, one row whose medians are over
    # the timed steps of both.
    out = workspace / "repeats"
    run_sweep("run", spec(workspace, "repeats", ranks=[1], tp=[1], zero=[0], scaling=["weak"], repeats=2),
              "--out", out)
    assert sorted(d.name for d in (out / "runs").iterdir()) == ["tiny-gpt2_r1_tp1_z0_gb4",
                                                                 "tiny-gpt2_r1_tp1_z0_gb4.rep1"]
    [row] = list(csv.DictReader(open(out / "sweep.csv")))
    assert row["status"] == "ok" and row["repeats"] == "2" and row["steps_timed"] == str(2 * (STEPS - 2))
    assert "of 2 repeats of each run" in (out / "sweep.md").read_text()


def layout_of_run(run_dir):
    """The run's layout as the test reads it from ftrain's resolved configuration."""
    import configparser
    config = configparser.ConfigParser()
    config.read(run_dir / "config.ini")
    memory = next(r["memory"] for r in records(run_dir) if "memory" in r)
    return sm.Layout(ranks=len(memory), tp=config.getint("dist", "tp"), zero=config.getint("dist", "zero"),
                     micro_batch_size=config.getint("data", "micro_batch_size"),
                     global_batch_size=config.getint("train", "global_batch_size"), seq_len=SEQ_LEN), memory


def tiny_gpt2():
    return sm.shape_from_config(json.loads((SOURCE / "configs/models/tiny-gpt2/config.json").read_text()))


def test_predicted_comm_bytes_equal_counted(sweep):
    # Every step of every run sends exactly what the model says: bucketed all-reduce,
    # ZeRO's reduce-scatter and all-gather of the padded flat space, tensor-parallel
    # activations, and the step's scalars.
    run_dirs = sorted((sweep / "runs").iterdir())
    assert len(run_dirs) == 6
    for run_dir in run_dirs:
        layout, _ = layout_of_run(run_dir)
        steps = [r for r in records(run_dir) if "comm_bytes" in r]
        assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
        expected = sm.comm_bytes_per_step(tiny_gpt2(), layout)
        assert (expected > 0) == (layout.ranks > 1)
        for record in steps:
            assert record["comm_bytes"] == pytest.approx(expected, rel=1e-12, abs=1e-6), (run_dir.name, record)


def test_comm_bytes_follow_the_documented_formulas():
    # docs/training.md's table, written out for the tiny GPT-2 (psi = 173824): data
    # parallel and ZeRO-1 send 2 psi (N-1)/N elements, ZeRO-2 k psi + psi (N-1)/N with k
    # micro-batches, ZeRO-3 per micro-batch 3 (psi_blocks + psi_input) + 2 psi_root +
    # 5 psi_vocabulary (N-1)/N (the tied embedding streams by rows: three passes of
    # all-gathers, two of reduce-scatters, in windows no larger than a block),
    # tensor parallelism 2 (T-1)/T ((4L+2) B S C + 3 B (S-1)); plus 8-byte scalars.
    shape = tiny_gpt2()
    psi = 173824
    assert sm.parameter_count(shape) == psi
    layout = sm.Layout(ranks=2, zero=0, micro_batch_size=2, global_batch_size=4, seq_len=32)
    assert sm.comm_bytes_per_step(shape, layout) == 2 * psi * 0.5 * 4 + 2 * 8 * 0.5 * 2
    tp = sm.Layout(ranks=2, tp=2, micro_batch_size=2, global_batch_size=4, seq_len=32)
    per_micro_batch = (4 * 2 + 2) * 2 * 32 * 64 + 3 * 2 * 31
    assert sm.comm_bytes_per_step(shape, tp) == 2 * per_micro_batch * 2 * 0.5 * 4 + 2 * 0.5 * 8
    root, blocks = sm.parameter_units(shape)
    assert root == 1024 * 64 + 128 * 64 + 2 * 64 and blocks == [49984, 49984]
    zero3 = sm.Layout(ranks=4, zero=3, micro_batch_size=1, global_batch_size=8, seq_len=32)
    padded_root = -(-root // 4) * 4
    positions, norm = 128 * 64, 2 * 64
    assert sm.zero3_units(shape) == sm.Zero3Units(positions, norm, blocks, [(1024, 64)])
    # Its windows are at most a quarter of a block's bytes (49984 x 4 / 4): 256 rows a
    # rank in 6 windows of 43, so the matrix is padded to 4 x 6 x 43 rows.
    assert sm.stream_windows(1024, 64, 4, 49984) == (6, 43)
    vocabulary = 4 * 6 * 43 * 64
    # A vocabulary of 50257 x 4096 fp32 over 8 ranks: 6283 rows a rank, 785 MiB in all,
    # in 13 windows of at most 64 MiB (484 rows of every rank's, the last one 475).
    assert sm.stream_windows(50257, 4096, 8) == (13, 484)
    per_micro_batch = 3 * (sum(blocks) + positions) + 2 * norm + 5 * vocabulary
    expected = 2 * per_micro_batch * 0.75 * 4 + 3 * 2 * 0.75 * 8
    assert sm.comm_bytes_per_step(shape, zero3) == pytest.approx(expected, rel=1e-12)
    # ZeRO-1 and ZeRO-2 alike with one micro-batch; with two ZeRO-2 reduce-scatters
    # twice. Each unit is padded alone.
    psi_pad = padded_root + sum(-(-b // 4) * 4 for b in blocks)
    for micro_batches in (1, 2):
        zero2 = sm.Layout(ranks=4, zero=2, micro_batch_size=1, global_batch_size=4 * micro_batches, seq_len=32)
        expected = (micro_batches + 1) * psi_pad * 0.75 * 4 + 3 * 2 * 0.75 * 8
        assert sm.comm_bytes_per_step(shape, zero2) == pytest.approx(expected, rel=1e-12)
    zero1 = sm.Layout(ranks=4, zero=1, micro_batch_size=1, global_batch_size=8, seq_len=32)
    assert sm.comm_bytes_per_step(shape, zero1) == pytest.approx(2 * psi_pad * 0.75 * 4 + 3 * 2 * 0.75 * 8,
                                                                 rel=1e-12)


def test_predicted_memory_equals_the_memory_record(sweep):
    # Parameters, gradients (with the buckets or ZeRO's buffers) and AdamW moments, per
    # rank, to the byte.
    for run_dir in sorted((sweep / "runs").iterdir()):
        layout, memory = layout_of_run(run_dir)
        assert len(memory) == layout.ranks
        for entry in memory:
            predicted = sm.training_state_bytes(tiny_gpt2(), layout, entry["rank"])
            assert predicted == {k: entry[k] for k in predicted}, (run_dir.name, entry)


def test_zero3_with_a_tied_vocabulary_streaming_by_rows(workspace):
    # The tiny GPT-2 at dp 4 under ZeRO-3, with two micro-batches a step: its tied
    # embedding streams by rows for the look-up and the head, its position embeddings
    # are the input unit. Bytes sent and the memory record are the model's.
    out = workspace / "zero3"
    run_sweep("run", spec(workspace, "zero3", ranks=[4], tp=[1], zero=[3], scaling=["strong"], global_batch_size=8,
                          micro_batch_size=1, steps=2, timing_warmup_steps=0), "--out", out)
    [run_dir] = sorted((out / "runs").iterdir())
    layout, memory = layout_of_run(run_dir)
    assert (layout.zero, layout.tp, layout.accumulation) == (3, 1, 2)
    steps = [r for r in records(run_dir) if "comm_bytes" in r]
    assert len(steps) == 2
    for record in steps:
        assert record["comm_bytes"] == pytest.approx(sm.comm_bytes_per_step(tiny_gpt2(), layout), rel=1e-12)
    for entry in memory:
        predicted = sm.training_state_bytes(tiny_gpt2(), layout, entry["rank"])
        assert predicted == {k: entry[k] for k in predicted}, (run_dir.name, entry)


def test_a_generated_llama_with_shared_key_value_heads(workspace):
    # A Llama of 4 query and 2 key/value heads, generated by the sweep: at tp 4 each
    # key/value head lives on 2 ranks, whose k/v gradients are summed in the backward
    # pass; at tp 2 x dp 2 ZeRO-3 shards what each tensor-parallel rank holds; at dp 4
    # its embedding and untied head stream by rows. The model's bytes and memory are
    # ftrain's in all three.
    out = workspace / "llama"
    model = {"name": "llama", "family": "llama", "width": 64, "depth": 2, "heads": 4, "kv_heads": 2,
             "intermediate": 128}
    run_sweep("run", spec(workspace, "llama", models=[model], ranks=[4], tp=[4], zero=[0], scaling=["strong"],
                          layouts=[{"ranks": 4, "tp": 2, "zero": 3}, {"ranks": 4, "tp": 1, "zero": 3}],
                          global_batch_size=2, micro_batch_size=1,
                          steps=2, timing_warmup_steps=0), "--out", out)
    shape = sm.shape_from_config(json.loads((out / "models/llama/config.json").read_text()))
    assert shape.kv_heads == 2 and not shape.tied
    for run_dir in sorted((out / "runs").iterdir()):
        layout, memory = layout_of_run(run_dir)
        for record in (r for r in records(run_dir) if "comm_bytes" in r):
            assert record["comm_bytes"] == pytest.approx(sm.comm_bytes_per_step(shape, layout), rel=1e-12)
        for entry in memory:
            predicted = sm.training_state_bytes(shape, layout, entry["rank"])
            assert predicted == {k: entry[k] for k in predicted}, (run_dir.name, entry)
    # tp 4, one micro-batch of 1 x 32 tokens: (4L+2) B S C + 3 B (S-1) activations and
    # loss values, plus per layer k and v gradients of 2 heads x 16 x 64 (a slot per
    # head), all over 4 ranks; and the gradient norm's scalar.
    tp4 = sm.Layout(ranks=4, tp=4, micro_batch_size=1, global_batch_size=2, seq_len=32)
    elements = (4 * 2 + 2) * 32 * 64 + 3 * 31 + 2 * 2 * 2 * 16 * 64
    assert sm.comm_bytes_per_step(shape, tp4) == pytest.approx(2 * (2 * 0.75 * elements * 4) + 2 * 0.75 * 8)


def test_memory_of_zero_on_uneven_shards():
    # ZeRO pads each unit (the root, each block) to a multiple of N at the end of its flat
    # space, so the last rank's optimizer holds fewer real elements: the root's 73856
    # over 3 ranks is 24619, 24619, 24618 and each block's 49984 is 16662, 16662, 16660.
    layout = sm.Layout(ranks=3, zero=1, micro_batch_size=1, global_batch_size=3, seq_len=32)
    moments = [sm.training_state_bytes(tiny_gpt2(), layout, rank)["optimizer_bytes"] for rank in range(3)]
    assert moments == [8 * (24619 + 2 * 16662), 8 * (24619 + 2 * 16662), 8 * (24618 + 2 * 16660)]
    padded = 3 * 24619 + 2 * 3 * 16662
    memory = sm.training_state_bytes(tiny_gpt2(), layout)
    assert memory["parameter_bytes"] == 4 * padded
    # Stage 1 keeps the full gradients; each rank's reduced shard lands in them.
    assert memory["gradient_bytes"] == 4 * padded


def test_flops_per_token_are_6N_plus_attention():
    # 6N for N = 1e9 matrix parameters, plus 12 L C S: 32 layers, width 4096, 2048 tokens.
    assert sm.flops_per_token(10**9, 32, 4096, 2048) == 6e9 + 12 * 32 * 4096 * 2048
    # Recomputation adds a forward: 8N + 16 L C S.
    assert sm.flops_per_token(10**9, 32, 4096, 2048, recompute=True) == 8e9 + 16 * 32 * 4096 * 2048
    # The tiny GPT-2's matrices: 2 blocks of 12 C^2 (C = 64) and the tied 1024 x 64 head.
    assert sm.matmul_parameters(tiny_gpt2()) == 2 * 12 * 64 * 64 + 1024 * 64


def test_ring_collective_times():
    # 1 GB over 8 ranks at 100 GB/s, 5 us a step: all-reduce 2 (7/8) 1e9 / 1e11 + 14 x 5e-6.
    assert sm.collective_time("all_reduce", 1e9, 8, 100e9, 5e-6) == pytest.approx(0.0175 + 7e-5, rel=1e-12)
    assert sm.collective_time("reduce_scatter", 1e9, 8, 100e9, 5e-6) == pytest.approx(0.00875 + 3.5e-5, rel=1e-12)
    assert sm.collective_time("all_gather", 1e9, 8, 100e9, 5e-6) == pytest.approx(0.00875 + 3.5e-5, rel=1e-12)
    assert sm.collective_time("all_reduce", 1e9, 1, 100e9, 5e-6) == 0


def test_calibration_recovers_the_machine_despite_a_slowed_run():
    # Steps of a sweep-like set of runs (two sizes, 1 or 2 micro-batches, dp and tp
    # traffic) made from 20 GFLOP/s, 5 ms per micro-batch, 0.5 GB/s and 80 us per ring
    # step; one run twice as slow (a busy machine) must not move the fit.
    truth = (1 / 20e9, 5e-3, 1 / 0.5e9, 80e-6)
    runs = [(1e9, 2, 0, 0), (4e9, 2, 0, 0), (1e9, 2, 1e6, 2), (1e9, 1, 1e6, 2), (4e9, 2, 4e6, 2), (4e9, 1, 4e6, 2),
            (1e9, 2, 3e6, 2), (1e9, 2, 2e6, 26), (4e9, 2, 8e6, 26), (2e9, 4, 1e6, 2)]
    points = [{"flops_per_rank": flops, "micro_batches": micro_batches, "comm_bytes": comm, "ring_steps": steps,
               "step_s": flops * truth[0] + micro_batches * truth[1] + comm * truth[2] + steps * truth[3]}
              for flops, micro_batches, comm, steps in runs]
    points[4]["step_s"] *= 2
    hardware = sm.calibrate(points, "synthetic")
    assert hardware.peak_flops * hardware.mfu == pytest.approx(20e9, rel=1e-3)
    assert hardware.micro_batch_overhead == pytest.approx(5e-3, rel=1e-3)
    assert hardware.intra_bandwidth == pytest.approx(0.5e9, rel=1e-3)
    assert hardware.intra_alpha == pytest.approx(80e-6, rel=1e-3)


def test_llama_parameter_counts_from_their_configs():
    spec = json.loads((SOURCE / "configs/sweeps/h100-llama.json").read_text())
    models = {m["name"]: sm.shape_from_config(m["config"]) for m in spec["models"]}
    # Llama-7B: 2 x 32000 x 4096 embeddings and head, 32 x (4 x 4096^2 + 3 x 4096 x 11008
    # + 2 x 4096), the final norm: 6,738,415,616 (the published 6.74e9).
    assert sm.parameter_count(models["Llama-7B"]) == 6738415616
    assert sm.parameter_count(models["Llama-7B"]) == pytest.approx(6.74e9, rel=1e-3)
    # Llama-2-70B with 8 key/value heads: 68,976,648,192.
    assert sm.parameter_count(models["Llama-70B"]) == 68976648192
    # Tensor parallelism of 8 splits every matrix; the norms stay whole on every rank.
    per_rank = sm.parameter_count(models["Llama-70B"], tp=8)
    norms = 80 * 2 * 8192 + 8192
    assert per_rank == (68976648192 - norms) // 8 + norms


def test_tiny_gpt2_parameter_count_matches_transformers():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config.from_pretrained(SOURCE / "configs/models/tiny-gpt2")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    assert sm.parameter_count(tiny_gpt2()) == sum(p.numel() for p in model.parameters())  # tied head counted once


def test_model_command_predicts_and_compares_with_the_sweep(sweep, workspace):
    out = workspace / "model"
    result = run_sweep("model", "--out", out, "--measured", sweep)
    assert "every run communicated and held what the model says" in result.stdout
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert {r["model"] for r in rows} == {"Llama-7B", "Llama-70B"}
    assert {int(r["gpus"]) for r in rows} == {8, 16, 32, 64, 128, 256, 512, 1024}
    for r in rows:
        assert 0 < float(r["efficiency"]) <= 1.0 + 1e-9 and 0 < float(r["achieved_mfu"]) < 1
    # 70B at tp 8, ZeRO-1, on one node: fp32 weights, gradients and moments do not fit.
    [one_node] = [r for r in rows if r["model"] == "Llama-70B" and r["gpus"] == "8" and r["zero"] == "1"
                  and r["scaling"] == "weak"]
    assert one_node["fits"] == "False"
    assert "Predicted, not measured" in (out / "predictions.md").read_text()
    compared = list(csv.DictReader(open(out / "measured_vs_predicted.csv")))
    assert len(compared) == 8 and all(c["comm_bytes_equal"] == "True" == c["memory_equal"] for c in compared)
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["flops_per_s_per_rank"] > 0 and "cores" in calibration["hardware"]
    for plot in ("predicted_scaling.png", "predicted_memory.png", "measured_vs_predicted.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC, plot


def test_predicted_step_time_is_compute_plus_exposed_communication():
    # Llama-7B, 16 GPUs (two nodes), ZeRO-1, one micro-batch of 4096 tokens per GPU:
    # compute 4096 x (6 N + 12 L C S) / (0.4 x 989e12). Per unit (the root: embeddings,
    # head and final norm; 32 blocks), a reduce-scatter (fp32) and an all-gather (fp32)
    # over the network at 50 GB/s, each 15 ring steps of 8 us. Without dist.overlap all
    # of it follows the backward pass; with it the blocks' reduce-scatters run during
    # the backward pass, hidden up to the compute time.
    spec = json.loads((SOURCE / "configs/sweeps/h100-llama.json").read_text())
    shape = sm.shape_from_config(spec["models"][0]["config"])
    hardware = sm.Hardware()
    flops = 4096 * (6 * sm.matmul_parameters(shape) + 12 * 32 * 4096 * 4096)
    root = 2 * 32000 * 4096 + 4096
    block = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert root + 32 * block == 6738415616  # both divide by 16: no padding
    exchange = (15 / 16 * (root + 32 * block) * 8 / 50e9 + 2 * 33 * 15 * 8e-6
                + 3 * 2 * 15 / 16 * 8 / 50e9)
    hideable = 15 / 16 * 32 * block * 4 / 50e9
    for overlap in (False, True):
        layout = sm.Layout(ranks=16, zero=1, micro_batch_size=1, global_batch_size=16, seq_len=4096,
                           activation_dtype_bytes=2, transport="nccl", overlap=overlap)
        prediction = sm.predict(shape, layout, hardware)
        assert prediction.compute_s == pytest.approx(flops / (0.4 * 989e12), rel=1e-12)
        exposed = exchange - (min(hideable, prediction.compute_s) if overlap else 0)
        assert prediction.dp_comm_s == pytest.approx(exposed, rel=1e-9), f"overlap {overlap}"
        assert prediction.step_s == pytest.approx(prediction.compute_s + exposed, rel=1e-9)


FAKE_SBATCH = r"""#!/bin/bash
# Stands in for sbatch: records its arguments, runs the script in the background as
# Slurm would (SLURM_* set, --export applied, output to --output), prints the job id.
state="$FAKE_SLURM_STATE"
echo "$*" >> "$state/sbatch.calls"
id=$(( $(ls "$state" | grep -c '\.job$') + 1000 ))
output="slurm-%j.out"; ntasks=1
while [[ "$1" == -* ]]; do
  case "$1" in
    --output=*) output="${1#--output=}" ;;
    --ntasks=*) ntasks="${1#--ntasks=}" ;;
    --export=*) IFS=, read -ra pairs <<< "${1#--export=}"
                for pair in "${pairs[@]}"; do [[ "$pair" == *=* ]] && export "$pair"; done ;;
  esac
  shift
done
output="${output//%j/$id}"
touch "$state/$id.job"
SLURM_JOB_ID=$id SLURM_NTASKS=$ntasks SLURM_CPUS_PER_TASK=1 SLURM_SUBMIT_DIR="$PWD" \
  nohup bash -c 'bash "$@"; echo $? > "'"$state/$id"'.rc"' fake-job "$@" > "$output" 2>&1 &
echo "$id"
"""

FAKE_SRUN = r"""#!/bin/bash
# Stands in for srun inside a job: one rank per task, under mpirun.
while [[ "$1" == -* ]]; do shift; done
exec mpirun -np "$SLURM_NTASKS" --oversubscribe --bind-to none "$@"
"""

FAKE_SQUEUE = r"""#!/bin/bash
# Lists the jobs given with -j that have not finished.
while [[ $# -gt 0 ]]; do [[ "$1" == -j ]] && ids="$2"; shift; done
for id in ${ids//,/ }; do [[ -f "$FAKE_SLURM_STATE/$id.rc" ]] || echo "$id RUNNING"; done
"""

FAKE_SACCT = r"""#!/bin/bash
while [[ $# -gt 0 ]]; do [[ "$1" == -j ]] && id="$2"; shift; done
rc=$(cat "$FAKE_SLURM_STATE/$id.rc")
[[ "$rc" == 0 ]] && echo "COMPLETED|0:0" || echo "FAILED|$rc:0"
"""


def test_slurm_launcher_submits_waits_and_gathers(workspace):
    # A stand-in cluster on PATH (sbatch, squeue, sacct, srun) runs the real
    # slurm/ftrain.sbatch: each run is one job with the nodes and tasks of its layout,
    # its log in its run directory and this build's ftrain in FTRAIN.
    bin_dir, state = workspace / "fake-slurm-bin", workspace / "fake-slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("squeue", FAKE_SQUEUE), ("sacct", FAKE_SACCT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_STATE": str(state)}
    path = spec(workspace, "slurm", ranks=[2], tp=[1], zero=[1], scaling=["strong"],
                slurm={"tasks_per_node": 1, "gpus_per_task": 0, "poll_s": 0.5, "wait_timeout_s": 300})
    out = workspace / "slurm"
    result = run_sweep("run", path, "--out", out, "--launcher", "slurm", env=env)
    assert "submitted as Slurm job 1000" in result.stdout
    [call] = (state / "sbatch.calls").read_text().splitlines()
    run_dir = out / "runs" / "tiny-gpt2_r2_tp1_z1_gb4"
    for option in ("--parsable", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--gpus-per-task=0",
                   f"--output={run_dir}/slurm-%j.log", f"--export=ALL,FTRAIN={BUILD / 'ftrain'}",
                   str(SOURCE / "slurm/ftrain.sbatch"), str(SOURCE / "configs/tiny-gpt2.ini"), "--dist.zero=1"):
        assert option in call.split(), option
    assert (run_dir / "slurm-1000.log").exists()
    [row] = list(csv.DictReader(open(out / "sweep.csv")))
    assert row["status"] == "ok" and row["memory_matches"] == "True"
    assert float(row["comm_bytes"]) == float(row["predicted_comm_bytes"])
    assert json.loads((out / "slurm_jobs.json").read_text()) == {"1000": "tiny-gpt2_r2_tp1_z1_gb4"}


def slurm_answers():
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False, "sbatch/sinfo are not on PATH"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False, "sinfo did not answer within 15 s"
    if result.returncode != 0:
        return False, f"no Slurm cluster answers (sinfo: {result.stderr.strip().splitlines()[-1:]})"
    return True, result.stdout


def test_slurm_launcher_on_a_real_cluster(workspace):
    answers, detail = slurm_answers()
    if not answers:
        pytest.skip(f"the Slurm launcher on a real cluster: {detail}; the stand-in cluster test covers it, and "
                    "tests/slurm/test_slurm_cluster.py runs it on a cluster it starts itself")
    gpus = 1 if "gpu" in detail else 0
    path = spec(workspace, "cluster", ranks=[2], tp=[1], zero=[0], scaling=["strong"],
                slurm={"tasks_per_node": 2, "gpus_per_task": gpus, "time": "00:10:00", "poll_s": 2,
                       "wait_timeout_s": 480})
    out = workspace / "cluster"
    run_sweep("run", path, "--out", out, "--launcher", "slurm", timeout=560)
    [row] = list(csv.DictReader(open(out / "sweep.csv")))
    assert row["status"] == "ok" and math.isclose(float(row["comm_bytes"]), float(row["predicted_comm_bytes"]))


def test_fits_counts_every_phase_not_only_the_steps():
    # Llama-3-70B's shape: a 128256 x 8192 embedding and an untied head. At tp 8 x dp 16
    # ZeRO-3 the load holds the shards of the parameters and gradients plus one whole
    # fp32 tensor, the export the state less the moments plus two: the prediction is
    # the largest phase, and "fits" compares that one with the GPU's memory.
    shape = sm.ModelShape("llama", vocab=128256, width=8192, layers=80, heads=64, kv_heads=8, intermediate=28672,
                          tied=False)
    layout = sm.Layout(ranks=128, tp=8, zero=3, micro_batch_size=1, global_batch_size=16, seq_len=4096,
                       activation_checkpointing=True, activation_dtype_bytes=2, transport="nccl")
    phases = sm.phase_peak_bytes(shape, layout)
    one = 4 * 128256 * 8192
    state = sm.training_state_bytes(shape, layout)
    root, blocks = sm.parameter_units(shape, 8)
    assert phases["load_bytes"] == 4 * 2 * sum(sm.zero_shard(u, 16) for u in [root, *blocks]) + one
    assert phases["export_bytes"] == state["parameter_bytes"] + state["gradient_bytes"] + 2 * one
    assert phases["step_bytes"] == sum(state.values()) + sm.activation_bytes(shape, layout)
    row = sm.predict(shape, layout, sm.Hardware()).row()
    assert row["peak_bytes"] == max(phases.values())
    assert row["peak_phase"] == max(phases, key=phases.get).removesuffix("_bytes")
    # A GPU with room for the steps but not for the largest phase does not fit.
    smallest_that_fits = max(phases.values())
    assert sm.predict(shape, layout, sm.Hardware(memory_bytes=smallest_that_fits)).row()["fits"]
    assert not sm.predict(shape, layout, sm.Hardware(memory_bytes=smallest_that_fits - 1)).row()["fits"]
