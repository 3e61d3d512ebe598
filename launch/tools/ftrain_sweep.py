#!/usr/bin/env python3
"""ftrain-sweep: scaling experiments over layouts and model sizes, and an analytic model
of them (docs/scaling.md).

  ftrain-sweep run SPEC.json --out DIR [--launcher mpirun|slurm]   run a sweep, then report it
  ftrain-sweep report DIR                                          collect DIR's runs again
  ftrain-sweep model --out DIR [--spec PRED.json] [--measured DIR] predictions (and against a sweep)

A sweep writes DIR/runs/<run>/ (each ftrain run.dir with its metrics.jsonl), then
DIR/sweep.csv, DIR/sweep.md and DIR/*.png: tokens/s per rank and scaling efficiency
against ranks (weak and strong), memory per rank by ZeRO stage and tp, each labelled
with the hardware it was measured on.
"""
from __future__ import annotations

import argparse
import collections
import configparser
import csv
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaling_model as sm  # noqa: E402

SOURCE = Path(__file__).resolve().parents[2]  # launch/tools/ -> the source root
BUILD = Path(os.environ.get("FTRAIN_BUILD_DIR", SOURCE / "build"))
DEFAULT_PREDICTIONS = SOURCE / "configs/sweeps/h100-llama.json"
MIB = 2.0**20


class SpecError(ValueError):
    """A sweep or prediction spec that cannot be run: names the file and the key."""


# ---------------------------------------------------------------------------------
# The sweep spec

SPEC_DEFAULTS = {
    "name": "sweep",
    "base_config": None,          # an ftrain INI; the sweep's own options override it
    "overrides": {},              # "section.key": value, for every run
    "data": {},                   # {"path": H5} or {"generate_documents": n, "seq_len": S, "tokenizer": DIR}
    "models": [],                 # {"name", "path"} or {"name", "family", "width", "depth", "heads", ...}
    "init": "random",             # model.init for every run
    "ranks": [1],
    "tp": [1],
    "zero": [0],
    "layouts": [],                # extra {"ranks", "tp", "zero"} beside the grid
    "scaling": ["weak"],          # weak: global batch = batch_per_replica x dp; strong: global_batch_size
    "micro_batch_size": 1,
    "batch_per_replica": 8,       # sequences per data-parallel replica per step (weak scaling)
    "global_batch_size": 8,       # sequences per step (strong scaling)
    "steps": 8,
    "timing_warmup_steps": 2,     # steps left out of the medians (start-up, first allocations)
    "repeats": 1,                 # each run this many times, round-robin; medians over all their steps, so
                                  #   a burst of load on a shared machine slows some repeats, not the median
    "hardware_label": "",         # what the runs ran on; detected for mpirun when empty
    "mpirun": {"command": "mpirun", "args": ["--bind-to", "none"], "timeout_s": 1800},
    "slurm": {"script": "slurm/ftrain.sbatch", "tasks_per_node": 8, "gpus_per_task": None, "cpus_per_task": None,
              "time": None, "partition": None, "account": None, "sbatch_args": [], "chain": True, "poll_s": 15,
              "wait_timeout_s": 7 * 86400},
}
MODEL_KEYS = {"name", "path", "family", "width", "depth", "heads", "kv_heads", "intermediate", "vocab", "positions"}


def resolve(path: str | Path, base: Path) -> Path:
    """A path of a spec: absolute, else relative to the spec's directory, the current
    directory or the ftrain source tree, the first where it exists (so configs/...
    works from anywhere)."""
    path = Path(path)
    if path.is_absolute():
        return path
    for root in (base, Path.cwd(), SOURCE):
        if (root / path).exists():
            return (root / path).resolve()
    return (SOURCE / path).resolve()


def load_spec(path: Path) -> dict:
    try:
        given = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"{path}: {error}") from None
    unknown = set(given) - set(SPEC_DEFAULTS)
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(SPEC_DEFAULTS)})")
    spec = json.loads(json.dumps(SPEC_DEFAULTS))
    for key, value in given.items():
        if isinstance(SPEC_DEFAULTS[key], dict) and key not in ("overrides", "data"):
            extra = set(value) - set(SPEC_DEFAULTS[key])
            if extra:
                raise SpecError(f"{path}: {key}: unknown key(s) {', '.join(sorted(extra))}")
            spec[key].update(value)
        else:
            spec[key] = value
    if not isinstance(spec["slurm"]["chain"], bool):
        raise SpecError(f"{path}: slurm.chain must be true or false")
    if not spec["base_config"]:
        raise SpecError(f"{path}: base_config is required (an ftrain INI file, e.g. configs/tiny-gpt2.ini)")
    if not spec["models"]:
        raise SpecError(f"{path}: models is empty: give at least one {{\"name\", \"path\"}} or generated model")
    for model in spec["models"]:
        generated = {"width", "depth", "heads"} <= set(model)
        if set(model) - MODEL_KEYS or "name" not in model or ("path" in model) == generated:
            raise SpecError(f"{path}: models: {model} needs a name and either path or family/width/depth/heads "
                            f"(keys: {', '.join(sorted(MODEL_KEYS))})")
    for mode in spec["scaling"]:
        if mode not in ("weak", "strong"):
            raise SpecError(f"{path}: scaling: '{mode}' is neither weak nor strong")
    for key in ("micro_batch_size", "batch_per_replica", "global_batch_size", "steps", "repeats"):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise SpecError(f"{path}: {key} must be a positive integer, got {spec[key]!r}")
    spec["_dir"] = str(path.resolve().parent)
    return spec


@dataclass(frozen=True)
class Run:
    model: str
    ranks: int
    tp: int
    zero: int
    global_batch_size: int

    @property
    def id(self) -> str:
        return f"{self.model}_r{self.ranks}_tp{self.tp}_z{self.zero}_gb{self.global_batch_size}"

    @property
    def dp(self) -> int:
        return self.ranks // self.tp


def plan_runs(spec: dict) -> tuple[list[Run], dict[str, list[str]], list[str]]:
    """The runs of a spec, each once, and which scaling series each belongs to. Layouts
    that cannot run are left out with the reason: tp not dividing the ranks, ZeRO
    without data parallelism, a global batch not split evenly."""
    layouts = {(r, t, z) for r in spec["ranks"] for t in spec["tp"] for z in spec["zero"]}
    layouts |= {(item["ranks"], item.get("tp", 1), item.get("zero", 0)) for item in spec["layouts"]}
    runs: dict[str, Run] = {}
    series: dict[str, list[str]] = collections.defaultdict(list)
    skipped = []
    micro = spec["micro_batch_size"]
    for ranks, tp, zero in sorted(layouts):
        where = f"ranks {ranks}, tp {tp}, zero {zero}"
        if ranks % tp:
            skipped.append(f"{where}: tp does not divide the ranks")
            continue
        dp = ranks // tp
        if zero > 0 and dp == 1:
            skipped.append(f"{where}: ZeRO shards over data-parallel ranks and there is one")
            continue
        for mode in spec["scaling"]:
            batch = spec["batch_per_replica"] * dp if mode == "weak" else spec["global_batch_size"]
            if batch % (micro * dp):
                skipped.append(f"{where}, {mode}: global batch {batch} is not a multiple of micro_batch_size "
                               f"{micro} x dp {dp}")
                continue
            for model in spec["models"]:
                run = Run(model["name"], ranks, tp, zero, batch)
                runs[run.id] = run
                series[run.id].append(mode)
    ordered = sorted(runs.values(), key=lambda r: ([m["name"] for m in spec["models"]].index(r.model), r.ranks,
                                                   r.tp, r.zero, r.global_batch_size))
    return ordered, dict(series), skipped


