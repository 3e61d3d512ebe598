#!/usr/bin/env python3
"""Packing benchmark: real (non-padding) tokens per second of instruction tuning with one
example per row against examples packed with document masking, on CPU.

Writes an instruction set of generated prompt/response pairs of about 6 to 500 tokens
(the repository's tiny GPT-2 tokenizer), prepares it twice with ftrain-prep (--packing none
and --packing documents, --seq-len 512), and trains a random GPT-2 (4 layers of width
128) for one pass over each. Both runs are measured here: the real tokens are counted
from the rows each step read (run.log_samples), the time is the sum of the steps'
step_time_s. Prints a Markdown table with the ratio and the load average.

usage: bench/packing.py [--examples N] [--ranks R] [--out DIR]
Needs build/ftrain and build/ftrain-prep (make build-programs) and the Python
environment (make setup)."""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

SOURCE = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BUILD", SOURCE / "build"))
SEQ_LEN = 512
WORDS = ("the a cat dog sat on mat why how what is two plus four answer river stone light house tree "
         "quickly slowly because although question explain").split()


def examples(count, seed=0):
    """Prompt/response pairs of about 6 to 500 tokens in all (about 3 tokens a word)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.randint(4, 160)
        prompt_words = rng.randint(1, max(1, words // 2))
        out.append({"prompt": " ".join(rng.choice(WORDS) for _ in range(prompt_words)),
                    "response": " " + " ".join(rng.choice(WORDS) for _ in range(words - prompt_words))})
    return out


def prepare(data, out, packing):
    target = out / f"{packing}.h5"
    subprocess.run([BUILD / "ftrain-prep", "--task", "instruction", "-i", data, "-t",
                    SOURCE / "configs/models/tiny-gpt2", "-o", target, "--seq-len", str(SEQ_LEN),
                    "--validation-fraction", "0", "--packing", packing, "--overwrite"], check=True,
                   capture_output=True)
    return target


def model(out):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    directory = out / "gpt2"
    if not (directory / "model.safetensors").exists():
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=SEQ_LEN, n_embd=128, n_layer=4, n_head=4)
                        ).save_pretrained(directory, safe_serialization=True)
    return directory


def train(dataset, gpt2, out, packing, ranks, batch):
    with h5py.File(dataset, "r") as f:
        rows = len(f["train"]["input_ids"])
        real = (f["train"]["attention_mask"][...] > 0).sum(axis=1)
    steps = rows // batch
    run_dir = out / f"run_{packing}"
    options = {"run.dir": run_dir, "model.path": gpt2, "model.dropout": 0, "data.path": dataset,
               "data.micro_batch_size": batch // ranks, "train.global_batch_size": batch, "train.steps": steps,
               "train.eval_every": 0, "optim.warmup_steps": 0, "checkpoint.every": 0, "checkpoint.at_end": "false",
               "checkpoint.export_hf": "false", "run.log_samples": "true", "run.resume": "none"}
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    subprocess.run(["mpirun", "-np", str(ranks), "--bind-to", "none", BUILD / "ftrain",
                    *[f"--{k}={v}" for k, v in options.items()]], check=True, capture_output=True, env=env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records if "step_time_s" in r]
    tokens = 0
    for sample_log in (run_dir / "samples").glob("dp_*.jsonl"):
        for line in sample_log.read_text().splitlines():
            tokens += int(sum(real[row] for row in json.loads(line)["rows"]))
    return {"rows": rows, "steps": steps, "real_tokens": tokens, "padding": 1 - real.sum() / (rows * SEQ_LEN),
            "seconds": sum(times), "median_step": statistics.median(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=800)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="global batch, rows")
    parser.add_argument("--out", type=Path, default=BUILD / "bench" / "packing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "sft.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples(args.examples)))
    gpt2 = model(args.out)
    results = {}
    for packing in ("none", "documents"):
        results[packing] = train(prepare(data, args.out, packing), gpt2, args.out, packing, args.ranks, args.batch)
    with h5py.File(args.out / "none.h5", "r") as f:
        lengths = (f["train"]["attention_mask"][...] > 0).sum(axis=1)
    print(f"instruction set: {args.examples} examples of {lengths.min()} to {lengths.max()} tokens "
          f"(mean {lengths.mean():.0f}), seq_len {SEQ_LEN}; GPT-2 4x128; {args.ranks} CPU ranks, global batch "
          f"{args.batch} rows; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| packing | rows | steps | padding | median step (s) | real tokens | real tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for packing, r in results.items():
        print(f"| {packing} | {r['rows']} | {r['steps']} | {100 * r['padding']:.1f}% | {r['median_step']:.3f} | "
              f"{r['real_tokens']} | {r['real_tokens'] / r['seconds']:.0f} |")
    ratio = (results["documents"]["real_tokens"] / results["documents"]["seconds"]) / (
        results["none"]["real_tokens"] / results["none"]["seconds"])
    print(f"\npacked / one per row, real tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
