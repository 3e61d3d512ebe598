"""End-to-end fine-tuning under mpirun: sequence classification (BERT, Llama) and token
classification (BERT) on small random models saved by transformers, and datasets
written with h5py from docs/dataset-format.md.

The numbers ftrain reports are checked against independent references: the test report
against the exported model run by transformers and scored by scikit-learn / seqeval;
data-parallel runs against one rank; the frozen-body stage against the starting weights;
the best checkpoint and early stopping against the validation history in metrics.jsonl.
"""
import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from seqeval.metrics import f1_score as entity_f1
from sklearn.metrics import accuracy_score, f1_score
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig, BertModel,
                          LlamaConfig, LlamaForCausalLM)

from ftrain_jobs import BUILD, ENV, TIMEOUT, assert_same_steps, records, run_ftrain

VOCAB = 64
SEQ_LEN = 12
PAD = 0
SENTIMENT = ["negative", "positive", "neutral"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def write_split(group, ids, mask, labels, types=None):
    group.attrs["num_documents"] = len(ids)
    group.create_dataset("input_ids", data=ids.astype(np.int32))
    group.create_dataset("attention_mask", data=mask.astype(np.uint8))
    group.create_dataset("labels", data=labels.astype(np.int64))
    if types is not None:
        group.create_dataset("token_type_ids", data=types.astype(np.uint8))


def write_dataset(path, task, label_names, splits):
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": 1, "seq_len": SEQ_LEN, "vocab_size": VOCAB,
                        "eos_id": -1, "pad_id": PAD, "tokenizer": "synthetic", "task": task,
                        "label_names": json.dumps(label_names), "num_labels": len(label_names)})
        for name, arrays in splits.items():
            write_split(f.create_group(name), *arrays)


def sentiment_rows(rng, count, longest=SEQ_LEN):
    """The class is which of the marker tokens 1, 2, 3 the row holds, at a random
    position among noise: learnable, but not from position or length."""
    lengths = rng.integers(4, longest + 1, size=count)
    ids = rng.integers(4, VOCAB, size=(count, SEQ_LEN))
    labels = rng.integers(0, 3, size=count)
    for row, length in enumerate(lengths):
        ids[row, rng.integers(0, length)] = labels[row] + 1
        ids[row, length:] = PAD
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.uint8)
    types = np.zeros_like(ids)
    return ids, mask, labels, types


def ner_rows(rng, count, longest=SEQ_LEN):
    """Tokens 1 and 2 start PER and LOC entities, token 3 continues one; some positions
    are continuation sub-tokens (-100), as ftrain-prep writes them."""
    lengths = rng.integers(5, longest + 1, size=count)
    ids = rng.integers(4, VOCAB, size=(count, SEQ_LEN))
    labels = np.full((count, SEQ_LEN), -100, dtype=np.int64)
    for row, length in enumerate(lengths):
        current = None
        for t in range(length):
            roll = rng.random()
            if roll < 0.15:
                ids[row, t], current = 1, "PER"
                labels[row, t] = TAGS.index("B-PER")
            elif roll < 0.3:
                ids[row, t], current = 2, "LOC"
                labels[row, t] = TAGS.index("B-LOC")
            elif roll < 0.45 and current:
                ids[row, t] = 3
                labels[row, t] = TAGS.index("I-" + current)
            elif roll < 0.55:
                continue  # a continuation sub-token: no tag
            else:
                current = None
                labels[row, t] = TAGS.index("O")
        ids[row, length:] = PAD
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.uint8)
    return ids, mask, labels, np.zeros_like(ids)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    sentiment = root / "sentiment.h5"
    write_dataset(sentiment, "sequence_classification", SENTIMENT,
                  {"train": sentiment_rows(rng, 256), "validation": sentiment_rows(rng, 37),
                   "test": sentiment_rows(rng, 45)})
    ner = root / "ner.h5"
    write_dataset(ner, "token_classification", TAGS,
                  {"train": ner_rows(rng, 256), "validation": ner_rows(rng, 31), "test": ner_rows(rng, 41)})

    torch.manual_seed(0)
    bert = root / "bert"
    BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=SEQ_LEN, pad_token_id=PAD)
              ).save_pretrained(bert, safe_serialization=True)
    llama = root / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
                                 tie_word_embeddings=False, pad_token_id=PAD)
                     ).save_pretrained(llama, safe_serialization=True)
    return {"root": root, "sentiment": sentiment, "ner": ner, "bert": bert, "llama": llama}