def repeat_dirs(out: Path, run_id: str, repeats: int) -> list[Path]:
    """Where each repeat of a run lives: runs/<run>, then runs/<run>.rep1, ..."""
    return [out / "runs" / (run_id if k == 0 else f"{run_id}.rep{k}") for k in range(repeats)]


# ---------------------------------------------------------------------------------
# Inputs: the dataset and the models


def prepare_data(spec: dict, out: Path, prep: Path) -> Path:
    data = spec["data"]
    base = Path(spec["_dir"])
    if "path" in data:
        path = resolve(data["path"], base)
        if not path.exists():
            raise SpecError(f"data.path {path} does not exist (write it with ftrain-prep)")
        return path
    documents = data.get("generate_documents")
    if not documents:
        raise SpecError("data needs path (an ftrain-prep HDF5 file) or generate_documents (a generated corpus)")
    target, made_from = out / "data.h5", out / "data.json"
    if target.exists() and made_from.exists() and json.loads(made_from.read_text()) == data:
        return target
    corpus = out / "corpus.jsonl"
    subprocess.run([sys.executable, SOURCE / "scripts/make_demo_corpus.py", corpus, "--documents", str(documents)],
                   check=True)
    tokenizer = resolve(data.get("tokenizer", "configs/models/tiny-gpt2"), base)
    subprocess.run([prep, "--tokenizer", tokenizer, "--input", corpus, "--seq-len", str(data.get("seq_len", 32)),
                    "--validation-fraction", "0.1", "--output", target], check=True, capture_output=True)
    made_from.write_text(json.dumps(data) + "\n")
    return target


def prepare_model(model: dict, spec: dict, out: Path) -> Path:
    """A model directory: the given one, or a Hugging Face config (and, for pretrained
    init, random weights) of the given width and depth, built with transformers."""
    if "path" in model:
        path = resolve(model["path"], Path(spec["_dir"]))
        if not (path / "config.json").exists():
            raise SpecError(f"models: {model['name']}: {path}/config.json not found")
        return path
    target, made_from = out / "models" / model["name"], out / "models" / f"{model['name']}.json"
    wanted = {**model, "init": spec["init"]}
    if (target / "config.json").exists() and made_from.exists() and json.loads(made_from.read_text()) == wanted:
        return target
    shutil.rmtree(target, ignore_errors=True)  # made from another entry of the spec
    family, width, depth, heads = model.get("family", "gpt2"), model["width"], model["depth"], model["heads"]
    vocab, positions = model.get("vocab", 1024), model.get("positions", 128)
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=width, n_layer=depth, n_head=heads,
                            n_inner=model.get("intermediate"), bos_token_id=0, eos_token_id=0)
        model_class = GPT2LMHeadModel
    elif family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(vocab_size=vocab, hidden_size=width,
                             intermediate_size=model.get("intermediate", 4 * width),
                             num_hidden_layers=depth, num_attention_heads=heads,
                             num_key_value_heads=model.get("kv_heads", heads), max_position_embeddings=positions,
                             tie_word_embeddings=False)
        model_class = LlamaForCausalLM
    else:
        raise SpecError(f"models: {model['name']}: family '{family}' is not gpt2 or llama")
    target.mkdir(parents=True, exist_ok=True)
    if spec["init"] == "pretrained":
        import torch
        torch.manual_seed(0)
        model_class(config).save_pretrained(target, safe_serialization=True)
    else:
        config.save_pretrained(target)  # ftrain initialises from config.json alone
    made_from.write_text(json.dumps(wanted) + "\n")
    return target


# ---------------------------------------------------------------------------------
# Running


def ftrain_options(spec: dict, run: Run, run_dir: Path, model_dir: Path, data: Path) -> list[str]:
    options = {**spec["overrides"],
               "run.dir": run_dir, "model.path": model_dir, "model.init": spec["init"], "data.path": data,
               "data.micro_batch_size": spec["micro_batch_size"], "train.global_batch_size": run.global_batch_size,
               "train.steps": spec["steps"], "dist.tp": run.tp, "dist.zero": run.zero}
    return [f"--{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in options.items()]


def finished(run_dir: Path, steps: int) -> bool:
    try:
        return any(record.get("step") == steps and "loss" in record for record in read_metrics(run_dir))
    except (OSError, ValueError):
        return False


def run_mpirun(spec: dict, planned: list[tuple[Run, Path, list[str]]], ftrain: Path) -> dict[str, str]:
    """Each run under mpirun on this machine, one after another. Returns failures by run."""
    failures = {}
    launcher = spec["mpirun"]
    for index, (run, run_dir, options) in enumerate(planned, 1):
        command = [launcher["command"], "-np", str(run.ranks), *launcher["args"], str(ftrain),
                   "--config", str(resolve(spec["base_config"], Path(spec["_dir"]))), *options]
        print(f"ftrain-sweep: [{index}/{len(planned)}] {run_dir.name}: {' '.join(command)}", flush=True)
        started = time.monotonic()
        with open(run_dir / "ftrain.log", "w") as log:
            try:
                result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=launcher["timeout_s"])
                status = result.returncode
            except subprocess.TimeoutExpired:
                status = f"timed out after {launcher['timeout_s']} s (mpirun.timeout_s)"
        if status != 0:
            failures[run_dir.name] = f"exit {status}; see {run_dir / 'ftrain.log'}"
            print(f"ftrain-sweep: {run_dir.name} FAILED ({failures[run_dir.name]})", flush=True)
        else:
            print(f"ftrain-sweep: {run_dir.name} done in {time.monotonic() - started:.1f} s", flush=True)
    return failures


