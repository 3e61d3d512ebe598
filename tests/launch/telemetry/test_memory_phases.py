"""Measured memory per phase (metrics.jsonl's memory_phases: each rank's peak resident
set in each phase, read from /proc): at ZeRO-3 on 4 data-parallel ranks a GPT-2 of
about 26M parameters is read (or drawn, with model.init = random), set up, resumed and
exported holding only its share, and the same job at ZeRO-0 exceeds the same bound, so
the check can fail.

A phase's model-dependent peak is its peak minus the same phase's peak in the same job
on a tiny GPT-2 (LibTorch, MPI and the allocator cost the same in both), as a multiple
of the larger model's fp32 bytes M = 4 psi. The sharded bound is the training state
ZeRO-3 divides, 16 psi / N = 4 M / N (weights, gradients and two AdamW moments), plus a
margin of MARGIN M for one tensor read or gathered at a time and the heap's slack.

A resume reads only the shard's blocks of the checkpoint: the bytes each rank read in
the resume phase (/proc/self/io's rchar, the same record), minus the tiny model's, stay
within the shard of the saved state, 12 psi / N = 3 M / N (weights and two AdamW
moments), plus READ_MARGIN M; at ZeRO-0 every rank reads all of it. Resumed on N/2
ranks, each reads its shard of 3 M / (N/2), across the pieces the N writers made.

The training phases (the first step, later steps and saving) hold a gathered block and
its gradients besides the shards, so their bound adds those: configured for the least
memory (no prefetching, no overlapped reduction, activation checkpointing, synchronous
saves, freed host memory given back), they stay under 4M/N + 2 B + STEP_SLACK M, where B is one block's fp32 bytes in
models; ZeRO-0 exceeds it. With the defaults (a second block prefetched, a second
block's gradients in flight, activations kept, the save's host copy) they are held to
today's measurement plus a margin (4M/N + 1.25 M), so they cannot grow unnoticed."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/launch: ftrain_jobs
from ftrain_jobs import BUILD, ENV, as_options, prepare_corpus, records, run_ftrain

RANKS = 4
MARGIN = 0.25
STEP_MARGIN = 1.25  # the training phases' measured excess is about 1.0 M
STEP_SLACK = MARGIN  # activations, one vocabulary window, a parameter's gradient as autograd makes it, the heap
LEAST_MEMORY = {"dist.prefetch": "false", "dist.overlap": "false", "train.activation_checkpointing": "true",
                "checkpoint.async": "false", "run.host_memory": "release"}
READ_MARGIN = 0.05  # the index and blocks rounded out; the same layout reads its own pieces
SHARDED_PHASES = ("load", "setup", "resume", "export")
LATER_PHASES = ("first_step", "train", "evaluate", "save")


def gpt2(directory, width, layers):
    """A random GPT-2 saved as a Hugging Face directory, with its fp32 bytes and one
    block's."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=64, n_embd=width, n_layer=layers, n_head=8))
    model.save_pretrained(directory, safe_serialization=True)
    block = 4 * sum(p.numel() for p in model.transformer.h[0].parameters())
    return Path(directory), 4 * sum(p.numel() for p in model.parameters()), block


def sentiment_data(path, rows=64, seq_len=32, vocab=1024):
    """A sequence classification dataset (docs/dataset-format.md) of random rows."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": 1, "seq_len": seq_len, "vocab_size": vocab,
                        "eos_id": -1, "pad_id": 0, "tokenizer": "synthetic", "task": "sequence_classification",
                        "label_names": '["negative", "positive"]', "num_labels": 2})
        for split in ("train", "validation"):
            group = f.create_group(split)
            group.attrs["num_documents"] = rows
            group.create_dataset("input_ids", data=rng.integers(1, vocab, size=(rows, seq_len)).astype(np.int32))
            group.create_dataset("attention_mask", data=np.ones((rows, seq_len), dtype=np.uint8))
            group.create_dataset("labels", data=rng.integers(0, 2, size=rows).astype(np.int64))
    return path


def peaks(run_dir):
    """{phase: the largest host peak over the ranks} of the run's memory_phases record."""
    [record] = [r for r in records(run_dir) if "memory_phases" in r]
    assert sorted({p["rank"] for p in record["memory_phases"]}) == list(range(RANKS))
    out = {}
    for peak in record["memory_phases"]:
        assert peak["per_phase"], "VmHWM could not be reset between phases (/proc/self/clear_refs)"
        out[peak["phase"]] = max(out.get(peak["phase"], 0), peak["host_peak_bytes"])
    return out


