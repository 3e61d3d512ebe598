"""Unigram tokenizers for the tests, built here since no pretrained T5 is at hand: a
SentencePiece Unigram model trained with SentencePiece's own NFKC rules (its precompiled
charsmap), laid out as transformers converts T5 checkpoints today ("converted") or as
t5-small's tokenizer.json on the Hub has it ("hub"), and a Llama-style Unigram with byte
fallback. `tokenizers` builds each one, so each is also the reference it is compared with.
"""

import io
import json
import random

import sentencepiece
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

EXTRA_IDS = 5


def corpus(rng, lines):
    syllables = ["ka", "to", "mi", "re", "su", "an", "der", "sch", "ung", "ti", "on", "qu", "é", "ö", "ß", "ñ"]
    extras = ["Ｔ５", "ﬁne", "café", "naïve", "e\u0301te\u0301", "日本語", "😀", "①", "½", "™", "Ⅻ", "—", "...",
              "1234", "don't", "(x)", "summarize:", "translate"]
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.15:
                words.append(rng.choice(extras))
            else:
                words.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
        out.append(" ".join(words))
    return out


def trained_model():
    """A SentencePiece Unigram model with T5's special pieces and the nmt_nfkc rules."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(random.Random(3), 3000)), model_writer=model, vocab_size=400,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.98,
        normalization_rule_name="nmt_nfkc", num_threads=1, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    assert len(proto.normalizer_spec.precompiled_charsmap) > 100_000  # the real NFKC rules
    return proto


def t5_tokenizer(proto, layout):
    """What transformers' T5 conversion writes (layout "converted") or the older file
    t5-small ships (layout "hub"): the pieces, then <extra_id_N> counting down."""
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(EXTRA_IDS))]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    charsmap = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    if layout == "converted":
        tokenizer.normalizer = normalizers.Sequence(
            [charsmap, normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")])
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    else:
        tokenizer.normalizer = charsmap
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(EXTRA_IDS)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return tokenizer


def byte_fallback_tokenizer():
    """A Llama-style Unigram: no normalizer, byte tokens for what no piece covers."""
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    for i, piece in enumerate(["▁", "▁the", "the", "▁a", "a", "b", "ab", "▁ab", "c", "é", "▁é", "h", "e", "t"]):
        vocab.append((piece, -1.0 - 0.37 * i))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tokenizer


def write_t5_directory(directory, layout="converted"):
    """A T5 tokenizer directory as save_pretrained writes one; returns its tokenizer."""
    tokenizer = t5_tokenizer(trained_model(), layout)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    return tokenizer
