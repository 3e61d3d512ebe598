"""SentencePiece-style BPE (Llama 2) against Hugging Face `tokenizers`: same ids, token
types and text.

A BPE is trained here with `tokenizers` on a generated corpus with a small alphabet, then
laid out as Llama 2's tokenizer.json is: "<unk>", "<s>", "</s>", the 256 byte tokens
"<0x00>".."<0xFF>", then the learned tokens; normalizer Prepend("▁") + Replace(" ", "▁"),
byte fallback with fused unknowns, the ByteFallback decoder and a template that puts
"<s>" first. Variants cover the Metaspace pre-tokenizer forms, missing byte tokens and
added tokens. The C++ side runs through the tokenize_dump tool, built beside this test.
"""

import copy
import json
import random

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tokenize_dump_client import TOOL, assert_same, info, run_cpp

SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\n",
    "hello",
    " hello",
    "hello ",
    "hello  world",
    "  leading and trailing  ",
    "Hello, World!",
    "tabs\tand\nnew\r\nlines\n\n",
    "café naïve über Straße",
    "e\u0301 a\u0308 combining",
    "日本語 中文 한국어 ひらがな",
    "😀 👍🏽 👨‍👩‍👧 🇫🇷",
    "\x00 nul \x7f del",
    "<s>",
    "<s>hello</s>",
    "hello<s> world</s> ",
    " <s> <unk> </s> ",
    "<s",
    "<0x41> is text, not a byte token",
    "▁ a literal metaspace ▁▁",
    "a" * 300,
    "ĀāĂăĄą ǅ Ω Ж ש ع ह ก ᚠ ⅷ ∑ € ￥",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"-()\t\n")
    + ["é", "ü", "ß", "ñ", "Ω", "Ж", "日", "本", "語", "한", "😀", "👍🏽", "\u0301", "\u00a0", "\u3000", "▁", "\x00"]
    + ["the", "hello", "world", "token", "ization", " the", "  ", "<s>", "</s>", "<unk>", "<0x41>", "<s", "s>"]
)


def random_lines(rng, count):
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def generated_corpus(rng, lines):
    words = ["the", "The", "hello", "Hello", "world", "token", "ization", "café", "naïve", "über", "Straße", "日本",
             "語", "😀", "12", "345", "don't", "a", "an", "in", "on", "is", "it", "text", "(x)", "x,", "y."]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(lines)]


@pytest.fixture(scope="module")
def texts():
    return EDGE_CASES + random_lines(random.Random(7), 400)


def llama2_document(byte_tokens=BYTE_TOKENS):
    """Llama 2's tokenizer.json layout around a BPE trained here."""
    trainer_model = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, limit_alphabet=45, show_progress=False)
    trainer_model.train_from_iterator(generated_corpus(random.Random(3), 3000), trainer)
    trained = json.loads(trainer_model.to_str())["model"]
    learned = [token for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]) if token not in SPECIALS]
    vocab = {token: i for i, token in enumerate(SPECIALS + byte_tokens + learned)}
    model = models.BPE(vocab=vocab, merges=[tuple(m) for m in trained["merges"]], unk_token="<unk>",
                       fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIALS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", vocab["<s>"])])
    return json.loads(tokenizer.to_str())


def metaspace(document, **fields):
    """The older form: no normalizer, a Metaspace pre-tokenizer and decoder."""
    document = copy.deepcopy(document)
    document["normalizer"] = None
    document["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", **fields}
    decoder_fields = {k: v for k, v in fields.items() if k != "split"}
    document["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁", **decoder_fields}]}
    return document


VARIANT_NAMES = ["llama2", "ascii_bytes_only", "no_byte_fallback", "no_decoder_no_template", "metaspace_always_split",
                 "metaspace_first", "metaspace_never", "metaspace_add_prefix_space"]


