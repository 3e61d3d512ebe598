"""The Unigram tokenizer (T5's) against Hugging Face `tokenizers`, on the tokenizers of
unigram_models.py: ids, the normalized words, templates, decoding, special tokens, and the
refusals that name file and key.
The C++ side runs through the tokenize_dump tool, built beside this test.
"""

import base64
import json
import random

import pytest
from transformers import PreTrainedTokenizerFast

from tokenize_dump_client import refusal, run_cpp, run_tool
from unigram_models import byte_fallback_tokenizer, corpus, t5_tokenizer, trained_model

# Whitespace of every kind, NFKC's compatibility forms (full-width, ligatures, circled and
# Roman numerals, fractions), combining accents, grapheme clusters past 6 bytes (emoji
# sequences, Hangul jamo), characters no piece covers, and the added tokens in the text.
TEXTS = [
    "",
    " ",
    "summarize: The quick brown fox",
    "  two  spaces,\ta tab\nand a newline  ",
    "\u3000ideographic\u3000space\u00a0and nbsp",
    "ＦＵＬＬ ｗｉｄｔｈ Ｔ５ ﬁne ﬂow ① ½ ™ Ⅻ",
    "e\u0301te\u0301 cafe\u0301 na\u0308ive é",
    "👍🏽 👨‍👩‍👧 🇩🇪 ᄒ\u1161\u11ab 한국어",
    "zzz Привет мир ×÷ \u200bzero\u200dwidth",
    "kato</s>mire<extra_id_0> suan <pad>der <unk>",
    "1234 don't (x) — ... ß ñ ö",
]


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    proto = trained_model()
    root = tmp_path_factory.mktemp("unigram")
    made = {}
    for name, tokenizer in (("converted", t5_tokenizer(proto, "converted")), ("hub", t5_tokenizer(proto, "hub")),
                            ("byte_fallback", byte_fallback_tokenizer())):
        directory = root / name
        directory.mkdir()
        tokenizer.save(str(directory / "tokenizer.json"))
        if name != "byte_fallback":
            (directory / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>",
                 "pad_token": "<pad>"}))
        made[name] = (directory, tokenizer)
    return made


def held_out_texts():
    return TEXTS + corpus(random.Random(11), 300)


@pytest.mark.parametrize("name", ["converted", "hub", "byte_fallback"])
def test_ids_equal_tokenizers(directories, tmp_path, name):
    directory, reference = directories[name]
    texts = held_out_texts()
    expected = [reference.encode(text, add_special_tokens=False).ids for text in texts]
    actual = run_cpp(directory, "encode", texts, tmp_path)
    mismatches = [(text, want, got) for text, want, got in zip(texts, expected, actual) if want != got]
    assert not mismatches, mismatches[:3]
    # The tests exercise what they claim: unknown pieces, byte tokens, and many-piece words.
    flat = [i for ids in expected for i in ids]
    if name == "byte_fallback":
        assert any(reference.id_to_token(i).startswith("<0x") for i in flat)
    else:
        assert reference.token_to_id("<unk>") in flat and len(set(flat)) > 100


@pytest.mark.parametrize("name", ["converted", "hub"])
def test_normalized_words_equal_tokenizers(directories, tmp_path, name):
    """Normalization and pre-tokenization alone: the words the pieces are cut from."""
    directory, reference = directories[name]
    texts = [t for t in TEXTS if "<" not in t]
    expected = []
    for text in texts:
        normalized = reference.normalizer.normalize_str(text)
        expected.append([word for word, _ in reference.pre_tokenizer.pre_tokenize_str(normalized)])
    assert run_cpp(directory, "pre_tokenize", texts, tmp_path) == expected
    assert any("fi" in word for words in expected for word in words)  # NFKC ran: "ﬁne" -> "fine"


