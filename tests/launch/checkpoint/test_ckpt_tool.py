"""ftrain-ckpt on real runs: a tiny GPT-2 and a BERT sentiment classifier trained under
mpirun with a checkpoint every 2 steps and a final/ export.

The exports are checked against the run's own final/ by loading both in transformers:
the same logits, tokenizer and label names. Corruption is made by flipping a byte in
(or truncating) the largest file of a copied checkpoint, whatever the file is called,
so the test holds whatever the checkpoint's file layout."""
import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertModel, GPT2Config, GPT2LMHeadModel)

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/launch: ftrain_jobs
from ftrain_jobs import BUILD, ENV, SOURCE, TIMEOUT, as_options, prepare_corpus, run_ftrain

CKPT = BUILD / "ftrain-ckpt"
STEPS = 6
SENTIMENT = ["negative", "positive", "neutral"]
BERT_VOCAB = 64
SEQ_LEN = 12


def ckpt(*arguments):
    return subprocess.run([str(CKPT), *map(str, arguments)], capture_output=True, text=True, timeout=TIMEOUT,
                          env=ENV)


def step_dir(run, step):
    return run / "checkpoints" / f"step_{step:08d}"


def sentiment_dataset(path, rng):
    """Rows of noise holding one of the marker tokens 1, 2, 3, which is the class."""
    def rows(count):
        lengths = rng.integers(4, SEQ_LEN + 1, size=count)
        ids = rng.integers(4, BERT_VOCAB, size=(count, SEQ_LEN))
        labels = rng.integers(0, 3, size=count)
        for row, length in enumerate(lengths):
            ids[row, rng.integers(0, length)] = labels[row] + 1
            ids[row, length:] = 0
        mask = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
        return ids, mask, labels

    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": 1, "seq_len": SEQ_LEN,
                        "vocab_size": BERT_VOCAB, "eos_id": -1, "pad_id": 0, "tokenizer": "synthetic",
                        "task": "sequence_classification", "label_names": json.dumps(SENTIMENT),
                        "num_labels": len(SENTIMENT)})
        for split, count in [("train", 128), ("validation", 32)]:
            ids, mask, labels = rows(count)
            group = f.create_group(split)
            group.attrs["num_documents"] = count
            group.create_dataset("input_ids", data=ids.astype(np.int32))
            group.create_dataset("attention_mask", data=mask.astype(np.uint8))
            group.create_dataset("labels", data=labels.astype(np.int64))
            group.create_dataset("token_type_ids", data=np.zeros_like(ids, dtype=np.uint8))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_tool")
    torch.manual_seed(0)
    gpt2 = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=64, n_embd=32, n_layer=2, n_head=4)).save_pretrained(
        gpt2, safe_serialization=True)
    shutil.copy(SOURCE / "configs/models/tiny-gpt2/tokenizer.json", gpt2)
    bert = root / "bert"
    BertModel(BertConfig(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=SEQ_LEN, pad_token_id=0)
              ).save_pretrained(bert, safe_serialization=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(BERT_VOCAB - 5)]
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")

    corpus = prepare_corpus(root, 200)
    sentiment = root / "sentiment.h5"
    sentiment_dataset(sentiment, np.random.default_rng(0))

    common = {"model.dropout": 0, "train.steps": STEPS, "train.eval_every": 0, "optim.warmup_steps": 2,
              "checkpoint.every": 2, "checkpoint.keep": 5, "checkpoint.export_hf": "true",
              "checkpoint.at_end": "true"}
    lm = root / "lm_run"
    run_ftrain(2, *as_options({"run.dir": lm, "model.path": gpt2, "data.path": corpus, "data.micro_batch_size": 2,
                               "train.global_batch_size": 4, "optim.lr": 1e-3, **common}))
    classifier = root / "classifier_run"
    run_ftrain(2, *as_options({"run.dir": classifier, "model.path": bert, "data.path": sentiment,
                               "data.micro_batch_size": 4, "train.global_batch_size": 16, "optim.lr": 1e-2,
                               **common}))
    return {"root": root, "gpt2": gpt2, "bert": bert, "corpus": corpus, "sentiment": sentiment, "lm": lm,
            "classifier": classifier}


def listing(run, *flags):
    result = ckpt("list", run, "--json", *flags)
    assert result.returncode == 0, result.stderr
    return {entry["name"]: entry for entry in json.loads(result.stdout)["checkpoints"]}