def resume_read_bytes(run_dir, ranks=RANKS):
    """The most bytes any rank read in the run's resume phase."""
    [record] = [r for r in records(run_dir) if "memory_phases" in r]
    read = [p["read_bytes"] for p in record["memory_phases"] if p["phase"] == "resume"]
    assert len(read) == ranks and min(read) >= 0, "every rank reports the bytes it read (/proc/self/io)"
    return max(read)


def export_peak(checkpoint, out):
    """The peak resident set of `ftrain-ckpt export` writing `checkpoint` to `out`,
    from the kernel's accounting of that one child process (wait4)."""
    shutil.rmtree(out, ignore_errors=True)
    process = subprocess.Popen([str(BUILD / "ftrain-ckpt"), "export", str(checkpoint), str(out)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read()
    return usage.ru_maxrss * 1024  # kilobytes on Linux


def steps_job(ws, model, name, settings):
    """Two steps of a ZeRO-3 job, saved at the end; {phase: peak}."""
    run_dir = ws["root"] / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_ftrain(RANKS, *as_options({"run.dir": run_dir, "model.path": model, "data.path": ws["data"],
                                    "model.dropout": 0, "data.micro_batch_size": 1,
                                    "train.global_batch_size": RANKS, "train.eval_every": 0, "train.steps": 2,
                                    "checkpoint.at_end": "true", "checkpoint.export_hf": "false", "dist.zero": 3,
                                    **settings}))
    return peaks(run_dir)


def job(ws, model, zero, name):
    """Two steps, saved at the end and exported; then the same run resumed for a third.
    Returns {phase: peak} over both processes (resume from the second)."""
    run_dir = ws["root"] / name
    shutil.rmtree(run_dir, ignore_errors=True)
    options = {"run.dir": run_dir, "model.path": model, "data.path": ws["data"], "model.dropout": 0,
               "data.micro_batch_size": 1, "train.global_batch_size": RANKS, "train.eval_every": 0,
               "checkpoint.at_end": "true", "checkpoint.export_hf": "true", "dist.zero": zero}
    run_ftrain(RANKS, *as_options({**options, "train.steps": 2}))
    first = peaks(run_dir)
    (run_dir / "metrics.jsonl").rename(run_dir / "metrics.first.jsonl")
    run_ftrain(RANKS, *as_options({**options, "train.steps": 3, "run.resume": "auto"}))
    second = peaks(run_dir)
    return {**first, "resume": second["resume"], "resume_read": resume_read_bytes(run_dir)}


@pytest.fixture(scope="module")
def measured(tmp_path_factory, pytestconfig):
    root = tmp_path_factory.mktemp("memory_phases")
    ws = {"root": root, "data": prepare_corpus(root, 200)}
    big, model_bytes, block_bytes = gpt2(root / "big", width=512, layers=8)
    tiny, _, _ = gpt2(root / "tiny", width=32, layers=2)
    out = {"model_bytes": model_bytes, "block": block_bytes / model_bytes}
    for zero in (0, 3):
        big_peaks, tiny_peaks = job(ws, big, zero, f"big{zero}"), job(ws, tiny, zero, f"tiny{zero}")
        out[zero] = {phase: (big_peaks[phase] - tiny_peaks[phase]) / model_bytes for phase in big_peaks}
        out[f"read{zero}"] = out[zero].pop("resume_read")
    # The ZeRO-3 checkpoint of step 2 resumed on half the ranks: each reads its new,
    # larger shard, ranges that now cross the pieces the four ranks wrote.
    halved = {}
    for size, model in (("big", big), ("tiny", tiny)):
        run_dir = root / f"{size}3_halved"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(root / f"{size}3" / "checkpoints" / "step_00000002", run_dir / "checkpoints" / "step_00000002")
        run_ftrain(RANKS // 2, *as_options({"run.dir": run_dir, "model.path": model, "data.path": ws["data"],
                                             "model.dropout": 0, "data.micro_batch_size": 1,
                                             "train.global_batch_size": RANKS, "train.eval_every": 0,
                                             "train.steps": 3, "run.resume": "auto", "checkpoint.at_end": "false",
                                             "checkpoint.export_hf": "false", "dist.zero": 3}))
        halved[size] = resume_read_bytes(run_dir, RANKS // 2)
    out["read3_halved"] = (halved["big"] - halved["tiny"]) / model_bytes
    # A random initialisation at ZeRO-3 (model.init = random): drawn into the shards.
    drawn = {}
    for size, model in (("big", big), ("tiny", tiny)):
        run_dir = root / f"{size}3_random"
        run_ftrain(RANKS, *as_options({"run.dir": run_dir, "model.path": model, "model.init": "random",
                                        "data.path": ws["data"], "data.micro_batch_size": 1,
                                        "train.global_batch_size": RANKS, "train.steps": 1, "train.eval_every": 0,
                                        "checkpoint.at_end": "false", "checkpoint.export_hf": "false",
                                        "dist.zero": 3}))
        drawn[size] = peaks(run_dir)
    out["random_load"] = (drawn["big"]["load"] - drawn["tiny"]["load"]) / model_bytes
    # The same for a fresh sequence classifier: its GPT-2 body drawn into the shards too.
    labelled = sentiment_data(root / "sentiment.h5")
    for size, model in (("big", big), ("tiny", tiny)):
        run_dir = root / f"{size}3_random_classifier"
        run_ftrain(RANKS, *as_options({"run.dir": run_dir, "model.path": model, "model.init": "random",
                                        "data.path": labelled, "data.micro_batch_size": 1,
                                        "train.global_batch_size": RANKS, "train.steps": 1, "train.eval_every": 0,
                                        "checkpoint.at_end": "false", "checkpoint.export_hf": "false",
                                        "dist.zero": 3}))
        drawn[size] = peaks(run_dir)
    out["random_classifier_load"] = (drawn["big"]["load"] - drawn["tiny"]["load"]) / model_bytes
    # The steps configured for the least memory.
    least = {size: steps_job(ws, model, f"{size}3_least_memory", LEAST_MEMORY) for size, model in (("big", big),
                                                                                                   ("tiny", tiny))}
    out["least_memory"] = {phase: (least["big"][phase] - least["tiny"][phase]) / model_bytes
                           for phase in ("first_step", "train", "save")}
    # ftrain-ckpt export of the ZeRO-3 run's last checkpoint, in one process.
    exports = [export_peak(root / f"{size}3/checkpoints/step_00000003", root / f"export_{size}")
               for size in ("big", "tiny")]
    out["ckpt_export"] = (exports[0] - exports[1]) / model_bytes
    # The table goes to make test's log whether the checks pass or not.
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\nmodel-dependent peak per rank and phase, in fp32 models ({model_bytes / 2**20:.0f} MiB), "
              f"{RANKS} ranks; sharded bound {bound():.2f}:")
        print(f"{'phase':>12} {'ZeRO-0':>8} {'ZeRO-3':>8}")
        for phase in out[3]:
            print(f"{phase:>12} {out[0].get(phase, float('nan')):8.2f} {out[3][phase]:8.2f}")
        print(f"ZeRO-3 load with model.init = random: {out['random_load']:.2f}, "
              f"a sequence classifier: {out['random_classifier_load']:.2f}")
        print(f"ftrain-ckpt export, one process: {out['ckpt_export']:.2f}")
        print(f"ZeRO-3 for the least memory (bound {least_memory_step_bound(out['block']):.2f}, a block "
              f"{out['block']:.3f}): " + ", ".join(f"{k} {v:.2f}" for k, v in out["least_memory"].items()))
        print(f"bytes read per rank by the resume: ZeRO-0 {out['read0']:.2f}, ZeRO-3 {out['read3']:.2f} "
              f"(the shard: {3 / RANKS:.2f}); ZeRO-3 on {RANKS // 2} ranks: {out['read3_halved']:.2f} "
              f"(the shard: {3 / (RANKS // 2):.2f})")
    return out


