#!/usr/bin/env python3
"""Trains the byte-level BPE tokenizer of configs/models/tiny-gpt2 on the demo corpus.
Its output is committed; rerun only to change the tokenizer (the model's
vocab_size in config.json must stay >= the tokenizer's).

usage: make_tiny_tokenizer.py CORPUS.jsonl OUT_DIR [--vocab-size N]
"""
import argparse
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("out_dir")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(f"{args.out_dir}/tokenizer.json")
    print(f"vocabulary: {tokenizer.get_vocab_size()} tokens -> {args.out_dir}/tokenizer.json")


if __name__ == "__main__":
    main()