def test_causal_lm_checkpoints_list_verify_and_export_like_final(workspace):
    run = workspace["lm"]
    table = ckpt("list", run)
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[2:] if line.strip()}
    assert sorted(lines) == ["2", "4", "6"], table.stdout
    assert "latest" in lines["6"] and "latest" not in lines["2"] + lines["4"]
    assert all(" valid " in line for line in lines.values()), table.stdout
    entries = listing(run)
    assert [entries[name]["step"] for name in sorted(entries)] == [2, 4, 6]
    assert entries["step_00000006"]["latest"] and entries["step_00000006"]["bytes"] > 0
    # Listing the checkpoints directory itself is the same.
    assert listing(run / "checkpoints") == entries

    for step in (2, 4, 6):
        result = ckpt("verify", step_dir(run, step))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"ok: step {step}, ") and " tensors, " in result.stdout, result.stdout

    exported = workspace["root"] / "exports" / "lm_step6"  # the parent is created as well
    result = ckpt("export", step_dir(run, STEPS), exported)
    assert result.returncode == 0, result.stderr
    assert "step 6" in result.stdout
    assert not list(exported.parent.glob("*.tmp")), "nothing is left beside the export"
    final = run / "final"
    assert sorted(p.name for p in exported.iterdir()) == sorted(p.name for p in final.iterdir())
    assert json.loads((exported / "config.json").read_text()) == json.loads((final / "config.json").read_text())

    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_export = AutoModelForCausalLM.from_pretrained(exported).eval()(ids).logits
        logits_final = AutoModelForCausalLM.from_pretrained(final).eval()(ids).logits
    assert torch.equal(logits_export, logits_final)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer("the cat sat").input_ids == AutoTokenizer.from_pretrained(workspace["gpt2"])("the cat sat").input_ids

    # An earlier step is read from its own checkpoint: neither the final nor the starting weights.
    early = workspace["root"] / "exports" / "lm_step2"
    assert ckpt("export", step_dir(run, 2), early).returncode == 0
    early_weights = load_file(early / "model.safetensors")
    final_weights = load_file(final / "model.safetensors")
    start_weights = load_file(workspace["gpt2"] / "model.safetensors")
    assert early_weights.keys() == final_weights.keys()
    assert any(not torch.equal(early_weights[k], final_weights[k]) for k in early_weights)
    assert any(not torch.equal(early_weights[k], start_weights[k]) for k in early_weights if k in start_weights)
    with torch.no_grad():
        logits_early = AutoModelForCausalLM.from_pretrained(early).eval()(ids).logits
    assert not torch.allclose(logits_early, logits_final)


def test_classifier_export_loads_like_final_with_label_names(workspace):
    run = workspace["classifier"]
    entries = listing(run)
    assert sorted(entries) == ["step_00000002", "step_00000004", "step_00000006"]
    last = entries["step_00000006"]
    assert last["latest"] and last["best"] and last["state"] == "valid"
    table = ckpt("list", run).stdout
    assert "best (accuracy " in table, table
    assert ckpt("verify", step_dir(run, STEPS)).returncode == 0

    exported = workspace["root"] / "exports" / "classifier_step6"
    result = ckpt("export", step_dir(run, STEPS), exported)
    assert result.returncode == 0, result.stderr
    assert "sequence_classification" in result.stdout
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    final = AutoModelForSequenceClassification.from_pretrained(run / "final").eval()
    assert model.config.id2label == {i: name for i, name in enumerate(SENTIMENT)}
    assert model.config.label2id == final.config.label2id
    ids = torch.randint(5, BERT_VOCAB, (3, SEQ_LEN), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           final(input_ids=ids, attention_mask=mask).logits)
    assert (exported / "vocab.txt").read_text() == (workspace["bert"] / "vocab.txt").read_text()
    assert AutoTokenizer.from_pretrained(exported)("w1 w2").input_ids == [2, 6, 7, 3]


def test_a_tensor_parallel_run_exports_unsplit(workspace):
    # Checkpoints hold global shapes, so the export builds the whole model whatever dist.tp was.
    run = workspace["root"] / "tp_run"
    job = run_ftrain(2, *as_options({"run.dir": run, "model.path": workspace["gpt2"], "data.path": workspace["corpus"],
                                     "data.micro_batch_size": 2, "train.global_batch_size": 4, "train.steps": 2,
                                     "train.eval_every": 0, "optim.warmup_steps": 0, "dist.tp": 2}))
    assert "tp 2 x dp 1" in job.stdout
    exported = workspace["root"] / "exports" / "tp_step2"
    result = ckpt("export", step_dir(run, 2), exported)
    assert result.returncode == 0, result.stderr
    final = load_file(run / "final" / "model.safetensors")
    weights = load_file(exported / "model.safetensors")
    assert weights.keys() == final.keys()
    for name in final:
        assert torch.equal(weights[name], final[name]), name


def largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_corrupt_and_truncated_checkpoints_fail_verify_and_list_says_so(workspace):
    run = workspace["root"] / "damaged_run"
    shutil.copytree(workspace["lm"] / "checkpoints", run / "checkpoints")
    files = {p.name for p in step_dir(run, STEPS).rglob("*") if p.is_file()}

    flipped = largest_file(step_dir(run, STEPS))
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    result = ckpt("verify", step_dir(run, STEPS))
    assert result.returncode == 1, result.stdout + result.stderr
    assert any(name in result.stderr for name in files), result.stderr

    truncated = largest_file(step_dir(run, 4))
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    result = ckpt("verify", step_dir(run, 4))
    assert result.returncode == 1 and str(step_dir(run, 4)) in result.stderr, result.stdout + result.stderr

    # Directories a save left half-written, and ones a resume set aside.
    shutil.copytree(step_dir(run, 2), run / "checkpoints" / "step_00000008.tmp")
    shutil.copytree(step_dir(run, 2), run / "checkpoints" / "step_00000002.stale")
    table = ckpt("list", run)
    assert table.returncode == 0, "a listing succeeds whatever it finds"
    lines = {line.split()[1]: line for line in table.stdout.splitlines()[2:] if line.startswith(" ")
             and len(line.split()) > 1 and line.split()[1].startswith("step_")}
    assert "CORRUPT" in lines["step_00000006"] and "latest" in lines["step_00000006"]
    assert "CORRUPT" in lines["step_00000004"]
    assert " valid " in lines["step_00000002"]
    assert "uncommitted" in lines["step_00000008.tmp"] and "set aside" in lines["step_00000002.stale"]
    assert "problem:" in table.stdout
    entries = listing(run)
    assert entries["step_00000006"]["state"] == "corrupt" and entries["step_00000006"]["problem"]
    assert entries["step_00000008.tmp"]["state"] == "uncommitted"
    assert entries["step_00000002.stale"]["state"] == "set_aside"
    strict = ckpt("list", run, "--strict")
    assert strict.returncode == 1 and "step_00000006" in strict.stderr, strict.stderr
    assert ckpt("list", workspace["lm"], "--strict").returncode == 0
    quick = listing(run, "--quick")
    assert quick["step_00000006"]["state"] == "committed"


def test_a_string_larger_than_the_file_is_refused_before_it_is_read(workspace):
    """The index's metadata is a fixed-length string whose size the file declares. One
    declared as 2 GiB but never written must be refused, not allocated."""
    run = workspace["root"] / "huge_meta"
    shutil.copytree(workspace["lm"] / "checkpoints", run / "checkpoints")
    index = step_dir(run, STEPS) / "state.h5"
    with h5py.File(index, "r+") as f:
        del f["meta"]
        declared = h5py.h5t.C_S1.copy()
        declared.set_size(2**31)
        h5py.h5d.create(f.id, b"meta", declared, h5py.h5s.create(h5py.h5s.SCALAR))
    assert index.stat().st_size < 2**20
    result = ckpt("verify", step_dir(run, STEPS))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{index}: meta declares a string of 2147483648 bytes, but the file stores 0 for it" in result.stderr, \
        result.stderr


def test_usage_errors_and_refusals(workspace):
    checkpoint = step_dir(workspace["lm"], STEPS)
    for arguments in [(), ("frobnicate",), ("list",), ("list", "a", "b"), ("verify",), ("export", checkpoint),
                      ("verify", checkpoint, "--no-such-option")]:
        result = ckpt(*arguments)
        assert result.returncode == 2, (arguments, result.stdout, result.stderr)
        assert "ftrain-ckpt" in result.stderr
    for arguments in [("--help",), ("list", "--help"), ("verify", "--help"), ("export", "--help")]:
        result = ckpt(*arguments)
        assert result.returncode == 0 and "usage" in result.stdout, arguments

    occupied = workspace["root"] / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    result = ckpt("export", checkpoint, occupied)
    assert result.returncode == 1 and str(occupied) in result.stderr and "--force" in result.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"] and (occupied / "keep.txt").read_text() == "mine"
    result = ckpt("export", checkpoint, occupied, "--force")
    assert result.returncode == 0, result.stderr
    assert (occupied / "model.safetensors").exists() and not (occupied / "keep.txt").exists()
    assert sorted(p.name for p in occupied.parent.iterdir() if p.name.startswith("occupied")) == ["occupied"]

    result = ckpt("export", checkpoint, workspace["root"] / "nowhere", "--model-path", workspace["root"] / "no_model")
    assert result.returncode == 1 and "no_model" in result.stderr and "--model-path" in result.stderr
    assert not (workspace["root"] / "nowhere").exists()
    result = ckpt("verify", workspace["root"] / "no_checkpoint")
    assert result.returncode == 1 and "no_checkpoint" in result.stderr


def test_a_run_whose_dataset_is_gone(workspace):
    # The dataset gives the task and label names; without it export says which key to
    # fix, and verify still checks every checksum.
    data = workspace["root"] / "gone.h5"
    shutil.copy(workspace["corpus"], data)
    run = workspace["root"] / "gone_run"
    run_ftrain(0, *as_options({"run.dir": run, "model.path": workspace["gpt2"], "data.path": data,
                               "data.micro_batch_size": 2, "train.global_batch_size": 2, "train.steps": 2,
                               "optim.warmup_steps": 0, "checkpoint.export_hf": "false"}))
    data.unlink()
    checkpoint = step_dir(run, 2)
    result = ckpt("export", checkpoint, workspace["root"] / "gone_export")
    assert result.returncode == 1 and str(data) in result.stderr and "data.path" in result.stderr, result.stderr
    verified = ckpt("verify", checkpoint)
    assert verified.returncode == 0 and "every checksum matches" in verified.stdout, verified.stdout
    result = ckpt("export", checkpoint, workspace["root"] / "gone_export", "--data-path", workspace["corpus"])
    assert result.returncode == 0, result.stderr
    assert AutoModelForCausalLM.from_pretrained(workspace["root"] / "gone_export") is not None