def sbatch_command(spec: dict, run: Run, run_dir: Path, options: list[str], ftrain: Path) -> list[str]:
    """sbatch of slurm/ftrain.sbatch for one run. Command-line options take precedence
    over the script's #SBATCH lines: the nodes and tasks the layout needs, the log in
    the run directory, the ftrain binary in FTRAIN."""
    slurm = spec["slurm"]
    per_node = int(slurm["tasks_per_node"])
    nodes = -(-run.ranks // per_node)
    command = ["sbatch", "--parsable", f"--job-name=sweep-{run_dir.name}", f"--nodes={nodes}", f"--ntasks={run.ranks}",
               f"--ntasks-per-node={min(run.ranks, per_node)}", f"--output={run_dir / 'slurm-%j.log'}",
               f"--export=ALL,FTRAIN={ftrain}"]
    for key, flag in (("gpus_per_task", "--gpus-per-task"), ("cpus_per_task", "--cpus-per-task"), ("time", "--time"),
                      ("partition", "--partition"), ("account", "--account")):
        if slurm[key] is not None:
            command.append(f"{flag}={slurm[key]}")
    command += list(slurm["sbatch_args"])
    command += [str(resolve(slurm["script"], Path(spec["_dir"]))),
                str(resolve(spec["base_config"], Path(spec["_dir"]))), *options]
    return command


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """Jobs still known to squeue, by id: their state (PENDING, RUNNING, ...). None when
    squeue did not answer (the controller restarting, a lost connection): an empty
    answer then would read as "every job has ended"."""
    result = slurm_query(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)])
    if result.returncode != 0:
        # Once the controller has forgotten every listed job (MinJobAge after its end),
        # squeue -j refuses the ids instead of listing nothing.
        return {} if "Invalid job id" in result.stderr else None
    states = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def slurm_query(command: list[str]) -> subprocess.CompletedProcess:
    """A Slurm client command; one that is not installed here answers like one that failed."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return subprocess.CompletedProcess(command, 127, "", str(error))


def scontrol_show(kind: str, name: str) -> dict[str, str]:
    """`scontrol -o show job|node NAME` as fields (JobState, NodeList, CPUTot, Gres, ...);
    of several nodes, the first. Empty where scontrol does not know it."""
    result = slurm_query(["scontrol", "-o", "show", kind, name])
    line = result.stdout.strip().splitlines()[:1] if result.returncode == 0 else []
    return dict(field.split("=", 1) for field in line[0].split() if "=" in field) if line else {}


def slurm_hardware(job_ids: list[str]) -> str | None:
    """The nodes the jobs ran on as Slurm describes them: CPUs and GRES (GPUs) per node.
    Slurm does not know the CPU or GPU model, so the label says where it came from. None
    where neither sacct nor scontrol can say."""
    accounted = slurm_query(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "NodeList"])
    node_lists = set(accounted.stdout.split()) if accounted.returncode == 0 else set()
    node_lists |= {scontrol_show("job", job_id).get("NodeList", "") for job_id in job_ids}
    node_lists -= {"", "(null)", "None"}
    if not node_lists:
        return None
    result = slurm_query(["scontrol", "-o", "show", "node", ",".join(sorted(node_lists))])
    kinds = collections.Counter()
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        node = dict(field.split("=", 1) for field in line.split() if "=" in field)
        gres = node.get("Gres", "(null)")
        kinds[f"{node.get('CPUTot', '?')} CPUs, {'no GPUs' if gres in ('', '(null)') else 'GRES ' + gres}"] += 1
    if not kinds:
        return None
    described = "; ".join(f"{count} node(s) of {kind}" for kind, count in kinds.items())
    return (f"Slurm nodes {','.join(sorted(node_lists))}: {described} (from scontrol; set hardware_label "
            f"in the spec for the CPU and GPU models)")


def slurm_final_state(job_id: str) -> tuple[str, str]:
    """How a job ended (COMPLETED, FAILED, TIMEOUT, ...) and who said so. sacct where the
    cluster keeps job accounting; without it (AccountingStorageType=none) `scontrol show
    job`, which knows a finished job for MinJobAge (300 s by default); after that
    "unknown", and the run's own metrics decide."""
    result = slurm_query(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode"])
    line = result.stdout.strip().splitlines()[:1]
    if result.returncode == 0 and line and line[0].split("|")[0].strip():
        return line[0].split("|")[0].split()[0], "sacct"
    fields = scontrol_show("job", job_id)
    if fields.get("JobState"):
        state = fields["JobState"]
        # A batch script that exits non-zero ends FAILED; this keeps its status in view.
        if state != "COMPLETED" and fields.get("ExitCode", "0:0") != "0:0":
            state += f" (exit {fields['ExitCode']})"
        return state, "scontrol"
    return "unknown", "neither sacct nor scontrol knows the job"


def run_slurm(spec: dict, planned: list[tuple[Run, Path, list[str]]], ftrain: Path, out: Path,
              wait: bool = True) -> dict[str, str]:
    """Submits every run as a job of slurm/ftrain.sbatch, then polls squeue until none is
    left and reads each job's end from sacct or scontrol. Returns failures by run.
    With slurm.chain (the default) each job depends on the one before (afterany), so
    the runs take the nodes one after the other and none is timed while another shares
    its nodes or network; without it they are all queued at once."""
    jobs = {}
    previous = None
    for run, run_dir, options in planned:
        command = sbatch_command(spec, run, run_dir, options, ftrain)
        if spec["slurm"]["chain"] and previous:
            command.insert(1, f"--dependency=afterany:{previous}")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed for {run_dir.name} ({result.returncode}): {result.stderr.strip()}\n"
                               f"  {' '.join(command)}")
        job_id = result.stdout.strip().split(";")[0]
        jobs[job_id] = run_dir
        previous = job_id
        print(f"ftrain-sweep: {run_dir.name}: submitted as Slurm job {job_id}", flush=True)
    (out / "slurm_jobs.json").write_text(json.dumps({job: d.name for job, d in jobs.items()}, indent=1) + "\n")
    if not wait:
        print(f"ftrain-sweep: not waiting; once the jobs are done: ftrain-sweep report {out}")
        return {}
    last = None
    deadline = time.monotonic() + spec["slurm"]["wait_timeout_s"]
    while True:
        states = slurm_states(list(jobs))
        if states is None:
            if time.monotonic() > deadline:
                print(f"ftrain-sweep: squeue has not answered; gave up waiting after "
                      f"{spec['slurm']['wait_timeout_s']} s (slurm.wait_timeout_s)", file=sys.stderr, flush=True)
                break
            if last != "no answer":
                print("ftrain-sweep: squeue did not answer; asking again", file=sys.stderr, flush=True)
                last = "no answer"
            time.sleep(spec["slurm"]["poll_s"])
            continue
        if not states:
            break
        if time.monotonic() > deadline:
            # Ours to cancel: the jobs this sweep submitted.
            subprocess.run(["scancel", *states], capture_output=True)
            print(f"ftrain-sweep: gave up waiting after {spec['slurm']['wait_timeout_s']} s (slurm.wait_timeout_s); "
                  f"cancelled {len(states)} job(s): {states}", file=sys.stderr, flush=True)
            break
        summary = dict(collections.Counter(states.values()))
        if summary != last:
            print(f"ftrain-sweep: waiting for {len(states)} job(s): {summary}", flush=True)
            last = summary
        time.sleep(spec["slurm"]["poll_s"])
    failures = {}
    if not spec["hardware_label"] and (hardware := slurm_hardware(list(jobs))):
        meta = json.loads((out / "sweep.json").read_text())
        (out / "sweep.json").write_text(json.dumps({**meta, "hardware": hardware}, indent=1) + "\n")
    for job_id, run_dir in jobs.items():
        state, source = slurm_final_state(job_id)
        if state not in ("COMPLETED", "unknown") or not finished(run_dir, spec["steps"]):
            short = "" if finished(run_dir, spec["steps"]) else f" before step {spec['steps']}"
            failures[run_dir.name] = (f"Slurm job {job_id} ended {state} ({source}){short}; "
                                      f"see {run_dir}/slurm-{job_id}.log")
            print(f"ftrain-sweep: {run_dir.name} FAILED ({failures[run_dir.name]})", flush=True)
        else:
            print(f"ftrain-sweep: {run_dir.name}: Slurm job {job_id} {state} ({source})", flush=True)
    return failures


