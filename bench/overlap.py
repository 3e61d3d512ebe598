"""Gradient reduction during the backward pass (dist.overlap) against after it, for
every ZeRO stage, measured in one run on this machine: the same model, data and ranks,
ftrain with overlap off and on, alternating, repeat after repeat. Prints a Markdown
table of the median step time of each side, the bytes each rank sends per step (equal
on both sides) and the peak gradient bytes (overlap holds one more block's full
gradients at ZeRO-2/3), and writes it with every measurement to the output directory.

    bench/overlap.py [--model gpt2-124m|gpt2-tiny] [--ranks N] [--stages 0,1,2,3]
                     [--steps S] [--warmup W] [--repeats R] [--device cpu|cuda]

On the CPU the ranks share the machine's cores and MPI moves the data; Open MPI
progresses a non-blocking collective only inside MPI calls, so on the CPU most of a
started reduction still runs when it is waited for. On GPUs NCCL runs it on its own
stream beside the backward pass (one GPU per rank: --device cuda needs --ranks GPUs).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (bench/compare.py: the models, the data, the ini)

SOURCE = compare.SOURCE
BUILD = compare.BUILD
MPIEXEC = os.environ.get("MPIEXEC", "mpirun")

# Per rank: micro-batch rows and sequence length.
SHAPES = {"gpt2-124m": {"cpu": (2, 128), "cuda": (8, 1024)}, "gpt2-tiny": {"cpu": (4, 64), "cuda": (4, 64)}}


def run_ftrain(work, model, device, ranks, stage, overlap, steps, threads, repeat):
    batch, seq_len = SHAPES[model][device]
    run_dir = work / "runs" / f"{model}-zero{stage}-overlap{int(overlap)}-{repeat}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.mkdir(parents=True)
    ini = run_dir / "bench.ini"
    precision = "fp32" if device == "cpu" else "bf16"
    ini.write_text(compare.ftrain_ini(run_dir, work / model, work / f"{model}-{seq_len}.h5", "causal_lm", batch,
                                      steps, threads, device, precision))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [MPIEXEC, "-np", str(ranks), "--bind-to", "none", str(BUILD / "ftrain"), "--config", str(ini),
               f"--dist.zero={stage}", f"--dist.overlap={'true' if overlap else 'false'}",
               f"--train.global_batch_size={batch * ranks}"]
    code, _, _ = compare.run_measured(command, run_dir / "log.txt", env)
    if code != 0:
        raise SystemExit(f"bench/overlap.py: ftrain failed ({code}); see {run_dir / 'log.txt'}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    memory = next(r["memory"] for r in records if "memory" in r)
    return {"step_times": [r["step_time_s"] for r in records if "step_time_s" in r],
            "losses": [r["loss"] for r in records if "loss" in r],
            "comm_bytes": [r["comm_bytes"] for r in records if "comm_bytes" in r],
            "gradient_bytes": max(entry["gradient_bytes"] for entry in memory)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-124m", choices=sorted(SHAPES))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=BUILD / "bench" / "overlap")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    if args.warmup >= args.steps:
        raise SystemExit("bench/overlap.py: --warmup must be less than --steps")

    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    batch, seq_len = SHAPES[args.model][args.device]
    compare.make_model(args.model, work / args.model)
    _, _, _, vocab = compare.model_shape(work / args.model)
    compare.make_data(work / f"{args.model}-{seq_len}.h5", "causal_lm", vocab, seq_len,
                      max(256, batch * args.ranks * args.steps))

    results = {}
    for repeat in range(args.repeats):
        for stage in stages:
            for overlap in (False, True):
                run = run_ftrain(work, args.model, args.device, args.ranks, stage, overlap, args.steps, args.threads,
                                 repeat)
                entry = results.setdefault(f"{stage},{int(overlap)}", {"step_times": [], "runs": []})
                entry["step_times"] += run["step_times"][args.warmup:]
                entry["runs"].append(run)

    lines = [f"{args.model}, {args.ranks} ranks on {args.device}, {batch} x {seq_len} tokens per rank and step, "
             f"median of {args.repeats} x {args.steps - args.warmup} steps per side",
             "",
             "| ZeRO | step, overlap off (ms) | step, overlap on (ms) | on / off | sent per rank and step (MB) "
             "| peak gradients off / on (MB) | same losses |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for stage in stages:
        off, on = results[f"{stage},0"], results[f"{stage},1"]
        t_off, t_on = statistics.median(off["step_times"]), statistics.median(on["step_times"])
        sent = {b for run in off["runs"] + on["runs"] for b in run["comm_bytes"]}
        same = all(a["losses"] == b["losses"] for a, b in zip(off["runs"], on["runs"]))
        lines.append(f"| {stage} | {1e3 * t_off:.0f} | {1e3 * t_on:.0f} | {t_on / t_off:.2f} "
                     f"| {' / '.join(f'{b / 1e6:.2f}' for b in sorted(sent))} "
                     f"| {off['runs'][0]['gradient_bytes'] / 1e6:.1f} / {on['runs'][0]['gradient_bytes'] / 1e6:.1f} "
                     f"| {'yes' if same else 'no'} |")
    table = "\n".join(lines)
    print(table)
    (work / "overlap.md").write_text(table + "\n")
    (work / "overlap.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": compare.machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
