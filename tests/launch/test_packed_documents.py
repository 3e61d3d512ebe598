"""Packing with document masking: several documents in one row, each read as if alone
(its positions from 0, attention within itself; docs/dataset-format.md, format_version
2). The step of a batch of packed rows equals the step of the same documents one per
padded row: loss, grad_norm and the updated weights, for GPT-2 and Llama, on one rank,
split over a tensor-parallel group (with sequence parallelism for GPT-2) and over two
data-parallel ranks (ZeRO-2, ZeRO-3). The
documents' logits in a packed row equal those transformers gives each document alone.
A version-1 dataset with a document id in its attention_mask is refused by row."""

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ftrain_jobs import grad_norms, losses, run_ftrain, tiny_gpt2, tiny_llama

SEQ_LEN = 32
VOCAB = 1024
PAD = 0


def documents(seed=0, count=14):
    """Documents of 2 to 20 tokens: rows of 32 hold one to several of them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(length)) for length in rng.integers(2, 21, size=count)]


def pack(docs):
    """Greedy first fit in order: (ids, document ids) rows of SEQ_LEN, padded."""
    rows, row = [], []
    for doc in docs:
        if sum(len(d) for d in row) + len(doc) > SEQ_LEN:
            rows.append(row)
            row = []
        row.append(doc)
    rows.append(row)
    if len(rows) % 2:
        rows.append([])  # an even count, for two data-parallel ranks: a row of padding adds no target
    ids = np.full((len(rows), SEQ_LEN), PAD, dtype=np.int32)
    ids_of_documents = np.zeros((len(rows), SEQ_LEN), dtype=np.uint8)
    for r, row in enumerate(rows):
        at = 0
        for number, doc in enumerate(row, start=1):
            ids[r, at:at + len(doc)] = doc
            ids_of_documents[r, at:at + len(doc)] = number
            at += len(doc)
    return ids, ids_of_documents


def one_per_row(docs, left=False):
    ids = np.full((len(docs), SEQ_LEN), PAD, dtype=np.int32)
    mask = np.zeros((len(docs), SEQ_LEN), dtype=np.uint8)
    for r, doc in enumerate(docs):
        at = SEQ_LEN - len(doc) if left else 0
        ids[r, at:at + len(doc)] = doc
        mask[r, at:at + len(doc)] = 1
    return ids, mask


def write(path, ids, mask, version):
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": version, "seq_len": SEQ_LEN,
                        "vocab_size": VOCAB, "eos_id": -1, "pad_id": PAD, "tokenizer": "synthetic",
                        "task": "causal_lm"})
        for split in ("train", "validation"):
            group = f.create_group(split)
            group.attrs["num_documents"] = len(ids)
            group.create_dataset("input_ids", data=ids)
            group.create_dataset("attention_mask", data=mask)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    docs = documents()
    packed_ids, packed_documents = pack(docs)
    assert len(packed_ids) < len(docs) and packed_documents.max() >= 3, "rows should hold several documents"
    single_ids, single_mask = one_per_row(docs)
    return {"root": root, "docs": docs, "packed_rows": len(packed_ids), "single_rows": len(docs),
            "packed": write(root / "packed.h5", packed_ids, packed_documents, 2),
            "packed_ids": packed_ids, "packed_documents": packed_documents,
            "single": write(root / "single.h5", single_ids, single_mask, 1),
            "left": write(root / "left.h5", *one_per_row(docs, left=True), 1),
            "gpt2": tiny_gpt2(root / "gpt2", vocab_size=VOCAB), "llama": tiny_llama(root / "llama", vocab_size=VOCAB)}


def step(ws, family, data, rows, name, **overrides):
    """One optimizer step over every row at once, and the exported weights after it."""
    run_dir = ws["root"] / name
    options = {"run.dir": run_dir, "model.path": ws[family], "model.dropout": 0, "data.path": ws[data],
               "data.micro_batch_size": rows // overrides.get("dp", 1), "train.global_batch_size": rows,
               "train.steps": 1, "train.eval_every": 0, "optim.lr": 1e-2, "optim.warmup_steps": 0,
               "checkpoint.every": 0, "checkpoint.export_hf": "true", "checkpoint.keep_best": "false",
               "train.grad_clip": 0}
    options.update({k: v for k, v in overrides.items() if k != "dp"})
    ranks = int(overrides.get("dist.tp", 1)) * overrides.get("dp", 1)
    run_ftrain(ranks, *[f"--{key}={value}" for key, value in options.items()])
    return run_dir


CASES = [("gpt2", {}), ("llama", {}), ("gpt2", {"dist.tp": 2, "dist.sequence_parallel": "true"}),
         ("llama", {"dist.tp": 2}), ("gpt2", {"dp": 2, "dist.zero": 2}), ("llama", {"dp": 2, "dist.zero": 3})]


@pytest.mark.parametrize("family,layout", CASES,
                         ids=["gpt2", "llama", "gpt2-tp2-sp", "llama-tp2", "gpt2-dp2-zero2", "llama-dp2-zero3"])
def test_a_packed_step_equals_the_documents_one_per_row(workspace, family, layout):
    single = workspace["root"] / f"{family}_single"
    if not (single / "final").exists():
        step(workspace, family, "single", workspace["single_rows"], f"{family}_single")
    suffix = "_".join(f"{k}{v}" for k, v in layout.items())
    packed = step(workspace, family, "packed", workspace["packed_rows"], f"{family}_packed_{suffix}", **layout)
    assert losses(packed)[1] == pytest.approx(losses(single)[1], rel=1e-5)
    assert grad_norms(packed)[1] == pytest.approx(grad_norms(single)[1], rel=1e-5)
    expected, got = load_file(single / "final/model.safetensors"), load_file(packed / "final/model.safetensors")
    # Adam divides by sqrt(v) + eps: a weight whose gradient is rounding noise moves by
    # noise of order lr (1e-2) times that noise's relative size; atol covers them.
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rows_padded_on_the_left_train_like_rows_padded_on_the_right(workspace, family):
    # Right-padded rows run without the mask (causal attention never reads their
    # padding); left-padded ones need it, for attention and for the positions.
    single = workspace["root"] / f"{family}_single"
    if not (single / "final").exists():
        step(workspace, family, "single", workspace["single_rows"], f"{family}_single")
    left = step(workspace, family, "left", workspace["single_rows"], f"{family}_left")
    assert losses(left)[1] == pytest.approx(losses(single)[1], rel=1e-5)
    assert grad_norms(left)[1] == pytest.approx(grad_norms(single)[1], rel=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_loss_of_a_packed_row_is_that_of_its_documents_alone_in_transformers(workspace, family):
    # The step-1 loss is the mean next-token loss over every document's tokens but its
    # first, each document run alone through transformers' model.
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(workspace[family]).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in workspace["docs"]:
            ids = torch.from_numpy(doc.astype(np.int64))[None]
            logits = model(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(doc) - 1
    packed = step(workspace, family, "packed", workspace["packed_rows"], f"{family}_packed_vs_hf")
    assert losses(packed)[1] == pytest.approx(total / count, rel=1e-5)


def test_document_ids_in_a_version_1_dataset_are_refused_by_row(workspace):
    bad = write(workspace["root"] / "bad.h5", workspace["packed_ids"], workspace["packed_documents"], 1)
    run_dir = workspace["root"] / "bad_run"
    result = run_ftrain(1, *[f"--{k}={v}" for k, v in {
        "run.dir": run_dir, "model.path": workspace["gpt2"], "data.path": bad, "data.micro_batch_size": 1,
        "train.global_batch_size": 1, "train.steps": 1, "train.eval_every": 0, "optim.warmup_steps": 0,
        "data.shuffle": "false"}.items()], check=False)
    assert result.returncode != 0
    assert "dataset row 0 has attention_mask" in result.stderr and "format_version" in result.stderr, result.stderr
