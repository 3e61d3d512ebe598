"""BpeTokenizer against Hugging Face `tokenizers`: same ids, same pieces, same text.

A byte-level BPE is trained here with `tokenizers` on a generated corpus and saved in
both layouts (tokenizer.json; vocab.json + merges.txt). The C++ side runs through the
bpe_encode tool, built beside this test.
"""

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from tokenizers import AddedToken, ByteLevelBPETokenizer, Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizers import normalizers
from transformers import GPT2Tokenizer

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD_DIR / "tests" / "data" / "bpe_encode"
EOT = "<|endoftext|>"

# Llama 3's split: case-insensitive contractions, at most three digits per piece, and
# line breaks kept apart from other whitespace.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \n ",
    "hello",
    " hello",
    "hello ",
    "hello  world",
    "hello   world   ",
    "Hello, World!",
    "it's I'm we're they've you'll he'd don't",
    "IT'S I'M WE'RE THEY'VE YOU'LL HE'D DON'T",
    "'s 't 're 've 'm 'll 'd",
    "''s ''t x's 'S 'T 'Re",
    "rock'n'roll o'clock",
    "3.14159 1,000,000 2024-01-01 12:30 0x1F 1e-9 -42 +7",
    "1234567890 12 345",
    "½ ² ٣ ⅷ ① ¾",
    "café naïve résumé Ångström Øresund",
    "e\u0301 a\u0308 n\u0303 combining\u0301",
    "日本語のテキスト 中文 한국어",
    "😀 👍🏽 👨‍👩‍👧 🇫🇷 🤖🤖",
    "tab\tseparated\tvalues\t",
    "line1\nline2\n\nline4\n\n\n",
    "trailing space ",
    "trailing spaces   ",
    "trailing newline\n",
    "   leading spaces",
    "\t\t indented\n\t\tcode",
    EOT,
    "a" + EOT + "b",
    "end." + EOT,
    EOT + " start",
    EOT + EOT,
    "<|endoftext",
    "<|endoftext|",
    EOT + "\n\nNext document",
    "text " + EOT + " text",
    "\u00a0nbsp\u00a0 ",
    "\u3000ideographic\u3000space",
    "\u2028line\u2029para",
    "zero\u200bwidth\u200djoiner",
    "\x00\x01 control \x7f\x1b[0m",
    "mixed  \t\n  whitespace \t ",
    "!!!??? ... --- *** ~~~",
    "http://example.com/path?q=1&r=2#frag",
    "email@example.com",
    "C++ std::vector<int> x{};",
    "def f(x):\n    return x**2\n",
    "ǅ ǈ ß ẞ ﬁ ﬂ",
    "Σίσυφος ΚΑΛΗΜΕΡΑ",
    "Привет, мир!",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    "\u180emongolian\u180e",
    "\u0085next\u0085line",
    "\x0bvt\x0cff\x1cfs",
]


def generated_corpus(rng, lines):
    """Text with the shapes of the edge cases, often enough that BPE learns merges for them."""
    syllables = ["th", "e", "an", "re", "in", "on", "er", "at", "st", "ing", "ou", "al", "ca", "fé", "ñ", "über"]
    others = ["日本", "語", "中文", "😀", "👍", "Привет", "мир", "Σί", "ß", "é", "1", "42", "2024", "3.14"]
    punctuation = [".", ",", "!", "?", "...", "--", "(", ")", '"', "'s", "'t", "'re", "'ll", "'d", "'m", "'ve", ":"]
    spaces = [" ", " ", " ", "  ", "\t", "\n", "\n\n", " \n"]
    text = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(1, 12)):
            roll = rng.random()
            if roll < 0.6:
                word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
                words.append(word.capitalize() if rng.random() < 0.2 else word)
            elif roll < 0.75:
                words.append(rng.choice(others))
            elif roll < 0.95:
                words.append(rng.choice(punctuation))
            else:
                words.append(EOT)
            words.append(rng.choice(spaces))
        text.append("".join(words))
    return text