def sweep(spec_path: Path, out: Path, launcher: str, ftrain: Path, prep: Path, rerun: bool, wait: bool) -> int:
    spec = load_spec(spec_path)
    if not ftrain.exists():
        raise SpecError(f"{ftrain} not found: build it (cmake --build build --target ftrain) or pass --ftrain")
    out.mkdir(parents=True, exist_ok=True)
    runs, series, skipped = plan_runs(spec)
    for reason in skipped:
        print(f"ftrain-sweep: skipping {reason}")
    data = prepare_data(spec, out, prep)
    model_dirs = {model["name"]: prepare_model(model, spec, out) for model in spec["models"]}
    hardware = spec["hardware_label"] or (detect_hardware() if launcher == "mpirun" else
                                          "Slurm compute nodes (not probed; set hardware_label in the spec)")
    (out / "sweep.json").write_text(json.dumps({
        "spec": str(spec_path.resolve()), "name": spec["name"], "launcher": launcher, "hardware": hardware,
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "steps": spec["steps"],
        "timing_warmup_steps": spec["timing_warmup_steps"], "repeats": spec["repeats"], "series": series,
        "runs": {run.id: {**run.__dict__, "model_dir": str(model_dirs[run.model])} for run in runs}}, indent=1) + "\n")
    planned = []
    for repeat in range(spec["repeats"]):
        for run in runs:
            run_dir = repeat_dirs(out, run.id, spec["repeats"])[repeat]
            if not rerun and finished(run_dir, spec["steps"]):
                print(f"ftrain-sweep: {run_dir.name}: finished before, kept (--rerun runs it again)")
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a partial run would resume instead of starting clean
            run_dir.mkdir(parents=True)
            planned.append((run, run_dir, ftrain_options(spec, run, run_dir, model_dirs[run.model], data)))
    if launcher == "mpirun":
        failures = run_mpirun(spec, planned, ftrain)
    else:
        failures = run_slurm(spec, planned, ftrain, out, wait)
        if not wait:
            return 0
    report(out)
    if failures:
        print(f"ftrain-sweep: {len(failures)} run(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------
# Collecting


def detect_hardware() -> str:
    """This machine in one line: CPU model and cores, GPUs by name."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    label = f"{cpu}, {cores} cores"
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True)
        names = [name.strip() for name in result.stdout.splitlines() if name.strip()]
        if result.returncode == 0 and names:
            label += ", " + ", ".join(f"{count}x {name}" for name, count in collections.Counter(names).items())
            return label
    return label + ", no GPU (CPU runs)"


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_run_config(run_dir: Path) -> configparser.ConfigParser:
    """The configuration ftrain resolved and wrote for the run."""
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.read(run_dir / "config.ini")
    return parser


def layout_of(config: configparser.ConfigParser, ranks: int, seq_len: int) -> sm.Layout:
    """The analytic model's Layout of a run, from its resolved configuration."""
    half = {"fp32": sm.FP32, "bf16": 2, "fp16": 2}
    return sm.Layout(
        ranks=ranks, tp=config.getint("dist", "tp"), zero=config.getint("dist", "zero"),
        micro_batch_size=config.getint("data", "micro_batch_size"),
        global_batch_size=config.getint("train", "global_batch_size"), seq_len=seq_len,
        activation_checkpointing=config.getboolean("train", "activation_checkpointing"),
        reduce_dtype_bytes=half[config.get("train", "reduce_dtype")],
        activation_dtype_bytes=half[config.get("train", "precision")],
        transport="nccl" if config.get("dist", "device").startswith("cuda") else "mpi",
        bucket_mb=config.getfloat("dist", "bucket_mb"), overlap=config.getboolean("dist", "overlap"))


def dataset_seq_len(path: str) -> int:
    import h5py
    with h5py.File(path, "r") as f:
        return int(f.attrs["seq_len"])


def collect_run(run_dirs: list[Path], info: dict, warmup: int) -> dict:
    """One run's measurements (medians over the steps after warm-up of all its repeats)
    beside the analytic model's communication and memory for its layout."""
    run_dir = run_dirs[0]
    row = {"run": run_dir.name, "model": info["model"], "ranks": info["ranks"], "tp": info["tp"],
           "dp": info["ranks"] // info["tp"], "zero": info["zero"], "global_batch_size": info["global_batch_size"],
           "repeats": len(run_dirs)}
    try:
        repeats = [read_metrics(d) for d in run_dirs]
    except OSError as error:
        return {**row, "status": f"no metrics.jsonl ({error.filename})"}
    by_repeat = [[r for r in records if "loss" in r and "step_time_s" in r] for records in repeats]
    memory = next((r["memory"] for r in repeats[0] if "memory" in r), [])
    if not all(by_repeat):
        return {**row, "status": "no steps"}
    steps = [r for repeat in by_repeat for r in repeat]
    timed = [r for r in steps if r["step"] > warmup] or steps
    last_steps = {repeat[-1]["step"] for repeat in by_repeat}
    ranks = len(memory) or info["ranks"]
    config = read_run_config(run_dir)
    shape = sm.shape_from_config(json.loads((Path(config.get("model", "path")) / "config.json").read_text()))
    seq_len = dataset_seq_len(config.get("data", "path"))
    layout = layout_of(config, ranks, seq_len)
    traffic = sm.step_traffic(shape, layout)
    predicted = [sm.training_state_bytes(shape, layout, entry["rank"]) for entry in memory]
    row.update({
        "status": "ok" if last_steps == {info.get("steps", steps[-1]["step"])} else "incomplete",
        "parameters": sm.parameter_count(shape), "seq_len": seq_len, "micro_batch_size": layout.micro_batch_size,
        "accumulation": layout.accumulation, "steps_timed": len(timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "tokens_per_s_per_rank": statistics.median(r["tokens_per_s"] / ranks for r in timed),
        "step_time_s": statistics.median(r["step_time_s"] for r in timed),
        "comm_bytes": statistics.median(r["comm_bytes"] for r in steps),
        "comm_bytes_min": min(r["comm_bytes"] for r in steps), "comm_bytes_max": max(r["comm_bytes"] for r in steps),
        "predicted_comm_bytes": traffic.total_bytes, "ring_steps": traffic.dp_ring_steps + traffic.tp_ring_steps,
        "flops_per_rank": layout.global_batch_size * seq_len * sm.flops_per_token(
            sm.matmul_parameters(shape), shape.layers, shape.width, seq_len, layout.activation_checkpointing) / ranks,
    })
    for kind in ("parameter_bytes", "gradient_bytes", "optimizer_bytes"):
        row[kind] = max((entry[kind] for entry in memory), default=None)
        row[f"predicted_{kind}"] = max((p[kind] for p in predicted), default=None)
    row["memory_matches"] = bool(memory) and all(
        {k: entry[k] for k in ("parameter_bytes", "gradient_bytes", "optimizer_bytes")} == p
        for entry, p in zip(memory, predicted))
    row["memory_per_rank"] = memory
    return row


def efficiencies(rows: list[dict]) -> None:
    """Scaling efficiency: tokens/s per rank over that of the series' baseline, the run
    with the fewest ranks of the same model and scaling mode (tp 1 and ZeRO 0 first).
    Weak: the same work per replica; strong: the same global batch."""
    by_series = collections.defaultdict(list)
    for row in rows:
        if row.get("tokens_per_s_per_rank"):
            by_series[(row["model"], row["scaling"])].append(row)
    for members in by_series.values():
        base = min(members, key=lambda r: (r["ranks"], r["tp"], r["zero"]))
        for row in members:
            row["baseline_run"] = base["run"]
            row["efficiency"] = row["tokens_per_s_per_rank"] / base["tokens_per_s_per_rank"]


CSV_COLUMNS = ["run", "model", "parameters", "scaling", "status", "repeats", "ranks", "tp", "dp", "zero",
               "micro_batch_size", "global_batch_size", "accumulation", "seq_len", "steps_timed", "tokens_per_s",
               "tokens_per_s_per_rank", "step_time_s", "efficiency", "baseline_run", "comm_bytes",
               "predicted_comm_bytes", "parameter_bytes", "predicted_parameter_bytes", "gradient_bytes",
               "predicted_gradient_bytes", "optimizer_bytes", "predicted_optimizer_bytes", "memory_matches",
               "flops_per_rank", "ring_steps"]


def report(out: Path) -> list[dict]:
    """sweep.csv, sweep.md and the plots from the runs under out/runs."""
    meta = json.loads((out / "sweep.json").read_text())
    rows = []
    for run_id, info in meta["runs"].items():
        collected = collect_run(repeat_dirs(out, run_id, meta.get("repeats", 1)), {**info, "steps": meta["steps"]},
                                meta["timing_warmup_steps"])
        for mode in meta["series"][run_id]:
            rows.append({**collected, "scaling": mode})
    efficiencies(rows)
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "sweep.md").write_text(sweep_markdown(rows, meta))
    plot_sweep(rows, meta["hardware"], out)
    mismatched = [r["run"] for r in rows if r.get("status") == "ok" and not comm_matches(r)]
    for run in sorted(set(mismatched)):
        print(f"ftrain-sweep: warning: {run}: counted comm_bytes differ from the analytic model's", file=sys.stderr)
    print(f"ftrain-sweep: wrote {out / 'sweep.csv'}, {out / 'sweep.md'} and plots ({len(rows)} rows)")
    return rows


def comm_matches(row: dict) -> bool:
    return all(math.isclose(row[k], row["predicted_comm_bytes"], rel_tol=1e-9, abs_tol=1e-6)
               for k in ("comm_bytes_min", "comm_bytes_max"))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: list[dict], meta: dict) -> str:
    def number(value, fmt):
        return "" if value is None or value == "" else format(value, fmt)

    table = []
    for r in sorted(rows, key=lambda r: (r["model"], r["scaling"], r["ranks"], r["tp"], r["zero"])):
        table.append([r["model"], r["scaling"], r["ranks"], r["tp"], r["dp"], r["zero"], r["global_batch_size"],
                      number(r.get("tokens_per_s_per_rank"), ".0f"), number(r.get("step_time_s", None) and
                                                                            r["step_time_s"] * 1e3, ".1f"),
                      number(r.get("efficiency"), ".2f"), number(r.get("comm_bytes"), ".0f"),
                      number(r.get("predicted_comm_bytes"), ".0f"),
                      " / ".join(number(r.get(k) and r[k] / MIB, ".2f")
                                 for k in ("parameter_bytes", "gradient_bytes", "optimizer_bytes")),
                      "yes" if r.get("memory_matches") else "no", r["status"]])
    header = ["model", "scaling", "ranks", "tp", "dp", "ZeRO", "global batch", "tokens/s per rank", "step ms",
              "efficiency", "comm bytes/step", "predicted", "params / grads / optimizer MiB (max over ranks)",
              "memory as predicted", "status"]
    repeats = meta.get("repeats", 1)
    of_repeats = f" of {repeats} repeats of each run" if repeats > 1 else ""
    return (f"# Sweep {meta['name']}\n\nMeasured on: {meta['hardware']} ({meta['launcher']}, {meta['started']}).\n"
            f"Medians over steps {meta['timing_warmup_steps'] + 1}..{meta['steps']}{of_repeats}; efficiency is "
            f"tokens/s per rank over the series' smallest run. Predicted comm bytes and memory: "
            f"launch/tools/scaling_model.py.\n\n"
            + markdown_table(header, table))


