"""End-to-end checks of the ftrain binary under mpirun: data-parallel equivalence,
resume equivalence, and clear failures on bad input (every rank exits, nothing on
disk is overwritten)."""
import json
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import torch

from ftrain_jobs import ENV, PREP, TIMEOUT, command, grad_norms, losses, prepare_corpus, run_ftrain
from ftrain_jobs import records as metric_records


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    data = prepare_corpus(root, 1500)

    # Starting weights saved by transformers, so the pretrained-loading path is the one
    # under test.
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1024, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model_dir = root / "model"
    GPT2LMHeadModel(config).save_pretrained(model_dir, safe_serialization=True)
    # A dataset whose rows carry loss masks with very different target counts, so a
    # loss averaged per micro-batch instead of per global token would differ by layout.
    masked = root / "masked.h5"
    rng = np.random.default_rng(3)
    with h5py.File(data, "r") as source, h5py.File(masked, "w") as f:
        f.attrs.update({k: source.attrs[k] for k in source.attrs})
        for split in ("train", "validation"):
            ids = source[split]["input_ids"][...]
            keep = rng.integers(1, ids.shape[1], size=len(ids))  # targets from a random position on
            mask = (np.arange(ids.shape[1])[None, :] >= keep[:, None]).astype(np.uint8)
            group = f.create_group(split)
            group.attrs["num_documents"] = source[split].attrs["num_documents"]
            group.create_dataset("input_ids", data=ids, chunks=(64, ids.shape[1]))
            group.create_dataset("loss_mask", data=mask, chunks=(64, ids.shape[1]))
    return {"root": root, "data": data, "masked": masked, "model": model_dir}