@pytest.mark.parametrize("name", ["converted", "hub", "byte_fallback"])
def test_specials_and_decoding_equal_tokenizers(directories, tmp_path, name):
    directory, reference = directories[name]
    texts = held_out_texts()[:40]
    requests = [{"text": a, "pair": b} for a, b in zip(texts[1:], reversed(texts[1:]))] + [{"text": t} for t in texts]
    expected = []
    for request in requests:
        encoding = reference.encode(request["text"], request.get("pair"))
        expected.append({"ids": encoding.ids, "token_type_ids": encoding.type_ids})
    assert run_cpp(directory, "encode_specials", requests, tmp_path) == expected

    decodes = [{"ids": e["ids"], "skip_special_tokens": skip} for e in expected for skip in (False, True)]
    decodes.append({"ids": [5, 1_000_000, -1, 7], "skip_special_tokens": False})  # ids past the vocabulary are skipped
    wanted = [reference.decode([i for i in d["ids"] if 0 <= i < reference.get_vocab_size()],
                               skip_special_tokens=d["skip_special_tokens"]) for d in decodes]
    assert run_cpp(directory, "decode", decodes, tmp_path) == wanted


@pytest.mark.parametrize("name", ["converted", "byte_fallback"])
def test_special_token_ids_equal_transformers(directories, name):
    directory, reference = directories[name]
    fast = PreTrainedTokenizerFast.from_pretrained(str(directory)) if name != "byte_fallback" else \
        PreTrainedTokenizerFast(tokenizer_object=reference, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if name == "byte_fallback":
        (directory / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    info = run_tool(directory, "info")
    assert info.returncode == 0, info.stderr.decode(errors="replace")
    result = json.loads(info.stdout)
    assert result["kind"] == "Unigram"
    assert result["vocab_size"] == reference.get_vocab_size()
    for key in ("bos", "eos", "unk", "pad"):
        assert result["special_ids"][key] == getattr(fast, f"{key}_token_id"), key


def test_bad_files_are_refused_naming_file_and_key(directories, tmp_path):
    source = json.loads((directories["converted"][0] / "tokenizer.json").read_text(encoding="utf-8"))

    def refused(name, edit):
        document = json.loads(json.dumps(source))
        edit(document)
        directory = tmp_path / name
        directory.mkdir()
        (directory / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
        message = refusal(directory)
        assert str(directory / "tokenizer.json") in message, message
        return message

    def set_charsmap(document, value):
        document["normalizer"]["normalizers"][0]["precompiled_charsmap"] = value

    assert "model.unk_id" in refused("no_unk", lambda d: d["model"].update(unk_id=None))
    assert "model.unk_id" in refused("unk_past", lambda d: d["model"].update(unk_id=10_000))
    assert "model.vocab[5]" in refused("repeated", lambda d: d["model"]["vocab"].__setitem__(5, d["model"]["vocab"][4]))
    assert "model.vocab[3]" in refused("bad_score", lambda d: d["model"]["vocab"].__setitem__(3, ["x", "high"]))
    assert "model.vocab" in refused("empty", lambda d: d["model"].update(vocab=[]))
    assert "base64" in refused("not_base64", lambda d: set_charsmap(d, "***"))
    # A size larger than the bytes, and a trie whose offsets lead outside itself: both
    # refused, the second while encoding, never read out of bounds.
    assert "precompiled_charsmap" in refused("short", lambda d: set_charsmap(d, base64.b64encode(b"\xff\xff\x00\x00ab").decode()))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    document = json.loads(json.dumps(source))
    set_charsmap(document, base64.b64encode((8).to_bytes(4, "little") + b"\xff\xff\xff\xff" * 2 + b"x\0").decode())
    (corrupt / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
    payload = tmp_path / "corrupt.json"
    payload.write_text(json.dumps(["abc"]))
    result = run_tool(corrupt, "encode", payload)
    assert result.returncode == 1 and "trie is corrupt" in result.stderr.decode(errors="replace")
    message = refused("whitespace", lambda d: d.update(pre_tokenizer={"type": "Whitespace"}))
    assert "pre_tokenizer.type" in message and "Whitespace" in message
    message = refused("nfd", lambda d: d["normalizer"]["normalizers"].append({"type": "NFD"}))
    assert "normalizer.normalizers[3].type" in message and "NFD" in message