# ---------------------------------------------------------------------------------
# Plots


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def label_hardware(figure, text: str) -> None:
    figure.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=8, wrap=True)


def series_label(row: dict) -> str:
    return f"{row['model']} tp{row['tp']} zero{row['zero']}"


def plot_sweep(rows: list[dict], hardware: str, out: Path) -> None:
    ok = [r for r in rows if r.get("tokens_per_s_per_rank")]
    if not ok:
        print("ftrain-sweep: no run finished, so there is nothing to plot; each run's ftrain.log says why",
              file=sys.stderr)
        return
    plt = pyplot()
    modes = [m for m in ("weak", "strong") if any(r["scaling"] == m for r in ok)] or ["weak"]
    for name, key, ylabel in (("throughput", "tokens_per_s_per_rank", "tokens/s per rank"),
                              ("efficiency", "efficiency", "scaling efficiency")):
        figure, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.6), squeeze=False)
        for axis, mode in zip(axes[0], modes):
            lines = collections.defaultdict(list)
            for r in ok:
                if r["scaling"] == mode:
                    lines[series_label(r)].append(r)
            baselines = {r["run"]: r for r in ok if r["scaling"] == mode and r["run"] == r.get("baseline_run")}
            for label, members in sorted(lines.items()):
                # A layout that needs more ranks (ZeRO, tp) starts from its model's
                # baseline: at one rank every layout is the same run.
                base = baselines.get(members[0].get("baseline_run"))
                if base and all(r["ranks"] > base["ranks"] for r in members):
                    members.append(base)
                members.sort(key=lambda r: r["ranks"])
                axis.plot([r["ranks"] for r in members], [r[key] for r in members], "o-", label=label)
            if key == "efficiency":
                axis.axhline(1.0, color="grey", lw=0.8, ls="--")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("ranks")
            axis.set_ylabel(ylabel)
            axis.set_title(f"{mode} scaling")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        label_hardware(figure, f"measured on: {hardware}")
        figure.tight_layout(rect=(0, 0.05, 1, 1))
        figure.savefig(out / f"{name}.png", dpi=110)
        plt.close(figure)

    # Memory per rank by layout, one panel per model: the counted bytes by kind as
    # stacked bars, the model's prediction as a marker on top.
    runs = {}
    for r in ok:
        runs.setdefault(r["run"], r)
    models = sorted({r["model"] for r in runs.values()})
    widest = max(sum(1 for r in runs.values() if r["model"] == model) for model in models)
    figure, axes = plt.subplots(1, len(models), figsize=(len(models) * max(5, 1.1 * widest), 4.6), squeeze=False)
    kinds = [("parameter_bytes", "parameters"), ("gradient_bytes", "gradients"), ("optimizer_bytes", "optimizer")]
    for axis, model in zip(axes[0], models):
        members = sorted((r for r in runs.values() if r["model"] == model and r.get("parameter_bytes")),
                         key=lambda r: (r["zero"], r["tp"], r["ranks"]))
        names = [f"r{r['ranks']} tp{r['tp']}\nzero{r['zero']}" for r in members]
        bottom = [0.0] * len(members)
        for kind, label in kinds:
            values = [r[kind] / MIB for r in members]
            axis.bar(names, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        predicted = [sum(r[f"predicted_{k}"] for k, _ in kinds) / MIB for r in members]
        axis.plot(names, predicted, "k_", markersize=18, mew=2, label="predicted total")
        axis.set_ylabel("MiB per rank (max over ranks)")
        axis.set_title(f"{model}: training state per rank")
        axis.legend(fontsize=7)
    label_hardware(figure, f"measured on: {hardware}")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(out / "memory.png", dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------
# The analytic model: predictions, and predictions against a sweep

PREDICTION_KEYS = {"name", "hardware", "gpus", "seq_len", "micro_batch_size", "precision", "reduce_dtype",
                   "activation_checkpointing", "scaling", "batch_per_replica", "global_batch_size", "models"}


def load_prediction_spec(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"{path}: {error}") from None
    unknown = set(spec) - PREDICTION_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(sorted(PREDICTION_KEYS))})")
    for model in spec.get("models", []):
        if "config" in model and "path" in model or not ({"config", "path"} & set(model)):
            raise SpecError(f"{path}: models: {model.get('name')}: give config (a config.json dictionary) or path")
    return spec