def variants():
    base = llama2_document()
    without_fallback = copy.deepcopy(base)
    without_fallback["model"]["byte_fallback"] = False
    without_fallback["model"]["fuse_unk"] = False
    no_decoder = copy.deepcopy(base)
    no_decoder["decoder"] = None
    no_decoder["post_processor"] = None
    return {
        "llama2": base,
        "ascii_bytes_only": llama2_document(BYTE_TOKENS[:128]),  # other bytes fall back to <unk>
        "no_byte_fallback": without_fallback,
        "no_decoder_no_template": no_decoder,
        "metaspace_always_split": metaspace(base, prepend_scheme="always", split=True),
        "metaspace_first": metaspace(base, prepend_scheme="first", split=False),
        "metaspace_never": metaspace(base, prepend_scheme="never", split=True),
        "metaspace_add_prefix_space": metaspace(base, add_prefix_space=True),
    }


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama2")
    result = {}
    documents = variants()
    assert sorted(documents) == sorted(VARIANT_NAMES)
    for name, document in documents.items():
        directory = root / name
        directory.mkdir()
        (directory / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
        result[name] = (directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    return result


def reference_ids(tokenizer, texts):
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_tool_is_built():
    assert TOOL.exists(), f"{TOOL} is missing: build the tokenize_dump target first"


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_encode_matches(directories, texts, tmp_path, variant):
    directory, reference = directories[variant]
    expected = reference_ids(reference, texts)
    assert_same(run_cpp(directory, "encode", texts, tmp_path), expected, texts)
    assert info(directory)["vocab_size"] == reference.get_vocab_size()


def test_byte_fallback_and_unknowns_are_exercised(directories, texts):
    _, reference = directories["llama2"]
    texts = [t for t in texts if "<unk>" not in t]
    ids = {i for row in reference_ids(reference, texts) for i in row}
    byte_ids = {reference.token_to_id(t) for t in BYTE_TOKENS}
    assert len(ids & byte_ids) > 20, "characters outside the vocabulary should fall back to bytes"
    assert reference.token_to_id("<unk>") not in ids, "with every byte token nothing is unknown"
    _, ascii_only = directories["ascii_bytes_only"]
    assert ascii_only.token_to_id("<unk>") in {i for row in reference_ids(ascii_only, texts) for i in row}


@pytest.mark.parametrize("variant", ["llama2", "metaspace_first", "no_decoder_no_template"])
def test_bos_template_matches(directories, texts, tmp_path, variant):
    directory, reference = directories[variant]
    rng = random.Random(5)
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(100)]
    requests = [{"text": t} for t in texts[:150]] + [{"text": a, "pair": b} for a, b in pairs]
    requests += [{"text": t, "add_special_tokens": False} for t in texts[:50]]
    requests += [{"text": a, "pair": b, "add_special_tokens": False} for a, b in pairs[:30]]
    expected = []
    for request in requests:
        encoding = reference.encode(request["text"], request.get("pair"), add_special_tokens=request.get("add_special_tokens", True))
        expected.append({"ids": encoding.ids, "token_type_ids": encoding.type_ids})
    if variant != "no_decoder_no_template":
        bos = reference.token_to_id("<s>")
        assert all(e["ids"][0] == bos for r, e in zip(requests, expected) if r.get("add_special_tokens", True))
    assert_same(run_cpp(directory, "encode_specials", requests, tmp_path), expected, requests)


@pytest.mark.parametrize("variant", ["llama2", "ascii_bytes_only", "no_decoder_no_template", "metaspace_always_split",
                                     "metaspace_first", "metaspace_never"])
def test_decode_matches(directories, texts, tmp_path, variant):
    directory, reference = directories[variant]
    rng = random.Random(11)
    sequences = [reference.encode(t).ids for t in texts]
    # Random ids break byte sequences apart, which both sides must replace alike.
    sequences += [[rng.randrange(reference.get_vocab_size()) for _ in range(rng.randint(0, 30))] for _ in range(300)]
    sequences += [[rng.randrange(3, 259) for _ in range(rng.randint(1, 8))] for _ in range(100)]
    requests = [{"ids": ids, "skip_special_tokens": skip} for ids in sequences for skip in (False, True)]
    expected = [reference.decode(r["ids"], skip_special_tokens=r["skip_special_tokens"]) for r in requests]
    if variant not in ("ascii_bytes_only", "no_decoder_no_template"):
        assert any("\ufffd" in text for text in expected), "some byte runs should be invalid UTF-8"
    assert_same(run_cpp(directory, "decode", requests, tmp_path), expected, requests)


def test_decode_inverts_encode(directories, texts, tmp_path):
    directory, reference = directories["llama2"]
    # Without added tokens, which would each start a stretch that gains a "▁", and
    # without "▁" itself, which decodes as a space.
    texts = [t for t in texts if not any(special in t for special in SPECIALS + ["▁"])]
    ids = run_cpp(directory, "encode", texts, tmp_path)
    decoded = run_cpp(directory, "decode", [{"ids": row} for row in ids], tmp_path)
    # Byte fallback loses nothing; the decoder strips the one space the normalizer added.
    assert decoded == texts


def test_added_tokens_match(directories, texts, tmp_path):
    _, base = directories["llama2"]
    reference = Tokenizer.from_str(base.to_str())
    reference.add_tokens([AddedToken("hello world", normalized=True), AddedToken("ization", normalized=True),
                          AddedToken("[X]", normalized=False, lstrip=True, rstrip=True)])
    reference.add_special_tokens([AddedToken("<pad>", normalized=False)])
    directory = tmp_path / "added"
    directory.mkdir()
    reference.save(str(directory / "tokenizer.json"))
    cases = texts + ["hello world", "say hello world", "tokenization ization", "a [X] b", "a[X]b", "<pad><pad>x"]
    expected = reference_ids(reference, cases)
    added = {reference.token_to_id(t) for t in ["hello world", "ization", "[X]", "<pad>"]}
    assert added <= {i for row in expected for i in row}, "every added token should be found"
    assert_same(run_cpp(directory, "encode", cases, tmp_path), expected, cases)
    requests = [{"ids": row, "skip_special_tokens": skip} for row in expected for skip in (False, True)]
    decoded = [reference.decode(r["ids"], skip_special_tokens=r["skip_special_tokens"]) for r in requests]
    assert_same(run_cpp(directory, "decode", requests, tmp_path), decoded, requests)


def test_info_names_llama_special_tokens(directories):
    directory, reference = directories["llama2"]
    described = info(directory)
    assert described["kind"] == "SentencePiece-style BPE"
    ids = described["special_ids"]
    assert (ids["bos"], ids["eos"], ids["unk"]) == tuple(reference.token_to_id(t) for t in ["<s>", "</s>", "<unk>"])
    assert (described["added_single"], described["added_pair"]) == (1, 2)