def bound():
    return 4 / RANKS + MARGIN


def step_bound():
    return 4 / RANKS + STEP_MARGIN


def least_memory_step_bound(block):
    """The shards, one gathered block and its full gradients, and the slack."""
    return 4 / RANKS + 2 * block + STEP_SLACK


def test_the_model_is_between_20_and_40_million_parameters(measured):
    assert 20e6 <= measured["model_bytes"] / 4 <= 40e6


@pytest.mark.parametrize("phase", SHARDED_PHASES)
def test_zero3_holds_its_share_and_zero0_does_not(measured, phase):
    assert measured[3][phase] <= bound(), \
        f"{phase}: ZeRO-3 holds {measured[3][phase]:.2f} M per rank, over the sharded {bound():.2f} M"
    assert measured[0][phase] > bound(), \
        f"{phase}: ZeRO-0 holds {measured[0][phase]:.2f} M per rank, not over {bound():.2f} M: the bound proves nothing"


@pytest.mark.parametrize("phase", LATER_PHASES)
def test_zero3_steps_stay_within_todays_measurement_and_far_below_zero0(measured, phase):
    # The steps, evaluation and save are not yet under the sharded bound (about 2.0 M at
    # 4 ranks against 1.25 M: the root and two blocks gathered, their full gradients, the
    # heap's slack, the save's host copy). Until they are, they must not grow: under 4M/N + STEP_MARGIN, which
    # ZeRO-0 (6 M) far exceeds.
    assert measured[3][phase] <= step_bound(), f"{phase}: ZeRO-3 holds {measured[3][phase]:.2f} M per rank"
    assert measured[0][phase] > step_bound(), f"{phase}: ZeRO-0 holds {measured[0][phase]:.2f} M per rank"