def model_shape(entry: dict, base: Path) -> sm.ModelShape:
    if "config" in entry:
        return sm.shape_from_config(entry["config"])
    return sm.shape_from_config(json.loads((resolve(entry["path"], base) / "config.json").read_text()))


def predictions(spec: dict, base: Path, hardware: sm.Hardware) -> list[dict]:
    """Every model x layout x GPU count x scaling mode of a prediction spec."""
    half = {"fp32": 4, "bf16": 2, "fp16": 2}
    rows = []
    for entry in spec["models"]:
        shape = model_shape(entry, base)
        for layout_spec in entry["layouts"]:
            tp, zero = layout_spec.get("tp", 1), layout_spec.get("zero", 0)
            for mode in spec.get("scaling", ["weak", "strong"]):
                for gpus in spec["gpus"]:
                    if gpus % tp:
                        continue
                    dp = gpus // tp
                    micro = spec.get("micro_batch_size", 1)
                    batch = spec["batch_per_replica"] * dp if mode == "weak" else spec["global_batch_size"]
                    if batch % (micro * dp):
                        continue
                    layout = sm.Layout(gpus, tp, zero, micro, batch, spec["seq_len"],
                                       spec.get("activation_checkpointing", True),
                                       half[spec.get("reduce_dtype", "fp32")], half[spec.get("precision", "bf16")],
                                       "nccl")
                    prediction = sm.predict(shape, layout, hardware)
                    rows.append({"model": entry["name"], "parameters": sm.parameter_count(shape), "scaling": mode,
                                 "gpus": gpus, **prediction.row()})
    by_series = collections.defaultdict(list)
    for row in rows:
        by_series[(row["model"], row["tp"], row["zero"], row["scaling"])].append(row)
    for members in by_series.values():
        base_row = min(members, key=lambda r: r["gpus"])
        for row in members:
            row["efficiency"] = row["tokens_per_s_per_rank"] / base_row["tokens_per_s_per_rank"]
    return rows


PREDICTION_COLUMNS = ["model", "parameters", "scaling", "gpus", "tp", "dp", "zero", "micro_batch_size",
                      "global_batch_size", "accumulation", "seq_len", "activation_checkpointing", "compute_s",
                      "tp_comm_s", "dp_comm_s", "step_s", "tokens_per_s_per_rank", "efficiency", "achieved_mfu",
                      "comm_bytes", "parameter_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes",
                      "total_bytes", "load_bytes", "resume_bytes", "step_bytes", "export_bytes", "peak_phase",
                      "peak_bytes", "fits"]


def hardware_text(hardware: sm.Hardware) -> str:
    return (f"{hardware.name}: {hardware.gpus_per_node} GPUs per node, {hardware.intra_bandwidth / 1e9:.0f} GB/s "
            f"inside a node (alpha {hardware.intra_alpha * 1e6:.0f} us), {hardware.inter_bandwidth / 1e9:.0f} GB/s "
            f"per GPU between nodes (alpha {hardware.inter_alpha * 1e6:.0f} us), "
            f"{hardware.peak_flops / 1e12:.0f} TFLOP/s peak at MFU {hardware.mfu:.2f}, "
            f"{hardware.memory_bytes / 1e9:.0f} GB, overlap {hardware.overlap:.1f}")


