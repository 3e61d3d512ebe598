"""Every layout trains like one rank: tensor parallelism (with and without sequence
parallelism), data parallelism and ZeRO, alone and combined, give the losses and final
weights of a single-rank run of the same global batch (CPU, fp32, mpirun), for GPT-2
and for a Llama with grouped-query attention. Checkpoints store global shapes, so a run
resumes under another layout."""
import json

import numpy as np
import pytest
import torch

from ftrain_jobs import grad_norms, losses, prepare_corpus, records, run_ftrain, sample_rows, tiny_gpt2, tiny_llama

STEPS = 20
# (tp, dp, ZeRO stage): the layouts the equivalence must hold for.
LAYOUTS = [(1, 4, 0), (1, 4, 1), (1, 4, 2), (1, 4, 3), (2, 2, 0), (2, 2, 1), (2, 2, 2), (2, 2, 3), (4, 1, 0)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    data = prepare_corpus(root, 600)
    # 1030 tokens: not a multiple of 4, so the vocabulary shards carry padding rows.
    gpt2 = tiny_gpt2(root / "gpt2", vocab_size=1030)
    llama = tiny_llama(root / "llama", vocab_size=1030)
    return {"root": root, "data": data, "gpt2": gpt2, "llama": llama}


def args(ws, family, run_dir, **overrides):
    options = {
        "run.dir": run_dir, "model.path": ws[family], "model.init": "pretrained", "model.dropout": 0,
        "data.path": ws["data"], "data.micro_batch_size": 2, "train.global_batch_size": 8,
        "train.steps": STEPS, "train.eval_every": 0, "train.eval_samples": 16, "optim.lr": 3e-3,
        "optim.min_lr": 3e-4, "optim.warmup_steps": 2, "checkpoint.every": 0, "checkpoint.export_hf": "true",
        "train.grad_clip": 0.5,
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def reference(ws, family):
    run_dir = ws["root"] / f"{family}_reference"
    if not (run_dir / "final").exists():
        run_ftrain(1, *args(ws, family, run_dir))
    return run_dir


def assert_same_training(expected_dir, got_dir, steps=range(1, STEPS + 1)):
    expected, got = losses(expected_dir), losses(got_dir)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    # The gradient norm too: under AdamW with clipping, a wrong gradient scale could
    # leave losses and weights close while the norm the clip reads is not.
    expected_norms, got_norms = grad_norms(expected_dir), grad_norms(got_dir)
    for step in steps:
        assert got_norms[step] == pytest.approx(expected_norms[step], rel=1e-4), f"grad_norm, step {step}"
    from safetensors.numpy import load_file
    weights, reference_weights = load_file(got_dir / "final/model.safetensors"), load_file(expected_dir / "final/model.safetensors")
    assert weights.keys() == reference_weights.keys()
    # Adam divides by sqrt(v) + eps: entries whose gradient is only rounding noise (the
    # key bias, which softmax ignores) move by noise of order lr; atol covers them.
    for name in weights:
        np.testing.assert_allclose(weights[name], reference_weights[name], rtol=1e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("tp,dp,zero", LAYOUTS, ids=[f"tp{t}-dp{d}-zero{z}" for t, d, z in LAYOUTS])
def test_layout_trains_like_one_rank(workspace, family, tp, dp, zero):
    expected = reference(workspace, family)
    run_dir = workspace["root"] / f"{family}_tp{tp}_dp{dp}_zero{zero}"
    result = run_ftrain(tp * dp, *args(workspace, family, run_dir, **{"dist.tp": tp, "dist.zero": zero}))
    assert f"tp {tp} x dp {dp}" in result.stdout
    assert losses(expected)[STEPS] < losses(expected)[1] - 0.5, "the loss should fall over the run"
    assert_same_training(expected, run_dir)


def test_layout_trains_like_one_rank_without_clipping(workspace):
    # With train.grad_clip = 0 the gradient norm is only logged, so a wrong norm could
    # hide behind right updates, and a wrong gradient scale is no longer clipped away:
    # both must still match one rank, under tensor parallelism and ZeRO-3 at once.
    expected = workspace["root"] / "gpt2_reference_noclip"
    if not (expected / "final").exists():
        run_ftrain(1, *args(workspace, "gpt2", expected, **{"train.grad_clip": 0}))
    run_dir = workspace["root"] / "gpt2_tp2_dp2_zero3_noclip"
    run_ftrain(4, *args(workspace, "gpt2", run_dir, **{"dist.tp": 2, "dist.zero": 3, "train.grad_clip": 0}))
    assert max(grad_norms(expected).values()) > 1.0, "the run should have gradients clipping would have cut"
    assert_same_training(expected, run_dir)


RANDOM_LAYOUTS = [(1, 4, 3), (2, 2, 3), (2, 2, 0)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("tp,dp,zero", RANDOM_LAYOUTS, ids=[f"tp{t}-dp{d}-zero{z}" for t, d, z in RANDOM_LAYOUTS])
def test_random_init_trains_like_one_rank(workspace, family, tp, dp, zero):
    # model.init = random: each parameter's whole value is drawn from its own generator
    # and each rank keeps its part (ZeRO-3 shards, tensor-parallel parts), so the split
    # and sharded runs start from the one-rank model and train like it.
    expected = workspace["root"] / f"{family}_random_reference"
    if not (expected / "final").exists():
        run_ftrain(1, *args(workspace, family, expected, **{"model.init": "random"}))
    run_dir = workspace["root"] / f"{family}_random_tp{tp}_dp{dp}_zero{zero}"
    run_ftrain(tp * dp, *args(workspace, family, run_dir, **{"model.init": "random", "dist.tp": tp, "dist.zero": zero}))
    assert losses(expected)[1] != pytest.approx(losses(reference(workspace, family))[1], rel=1e-5), \
        "the random model should differ from the saved one"
    assert_same_training(expected, run_dir)


# (family, tp, dp, ZeRO stage) with sequence parallelism: the blocks' norm and dropout
# regions split along the sequence over the tensor-parallel group.
SEQUENCE_LAYOUTS = [("gpt2", 2, 2, 3), ("gpt2", 4, 1, 0), ("llama", 2, 2, 1), ("llama", 4, 1, 0)]


@pytest.mark.parametrize("family,tp,dp,zero", SEQUENCE_LAYOUTS,
                         ids=[f"{f}-tp{t}-dp{d}-zero{z}" for f, t, d, z in SEQUENCE_LAYOUTS])
def test_sequence_parallel_layout_trains_like_one_rank(workspace, family, tp, dp, zero):
    expected = reference(workspace, family)
    run_dir = workspace["root"] / f"{family}_sp_tp{tp}_dp{dp}_zero{zero}"
    result = run_ftrain(tp * dp, *args(workspace, family, run_dir, **{
        "dist.tp": tp, "dist.zero": zero, "dist.sequence_parallel": "true"}))
    assert f"tp {tp} (sequence parallel) x dp {dp}" in result.stdout
    assert_same_training(expected, run_dir)


@pytest.mark.parametrize("tp,sequence_parallel", [(2, "false"), (2, "true"), (4, "true")],
                         ids=["tp2", "tp2-sp", "tp4-sp"])
def test_tensor_parallel_with_dropout_trains_like_one_rank(workspace, tp, sequence_parallel):
    # Each rank drops its heads and positions with their part of the whole model's mask,
    # so with the same rows per step even dropout trains exactly as on one rank.
    dropout = {"model.dropout": 0.1, "train.steps": 8}
    expected = workspace["root"] / "gpt2_dropout_reference"
    if not (expected / "final").exists():
        run_ftrain(1, *args(workspace, "gpt2", expected, **dropout))
    run_dir = workspace["root"] / f"gpt2_dropout_tp{tp}_sp{sequence_parallel}"
    run_ftrain(tp, *args(workspace, "gpt2", run_dir, **dropout, **{
        "dist.tp": tp, "dist.sequence_parallel": sequence_parallel}))
    reference_losses, got = losses(expected), losses(run_dir)
    assert sorted(got) == list(range(1, 9))
    for step in reference_losses:
        assert got[step] == pytest.approx(reference_losses[step], rel=1e-5), f"step {step}"
    without = reference(workspace, "gpt2")
    assert losses(without)[1] != pytest.approx(reference_losses[1], rel=1e-5), "dropout should change the loss"
    from safetensors.numpy import load_file
    a, b = load_file(expected / "final/model.safetensors"), load_file(run_dir / "final/model.safetensors")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=2e-5, err_msg=name)


def test_sequence_parallel_needs_a_sequence_the_group_divides(workspace):
    # 30-token rows cannot be split evenly over 4 ranks: refused at start-up, naming the
    # option, the data and the sizes, before a checkpoint is written.
    import subprocess
    import sys
    from ftrain_jobs import PREP, SOURCE
    corpus, data = workspace["root"] / "corpus30.jsonl", workspace["root"] / "data30.h5"
    subprocess.run([sys.executable, SOURCE / "scripts/make_demo_corpus.py", corpus, "--documents", "50"], check=True)
    subprocess.run([PREP, "--tokenizer", SOURCE / "configs/models/tiny-gpt2", "--input", corpus, "--seq-len", "30",
                    "--validation-fraction", "0.1", "--output", data], check=True, capture_output=True)
    run_dir = workspace["root"] / "sp_indivisible"
    result = run_ftrain(4, *args(workspace, "gpt2", run_dir, **{
        "data.path": data, "dist.tp": 4, "dist.sequence_parallel": "true"}), check=False)
    assert result.returncode != 0
    assert "dist.sequence_parallel" in result.stderr and "30 tokens" in result.stderr, result.stderr
    assert "dist.tp = 4" in result.stderr and str(data) in result.stderr
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("family,tp,dp,zero", [("llama", 4, 1, 0), ("gpt2", 1, 4, 3), ("llama", 2, 2, 3)],
                         ids=["llama-tp4", "gpt2-dp4-zero3", "llama-tp2-dp2-zero3"])
def test_exported_split_model_loads_in_transformers(workspace, family, tp, dp, zero):
    # The export of a split or sharded model (streamed tensor by tensor from the shards,
    # GPT-2's Conv1D weights transposed back) is one ordinary Hugging Face model:
    # transformers reads it and computes what the single-rank export computes.
    from transformers import AutoModelForCausalLM
    split = workspace["root"] / f"{family}_tp{tp}_dp{dp}_zero{zero}"
    if not (split / "final").exists():
        run_ftrain(tp * dp, *args(workspace, family, split, **{"dist.tp": tp, "dist.zero": zero}))
    ids = torch.randint(0, 1030, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(split / "final").eval()(ids).logits
        expected = AutoModelForCausalLM.from_pretrained(reference(workspace, family) / "final").eval()(ids).logits
    assert got.shape == (2, 16, 1030)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("first,second", [((2, 2, 1), (1, 2, 0)), ((1, 4, 2), (4, 1, 0))],
                         ids=["tp2-to-tp1", "zero2-to-tp4"])
def test_resume_under_another_layout(workspace, first, second):
    # A checkpoint holds every tensor once in its global shape, so a run stopped under
    # one layout continues under another as if uninterrupted.
    expected = reference(workspace, "gpt2")
    run_dir = workspace["root"] / f"gpt2_resume_{'_'.join(map(str, first))}_{'_'.join(map(str, second))}"
    tp, dp, zero = first
    run_ftrain(tp * dp, *args(workspace, "gpt2", run_dir, **{"dist.tp": tp, "dist.zero": zero,
                                                            "run.exit_after_steps": 7, "run.log_samples": "true"}))
    assert sorted(losses(run_dir)) == list(range(1, 8))
    tp, dp, zero = second
    result = run_ftrain(tp * dp, *args(workspace, "gpt2", run_dir, **{"dist.tp": tp, "dist.zero": zero,
                                                                     "run.resume": "auto", "run.log_samples": "true"}))
    assert "resumed from" in result.stdout
    assert_same_training(expected, run_dir)
    # The data position is exact: every step trained on the rows one rank's
    # uninterrupted run trained on, and 20 steps of 8 rows, less than an epoch of the
    # 600-document corpus, saw no row twice.
    one_rank = workspace["root"] / "gpt2_reference_samples"
    if not (one_rank / "samples").exists():
        run_ftrain(1, *args(workspace, "gpt2", one_rank, **{"run.log_samples": "true",
                                                            "checkpoint.export_hf": "false"}))
    rows, expected_rows = sample_rows(run_dir), sample_rows(one_rank)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert all(len(rows[step]) == 8 for step in rows)
    assert rows == expected_rows
    every_row = [row for step in rows for row in rows[step]]
    assert len(every_row) == len(set(every_row))


@pytest.mark.parametrize("tp,dp,zero,background", [(1, 4, 3, True), (2, 2, 3, True), (1, 4, 3, False)],
                         ids=["tp1-dp4-zero3", "tp2-dp2-zero3", "tp1-dp4-zero3-written-in-place"])
def test_a_sharded_resume_on_the_same_layout_is_bit_identical(workspace, tp, dp, zero, background):
    # Each rank reads back only its shard's blocks (checkpoint format 3); on the same
    # layout the run continues exactly: the same losses, gradient norms and weights, to
    # the bit, as the run that was never stopped. With checkpoint.async = false the save
    # writes the CPU shards from where they lie, without a host copy.
    uninterrupted = workspace["root"] / f"gpt2_uninterrupted_tp{tp}_dp{dp}_zero{zero}"
    if not (uninterrupted / "final").exists():
        run_ftrain(tp * dp, *args(workspace, "gpt2", uninterrupted, **{"dist.tp": tp, "dist.zero": zero}))
    run_dir = workspace["root"] / f"gpt2_resumed_tp{tp}_dp{dp}_zero{zero}_{'async' if background else 'sync'}"
    layout = {"dist.tp": tp, "dist.zero": zero, "checkpoint.async": str(background).lower()}
    run_ftrain(tp * dp, *args(workspace, "gpt2", run_dir, **layout, **{"run.exit_after_steps": 7}))
    assert sorted(losses(run_dir)) == list(range(1, 8))
    result = run_ftrain(tp * dp, *args(workspace, "gpt2", run_dir, **layout, **{"run.resume": "auto"}))
    assert "resumed from" in result.stdout
    assert losses(run_dir) == losses(uninterrupted)
    assert grad_norms(run_dir) == grad_norms(uninterrupted)
    from safetensors.numpy import load_file
    weights, expected = load_file(run_dir / "final/model.safetensors"), load_file(uninterrupted / "final/model.safetensors")
    assert weights.keys() == expected.keys()
    for name in weights:
        np.testing.assert_array_equal(weights[name], expected[name], err_msg=name)


def test_a_tensor_parallel_size_the_model_cannot_take_is_refused(workspace):
    # 3 does not divide the 4 attention heads: refused at start-up, naming the option,
    # the model and the sizes.
    result = run_ftrain(3, *args(workspace, "gpt2", workspace["root"] / "tp3", **{"dist.tp": 3}), check=False)
    assert result.returncode != 0
    assert "dist.tp = 3" in result.stderr and "n_head 4" in result.stderr and str(workspace["gpt2"]) in result.stderr
    assert not (workspace["root"] / "tp3" / "checkpoints").exists()


def gpt2_local_parameters(ws, tp):
    """Elements each tensor-parallel rank holds of the tiny GPT-2 (docs/tensor-parallel.md):
    split matrices and their biases 1/tp, the vocabulary padded to a multiple of tp,
    everything else whole."""
    from safetensors.numpy import load_file
    total = 0
    for name, tensor in load_file(ws["gpt2"] / "model.safetensors").items():
        if name.endswith("wte.weight"):
            total += -(-tensor.shape[0] // tp) * tensor.shape[1]
        elif any(part in name for part in ("c_attn.", "c_fc.", "c_proj.weight")):
            total += tensor.size // tp
        elif name.startswith("lm_head"):
            continue  # tied to wte
        else:
            total += tensor.size
    return total


@pytest.mark.parametrize("tp,dp,zero", [(2, 1, 0), (2, 2, 1), (4, 1, 0)], ids=["tp2", "tp2-dp2-zero1", "tp4"])
def test_communication_volume_matches_the_formulas(workspace, tp, dp, zero):
    # Per micro-batch of B rows of T tokens, width C, L layers, one fp32 all-reduce of n
    # elements sends 2 (tp-1)/tp n 4 bytes per rank. Megatron tensor parallelism: the
    # embedding's all-reduce, 2 per layer forward and 2 backward, the head's input
    # gradient, and 3 of B (T-1) values in the vocabulary-parallel cross-entropy. Data
    # parallelism over the dp group adds 2 psi_local (dp-1)/dp elements per step (ZeRO
    # pads psi_local to a multiple of dp); scalar all-reduces add a few bytes.
    B, T, C, L = 2, 32, 32, 2
    accumulation = 8 // (B * dp)
    tp_elements = accumulation * ((1 + 4 * L + 1) * B * T * C + 3 * B * (T - 1))
    dp_elements = 2 * gpt2_local_parameters(workspace, tp) * (dp - 1) / dp
    expected = tp_elements * 2 * (tp - 1) / tp * 4 + dp_elements * 4
    run_dir = workspace["root"] / f"gpt2_volume_tp{tp}_dp{dp}_zero{zero}"
    run_ftrain(tp * dp, *args(workspace, "gpt2", run_dir, **{"dist.tp": tp, "dist.zero": zero, "train.steps": 2,
                                                            "checkpoint.export_hf": "false"}))
    steps = [r for r in records(run_dir) if "comm_bytes" in r]
    assert len(steps) == 2
    for record in steps:
        assert record["comm_bytes"] == pytest.approx(expected, rel=1e-4, abs=256), record


def test_sequence_parallel_communication_volume_matches_the_formulas(workspace):
    # Sequence parallelism replaces each all-reduce around a block's split layers by a
    # reduce-scatter and an all-gather, each (tp-1)/tp n 4 bytes: forward 2L + 1
    # all-gathers (the last gathers the final norm's output) and 2L reduce-scatters,
    # backward 2L + 1 of each. The embedding's and the loss's all-reduces stay; the
    # gradients of what the blocks repeat (two LayerNorms and two row-parallel biases a
    # layer, 6C, and ln_f's 2C) are all-reduced, per micro-batch.
    B, T, C, L, tp = 2, 32, 32, 2, 2
    accumulation = 8 // B
    ring = (tp - 1) / tp
    all_reduced = B * T * C + 3 * B * (T - 1) + (6 * L + 2) * C
    split = (8 * L + 3) * B * T * C
    expected = accumulation * (2 * all_reduced + split) * ring * 4
    run_dir = workspace["root"] / "gpt2_volume_sp"
    run_ftrain(tp, *args(workspace, "gpt2", run_dir, **{"dist.tp": tp, "dist.sequence_parallel": "true",
                                                       "train.steps": 2, "checkpoint.export_hf": "false"}))
    steps = [r for r in records(run_dir) if "comm_bytes" in r]
    assert len(steps) == 2
    for record in steps:
        assert record["comm_bytes"] == pytest.approx(expected, rel=1e-4, abs=256), record


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("tp,dp,zero", [(1, 2, 0), (2, 2, 3)], ids=["dp2", "tp2-dp2-zero3"])
def test_activation_checkpointing_trains_the_same(workspace, family, tp, dp, zero):
    # With dropout on, recomputing each block in the backward pass must draw the masks
    # of the original forward: the same losses and weights as without checkpointing.
    runs = {}
    for checkpointing in ("false", "true"):
        run_dir = workspace["root"] / f"{family}_ac_{checkpointing}_tp{tp}_dp{dp}_zero{zero}"
        run_ftrain(tp * dp, *args(workspace, family, run_dir, **{
            "dist.tp": tp, "dist.zero": zero, "model.dropout": 0.1, "train.steps": 8,
            "train.activation_checkpointing": checkpointing}))
        runs[checkpointing] = run_dir
    plain, checkpointed = losses(runs["false"]), losses(runs["true"])
    assert sorted(checkpointed) == list(range(1, 9))
    for step in plain:
        assert checkpointed[step] == pytest.approx(plain[step], rel=1e-6), f"step {step}"
    from safetensors.numpy import load_file
    a, b = load_file(runs["false"] / "final/model.safetensors"), load_file(runs["true"] / "final/model.safetensors")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_zero3_memory_is_a_shard_plus_the_working_set(workspace):
    # ZeRO-3 on 4 ranks: each rank keeps 1/4 of the parameters, gradients and AdamW
    # moments between uses, plus what one step has gathered at once (dist/zero.h):
    #   - the token embedding (tied to the head) is never gathered: it streams by rows,
    #     R = ceil(V / 4) rows a rank, so its unit is padded to whole rows;
    #   - the input unit (position embeddings) until block 0 starts, and again with its
    #     gradients after block 0's backward;
    #   - two neighbouring blocks in the forward (one running, the next prefetched), the
    #     root (final norm) from the last block on;
    #   - for gradients two neighbouring full buffers (one block computing its backward
    #     while the one after it is reduce-scattered: dist.overlap, on by default).
    # Other units are padded to a multiple of 4 elements. fp32: 4 bytes.
    from safetensors.numpy import load_file
    ranks = 4
    units, vocabulary = {}, None
    for name, tensor in load_file(workspace["gpt2"] / "model.safetensors").items():
        parts = name.split(".")
        if parts[1] == "h":
            unit = f"block{parts[2]}"
        elif parts[1] == "wte":
            unit, vocabulary = "vocabulary", tensor.shape
        elif parts[1] == "wpe":
            unit = "input"
        else:
            unit = "root"
        units[unit] = units.get(unit, 0) + tensor.size
    padded = {unit: -(-n // ranks) * ranks for unit, n in units.items()}
    padded["vocabulary"] = -(-vocabulary[0] // ranks) * ranks * vocabulary[1]
    blocks = [padded[f"block{b}"] for b in range(len(units) - 3)]
    assert len(blocks) == 2
    pair = max(a + b for a, b in zip(blocks, blocks[1:]))
    shards = sum(padded.values()) // ranks
    psi = sum(units.values())
    # Parameters and gradients alike: the most held at once besides the shards.
    working = max(pair, padded["input"] + blocks[0], blocks[-1] + padded["root"])

    run_dir = workspace["root"] / "gpt2_zero3_memory"
    run_ftrain(ranks, *args(workspace, "gpt2", run_dir, **{"dist.zero": 3, "train.steps": 2,
                                                          "checkpoint.export_hf": "false"}))
    [record] = [r for r in records(run_dir) if "memory" in r]
    assert len(record["memory"]) == ranks
    for entry in record["memory"]:
        assert entry["parameter_bytes"] == 4 * (shards + working)
        assert entry["gradient_bytes"] == 4 * (shards + working)
    assert sum(e["optimizer_bytes"] for e in record["memory"]) == 2 * 4 * psi
    # Against one rank holding everything (parameters, gradients, two moments: 4 x 4 psi):
    # a quarter of that (the vocabulary's padding rows included) plus the working set.
    for entry in record["memory"]:
        total = entry["parameter_bytes"] + entry["gradient_bytes"] + entry["optimizer_bytes"]
        assert total <= 4 * 4 * (psi + padded["vocabulary"] - units["vocabulary"]) / ranks + 2 * 4 * working + 64


def test_zero3_without_prefetch_trains_the_same_holding_one_block(workspace):
    # dist.prefetch = false: each block is gathered when it runs, never beside the next
    # one, so the parameters held at once besides the shards are the largest of the
    # input unit, one block and the root; training is unchanged.
    from safetensors.numpy import load_file
    ranks = 4
    units = {}
    for name, tensor in load_file(workspace["gpt2"] / "model.safetensors").items():
        parts = name.split(".")
        unit = f"block{parts[2]}" if parts[1] == "h" else {"wte": "vocabulary", "wpe": "input"}.get(parts[1], "root")
        units[unit] = units.get(unit, 0) + (-(-tensor.shape[0] // ranks) * ranks * tensor.shape[1]
                                            if unit == "vocabulary" else tensor.size)
    padded = {unit: -(-n // ranks) * ranks for unit, n in units.items()}
    shards = sum(padded.values()) // ranks
    run_dir = workspace["root"] / "gpt2_dp4_zero3_no_prefetch"
    run_ftrain(ranks, *args(workspace, "gpt2", run_dir, **{"dist.zero": 3, "dist.prefetch": "false"}))
    assert_same_training(reference(workspace, "gpt2"), run_dir)
    [record] = [r for r in records(run_dir) if "memory" in r]
    one_at_a_time = max(padded["input"], padded["block0"], padded["block1"], padded["root"])
    for entry in record["memory"]:
        assert entry["parameter_bytes"] == 4 * (shards + one_at_a_time)


@pytest.fixture(scope="module")
def sentiment(workspace):
    """A tiny BERT (vocabulary 1030: padded shards at tp 4) and a labelled dataset whose
    class is which marker token a row holds."""
    import h5py
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    bert = workspace["root"] / "bert"
    BertModel(BertConfig(vocab_size=1030, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=0)).save_pretrained(
        bert, safe_serialization=True)
    rng = np.random.default_rng(5)

    def rows(count):
        lengths = rng.integers(4, 17, size=count)
        ids = rng.integers(4, 1030, size=(count, 16))
        labels = rng.integers(0, 3, size=count)
        ids[np.arange(count), rng.integers(1, 4, size=count)] = labels + 1
        mask = (np.arange(16)[None, :] < lengths[:, None])
        return np.where(mask, ids, 0).astype(np.int32), mask.astype(np.uint8), labels.astype(np.int64)

    data = workspace["root"] / "sentiment.h5"
    with h5py.File(data, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": 1, "seq_len": 16, "vocab_size": 1030,
                        "eos_id": -1, "pad_id": 0, "tokenizer": "synthetic", "task": "sequence_classification",
                        "label_names": json.dumps(["one", "two", "three"]), "num_labels": 3})
        for split, count in (("train", 256), ("validation", 48), ("test", 64)):
            ids, mask, labels = rows(count)
            group = f.create_group(split)
            group.attrs["num_documents"] = count
            group.create_dataset("input_ids", data=ids)
            group.create_dataset("attention_mask", data=mask)
            group.create_dataset("labels", data=labels)
    return {"model": bert, "data": data}


def train_classifier_like_one_rank(workspace, sentiment, name, model_path, tp, dp, zero, sequence_parallel=False):
    """Trains the sentiment classifier on `model_path` on one rank and under the layout;
    checks the losses, test report and export agree. Returns both run directories."""
    def classifier_args(run_dir, **more):
        return args(workspace, "gpt2", run_dir, **{"model.path": model_path, "data.path": sentiment["data"],
                                                   "train.steps": 12, "train.eval_every": 6, "train.eval_samples": 0,
                                                   "optim.lr": 1e-3, **more})
    one = workspace["root"] / f"{name}_reference"
    if not (one / "final").exists():
        run_ftrain(1, *classifier_args(one))
    run_dir = workspace["root"] / f"{name}_tp{tp}_dp{dp}_zero{zero}{'_sp' if sequence_parallel else ''}"
    run_ftrain(tp * dp, *classifier_args(run_dir, **{"dist.tp": tp, "dist.zero": zero,
                                                     "dist.sequence_parallel": str(sequence_parallel).lower()}))
    assert_same_classifier(one, run_dir)
    return one, run_dir


@pytest.mark.parametrize("body,tp,dp,zero", [("bert", 4, 1, 0), ("bert", 2, 2, 3), ("llama", 2, 2, 1)],
                         ids=["bert-tp4", "bert-tp2-dp2-zero3", "llama-tp2-dp2-zero1"])
def test_classifier_with_sequence_parallelism_trains_like_one_rank(workspace, sentiment, body, tp, dp, zero):
    # The encoder's or decoder's output is gathered whole for the pooler and head, which
    # every rank computes alike: the losses, test report and export of one rank.
    model_path = sentiment["model"] if body == "bert" else workspace[body]
    name = "bert" if body == "bert" else f"{body}_classifier"
    train_classifier_like_one_rank(workspace, sentiment, name, model_path, tp, dp, zero, sequence_parallel=True)


@pytest.mark.parametrize("tp,dp,zero", [(2, 2, 1), (4, 1, 0), (2, 2, 3), (1, 4, 3)],
                         ids=["tp2-dp2-zero1", "tp4", "tp2-dp2-zero3", "dp4-zero3"])
def test_bert_classifier_layout_trains_like_one_rank(workspace, sentiment, tp, dp, zero):
    # BERT's layers split by heads and hidden units, its word embeddings by vocabulary,
    # a whole head on top: the losses, test report and export of one rank. At dp 4 under
    # ZeRO-3 the word embeddings stream by rows instead (1030 rows: 258 a rank, the last
    # rank's 2 past the vocabulary padding), with the padding token's row kept at zero
    # gradient.
    train_classifier_like_one_rank(workspace, sentiment, "bert", sentiment["model"], tp, dp, zero)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("tp,dp,zero", [(2, 1, 0), (2, 2, 1), (1, 4, 3)], ids=["tp2", "tp2-dp2-zero1", "dp4-zero3"])
def test_decoder_classifier_layout_trains_like_one_rank(workspace, sentiment, family, tp, dp, zero):
    # GPT-2 and Llama bodies split as in the language model (blocks by heads and MLP
    # width, the token embedding by vocabulary rows; the Llama's key/value heads split
    # at tp 2), the whole score head on each row's last real token: the losses, test
    # report and export of one rank, and transformers reads the export with the
    # single-rank logits.
    one, run_dir = train_classifier_like_one_rank(workspace, sentiment, f"{family}_classifier", workspace[family],
                                                  tp, dp, zero)
    from transformers import AutoModelForSequenceClassification
    ids = torch.randint(4, 1030, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = AutoModelForSequenceClassification.from_pretrained(run_dir / "final").eval()(ids).logits
        expected = AutoModelForSequenceClassification.from_pretrained(one / "final").eval()(ids).logits
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def assert_same_classifier(one, run_dir):
    expected, got = losses(one), losses(run_dir)
    assert sorted(got) == list(range(1, 13))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    report, reference_report = (json.loads((d / "test_report.json").read_text()) for d in (run_dir, one))
    assert report["metrics"]["accuracy"] == reference_report["metrics"]["accuracy"]
    assert report["metrics"]["loss"] == pytest.approx(reference_report["metrics"]["loss"], rel=1e-5)
    from safetensors.numpy import load_file
    weights, reference_weights = load_file(run_dir / "final/model.safetensors"), load_file(one / "final/model.safetensors")
    assert weights.keys() == reference_weights.keys()
    for name in weights:
        np.testing.assert_allclose(weights[name], reference_weights[name], rtol=1e-5, atol=2e-5, err_msg=name)
