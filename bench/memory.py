"""Measured peak memory per rank in every phase of a job, for each ZeRO stage and
data-parallel size, as a multiple of the model's fp32 bytes M, beside the sharded
training state the layout predicts. Prints one Markdown table and writes it, with every
measurement, to the output directory.

    bench/memory.py [--model gpt2-124m|llama-124m|gpt2-26m|tinyllama-1.1b|t5-small] [--stages 0,1,2,3]
                    [--dp 1,2,4,8] [--out DIR] [--set KEY=VALUE ...]

Each cell is one job on CPU ranks (oversubscribed): 2 steps saved at the end and
exported, then resumed for a third step. A rank's peak in a phase is its resident set's
high-water mark in that phase (metrics.jsonl's memory_phases, read from /proc); the
table shows the largest over the ranks minus the same job on a tiny GPT-2 (a tiny T5
for T5), which holds what LibTorch, MPI and the allocator cost whatever the model. The
predicted column is the training state per rank: weights, gradients and two AdamW moments,
16 psi bytes, divided as the stage divides them (ZeRO-1: the moments; ZeRO-2: also the
gradients; ZeRO-3: everything). --set passes ftrain options to both jobs (for the
1.1B model: --set dist.prefetch=false --set dist.overlap=false
--set train.activation_checkpointing=true --set checkpoint.async=false
--set run.host_memory=release, the least memory). The last two columns are the bytes the resume read
(the most on any rank, from /proc/self/io, minus the tiny model's) and what its part
of the saved weights and AdamW moments is: all 3 M at ZeRO-0, its shard at ZeRO 1-3.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (bench/compare.py: models, data, machine)

SOURCE = compare.SOURCE
BUILD = compare.BUILD
MPIEXEC = os.environ.get("MPIEXEC", "mpirun")
PHASES = ("load", "setup", "resume", "first_step", "train", "save", "export")
SEQ_LEN = 64


def make_model(name, directory):
    import torch
    import transformers
    if (directory / "model.safetensors").exists():
        return
    torch.manual_seed(0)
    if name in ("gpt2-124m", "gpt2-tiny"):
        compare.make_model(name, directory)
        return
    if name == "gpt2-26m":  # tests/launch/telemetry/test_memory_phases.py's shape
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=1024, n_positions=128, n_embd=512,
                                                                     n_layer=8, n_head=8))
    elif name == "tinyllama-1.1b":  # TinyLlama-1.1B's shape, random weights (4.4 GB in fp32)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
            num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False))
    elif name == "t5-tiny":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1))
    elif name == "t5-small":  # t5-small's shape (T5 v1.0: one embedding shared by both stacks and the head)
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1))
    elif name == "llama-124m":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=False))
    else:
        raise SystemExit(f"bench/memory.py: unknown model '{name}'")
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="20GB")  # one file


def predicted(stage, dp):
    """The training state per rank in fp32 models (4 psi bytes)."""
    weights, gradients, moments = 1.0, 1.0, 2.0
    if stage >= 1:
        moments /= dp
    if stage >= 2:
        gradients /= dp
    if stage >= 3:
        weights /= dp
    return weights + gradients + moments


def predicted_read(stage, dp):
    """The bytes a rank's resume reads, in fp32 models: its part of the saved weights
    and two AdamW moments (3 M): all of it at ZeRO-0, its shard at ZeRO 1-3."""
    return 3.0 / dp if stage >= 1 else 3.0


def run_job(work, model, data, stage, dp, extra_options=()):
    """{phase: the largest peak over the ranks} of one job and its resumption, or None
    when ftrain refuses the layout."""
    run_dir = work / "runs" / f"{model.name}-zero{stage}-dp{dp}"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    options = [f"--run.dir={run_dir}", f"--model.path={model}", "--model.dropout=0", f"--data.path={data}",
               "--data.micro_batch_size=1", f"--train.global_batch_size={dp}", "--train.eval_every=0",
               "--train.test_split=", "--checkpoint.at_end=true", "--checkpoint.export_hf=true",
               f"--dist.zero={stage}", "--run.threads=1", *extra_options]
    peaks = {}
    for steps, extra in ((2, []), (3, ["--run.resume=auto"])):
        command = [MPIEXEC, "-np", str(dp), "--bind-to", "none", str(BUILD / "ftrain"), *options,
                   f"--train.steps={steps}", *extra]
        run_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            if steps == 2 and "dist.zero" in result.stderr:
                return None  # a layout ftrain refuses, said in the table
            raise SystemExit(f"bench/memory.py: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        [record] = [r for r in records if "memory_phases" in r]
        for peak in record["memory_phases"]:
            # The resumption's resume phase; everything else from the first job.
            if (steps == 3) == (peak["phase"] == "resume"):
                peaks[peak["phase"]] = max(peaks.get(peak["phase"], 0), peak["host_peak_bytes"])
            if steps == 3 and peak["phase"] == "resume":  # the bytes the resume read (/proc/self/io)
                peaks["resume_read"] = max(peaks.get("resume_read", 0), peak["read_bytes"])
        (run_dir / "metrics.jsonl").rename(run_dir / f"metrics.{steps}.jsonl")
    return peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-124m",
                        choices=["gpt2-124m", "llama-124m", "gpt2-26m", "tinyllama-1.1b", "t5-small"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an ftrain option for every job, e.g. dist.prefetch=false")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--dp", default="1,2,4,8")
    parser.add_argument("--out", type=Path, default=SOURCE / "build" / "bench-memory")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    dps = [int(d) for d in args.dp.split(",")]
    work = args.out
    work.mkdir(parents=True, exist_ok=True)

    # The baseline runs the same code: a tiny T5 for T5, a tiny GPT-2 otherwise.
    seq2seq = args.model.startswith("t5")
    model, tiny = work / args.model, work / ("t5-tiny" if seq2seq else "gpt2-tiny")
    make_model(args.model, model)
    make_model(tiny.name, tiny)
    parameters, _, _, vocab = compare.model_shape(model)
    model_bytes = 4 * parameters
    task, prefix = ("seq2seq", "pairs") if seq2seq else ("causal_lm", "tokens")
    data, tiny_data = work / f"{prefix}-{vocab}.h5", work / f"{prefix}-1024.h5"
    compare.make_data(data, task, vocab, SEQ_LEN, 256)
    compare.make_data(tiny_data, task, 1024, SEQ_LEN, 256)

    rows, raw = [], {}
    for stage in stages:
        for dp in dps:
            extra = [f"--{option}" for option in args.set]
            big = run_job(work, model, data, stage, dp, extra)
            small = run_job(work, tiny, tiny_data, stage, dp, extra) if big is not None else None
            raw[f"zero{stage}-dp{dp}"] = {"model": big, "tiny": small}
            if big is None:
                rows.append(f"| {stage} | {dp} | refused | " + " | ".join("" for _ in (*PHASES, 1, 2)) + " |")
                continue
            cells = [f"{(big[p] - small[p]) / model_bytes:.2f}" if p in big and p in small else "-"
                     for p in (*PHASES, "resume_read")]
            cells.append(f"{predicted_read(stage, dp):.2f}")
            rows.append(f"| {stage} | {dp} | {predicted(stage, dp):.2f} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)

    load = os.getloadavg()
    table = [f"Peak resident memory per rank by phase, minus a tiny {'T5' if seq2seq else 'GPT-2'}'s, in fp32 models of {args.model} "
             f"(M = {model_bytes / 2**20:.0f} MiB, {parameters / 1e6:.1f}M parameters); CPU ranks on {compare.machine()}, "
             f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
             "",
             "| ZeRO | dp | training state (predicted) | " + " | ".join(PHASES) + " | resume read | its shard |",
             "| --- | --- | --- | " + " | ".join("---" for _ in PHASES) + " | --- | --- |",
             *rows]
    text = "\n".join(table)
    print(text)
    (work / "memory.md").write_text(text + "\n")
    (work / "memory.json").write_text(json.dumps({"model_bytes": model_bytes, "runs": raw}, indent=1))


if __name__ == "__main__":
    main()