def predictions_markdown(rows: list[dict], spec: dict, hardware: sm.Hardware) -> str:
    parts = [f"# Predicted: {spec.get('name', '')}\n\nPredicted, not measured, for {hardware_text(hardware)}. "
             f"Sequences of {spec['seq_len']} tokens, micro-batch {spec.get('micro_batch_size', 1)}, "
             f"{spec.get('precision', 'bf16')} autocast, gradients reduced in {spec.get('reduce_dtype', 'fp32')}, "
             f"activation checkpointing {'on' if spec.get('activation_checkpointing', True) else 'off'}; weak "
             f"scaling: {spec.get('batch_per_replica')} sequences per replica per step; strong: a global batch of "
             f"{spec.get('global_batch_size')} sequences. Memory per GPU in GB (10^9 bytes).\n"]
    header = ["GPUs", "tp", "dp", "ZeRO", "accum.", "step s", "tokens/s per GPU", "efficiency", "MFU",
              "comm GB/step", "params / grads / optim / activ. GB", "peak GB (phase)", "fits"]
    groups = collections.defaultdict(list)
    for row in rows:
        groups[(row["model"], row["scaling"])].append(row)
    for (model, mode), members in groups.items():
        parts.append(f"\n## {model} ({members[0]['parameters'] / 1e9:.2f} B parameters), {mode} scaling\n\n")
        parts.append(markdown_table(header, [[
            r["gpus"], r["tp"], r["dp"], r["zero"], r["accumulation"], f"{r['step_s']:.3g}",
            f"{r['tokens_per_s_per_rank']:.0f}", f"{r['efficiency']:.2f}", f"{r['achieved_mfu']:.2f}",
            f"{r['comm_bytes'] / 1e9:.2f}",
            " / ".join(f"{r[k] / 1e9:.1f}" for k in ("parameter_bytes", "gradient_bytes", "optimizer_bytes",
                                                     "activation_bytes")),
            f"{r['peak_bytes'] / 1e9:.1f} ({r['peak_phase']})",
            "yes" if r["fits"] else "no"] for r in sorted(members, key=lambda r: (r["tp"], r["zero"], r["gpus"]))]))
    return "".join(parts)