def args(ws, run_dir, model, data, **overrides):
    options = {
        "run.dir": run_dir, "model.path": ws[model], "model.dropout": 0, "data.path": ws[data],
        "data.micro_batch_size": 4, "train.global_batch_size": 16, "train.steps": 30, "train.eval_every": 10,
        "train.eval_samples": 0, "optim.lr": 1e-2, "optim.min_lr": 1e-4, "optim.warmup_steps": 3,
        "optim.weight_decay": 0.01, "checkpoint.every": 0,
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def split_arrays(path, split):
    with h5py.File(path, "r") as f:
        g = f[split]
        return (torch.from_numpy(g["input_ids"][...].astype(np.int64)),
                torch.from_numpy(g["attention_mask"][...].astype(np.int64)), g["labels"][...])


def hf_predictions(model_dir, auto_class, data, split):
    model = auto_class.from_pretrained(model_dir).eval()
    ids, mask, labels = split_arrays(data, split)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(labels).reshape(-1), ignore_index=-100)
    return logits.argmax(-1).numpy(), labels, loss.item()


# At ZeRO-3 the classifier is read straight into the shards (its new head drawn whole
# and sharded), evaluated sharded, and final/ streamed tensor by tensor from them.
@pytest.mark.parametrize("model,zero", [("bert", 0), ("llama", 0), ("bert", 3), ("llama", 3)])
def test_sequence_classification_report_matches_transformers_and_sklearn(workspace, model, zero):
    run = workspace["root"] / f"seq_{model}_zero{zero}"
    run_ftrain(2, *args(workspace, run, model, "sentiment", **{"checkpoint.keep_best": "false", "dist.zero": zero}))
    report = json.loads((run / "test_report.json").read_text())
    assert report["step"] == 30 and report["split"] == "test" and report["task"] == "sequence_classification"

    predicted, truth, loss = hf_predictions(run / "final", AutoModelForSequenceClassification, workspace["sentiment"],
                                            "test")
    metrics = report["metrics"]
    assert metrics["targets"] == len(truth)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-9)
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-9)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4)
    # The task is learnable: training must beat guessing (1/3) and the majority class
    # (about 0.4) on held-out rows.
    assert metrics["accuracy"] > 0.5, metrics
    validations = [r for r in records(run) if "val_accuracy" in r]
    assert [r["step"] for r in validations] == [10, 20, 30]


def test_token_classification_entity_f1_matches_seqeval(workspace):
    run = workspace["root"] / "ner_bert"
    run_ftrain(2, *args(workspace, run, "bert", "ner", **{"checkpoint.keep_best": "false"}))
    metrics = json.loads((run / "test_report.json").read_text())["metrics"]

    predicted, truth, loss = hf_predictions(run / "final", AutoModelForTokenClassification, workspace["ner"], "test")
    keep = truth != -100
    words_truth = [[TAGS[t] for t, k in zip(row, kr) if k] for row, kr in zip(truth, keep)]
    words_predicted = [[TAGS[p] for p, k in zip(row, kr) if k] for row, kr in zip(predicted, keep)]
    assert metrics["targets"] == int(keep.sum())
    assert metrics["entity_f1"] == pytest.approx(entity_f1(words_truth, words_predicted), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth[keep], predicted[keep]), abs=1e-9)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4)
    assert metrics["entity_f1"] > 0.5, metrics


# ZeRO-3 gathers BERT's embeddings apart from the pooler and the head, and again for
# their backward, where the embedding LayerNorm reads its weight; the frozen-body
# stage leaves them without gradients first.
@pytest.mark.parametrize("zero", [2, 3])
def test_two_ranks_match_one_rank(workspace, zero):
    one = workspace["root"] / "seq_dp1"
    two = workspace["root"] / f"seq_dp2_zero{zero}"
    common = {"train.steps": 12, "train.eval_every": 0, "checkpoint.export_hf": "false", "train.freeze_base_steps": 4}
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, "bert", "sentiment", **common))
    run_ftrain(2, *args(workspace, two, "bert", "sentiment", **common, **{"dist.zero": zero}))
    assert_same_steps(one, two, 12)