def base_args(ws, run_dir, **overrides):
    options = {
        "run.dir": run_dir, "model.path": ws["model"], "model.init": "pretrained", "model.dropout": 0,
        "data.path": ws["data"], "data.micro_batch_size": 2, "train.global_batch_size": 8,
        "train.steps": 20, "train.eval_every": 0, "train.eval_samples": 16, "optim.lr": 3e-3,
        "optim.min_lr": 3e-4, "optim.warmup_steps": 2, "checkpoint.every": 0, "checkpoint.export_hf": "false",
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def test_four_ranks_match_one_rank_with_accumulation(workspace):
    one = workspace["root"] / "dp1"
    four = workspace["root"] / "dp4"
    run_ftrain(1, *base_args(workspace, one, **{"checkpoint.export_hf": "true"}))
    run_ftrain(4, *base_args(workspace, four, **{"checkpoint.export_hf": "true"}))
    reference, parallel = losses(one), losses(four)
    assert sorted(reference) == list(range(1, 21))
    assert sorted(parallel) == list(range(1, 21))
    for step in range(1, 21):
        assert parallel[step] == pytest.approx(reference[step], rel=1e-5), f"step {step}"
        assert grad_norms(four)[step] == pytest.approx(grad_norms(one)[step], rel=1e-4), f"grad_norm, step {step}"
    assert reference[20] < reference[1] - 0.5, "the loss should fall over 20 steps"

    from safetensors.numpy import load_file
    weights_one = load_file(one / "final/model.safetensors")
    weights_four = load_file(four / "final/model.safetensors")
    assert weights_one.keys() == weights_four.keys()
    # The key bias has an exactly zero gradient (softmax ignores a shift shared by all
    # keys), so its entries move only by rounding noise, which Adam scales by lr/eps and
    # which differs with the summation order; atol covers that (~1e-6 after 20 steps).
    for name in weights_one:
        np.testing.assert_allclose(weights_four[name], weights_one[name], rtol=1e-5, atol=1e-5, err_msg=name)


def parameter_units(ws):
    """Elements of each unit ZeRO-2/3 reduces alone: the root (embeddings, final norm)
    and each transformer block, read from the model's safetensors."""
    from safetensors.numpy import load_file
    units = {}
    for name, tensor in load_file(ws["model"] / "model.safetensors").items():
        parts = name.split(".")
        unit = f"block{parts[2]}" if parts[1] == "h" else "root"
        units[unit] = units.get(unit, 0) + tensor.size
    return units


def test_memory_counters_follow_the_sharding(workspace):
    memory = {}
    for stage in (0, 1, 2):
        run_dir = workspace["root"] / f"memory_zero{stage}"
        run_ftrain(4, *base_args(workspace, run_dir, **{"train.steps": 2, "dist.zero": stage}))
        [record] = [r for r in metric_records(run_dir) if "memory" in r]
        memory[stage] = record["memory"]
        assert [entry["rank"] for entry in memory[stage]] == [0, 1, 2, 3]
    replicated = memory[0][0]
    psi_bytes = replicated["parameter_bytes"]
    # Data parallel: every rank holds parameters, their gradients plus the reduction
    # buckets, and two fp32 AdamW moments per parameter.
    for entry in memory[0]:
        assert entry["parameter_bytes"] == psi_bytes
        assert entry["gradient_bytes"] == 2 * psi_bytes
        assert entry["optimizer_bytes"] == 2 * psi_bytes
    for stage in (1, 2):
        # ZeRO-1/2: the moments are split over the 4 ranks: together exactly one copy,
        # each rank at most its padded quarter.
        assert sum(e["optimizer_bytes"] for e in memory[stage]) == 2 * psi_bytes
        quarter = 2 * 4 * -(-psi_bytes // 4 // 4)
        assert all(e["optimizer_bytes"] <= quarter for e in memory[stage])
    # ZeRO pads each unit (the root: embeddings and final norm; each block) alone to a
    # multiple of 4. ZeRO-1: parameters and gradients whole (each rank's reduced shard
    # lands in its chunk of the gradients).
    units = parameter_units(workspace)
    padded = {unit: -(-n // 4) * 4 for unit, n in units.items()}
    blocks = [padded[f"block{b}"] for b in range(len(units) - 1)]
    assert len(blocks) == 2 and 4 * sum(units.values()) == psi_bytes
    shards = sum(padded.values()) // 4
    for entry in memory[1]:
        assert entry["parameter_bytes"] == 4 * sum(padded.values())
        assert entry["gradient_bytes"] == 4 * sum(padded.values())
    # ZeRO-2: parameters stay whole; gradients peak at the shard's reduced gradients
    # plus the full gradients of the root, of the block whose backward runs and of the
    # block after it, whose reduce-scatter runs meanwhile (dist.overlap), every other
    # block's having been reduce-scattered and freed. (This model's root, a 1024-token
    # embedding tied to the head, is more than half of it, so here that working set
    # outweighs what the shard saves; tests/dist/test_data_parallel.cpp checks the drop below
    # ZeRO-1 on a model of more blocks.)
    for entry in memory[2]:
        assert entry["parameter_bytes"] == 4 * sum(padded.values())
        assert entry["gradient_bytes"] == 4 * (shards + padded["root"] + blocks[0] + blocks[1])


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_overlapped_reduction_gives_the_same_training(workspace, stage):
    # Buckets (ZeRO 0) or blocks (ZeRO 1-3) reduced during backward (dist.overlap, the
    # default), or each completed before backward goes on (ZeRO 2, 3) or after it: the
    # same sums, each of two ranks' values however the collective adds them, so the
    # same losses to the last bit; with two micro-batches per rank.
    runs = {}
    for overlap in ("true", "false"):
        run_dir = workspace["root"] / f"overlap_{overlap}_zero{stage}"
        run_ftrain(2, *base_args(workspace, run_dir, **{"train.steps": 6, "dist.overlap": overlap,
                                                        "dist.bucket_mb": 0.01, "dist.zero": stage,
                                                        "train.global_batch_size": 16}))
        runs[overlap] = (losses(run_dir), grad_norms(run_dir))
    assert sorted(runs["true"][0]) == list(range(1, 7))
    assert runs["true"][0] == runs["false"][0]
    assert runs["true"][1] == pytest.approx(runs["false"][1], rel=1e-6)


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_match_one_rank(workspace, stage):
    reference = workspace["root"] / "zero_ref"
    if not (reference / "metrics.jsonl").exists():
        run_ftrain(1, *base_args(workspace, reference, **{"train.steps": 10}))
    sharded = workspace["root"] / f"zero{stage}"
    run_ftrain(4, *base_args(workspace, sharded, **{"train.steps": 10, "dist.zero": stage}))
    expected, got = losses(reference), losses(sharded)
    for step in range(1, 11):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"zero {stage}, step {step}"
        assert grad_norms(sharded)[step] == pytest.approx(grad_norms(reference)[step], rel=1e-4), \
            f"zero {stage}, grad_norm, step {step}"


def test_zero2_with_accumulation_matches_one_rank_and_reduces_every_micro_batch(workspace):
    # Two micro-batches per rank and step on 4 ranks against 8 on one: ZeRO-2
    # reduce-scatters every unit's gradients after each micro-batch's backward and adds
    # them into the shard, then all-gathers the updated parameters once:
    # (k + 1) psi_pad (N-1)/N elements, psi_pad padded per unit.
    reference = workspace["root"] / "accum_ref"
    run_ftrain(1, *base_args(workspace, reference, **{"train.steps": 6, "train.global_batch_size": 16}))
    run_dir = workspace["root"] / "accum_zero2"
    run_ftrain(4, *base_args(workspace, run_dir, **{"train.steps": 6, "train.global_batch_size": 16,
                                                    "dist.zero": 2}))
    expected, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    ranks, micro_batches = 4, 2
    psi_pad = sum(-(-n // ranks) * ranks for n in parameter_units(workspace).values())
    expected_bytes = (micro_batches + 1) * psi_pad * (ranks - 1) / ranks * 4
    for record in (r for r in metric_records(run_dir) if "comm_bytes" in r):
        # A few 8-byte scalar all-reduces (token count, loss, gradient norm) on top.
        assert expected_bytes <= record["comm_bytes"] <= expected_bytes + 256, record


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_communication_volume_matches_the_formula(workspace, stage):
    # Data parallel and ZeRO-1/2 send 2 x psi x (N-1)/N elements per rank and step
    # (ring all-reduce, or reduce-scatter + all-gather). fp32: 4 bytes per element.
    # ZeRO pads psi to a multiple of N; a few scalar all-reduces (token count, loss,
    # gradient norm) add a handful of bytes.
    from safetensors.numpy import load_file
    psi = sum(t.size for t in load_file(workspace["model"] / "model.safetensors").values())
    ranks = 4
    run_dir = workspace["root"] / f"volume{stage}"
    run_ftrain(ranks, *base_args(workspace, run_dir, **{"train.steps": 2, "dist.zero": stage}))
    records = [r for r in metric_records(run_dir) if "comm_bytes" in r]
    expected = 2 * psi * (ranks - 1) / ranks * 4
    for record in records:
        assert record["comm_bytes"] == pytest.approx(expected, rel=1e-3, abs=256), record


def test_resume_across_zero_stages(workspace):
    # Optimizer state saved by 4 ranks with sharded state resumes on 2 ranks without
    # sharding (and the reverse), continuing the uninterrupted run.
    full = workspace["root"] / "zero_full"
    run_ftrain(2, *base_args(workspace, full, **{"train.steps": 12}))
    forward = workspace["root"] / "zero_forward"
    run_ftrain(4, *base_args(workspace, forward, **{"train.steps": 12, "dist.zero": 2, "run.exit_after_steps": 5}))
    run_ftrain(2, *base_args(workspace, forward, **{"train.steps": 12, "run.resume": "auto"}))
    backward = workspace["root"] / "zero_backward"
    run_ftrain(2, *base_args(workspace, backward, **{"train.steps": 12, "run.exit_after_steps": 5}))
    run_ftrain(4, *base_args(workspace, backward, **{"train.steps": 12, "dist.zero": 1, "run.resume": "auto"}))
    reference = losses(full)
    for run_dir in (forward, backward):
        continued = losses(run_dir)
        assert sorted(continued) == list(range(1, 13))
        for step in range(6, 13):
            assert continued[step] == pytest.approx(reference[step], rel=1e-5), f"{run_dir.name}, step {step}"


def test_llama_with_grouped_query_attention_trains_data_parallel(workspace):
    # The trainer is family-agnostic: a tiny Llama (GQA, untied head) saved by
    # transformers trains on 2 ranks exactly as on 1 rank with accumulation.
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model_dir = workspace["root"] / "llama"
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    runs = {}
    for ranks in (1, 2):
        run_dir = workspace["root"] / f"llama{ranks}"
        run_ftrain(ranks, *base_args(workspace, run_dir, **{"model.path": model_dir, "train.steps": 8,
                                                            "checkpoint.export_hf": "true"}))
        runs[ranks] = losses(run_dir)
    for step in range(1, 9):
        assert runs[2][step] == pytest.approx(runs[1][step], rel=1e-5), f"step {step}"
    assert runs[1][8] < runs[1][1] - 0.5
    reloaded = LlamaForCausalLM.from_pretrained(workspace["root"] / "llama2" / "final")
    assert reloaded.config.num_key_value_heads == 2


def test_masked_loss_is_normalised_per_global_token(workspace):
    # Rows with between 1 and 31 targets: 1x4, 2x2 and 4x1 (ranks x accumulation) must
    # agree, which holds only if every token of the global batch weighs the same.
    runs = {}
    for ranks in (1, 2, 4):
        run_dir = workspace["root"] / f"masked{ranks}"
        run_ftrain(ranks, *base_args(workspace, run_dir, **{"data.path": workspace["masked"], "train.steps": 8}))
        runs[ranks] = losses(run_dir)
    for ranks in (2, 4):
        for step in range(1, 9):
            assert runs[ranks][step] == pytest.approx(runs[1][step], rel=1e-5), f"{ranks} ranks, step {step}"


def test_resume_after_step_7_matches_uninterrupted_run(workspace):
    # Dropout on, so the random state after resuming is part of what is checked. The
    # early exit at step 7 saves its own checkpoint (checkpoint.every is 10).
    extra = {"model.dropout": 0.1, "checkpoint.every": 10}
    full = workspace["root"] / "full"
    run_ftrain(2, *base_args(workspace, full, **extra))
    resumed = workspace["root"] / "resumed"
    first = run_ftrain(2, *base_args(workspace, resumed, **extra, **{"run.exit_after_steps": 7}))
    assert sorted(losses(resumed)) == list(range(1, 8)), first.stdout
    assert (resumed / "checkpoints/step_00000007/COMMITTED").exists()
    second = run_ftrain(2, *base_args(workspace, resumed, **extra), "--resume")
    assert "resumed from" in second.stdout
    reference = losses(full)
    steps = [r["step"] for r in metric_records(resumed) if "loss" in r]
    assert steps == list(range(1, 21)), "each step is logged exactly once"
    continued = losses(resumed)
    for step in range(1, 21):
        assert continued[step] == reference[step], f"step {step}: {continued[step]} != {reference[step]}"


def test_resume_on_another_number_of_ranks(workspace):
    # 2 ranks stop at step 7; 4 ranks continue. Same global batch, so the same
    # sequences; only the summation order differs.
    full = workspace["root"] / "full_nodrop"
    run_ftrain(2, *base_args(workspace, full))
    moved = workspace["root"] / "moved"
    run_ftrain(2, *base_args(workspace, moved, **{"run.exit_after_steps": 7}))
    run_ftrain(4, *base_args(workspace, moved, **{"run.resume": "auto"}))
    reference, continued = losses(full), losses(moved)
    assert sorted(continued) == list(range(1, 21))
    for step in range(8, 21):
        assert continued[step] == pytest.approx(reference[step], rel=1e-5), f"step {step}"


def test_resume_refuses_a_different_global_batch(workspace):
    run_dir = workspace["root"] / "batch_change"
    run_ftrain(1, *base_args(workspace, run_dir, **{"run.exit_after_steps": 3}))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    result = run_ftrain(2, *base_args(workspace, run_dir, **{"run.resume": "auto", "train.global_batch_size": 16}),
                        check=False)
    assert result.returncode != 0 and "train.global_batch_size" in result.stderr, result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_resume_skips_a_corrupt_newest_checkpoint(workspace):
    run_dir = workspace["root"] / "corrupt"
    run_ftrain(1, *base_args(workspace, run_dir, **{"checkpoint.every": 3, "run.exit_after_steps": 6,
                                                    "checkpoint.keep": 5}))
    # One rank wrote every piece; damage the token embedding's bytes.
    newest = run_dir / "checkpoints/step_00000006/rank_00000.h5"
    blob = bytearray(newest.read_bytes())
    with h5py.File(newest, "r") as f:
        offset = f["model/transformer.wte.weight/0"].id.get_offset()
    blob[offset + 100] ^= 0x20
    newest.write_bytes(bytes(blob))
    result = run_ftrain(1, *base_args(workspace, run_dir, **{"checkpoint.every": 3, "checkpoint.keep": 5}),
                        "--resume")
    assert "step_00000006" in result.stderr and "checksum" in result.stderr, result.stderr
    assert "at step 3" in result.stdout
    assert (run_dir / "checkpoints/step_00000006.stale").exists()
    assert [r["step"] for r in metric_records(run_dir) if "loss" in r] == list(range(1, 21))


def test_validation_loss_is_reported(workspace):
    # 13 sequences over 2 ranks: one rank's shard is padded with a filler row that must
    # not count. The validation loss must equal the single-rank one.
    values = {}
    for ranks in (1, 2):
        run_dir = workspace["root"] / f"eval{ranks}"
        result = run_ftrain(ranks, *base_args(workspace, run_dir, **{"train.steps": 6, "train.eval_every": 3,
                                                                     "train.eval_samples": 13}))
        records = metric_records(run_dir)
        evals = [r for r in records if "val_loss" in r]
        assert [r["step"] for r in evals] == [3, 6]
        assert all(np.isfinite(r["val_loss"]) and r["val_perplexity"] == pytest.approx(np.exp(r["val_loss"]))
                   for r in evals)
        assert "validation loss" in result.stdout
        for record in records:
            if "loss" in record:
                assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= record.keys()
        assert (run_dir / "config.ini").read_text().startswith("# resolved ftrain configuration")
        values[ranks] = [r["val_loss"] for r in evals]
    assert values[2] == pytest.approx(values[1], rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_follows_fp32(workspace, precision):
    reference = workspace["root"] / "zero_ref"
    if not (reference / "metrics.jsonl").exists():
        run_ftrain(1, *base_args(workspace, reference, **{"train.steps": 10}))
    run_dir = workspace["root"] / f"precision_{precision}"
    run_ftrain(2, *base_args(workspace, run_dir, **{"train.steps": 10, "train.precision": precision}))
    expected, records = losses(reference), metric_records(run_dir)
    got = {r["step"]: r for r in records if "loss" in r}
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        # bf16 keeps 8 bits of mantissa, fp16 11: the losses follow fp32 closely, not exactly.
        assert got[step]["loss"] == pytest.approx(expected[step], rel=2e-2), f"{precision}, step {step}"
        assert got[step]["grad_norm"] == pytest.approx(grad_norms(reference)[step], rel=5e-2), \
            f"{precision}, grad_norm, step {step}"
        assert got[step]["skipped"] is False
        assert got[step]["loss_scale"] == (65536 if precision == "fp16" else 1)
    assert any(got[step]["loss"] != expected[step] for step in got), "autocast changed nothing"


def test_bf16_weight_casts_kept_for_the_step_train_like_fresh_casts(workspace):
    # Under bf16 each weight is cast once per step and the copy serves every micro-batch
    # and every recomputation. Activation checkpointing runs each block first without
    # autograd; a cast cached there would carry no gradient back to its weight. With 4
    # micro-batches, checkpointing must change nothing: losses and gradient norms equal.
    runs = {}
    for checkpointing in ("false", "true"):
        run_dir = workspace["root"] / f"bf16_casts_ckpt_{checkpointing}"
        run_ftrain(1, *base_args(workspace, run_dir, **{"train.steps": 6, "train.precision": "bf16",
                                                        "train.activation_checkpointing": checkpointing}))
        runs[checkpointing] = {r["step"]: r for r in metric_records(run_dir) if "loss" in r}
    assert sorted(runs["true"]) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("loss", "grad_norm"):
            assert runs["true"][step][key] == pytest.approx(runs["false"][step][key], rel=1e-6), f"{key}, step {step}"


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_bf16_gradient_reduction_follows_fp32(workspace, stage):
    # train.reduce_dtype = bf16: gradients are rounded to bf16 for the data-parallel sum
    # (buckets, or ZeRO's reduce-scatter), then updated in fp32: close to the fp32 run,
    # but not equal, which shows the rounding happened.
    reference = workspace["root"] / "zero_ref"
    if not (reference / "metrics.jsonl").exists():
        run_ftrain(1, *base_args(workspace, reference, **{"train.steps": 10}))
    run_dir = workspace["root"] / f"reduce_bf16_zero{stage}"
    run_ftrain(4, *base_args(workspace, run_dir, **{"train.steps": 10, "train.reduce_dtype": "bf16",
                                                    "dist.zero": stage}))
    expected, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, 11))
    assert got[1] == pytest.approx(expected[1], rel=1e-6), "the first loss precedes any update"
    for step in range(2, 11):
        assert got[step] == pytest.approx(expected[step], rel=1e-2), f"step {step}"
    for step in range(1, 11):
        assert grad_norms(run_dir)[step] == pytest.approx(grad_norms(reference)[step], rel=2e-2), f"grad_norm, step {step}"
    assert any(abs(got[step] - expected[step]) > 1e-6 * expected[step] for step in range(2, 11))


def test_fp16_overflow_skips_steps_and_halves_the_scale(workspace):
    run_dir = workspace["root"] / "fp16_overflow"
    result = run_ftrain(2, *base_args(workspace, run_dir, **{"train.steps": 16, "train.precision": "fp16",
                                                             "train.loss_scale": 2 ** 26, "train.log_every": 1}))
    steps = [r for r in metric_records(run_dir) if "loss" in r]
    skipped = [r["skipped"] for r in steps]
    # fp16 tops out at 65504: with a loss scale of 2^26 the backward pass overflows, and
    # each skipped step halves the scale until the gradients fit.
    assert skipped[0] is True and False in skipped
    first_taken = skipped.index(False)
    assert all(skipped[:first_taken]) and not any(skipped[first_taken:])
    for before, after in zip(steps[:first_taken], steps[1:first_taken + 1]):
        assert after["loss_scale"] == pytest.approx(before["loss_scale"] / 2)
    assert steps[-1]["loss_scale"] == steps[first_taken]["loss_scale"]
    assert "skipped: gradients overflowed the fp16 loss scale" in result.stdout
    assert np.isfinite(steps[-1]["loss"]) and steps[-1]["loss"] < steps[0]["loss"]


def test_thread_count_comes_from_run_threads_then_omp_num_threads_then_cores(workspace):
    # ftrain.sbatch exports OMP_NUM_THREADS as the threads of each rank; run.threads
    # overrides it; without either, the node's cores are shared among its ranks.
    import os

    def banner_threads(ranks, omp, **overrides):
        env = {key: value for key, value in ENV.items() if key != "OMP_NUM_THREADS"}
        if omp is not None:
            env["OMP_NUM_THREADS"] = omp
        run_dir = workspace["root"] / f"threads_{ranks}_{omp}_{len(overrides)}"
        arguments = base_args(workspace, run_dir, **{"train.steps": 2, **overrides})
        result = subprocess.run(command(ranks, *arguments), capture_output=True, text=True, timeout=TIMEOUT, env=env)
        assert result.returncode == 0, result.stderr
        return int(re.search(r"with (\d+) CPU thread\(s\) per rank", result.stdout).group(1))

    assert banner_threads(1, "3") == 3
    assert banner_threads(1, "2,1") == 2
    assert banner_threads(2, "3", **{"run.threads": 1}) == 1
    assert banner_threads(1, None) == max(1, os.cpu_count())
    assert banner_threads(2, None) == max(1, os.cpu_count() // 2)
    run_dir = workspace["root"] / "threads_bad"
    env = {**ENV, "OMP_NUM_THREADS": "many"}
    result = subprocess.run(command(2, *base_args(workspace, run_dir)), capture_output=True, text=True,
                            timeout=TIMEOUT, env=env)
    assert result.returncode != 0 and "OMP_NUM_THREADS" in result.stderr and "'many'" in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()


# --- bad input: a clear error naming the file, a non-zero exit on every rank, no hang,
# --- and nothing already on disk changed.

def expect_failure(ws, name, mentions, ranks=2, **overrides):
    run_dir = ws["root"] / f"bad_{name}"
    result = run_ftrain(ranks, *base_args(ws, run_dir, **overrides), check=False)
    assert result.returncode != 0, result.stdout
    for text in mentions:
        assert str(text) in result.stderr, f"expected {text!r} in:\n{result.stderr}"
    return result


def copy_model(ws, name):
    target = ws["root"] / f"model_{name}"
    shutil.copytree(ws["model"], target)
    return target


def test_missing_or_malformed_config_file(workspace):
    missing = workspace["root"] / "absent.ini"
    result = run_ftrain(2, "--config", missing, check=False)
    assert result.returncode != 0 and str(missing) in result.stderr
    bad = workspace["root"] / "bad.ini"
    bad.write_text("[optim]\nlearning_rate = 3\n")
    result = run_ftrain(2, "--config", bad, check=False)
    assert result.returncode != 0 and "optim.learning_rate" in result.stderr and str(bad) in result.stderr
    result = run_ftrain(1, *base_args(workspace, workspace["root"] / "x", **{"optim.lr": "quick"}), check=False)
    assert result.returncode != 0 and "optim.lr" in result.stderr


def test_missing_model_directory(workspace):
    absent = workspace["root"] / "no_model_here"
    result = expect_failure(workspace, "nomodel", [absent, "model.path"], **{"model.path": absent})
    # Each failing rank names itself; the first to fail ends the job for the others.
    assert re.search(r"error on rank [01]: ", result.stderr), result.stderr


def test_malformed_config_json(workspace):
    model = copy_model(workspace, "badjson")
    (model / "config.json").write_text("{ not json")
    expect_failure(workspace, "badjson", [model / "config.json"], **{"model.path": model})
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    expect_failure(workspace, "missingkey", [model / "config.json"], **{"model.path": model})


def test_bad_safetensors(workspace):
    model = copy_model(workspace, "badheader")
    weights = model / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes((10**12).to_bytes(8, "little") + blob[8:])  # header length beyond the file
    expect_failure(workspace, "badheader", [weights], **{"model.path": model})
    weights.write_bytes(blob[: len(blob) // 2])  # truncated: tensor data missing
    expect_failure(workspace, "truncated", [weights], **{"model.path": model})


def test_bad_dataset(workspace):
    missing = workspace["root"] / "absent.h5"
    expect_failure(workspace, "nodata", [missing], **{"data.path": missing})
    wrong = workspace["root"] / "wrong_schema.h5"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("tokens", data=np.zeros(100, dtype=np.int32))
    expect_failure(workspace, "schema", [wrong], **{"data.path": wrong})
    truncated = workspace["root"] / "truncated.h5"
    blob = workspace["data"].read_bytes()
    truncated.write_bytes(blob[: len(blob) // 3])
    expect_failure(workspace, "truncatedh5", [truncated], **{"data.path": truncated})


def test_existing_run_is_not_overwritten(workspace):
    run_dir = workspace["root"] / "keep"
    run_ftrain(1, *base_args(workspace, run_dir, **{"train.steps": 2}))
    checkpoint = run_dir / "checkpoints" / "step_00000002" / "state.h5"
    before = checkpoint.read_bytes()
    result = run_ftrain(2, *base_args(workspace, run_dir, **{"train.steps": 4}), check=False)
    assert result.returncode != 0 and "run.resume" in result.stderr
    assert checkpoint.read_bytes() == before


def test_prep_refuses_missing_tokenizer_and_keeps_output(workspace):
    output = workspace["root"] / "kept.h5"
    output.write_bytes(b"precious")
    absent = workspace["root"] / "no_tokenizer"
    result = subprocess.run([PREP, "--tokenizer", absent, "--input", workspace["root"] / "corpus.jsonl",
                             "--seq-len", "32", "--output", output, "--overwrite"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0 and str(absent) in result.stderr
    assert output.read_bytes() == b"precious"