def plot_predictions(rows: list[dict], hardware: sm.Hardware, out: Path) -> None:
    plt = pyplot()
    modes = [m for m in ("weak", "strong") if any(r["scaling"] == m for r in rows)]
    figure, axes = plt.subplots(len(modes), 2, figsize=(12, 4.4 * len(modes)), squeeze=False)
    for row_axes, mode in zip(axes, modes):
        lines = collections.defaultdict(list)
        for r in rows:
            if r["scaling"] == mode:
                lines[f"{r['model']} tp{r['tp']} zero{r['zero']}"].append(r)
        for axis, key, ylabel in zip(row_axes, ("tokens_per_s_per_rank", "efficiency"),
                                     ("tokens/s per GPU", "scaling efficiency")):
            for label, members in lines.items():
                members.sort(key=lambda r: r["gpus"])
                axis.plot([r["gpus"] for r in members], [r[key] for r in members], "o-", label=label)
            axis.set_xscale("log", base=2)
            axis.set_xlabel("GPUs")
            axis.set_ylabel(ylabel)
            axis.set_title(f"{mode} scaling (predicted)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    label_hardware(figure, f"predicted for {hardware_text(hardware)}")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(out / "predicted_scaling.png", dpi=110)
    plt.close(figure)

    series = sorted({(r["model"], r["tp"], r["zero"]) for r in rows})
    figure, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 4.6), squeeze=False)
    kinds = [("parameter_bytes", "parameters"), ("gradient_bytes", "gradients"), ("optimizer_bytes", "optimizer"),
             ("activation_bytes", "activations")]
    for axis, (model, tp, zero) in zip(axes[0], series):
        members = sorted((r for r in rows if (r["model"], r["tp"], r["zero"]) == (model, tp, zero)
                          and r["scaling"] == modes[0]), key=lambda r: r["gpus"])
        names = [str(r["gpus"]) for r in members]
        bottom = [0.0] * len(members)
        for kind, label in kinds:
            values = [r[kind] / 1e9 for r in members]
            axis.bar(names, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        axis.axhline(hardware.memory_bytes / 1e9, color="red", lw=1, ls="--", label="GPU memory")
        axis.set_xlabel("GPUs")
        axis.set_ylabel("GB per GPU")
        axis.set_title(f"{model} tp{tp} zero{zero}", fontsize=9)
        axis.legend(fontsize=6)
    label_hardware(figure, f"predicted for {hardware_text(hardware)}")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(out / "predicted_memory.png", dpi=110)
    plt.close(figure)


def write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def against_measured(sweep_dir: Path, out: Path) -> int:
    """Calibrates the model on a sweep's runs, writes predicted beside measured and
    checks the communication volume. Returns the number of runs whose counted
    comm_bytes or memory record (ftrain's bookkeeping, not a measurement) differ from
    the model's."""
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    rows = [r for r in report(sweep_dir) if r.get("status") == "ok"]
    if not rows:
        raise SpecError(f"{sweep_dir}: no finished runs to compare with")
    runs = {r["run"]: r for r in rows}
    points = [{"flops_per_rank": r["flops_per_rank"], "micro_batches": r["accumulation"],
               "comm_bytes": r["comm_bytes"], "ring_steps": r["ring_steps"], "step_s": r["step_time_s"]}
              for r in runs.values()]
    hardware = sm.calibrate(points, f"calibrated on {meta['hardware']}")
    compared = []
    for r in rows:
        shape = sm.shape_from_config(json.loads((Path(meta["runs"][r["run"]]["model_dir"]) / "config.json")
                                                .read_text()))
        layout = layout_of(read_run_config(sweep_dir / "runs" / r["run"]), r["ranks"], r["seq_len"])
        prediction = sm.predict(shape, layout, hardware)
        compared.append({**{k: r[k] for k in ("run", "model", "scaling", "ranks", "tp", "dp", "zero",
                                              "global_batch_size")},
                         "measured_step_s": r["step_time_s"], "predicted_step_s": prediction.step_s,
                         "measured_tokens_per_s_per_rank": r["tokens_per_s_per_rank"],
                         "predicted_tokens_per_s_per_rank": prediction.tokens_per_s_per_rank,
                         "counted_comm_bytes": r["comm_bytes"], "predicted_comm_bytes": prediction.comm_bytes,
                         "comm_bytes_equal": comm_matches(r), "memory_equal": r["memory_matches"]})
    columns = list(compared[0])
    write_rows(out / "measured_vs_predicted.csv", compared, columns)
    calibration = {"hardware": meta["hardware"], "flops_per_s_per_rank": hardware.peak_flops,
                   "micro_batch_overhead_s": hardware.micro_batch_overhead,
                   "bandwidth_bytes_per_s": hardware.intra_bandwidth, "alpha_s": hardware.intra_alpha}
    (out / "calibration.json").write_text(json.dumps(calibration, indent=1) + "\n")
    table = [[c["model"], c["scaling"], c["ranks"], c["tp"], c["zero"], f"{c['measured_step_s'] * 1e3:.1f}",
              f"{c['predicted_step_s'] * 1e3:.1f}",
              f"{(c['predicted_step_s'] / c['measured_step_s'] - 1) * 100:+.0f}%",
              f"{c['measured_tokens_per_s_per_rank']:.0f}",
              f"{c['predicted_tokens_per_s_per_rank']:.0f}", f"{c['counted_comm_bytes']:.0f}",
              f"{c['predicted_comm_bytes']:.0f}", "yes" if c["comm_bytes_equal"] else "NO",
              "yes" if c["memory_equal"] else "NO"] for c in compared]
    (out / "measured_vs_predicted.md").write_text(
        f"# Measured against the calibrated model\n\nMeasured on: {meta['hardware']}. Calibrated: "
        f"{calibration_text(hardware)}.\n\n" + markdown_table(
            ["model", "scaling", "ranks", "tp", "ZeRO", "step ms", "predicted", "error", "tokens/s per rank",
             "predicted",
             "counted comm bytes/step", "predicted", "bytes equal", "memory equal"], table))
    plot_against_measured(compared, hardware, meta["hardware"], out)
    wrong = [c["run"] for c in compared if not (c["comm_bytes_equal"] and c["memory_equal"])]
    for run in sorted(set(wrong)):
        print(f"ftrain-sweep: {run}: counted comm_bytes or memory record differ from the model", file=sys.stderr)
    return len(set(wrong))


def calibration_text(hardware: sm.Hardware) -> str:
    return (f"{hardware.peak_flops / 1e9:.2f} GFLOP/s per rank, {hardware.micro_batch_overhead * 1e3:.2f} ms per "
            f"micro-batch, {hardware.intra_bandwidth / 1e9:.3g} GB/s, alpha {hardware.intra_alpha * 1e6:.1f} us")


def plot_against_measured(compared: list[dict], hardware: sm.Hardware, measured_on: str, out: Path) -> None:
    """One panel per model and scaling mode: tokens/s per rank of each layout, measured
    beside the calibrated model; and every run's step time, predicted against measured."""
    plt = pyplot()
    groups = collections.defaultdict(list)
    for c in compared:
        groups[(c["model"], c["scaling"])].append(c)
    keys = sorted(groups)
    columns = 3
    rows = -(-(len(keys) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    panels = list(axes.flat)
    for axis, key in zip(panels, keys):
        members = sorted(groups[key], key=lambda c: (c["ranks"], c["tp"], c["zero"]))
        names = [f"r{c['ranks']} tp{c['tp']}\nzero{c['zero']}" for c in members]
        positions = range(len(members))
        axis.bar([p - 0.2 for p in positions], [c["measured_tokens_per_s_per_rank"] for c in members], 0.4,
                 label="measured")
        axis.bar([p + 0.2 for p in positions], [c["predicted_tokens_per_s_per_rank"] for c in members], 0.4,
                 label="calibrated model")
        axis.set_xticks(list(positions), names, fontsize=7)
        axis.set_ylabel("tokens/s per rank")
        axis.set_title(f"{key[0]}, {key[1]} scaling", fontsize=10)
        axis.legend(fontsize=7)
    scatter = panels[len(keys)]
    measured = [c["measured_step_s"] * 1e3 for c in compared]
    predicted = [c["predicted_step_s"] * 1e3 for c in compared]
    scatter.scatter(measured, predicted, s=14)
    top = max(measured + predicted) * 1.1
    scatter.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
    scatter.set_xlim(0, top)
    scatter.set_ylim(0, top)
    scatter.set_xlabel("measured step time (ms)")
    scatter.set_ylabel("predicted step time (ms)")
    scatter.set_title("step time of every run", fontsize=10)
    for axis in panels[len(keys) + 1:]:
        axis.axis("off")
    label_hardware(figure, f"measured on: {measured_on}; model calibrated to it: {calibration_text(hardware)}")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(out / "measured_vs_predicted.png", dpi=110)
    plt.close(figure)


def model_command(spec_path: Path, out: Path, hardware_json: str | None, measured: Path | None) -> int:
    spec = load_prediction_spec(spec_path)
    hardware = sm.hardware_from_dict(spec.get("hardware", {}))
    if hardware_json:
        values = json.loads(Path(hardware_json).read_text() if Path(hardware_json).exists() else hardware_json)
        hardware = sm.hardware_from_dict(values, hardware)
    out.mkdir(parents=True, exist_ok=True)
    rows = predictions(spec, spec_path.parent, hardware)
    write_rows(out / "predictions.csv", rows, PREDICTION_COLUMNS)
    (out / "predictions.md").write_text(predictions_markdown(rows, spec, hardware))
    plot_predictions(rows, hardware, out)
    print(f"ftrain-sweep: wrote {out / 'predictions.csv'}, {out / 'predictions.md'} and plots ({len(rows)} rows)")
    if measured:
        wrong = against_measured(measured, out)
        print(f"ftrain-sweep: wrote {out / 'measured_vs_predicted.md'}; "
              f"{'every run communicated and held what the model says' if not wrong else f'{wrong} run(s) differ'}")
        return 1 if wrong else 0
    return 0


# ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftrain-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a sweep and report it")
    run.add_argument("spec", type=Path, help="sweep spec, JSON (configs/sweeps/local-cpu.json)")
    run.add_argument("--out", type=Path, required=True, help="directory for the runs and the report")
    run.add_argument("--launcher", choices=["mpirun", "slurm"], default="mpirun",
                     help="mpirun: each run here, one after another; slurm: each run a job of slurm/ftrain.sbatch")
    run.add_argument("--ftrain", type=Path, default=BUILD / "ftrain", help="the ftrain binary")
    run.add_argument("--prep", type=Path, default=BUILD / "ftrain-prep", help="ftrain-prep, for generated data")
    run.add_argument("--rerun", action="store_true", help="run again the runs that finished before")
    run.add_argument("--no-wait", action="store_true", help="slurm: submit and return; `report` gathers later")
    rep = commands.add_parser("report", help="collect a sweep's runs again into sweep.csv, sweep.md and plots")
    rep.add_argument("out", type=Path)
    model = commands.add_parser("model", help="the analytic model's predictions, and against a measured sweep")
    model.add_argument("--out", type=Path, required=True)
    model.add_argument("--spec", type=Path, default=DEFAULT_PREDICTIONS, help="prediction spec (JSON)")
    model.add_argument("--hardware", help="JSON (a file or inline) replacing fields of the spec's hardware")
    model.add_argument("--measured", type=Path, help="a sweep directory: calibrate on it and compare")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return sweep(args.spec, args.out.resolve(), args.launcher, args.ftrain.resolve(), args.prep.resolve(),
                         args.rerun, not args.no_wait)
        if args.command == "report":
            report(args.out.resolve())
            return 0
        return model_command(args.spec, args.out.resolve(), args.hardware,
                             args.measured.resolve() if args.measured else None)
    except ValueError as error:  # a spec, a hardware description or a model config ftrain-sweep cannot use
        print(f"ftrain-sweep: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
