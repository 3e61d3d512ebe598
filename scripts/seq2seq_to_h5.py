#!/usr/bin/env python3
"""Writes an ftrain seq2seq dataset (docs/dataset-format.md) with a tokenizer that
ftrain-prep does not read yet: T5's SentencePiece Unigram (t5-small, flan-t5-base).

The rows are what `ftrain-prep --task seq2seq` writes for the tokenizers it reads, and
what transformers' run_summarization prepares: the source after --source-prefix, with the
model's special tokens, cut to --seq-len and padded; the target cut to --target-len and
padded with -100. Splits come from --input / --validation-input / --test-input files
(JSON Lines; a column may name a nested key such as translation.de).

usage: seq2seq_to_h5.py --tokenizer DIR --output OUT.h5 --input train.jsonl
                        [--validation-input dev.jsonl] [--test-input test.jsonl]
                        [--source-column source] [--target-column target]
                        [--source-prefix "summarize: "] [--seq-len 512] [--target-len 128]
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np
from transformers import AutoTokenizer


def column(record, key, path, line):
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            sys.exit(f"{path}:{line}: column '{key}' is missing")
        value = value[part]
    if not isinstance(value, str):
        sys.exit(f"{path}:{line}: column '{key}' is {type(value).__name__}, expected text")
    return value


def read_pairs(paths, args):
    sources, targets = [], []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                record = json.loads(text)
                target = column(record, args.target_column, path, line)
                if not target.strip():
                    sys.exit(f"{path}:{line}: column '{args.target_column}' is empty: a target is needed to learn from")
                sources.append(args.source_prefix + column(record, args.source_column, path, line))
                targets.append(target)
    return sources, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--input", action="append", required=True)
    parser.add_argument("--validation-input", action="append", default=[])
    parser.add_argument("--test-input", action="append", default=[])
    parser.add_argument("--source-column", default="source")
    parser.add_argument("--target-column", default="target")
    parser.add_argument("--source-prefix", default="")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--target-len", type=int, default=128)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    splits = {"train": args.input, "validation": args.validation_input, "test": args.test_input}
    temporary = args.output + ".tmp"
    index = 0
    with h5py.File(temporary, "w") as f:
        f.attrs.update({"format": "ftrain.tokens", "format_version": 1, "seq_len": args.seq_len,
                        "target_len": args.target_len, "vocab_size": len(tokenizer),
                        "eos_id": -1 if tokenizer.eos_token_id is None else tokenizer.eos_token_id, "pad_id": pad,
                        "tokenizer": os.path.abspath(args.tokenizer), "task": "seq2seq"})
        for split, paths in splits.items():
            if not paths:
                continue
            sources, targets = read_pairs(paths, args)
            inputs = tokenizer(sources, max_length=args.seq_len, padding="max_length", truncation=True)
            labels = tokenizer(text_target=targets, max_length=args.target_len, truncation=True)["input_ids"]
            group = f.create_group(split)
            group.attrs["num_documents"] = len(sources)
            group.create_dataset("input_ids", data=np.array(inputs["input_ids"], np.int32), chunks=True)
            group.create_dataset("attention_mask", data=np.array(inputs["attention_mask"], np.uint8), chunks=True)
            padded = np.full((len(labels), args.target_len), -100, np.int64)
            for row, ids in enumerate(labels):
                padded[row, :len(ids)] = ids
            group.create_dataset("labels", data=padded, chunks=True)
            group.create_dataset("document_index", data=np.arange(index, index + len(sources), dtype=np.int64))
            index += len(sources)
    os.replace(temporary, args.output)
    print(f"seq2seq_to_h5: wrote {args.output}: " +
          ", ".join(f"{s} {len(read_pairs(p, args)[0])}" for s, p in splits.items() if p))


if __name__ == "__main__":
    main()