def test_a_missing_pooler_is_drawn_alike_into_zero3_shards(workspace):
    # A BERT saved without its pooler gets a new one, drawn from the seed: whole on one
    # rank, and at ZeRO-3 drawn whole and handed to the shards. Both train alike.
    bare = workspace["root"] / "bert_without_pooler"
    bare.mkdir(exist_ok=True)
    weights = load_file(workspace["bert"] / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, bare / "model.safetensors")
    shutil.copy(workspace["bert"] / "config.json", bare / "config.json")
    workspace = {**workspace, "bert_without_pooler": bare}
    common = {"train.steps": 6, "train.eval_every": 0, "checkpoint.export_hf": "false"}
    one, sharded = workspace["root"] / "pooler_dp1", workspace["root"] / "pooler_dp2_zero3"
    result = run_ftrain(1, *args(workspace, one, "bert_without_pooler", "sentiment", **common))
    assert "the pooler is new" in result.stdout + result.stderr
    run_ftrain(2, *args(workspace, sharded, "bert_without_pooler", "sentiment", **common, **{"dist.zero": 3}))
    assert_same_steps(one, sharded, 6)


# model.init = random: a fresh classifier's body is drawn element by element from (seed,
# name, index), so a rank holding a tensor-parallel part or a ZeRO-3 shard draws only
# its elements of the one-rank model, and trains like it.
RANDOM_CLASSIFIERS = [("bert", "sentiment", 2, 1, 0), ("bert", "sentiment", 1, 2, 3), ("bert", "sentiment", 2, 2, 3),
                      ("bert", "ner", 1, 2, 3), ("llama", "sentiment", 2, 1, 3)]


@pytest.mark.parametrize("model,task,tp,dp,zero", RANDOM_CLASSIFIERS,
                         ids=[f"{m}-{t}-tp{tp}-dp{dp}-zero{z}" for m, t, tp, dp, z in RANDOM_CLASSIFIERS])
