"""ftrain-prep against independent references: a byte-level BPE trained here with Hugging
Face `tokenizers`, documents tokenized in Python, packed in Python, and the .h5 file read
with h5py."""

import json
import os
import random
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer, Tokenizer

PREP = Path(os.environ["FTRAIN_BUILD_DIR"]) / "ftrain-prep"
EOS = "<|endoftext|>"
WORDS = ("the cat dog sat on a mat ran fast slow red blue green big small house tree river "
         "stone light night morning 42 1999 don't it's café naïve").split()


def sentence(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 40))]
    return " ".join(words) + rng.choice([".", "!", "?", "", ","])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer directory and some documents, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(1234)
    documents = [sentence(rng) for _ in range(400)]
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(documents, vocab_size=420, min_frequency=2, special_tokens=[EOS],
                                show_progress=False)
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir()
    trainer.save(str(tokenizer_dir / "tokenizer.json"))
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return {"root": root, "tokenizer_dir": tokenizer_dir, "tokenizer": tokenizer, "documents": documents}


def run_prep(*args, check=True):
    result = subprocess.run([str(PREP), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


def pack(tokenizer, documents, seq_len):
    """The reference packing: tokens + EOS per document, concatenated, whole rows only."""
    eos = tokenizer.token_to_id(EOS)
    stream = []
    for document in documents:
        stream += encode(tokenizer, document) + [eos]
    rows = len(stream) // seq_len
    return np.array(stream[: rows * seq_len], dtype=np.int32).reshape(rows, seq_len), len(stream) - rows * seq_len


def write_jsonl(path, records, extra_lines=()):
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        for line in extra_lines:
            out.write(line + "\n")


def test_jsonl_and_text_inputs_pack_exactly_like_python(corpus, tmp_path):
    tokenizer, documents = corpus["tokenizer"], corpus["documents"]
    jsonl_documents, text_documents = documents[:250], documents[250:]
    jsonl = tmp_path / "part1.jsonl"
    # Other keys are ignored; an empty text and a blank line are skipped.
    write_jsonl(jsonl, [{"id": i, "text": d, "meta": {"x": 1}} for i, d in enumerate(jsonl_documents)] + [{"text": ""}],
                extra_lines=["   "])
    text = tmp_path / "part2.txt"
    text.write_text("\n".join(text_documents[:70]) + "\r\n\n" + "\n".join(text_documents[70:]) + "\n", encoding="utf-8")
    output = tmp_path / "data.h5"
    seq_len = 64
    result = run_prep("--input", jsonl, "--input", text, "--tokenizer", corpus["tokenizer_dir"], "--output", output,
                      "--seq-len", seq_len, "--validation-fraction", 0)

    expected_rows, dropped = pack(tokenizer, documents, seq_len)
    with h5py.File(output, "r") as f:
        assert f.attrs["format"] == "ftrain.tokens"
        assert f.attrs["format_version"] == 1
        assert f.attrs["seq_len"] == seq_len
        assert f.attrs["vocab_size"] == tokenizer.get_vocab_size()
        assert f.attrs["eos_id"] == tokenizer.token_to_id(EOS)
        assert f.attrs["pad_id"] == -1
        assert f.attrs["task"] == "causal_lm"
        assert Path(f.attrs["tokenizer"]) == corpus["tokenizer_dir"].resolve()
        assert list(f.keys()) == ["train"]
        train = f["train"]
        ids = train["input_ids"]
        assert ids.dtype == np.int32
        assert ids.shape == expected_rows.shape
        assert ids.chunks is not None and ids.chunks[1] == seq_len
        np.testing.assert_array_equal(ids[...], expected_rows)
        assert "loss_mask" not in train  # every position is a target
        assert train.attrs["num_documents"] == len(documents)
        assert train.attrs["dropped_tokens"] == dropped
        assert train.attrs["num_tokens"] == expected_rows.size + dropped
        np.testing.assert_array_equal(train["document_index"][...], np.arange(len(documents)))
    assert not Path(str(output) + ".tmp").exists()

    # The summary reports the same numbers.
    lengths = [len(encode(tokenizer, d)) for d in documents]
    line = next(l for l in result.stdout.splitlines() if l.strip().startswith("train"))
    fields = line.split()
    assert fields[1:5] == [str(len(documents)), str(expected_rows.size + dropped), str(len(expected_rows)),
                           str(dropped)]
    assert fields[5] == f"{min(lengths)}/{np.mean(lengths):.1f}/{max(lengths)}"


def pack_documents(tokenizer, documents, seq_len):
    """The reference packing with document masking: tokens + EOS per document, a document
    longer than a row in row-sized pieces, placed in order, a row closed when the next
    piece does not fit; padded with EOS (this tokenizer has no padding token)."""
    eos = tokenizer.token_to_id(EOS)
    pieces = []
    for document in documents:
        text = encode(tokenizer, document) + [eos]
        pieces += [text[start:start + seq_len] for start in range(0, len(text), seq_len)]
    rows, row = [], []
    for piece in pieces:
        if sum(map(len, row)) + len(piece) > seq_len:
            rows.append(row)
            row = []
        row.append(piece)
    rows.append(row)
    ids = np.full((len(rows), seq_len), eos, dtype=np.int32)
    numbers = np.zeros((len(rows), seq_len), dtype=np.uint8)
    for r, row in enumerate(rows):
        at = 0
        for number, piece in enumerate(row, start=1):
            ids[r, at:at + len(piece)], numbers[r, at:at + len(piece)] = piece, number
            at += len(piece)
    return ids, numbers


def test_packing_documents_keeps_each_whole_and_numbered(corpus, tmp_path):
    tokenizer, documents = corpus["tokenizer"], corpus["documents"][:120]
    # One document longer than two rows: it goes in row-sized pieces.
    documents = documents[:5] + [" ".join(documents[5:25])] + documents[25:]
    data = tmp_path / "docs.jsonl"
    write_jsonl(data, [{"text": d} for d in documents])
    output, seq_len = tmp_path / "packed.h5", 48
    result = run_prep("--input", data, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len",
                      seq_len, "--validation-fraction", 0, "--packing", "documents")
    expected_ids, expected_numbers = pack_documents(tokenizer, documents, seq_len)
    assert len(encode(tokenizer, documents[5])) > 2 * seq_len
    with h5py.File(output, "r") as f:
        assert f.attrs["format_version"] == 2  # attention_mask holds document numbers
        assert f.attrs["pad_id"] == tokenizer.token_to_id(EOS)
        train = f["train"]
        np.testing.assert_array_equal(train["input_ids"][...], expected_ids)
        np.testing.assert_array_equal(train["attention_mask"][...], expected_numbers)
        assert "loss_mask" not in train
        assert train.attrs["num_documents"] == len(documents) and train.attrs["dropped_tokens"] == 0
    padding = int((expected_numbers == 0).sum())
    assert f"{padding} padding tokens" in result.stdout
    # Concatenation stays the default, and other tasks refuse the option.
    refused = run_prep("--task", "sequence_classification", "--input", data, "--tokenizer", corpus["tokenizer_dir"],
                       "--output", tmp_path / "no.h5", "--seq-len", 16, "--packing", "documents", check=False)
    assert refused.returncode != 0 and "--packing" in refused.stderr and not (tmp_path / "no.h5").exists()


def test_splits_partition_documents_and_depend_only_on_the_seed(corpus, tmp_path):
    tokenizer, documents = corpus["tokenizer"], corpus["documents"]
    jsonl = tmp_path / "all.jsonl"
    write_jsonl(jsonl, [{"body": d} for d in documents])
    seq_len = 16

    def prepare(name, seed):
        output = tmp_path / name
        run_prep("--input", jsonl, "--text-key", "body", "--tokenizer", corpus["tokenizer_dir"], "--output", output,
                 "--seq-len", seq_len, "--validation-fraction", 0.2, "--test-fraction", 0.1, "--seed", seed)
        return output

    first, again, other = prepare("a.h5", 5), prepare("b.h5", 5), prepare("c.h5", 6)
    assignments = {}
    with h5py.File(first, "r") as f:
        assert sorted(f.keys()) == ["test", "train", "validation"]
        indices = {split: f[split]["document_index"][...] for split in f}
        for split, expected_count in [("validation", round(0.2 * len(documents))),
                                      ("test", round(0.1 * len(documents)))]:
            assert len(indices[split]) == expected_count
        every = np.sort(np.concatenate(list(indices.values())))
        np.testing.assert_array_equal(every, np.arange(len(documents)))  # a partition
        for split, split_indices in indices.items():
            assert np.all(np.diff(split_indices) > 0)  # input order kept inside a split
            rows, dropped = pack(tokenizer, [documents[i] for i in split_indices], seq_len)
            np.testing.assert_array_equal(f[split]["input_ids"][...], rows)
            assert f[split].attrs["num_documents"] == len(split_indices)
            assert f[split].attrs["dropped_tokens"] == dropped
        assignments["first"] = indices["validation"]
    with h5py.File(again, "r") as f:
        for split in indices:
            np.testing.assert_array_equal(f[split]["input_ids"][...], h5py.File(first, "r")[split]["input_ids"][...])
    with h5py.File(other, "r") as f:
        assert not np.array_equal(f["validation"]["document_index"][...], assignments["first"])
    # Held-out documents are a spread sample, not a block of the input.
    assert assignments["first"].max() - assignments["first"].min() > len(documents) // 2


def test_given_held_out_files_and_paragraph_mode(corpus, tmp_path):
    tokenizer, documents = corpus["tokenizer"], corpus["documents"]
    # Paragraphs: runs of non-blank lines joined by "\n".
    paragraphs = ["\n".join(documents[i:i + 3]) for i in range(0, 300, 3)]
    train_text = tmp_path / "train.txt"
    train_text.write_text("\n\n".join(paragraphs[:80]) + "\n \n\n", encoding="utf-8")
    validation_text = tmp_path / "held_out.txt"
    validation_text.write_text("\n\n".join(paragraphs[80:]), encoding="utf-8")
    output = tmp_path / "para.h5"
    seq_len = 32
    run_prep("--input", train_text, "--validation-input", validation_text, "--text-mode", "paragraph",
             "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", seq_len)
    with h5py.File(output, "r") as f:
        assert sorted(f.keys()) == ["train", "validation"]
        train_rows, _ = pack(tokenizer, paragraphs[:80], seq_len)
        validation_rows, _ = pack(tokenizer, paragraphs[80:], seq_len)
        np.testing.assert_array_equal(f["train"]["input_ids"][...], train_rows)
        np.testing.assert_array_equal(f["validation"]["input_ids"][...], validation_rows)
        assert f["validation"].attrs["num_documents"] == 20
        # Numbering continues across inputs: held-out documents come after --input's.
        np.testing.assert_array_equal(f["validation"]["document_index"][...], np.arange(80, 100))


def assert_failed_cleanly(result, output, previous_bytes=None):
    assert result.returncode != 0
    assert "ftrain-prep: error:" in result.stderr
    assert not Path(str(output) + ".tmp").exists()
    if previous_bytes is None:
        assert not output.exists()
    else:
        assert output.read_bytes() == previous_bytes


def test_malformed_input_names_file_and_line(corpus, tmp_path):
    output = tmp_path / "out.h5"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": "broken\n', encoding="utf-8")
    result = run_prep("--input", bad, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 8,
                      check=False)
    assert_failed_cleanly(result, output)
    assert f"{bad}:4: malformed JSON" in result.stderr

    bad.write_text('{"text": "fine"}\n{"content": "no text key"}\n', encoding="utf-8")
    result = run_prep("--input", bad, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 8,
                      check=False)
    assert_failed_cleanly(result, output)
    assert f"{bad}:2: key 'text' missing" in result.stderr

    missing = tmp_path / "absent.txt"
    result = run_prep("--input", missing, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 8,
                      check=False)
    assert_failed_cleanly(result, output)
    assert f"{missing}: no such file" in result.stderr


def test_existing_output_is_left_untouched(corpus, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("\n".join(corpus["documents"][:100]), encoding="utf-8")
    output = tmp_path / "keep.h5"
    output.write_bytes(b"an earlier dataset")
    common = ["--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 16]

    result = run_prep("--input", good, *common, check=False)
    assert_failed_cleanly(result, output, b"an earlier dataset")
    assert "already exists; pass --overwrite" in result.stderr

    # Even with --overwrite, a run that fails leaves the earlier file as it was.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n', encoding="utf-8")
    result = run_prep("--input", good, "--input", bad, *common, "--overwrite", check=False)
    assert_failed_cleanly(result, output, b"an earlier dataset")
    assert f"{bad}:1: key 'text' is number, expected a string" in result.stderr

    # Too little text for one row is an error, not an empty dataset.
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a cat\nthe dog\n", encoding="utf-8")
    result = run_prep("--input", tiny, *common, "--overwrite", "--validation-fraction", 0, check=False)
    assert_failed_cleanly(result, output, b"an earlier dataset")
    assert "split 'train' would have no rows" in result.stderr

    run_prep("--input", good, *common, "--overwrite")
    with h5py.File(output, "r") as f:
        assert f.attrs["format"] == "ftrain.tokens"


def test_usage_errors_and_help(corpus, tmp_path):
    result = run_prep("--help")
    assert "--seq-len" in result.stdout and "--validation-input" in result.stdout
    output = tmp_path / "x.h5"
    good = tmp_path / "good.txt"
    good.write_text("some text here\n", encoding="utf-8")
    for args, message in [
        (["--input", good, "--output", output, "--seq-len", 8], "tokenizer"),
        (["--input", good, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 1], "--seq-len"),
        (["--input", good, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 8,
          "--validation-fraction", 0.1, "--validation-input", good], "not both"),
        (["--input", good, "--tokenizer", corpus["tokenizer_dir"], "--output", output, "--seq-len", 8,
          "--text-mode", "pages"], "--text-mode"),
    ]:
        result = run_prep(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert not output.exists()