def random_lines(rng, lines):
    """Random strings over every class the split pattern distinguishes."""
    pool = (
        list("abcdefXYZ0123456789 \t\n\r.,;:!?'\"-_()[]{}<>|/\\@#$%^&*+=~`")
        + ["é", "ü", "ß", "ñ", "日", "本", "語", "한", "😀", "👍🏽", "\u0301", "\u00a0", "\u3000", "\u2028", "½", "٣"]
        + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", EOT, "<|", "|>", "  ", "\n\n", " \t "]
    )
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 60))) for _ in range(lines)]


@pytest.fixture(scope="module")
def texts():
    return EDGE_CASES + random_lines(random.Random(7), 400)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tokenizer saved as tokenizer.json and as vocab.json + merges.txt."""
    root = tmp_path_factory.mktemp("bpe")
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(
        generated_corpus(random.Random(3), 3000),
        vocab_size=1500,
        min_frequency=2,
        special_tokens=[EOT],
        show_progress=False,
    )
    json_dir = root / "json"
    files_dir = root / "files"
    json_dir.mkdir()
    files_dir.mkdir()
    tokenizer.save(str(json_dir / "tokenizer.json"))
    tokenizer.save_model(str(files_dir))
    assert tokenizer.get_vocab_size() > 1000, "the corpus should support a real vocabulary"
    return {"json": json_dir, "files": files_dir, "root": root}


def run_tool(tokenizer_dir, *args, expect_success=True):
    result = subprocess.run([str(TOOL), str(tokenizer_dir), *map(str, args)], capture_output=True, timeout=120)
    if expect_success:
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return json.loads(result.stdout)
    return result


def run_cpp(tokenizer_dir, mode, payload, tmp_path):
    payload_file = tmp_path / f"{mode}-{os.getpid()}-{random.random()}.json"
    payload_file.write_text(json.dumps(payload), encoding="utf-8")
    return run_tool(tokenizer_dir, mode, payload_file)


def write_variant(root, name, tokenizer_json):
    """A tokenizer directory holding the given tokenizer.json document."""
    directory = root / name
    directory.mkdir(exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    return directory


def assert_same_ids(cpp_ids, reference_ids, texts):
    mismatches = [(t, c, r) for t, c, r in zip(texts, cpp_ids, reference_ids) if c != r]
    assert len(cpp_ids) == len(reference_ids)
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"


def reference_ids(tokenizer, texts):
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_tool_is_built():
    assert TOOL.exists(), f"{TOOL} is missing: build the bpe_encode target first"


def test_tokenizer_json_matches(trained, texts, tmp_path):
    reference = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    expected = reference_ids(reference, texts)
    eot_id = reference.token_to_id(EOT)
    assert any(eot_id in ids for ids in expected), "the corpus should contain the special token"
    assert any(len(reference.id_to_token(i)) > 3 for ids in expected for i in ids), "merges should apply"
    assert_same_ids(run_cpp(trained["json"], "encode", texts, tmp_path), expected, texts)


def test_vocab_and_merges_files_match(trained, texts, tmp_path):
    # What transformers builds from a GPT-2 style directory, "<|endoftext|>" included.
    reference = GPT2Tokenizer.from_pretrained(str(trained["files"]))
    expected = [reference.encode(text, add_special_tokens=False) for text in texts]
    assert any(reference.eos_token_id in ids for ids in expected)
    assert_same_ids(run_cpp(trained["files"], "encode", texts, tmp_path), expected, texts)


def test_merges_written_as_strings_match(trained, texts, tmp_path):
    document = json.loads((trained["json"] / "tokenizer.json").read_text(encoding="utf-8"))
    merges = document["model"]["merges"]
    assert merges and isinstance(merges[0], list), "tokenizers should save merges as pairs"
    document["model"]["merges"] = [f"{left} {right}" for left, right in merges]
    directory = write_variant(trained["root"], "string_merges", document)
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert_same_ids(run_cpp(directory, "encode", texts, tmp_path), reference_ids(reference, texts), texts)


def test_add_prefix_space_matches(trained, texts, tmp_path):
    document = json.loads((trained["json"] / "tokenizer.json").read_text(encoding="utf-8"))
    document["pre_tokenizer"]["add_prefix_space"] = True
    directory = write_variant(trained["root"], "prefix_space", document)
    reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
    expected = reference_ids(reference, texts)
    plain = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    assert expected != reference_ids(plain, texts), "the prefix space should change some ids"
    assert_same_ids(run_cpp(directory, "encode", texts, tmp_path), expected, texts)


def test_added_token_options_match(trained, texts, tmp_path):
    reference = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    reference.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
    reference.add_tokens(
        [
            AddedToken("[SEP]", rstrip=True, normalized=False),
            AddedToken("word", single_word=True, normalized=True),
            AddedToken(EOT + "x", normalized=True),
            AddedToken("日本", normalized=False),
            AddedToken("hello world", normalized=True),
        ]
    )
    directory = trained["root"] / "added_tokens"
    directory.mkdir(exist_ok=True)
    reference.save(str(directory / "tokenizer.json"))
    cases = [
        "a <mask> b",
        "a   <mask>b",
        "\t<mask>",
        "<mask><mask>  <mask>",
        "x[SEP]  y",
        "[SEP]\n\n[SEP]",
        "a word b",
        "aword b",
        "words",
        "word",
        "word.",
        "1word",
        "éword",
        "word日本",
        EOT + "x",
        EOT + "xx",
        "日本語 日本",
        "say hello world twice: hello world",
        "[SEP] <mask> word " + EOT,
    ]
    expected = reference_ids(reference, cases + texts)
    added_ids = {reference.token_to_id(t) for t in ["<mask>", "[SEP]", "word", "日本", "hello world"]}
    assert added_ids <= {i for ids in expected for i in ids}, "every added token should be exercised"
    assert_same_ids(run_cpp(directory, "encode", cases + texts, tmp_path), expected, cases + texts)
    assert run_tool(directory, "info")["vocab_size"] == reference.get_vocab_size()


def test_split_before_byte_level_matches(trained, texts, tmp_path):
    """A Llama 3 style pipeline: a Split regex, then ByteLevel without its own regex."""
    source = json.loads((trained["json"] / "tokenizer.json").read_text(encoding="utf-8"))
    model = models.BPE(
        vocab=source["model"]["vocab"],
        merges=[tuple(pair) for pair in source["model"]["merges"]],
        ignore_merges=True,
    )
    reference = Tokenizer(model)
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens([EOT])
    directory = trained["root"] / "llama3_style"
    directory.mkdir(exist_ok=True)
    reference.save(str(directory / "tokenizer.json"))
    cases = texts + ["12345678 1234", "DON'T WON'T I'M", "a\n\n  b", "x \r\n\r\n y"]
    assert_same_ids(run_cpp(directory, "encode", cases, tmp_path), reference_ids(reference, cases), cases)


def test_decode_matches(trained, texts, tmp_path):
    reference = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    rng = random.Random(11)
    vocab_size = reference.get_vocab_size()
    # Random ids cut multi-byte characters apart, which both sides must replace alike.
    sequences = [[rng.randrange(vocab_size) for _ in range(rng.randint(0, 30))] for _ in range(300)]
    sequences += [reference.encode(text, add_special_tokens=False).ids for text in texts]
    expected = [reference.decode(ids, skip_special_tokens=False) for ids in sequences]
    assert any("\ufffd" in text for text in expected), "some sequences should hold broken UTF-8"
    assert run_cpp(trained["json"], "decode", sequences, tmp_path) == expected


def test_decode_inverts_encode(trained, texts, tmp_path):
    for directory in (trained["json"], trained["files"]):
        ids = run_cpp(directory, "encode", texts, tmp_path)
        assert run_cpp(directory, "decode", ids, tmp_path) == texts


def first_difference(actual, expected):
    """The first piece where two splits part, with a few pieces either side."""
    index = next(i for i, (a, e) in enumerate(zip(actual + [None], expected + [None])) if a != e)
    window = slice(max(0, index - 3), index + 4)
    return f"piece {index}: bpe_encode {actual[window]!r}, tokenizers {expected[window]!r}"


def test_pre_tokenize_every_code_point(trained, tmp_path):
    """Each code point in four contexts, so a letter, digit, space or symbol class that the
    two regex engines disagree on moves a piece boundary."""
    reference = Tokenizer.from_file(str(trained["json"] / "tokenizer.json")).pre_tokenizer
    # Every code point up to the end of CJK extension H (U+323AF), and a sample beyond.
    code_points = [c for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    code_points += list(range(0x10000, 0x323B0)) + list(range(0xE0000, 0xE0080)) + [0x10FFFF]
    probe = "".join(f"a{c}1{c}.{c} {c}\n" for c in map(chr, code_points))
    chunks = [probe[i : i + 4000] for i in range(0, len(probe), 4000)]
    expected = [[chunk[start:end] for _, (start, end) in reference.pre_tokenize_str(chunk)] for chunk in chunks]
    actual = run_cpp(trained["json"], "pre_tokenize", chunks, tmp_path)
    differing = [first_difference(a, e) for a, e in zip(actual, expected) if a != e]
    assert not differing, f"{len(differing)} of {len(chunks)} chunks differ, first at {differing[0]}"


def test_info_matches(trained):
    for directory in (trained["json"], trained["files"]):
        reference = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
        info = run_tool(directory, "info")
        assert info["vocab_size"] == reference.get_vocab_size()
        assert info["eos_id"] == reference.token_to_id(EOT)


def refused(trained, name, tokenizer, expected_key):
    directory = trained["root"] / name
    directory.mkdir(exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    result = run_tool(directory, "info", expect_success=False)
    message = result.stderr.decode()
    assert result.returncode == 1, message
    assert str(directory / "tokenizer.json") in message and expected_key in message, message


def test_unsupported_configurations_are_refused(trained):
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "ab": 3}
    refused(trained, "wordpiece", Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")), "model.type")

    byte_fallback = Tokenizer(models.BPE(vocab, [("a", "b")], byte_fallback=True))
    byte_fallback.pre_tokenizer = pre_tokenizers.ByteLevel()
    refused(trained, "byte_fallback", byte_fallback, "model.byte_fallback")

    normalized = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    normalized.normalizer = normalizers.NFC()
    refused(trained, "normalizer", normalized, "normalizer")

    # A byte-level vocabulary behind a Metaspace pre-tokenizer, still with its ByteLevel decoder.
    metaspace = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    refused(trained, "metaspace", metaspace, "decoder.type")

    whitespace = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    refused(trained, "whitespace", whitespace, "pre_tokenizer.type")


# ---- character offsets (question answering maps answers with them) ----

DUMP = BUILD_DIR / "tests" / "data" / "tokenize_dump"


def offsets_of(directory, texts, tmp_path):
    payload = tmp_path / f"offsets-{random.random()}.json"
    payload.write_text(json.dumps(texts), encoding="utf-8")
    result = subprocess.run([str(DUMP), str(directory), "encode_offsets", str(payload)], capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def reference_offsets(tokenizer, texts):
    return [{"ids": e.ids, "offsets": [list(span) for span in e.offsets]}
            for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_offsets_match(trained, texts, tmp_path):
    """Offsets of byte-level BPE, GPT-2's and Llama 3's pipelines: multi-byte characters
    cut between tokens, leading spaces, added tokens."""
    reference = Tokenizer.from_file(str(trained["json"] / "tokenizer.json"))
    cases = texts + ["café naïve 日本語 😀 " + EOT + " after", " two  spaces\n\n"]
    expected = reference_offsets(reference, cases)
    assert any(a == b for e in expected for a, b in zip(e["offsets"], e["offsets"][1:])), \
        "some characters should be cut between tokens"
    assert_same_ids(offsets_of(trained["json"], cases, tmp_path), expected, cases)
    llama3 = trained["root"] / "llama3_style"
    if not (llama3 / "tokenizer.json").exists():
        test_split_before_byte_level_matches(trained, texts, tmp_path)
    reference = Tokenizer.from_file(str(llama3 / "tokenizer.json"))
    assert_same_ids(offsets_of(llama3, cases, tmp_path), reference_offsets(reference, cases), cases)