@pytest.mark.parametrize("phase", ("first_step", "train", "save"))
def test_zero3_steps_for_the_least_memory_hold_the_shards_and_one_block(measured, phase):
    # With run.host_memory = release freed host memory leaves the process (launch/main.cpp);
    # kept in the heap, each step's transients stay resident.
    bound = least_memory_step_bound(measured["block"])
    assert measured["least_memory"][phase] <= bound, \
        f"{phase}: ZeRO-3 for the least memory holds {measured['least_memory'][phase]:.2f} M, over {bound:.2f} M"
    assert measured[0][phase] > bound, f"{phase}: ZeRO-0 holds {measured[0][phase]:.2f} M, not over {bound:.2f} M"


def test_ftrain_ckpt_export_streams_the_model(measured):
    # One process writing the whole model: streamed, it holds one tensor at a time (the
    # largest here is 4 % of the model); built whole it would hold at least all of it.
    assert measured["ckpt_export"] <= MARGIN, f"ftrain-ckpt export holds {measured['ckpt_export']:.2f} M"


def test_zero3_random_init_draws_into_the_shards(measured):
    # Each parameter drawn whole, one at a time, and only the shard kept; drawn whole
    # and then sharded, the load would hold the model (1 M) and more.
    assert measured["random_load"] <= bound(), f"random init at ZeRO-3 holds {measured['random_load']:.2f} M"


def test_zero3_random_classifier_draws_into_the_shards(measured):
    # The load phase holds the body's shard (M / N), drawing only its own elements, plus
    # the excess every ZeRO-3 load shows here, pretrained too (0.62 M measured, the
    # language model's 0.63 M, a pretrained load's 0.71 M); built whole on every rank, as
    # it once was, it held at least the model (1 M).
    shard = 1 / RANKS + 2 * MARGIN
    assert measured["random_classifier_load"] <= shard, \
        f"a random classifier at ZeRO-3 holds {measured['random_classifier_load']:.2f} M loading, over {shard:.2f} M"


def test_a_zero3_resume_reads_its_shard_of_the_checkpoint(measured):
    # 3 M / N is this rank's weights and AdamW moments; ZeRO-0 reads all 3 M on every rank.
    shard = 3 / RANKS
    assert measured["read3"] <= shard + READ_MARGIN, \
        f"a ZeRO-3 rank read {measured['read3']:.3f} M resuming, over its shard {shard:.3f} M + {READ_MARGIN}"
    assert measured["read3"] >= shard - READ_MARGIN, f"a ZeRO-3 rank read only {measured['read3']:.3f} M"
    assert measured["read0"] >= 3 - READ_MARGIN, f"a ZeRO-0 rank read {measured['read0']:.3f} M, not the whole state"


def test_a_resume_on_fewer_ranks_reads_its_larger_shard_across_pieces(measured):
    # On N/2 ranks a shard spans parts of the pieces two of the N writers wrote; the
    # blocks it reads are its shard rounded out to 1 MiB blocks at a few piece edges.
    shard = 3 / (RANKS // 2)
    assert shard - READ_MARGIN <= measured["read3_halved"] <= shard + READ_MARGIN, \
        f"a ZeRO-3 rank resuming on {RANKS // 2} ranks read {measured['read3_halved']:.3f} M, its shard is {shard:.3f} M"