def test_a_random_classifier_is_drawn_alike_on_every_layout(workspace, model, task, tp, dp, zero):
    common = {"model.init": "random", "train.steps": 6, "train.eval_every": 0, "checkpoint.keep_best": "false"}
    one = workspace["root"] / f"random_{model}_{task}_one"
    if not (one / "final").exists():
        run_ftrain(1, *args(workspace, one, model, task, **common))
    split = workspace["root"] / f"random_{model}_{task}_tp{tp}_dp{dp}_zero{zero}"
    result = run_ftrain(tp * dp, *args(workspace, split, model, task, **common,
                                       **{"dist.tp": tp, "dist.zero": zero}))
    assert "RANDOMLY INITIALISED" in result.stdout and f"tp {tp} x dp {dp}" in result.stdout
    assert_same_steps(one, split, 6)
    expected, got = load_file(one / "final/model.safetensors"), load_file(split / "final/model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=2e-5, err_msg=name)


def test_a_random_bert_starts_as_transformers_initialises_it(workspace):
    # Hugging Face's BERT initialisation: LayerNorm scale 1 and shift 0, biases 0,
    # weights and embeddings normal(0, initializer_range) with the padding token's
    # embedding row 0. Read from step 1's checkpoint of a ZeRO-3 run whose body is
    # frozen for that step, exported by ftrain-ckpt.
    run, exported = workspace["root"] / "random_bert_frozen", workspace["root"] / "random_bert_step1"
    run_ftrain(2, *args(workspace, run, "bert", "sentiment", **{
        "model.init": "random", "train.steps": 2, "train.freeze_base_steps": 1, "train.eval_every": 0,
        "optim.warmup_steps": 0, "checkpoint.every": 1, "checkpoint.keep_best": "false",
        "checkpoint.export_hf": "false", "dist.zero": 3}))
    subprocess.run([str(BUILD / "ftrain-ckpt"), "export", str(run / "checkpoints/step_00000001"), str(exported)],
                   check=True, capture_output=True, env=ENV, timeout=TIMEOUT)
    weights = load_file(exported / "model.safetensors")
    std = json.loads((workspace["bert"] / "config.json").read_text())["initializer_range"]
    body = [name for name in weights if name.startswith("bert.")]
    assert len(body) > 20
    for name in body:
        value = weights[name]
        if name.endswith("LayerNorm.weight"):
            np.testing.assert_array_equal(value, 1, err_msg=name)
        elif name.endswith(".bias"):
            np.testing.assert_array_equal(value, 0, err_msg=name)
        else:
            drawn = np.delete(value, PAD, axis=0) if name.endswith("word_embeddings.weight") else value
            assert abs(drawn.std() - std) < 0.15 * std and abs(drawn.mean()) < 0.15 * std, name
    np.testing.assert_array_equal(weights["bert.embeddings.word_embeddings.weight"][PAD], 0)
    saved = load_file(workspace["bert"] / "model.safetensors")
    assert not np.allclose(weights["bert.encoder.layer.0.attention.self.query.weight"],
                           saved["encoder.layer.0.attention.self.query.weight"]), "drawn, not read"


# Dynamic padding: rows of at most 7 of the 12 positions run as 8 columns. The cut
# columns are padding, so training and evaluation are those of full-width batches
# (within 1e-6) and the predictions the same.
@pytest.mark.parametrize("model,task", [("bert", "sentiment"), ("llama", "sentiment"), ("bert", "ner")])
def test_dynamic_padding_changes_nothing_but_the_width(workspace, model, task):
    data = workspace["root"] / f"short_{task}.h5"
    if not data.exists():
        rng = np.random.default_rng(1)
        rows = (lambda count: sentiment_rows(rng, count, longest=7)) if task == "sentiment" else \
            (lambda count: ner_rows(rng, count, longest=7))
        write_dataset(data, "sequence_classification" if task == "sentiment" else "token_classification",
                      SENTIMENT if task == "sentiment" else TAGS,
                      {"train": rows(128), "validation": rows(16), "test": rows(24)})
    workspace = {**workspace, f"short_{task}": data}
    common = {"train.steps": 6, "train.eval_every": 3, "checkpoint.export_hf": "false",
              "checkpoint.keep_best": "false"}
    runs = {}
    for dynamic in ("true", "false"):
        runs[dynamic] = workspace["root"] / f"padding_{model}_{task}_{dynamic}"
        run_ftrain(2, *args(workspace, runs[dynamic], model, f"short_{task}",
                            **common, **{"data.dynamic_padding": dynamic}))
    cut, full = ({r["step"]: r for r in records(runs[d]) if "loss" in r} for d in ("true", "false"))
    assert sorted(cut) == sorted(full) == list(range(1, 7))
    for step in full:
        assert cut[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-6, abs=1e-7), f"step {step}"
        assert cut[step]["grad_norm"] == pytest.approx(full[step]["grad_norm"], rel=1e-6), f"step {step}"
    validation = [({k: v for k, v in r.items() if k.startswith("val_")}) for d in ("true", "false")
                  for r in records(runs[d]) if "val_loss" in r]
    assert len(validation) == 4
    for cut_val, full_val in zip(validation[:2], validation[2:]):
        assert cut_val["val_loss"] == pytest.approx(full_val["val_loss"], rel=1e-6)
        assert cut_val["val_accuracy"] == full_val["val_accuracy"]  # the same predictions
    reports = [json.loads((runs[d] / "test_report.json").read_text())["metrics"] for d in ("true", "false")]
    assert reports[0]["accuracy"] == reports[1]["accuracy"] and reports[0]["macro_f1"] == reports[1]["macro_f1"]
    if task == "ner":
        assert reports[0]["entity_f1"] == reports[1]["entity_f1"]


def checkpoint_model(run, step):
    with h5py.File(run / "checkpoints" / f"step_{step:08d}" / "state.h5", "r") as f:
        names = []
        f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
        return {n[len("model/"):]: f[n][...] for n in names if n.startswith("model/")}


def test_frozen_body_stage_trains_only_the_head(workspace):
    run = workspace["root"] / "frozen"
    result = run_ftrain(2, *args(workspace, run, "bert", "sentiment",
                                 **{"train.steps": 8, "train.freeze_base_steps": 4, "checkpoint.every": 4,
                                    "checkpoint.keep_best": "false", "train.eval_every": 0}))
    assert "training the head only (train.freeze_base_steps) from step 1" in result.stdout
    assert "training the whole model from step 5" in result.stdout
    # The end of the head-only stage is validated even without train.eval_every.
    assert [r["step"] for r in records(run) if "val_accuracy" in r] == [4, 8]
    start = {"bert." + k: v for k, v in load_file(workspace["bert"] / "model.safetensors").items()
             if not k.endswith("position_ids")}
    after_head_stage, after_all = checkpoint_model(run, 4), checkpoint_model(run, 8)
    body = [name for name in after_head_stage if name.startswith("bert.")]
    assert body and len(body) == len(start)
    for name in body:
        np.testing.assert_array_equal(after_head_stage[name], start[name], err_msg=name)
    assert not np.array_equal(after_head_stage["classifier.weight"], checkpoint_model(run, 8)["classifier.weight"])
    moved = [name for name in body if not np.array_equal(after_all[name], start[name])]
    assert len(moved) == len(body), "every body tensor trains after the frozen stage"


def test_best_checkpoint_is_kept_and_used_at_the_end(workspace):
    run = workspace["root"] / "best"
    run_ftrain(2, *args(workspace, run, "bert", "sentiment",
                        **{"train.steps": 30, "train.eval_every": 5, "checkpoint.keep": 1}))
    history = [(r["step"], r["val_accuracy"]) for r in records(run) if "val_accuracy" in r]
    assert [step for step, _ in history] == [5, 10, 15, 20, 25, 30]
    best_step = max(history, key=lambda item: (item[1], -item[0]))[0]  # the first of the highest
    best = json.loads((run / "checkpoints" / "best").read_text())
    assert best["step"] == best_step and best["metric"] == "accuracy"
    assert (run / "checkpoints" / f"step_{best_step:08d}" / "COMMITTED").exists()
    assert json.loads((run / "test_report.json").read_text())["step"] == best_step
    exported = load_file(run / "final" / "model.safetensors")
    kept = checkpoint_model(run, best_step)
    for name, value in kept.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_early_stopping_after_patience_without_improvement(workspace):
    run = workspace["root"] / "early"
    # A learning rate this small leaves every prediction as it was, so validation
    # accuracy never improves on the first evaluation.
    result = run_ftrain(2, *args(workspace, run, "bert", "sentiment",
                                 **{"train.steps": 40, "train.eval_every": 2, "train.early_stopping_patience": 3,
                                    "optim.lr": 1e-12, "optim.min_lr": 0, "train.eval_metric": "macro_f1"}))
    assert "stopping early at step 8" in result.stdout, result.stdout
    assert max(r["step"] for r in records(run)) == 8
    assert json.loads((run / "checkpoints" / "best").read_text())["step"] == 2


def test_bad_task_options_are_refused(workspace):
    run = workspace["root"] / "bad_metric"
    result = run_ftrain(1, *args(workspace, run, "bert", "sentiment", **{"train.eval_metric": "entity_f1"}),
                        check=False)
    assert result.returncode != 0 and "train.eval_metric" in result.stderr
    result = run_ftrain(1, *args(workspace, run, "bert", "sentiment", **{"train.eval_metric": "bleu"}), check=False)
    assert result.returncode != 0 and "train.eval_metric" in result.stderr
    result = run_ftrain(1, *args(workspace, run, "bert", "sentiment", **{"train.freeze_base_steps": 30}), check=False)
    assert result.returncode != 0 and "train.freeze_base_steps" in result.stderr


def test_a_token_type_outside_the_model_is_named_by_row(workspace):
    """BERT embeds type_vocab_size = 2 token types; a row with type 2 would index past
    the table (an index error on the CPU, a device-side assert on a GPU)."""
    rng = np.random.default_rng(1)
    ids, mask, labels, types = sentiment_rows(rng, 64)
    types[17, 0] = 2
    data = workspace["root"] / "bad_types.h5"
    write_dataset(data, "sequence_classification", SENTIMENT, {"train": (ids, mask, labels, types)})
    run = workspace["root"] / "bad_types"
    result = run_ftrain(2, *args(dict(workspace, bad_types=data), run, "bert", "bad_types",
                                 **{"train.steps": 4, "train.eval_every": 0}), check=False)
    assert result.returncode != 0
    assert "dataset row 17 has token type id 2, outside the model's type_vocab_size [0, 2)" in result.stderr, \
        result.stderr
