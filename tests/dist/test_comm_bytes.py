"""comm_bytes, which ftrain counts from each collective's size, against the bytes Open
MPI's point-to-point layer actually sent, measured by its monitoring component
(pml_monitoring_enable, printed per rank and peer at MPI_Finalize, each rank's output
kept in a file of its own). Collectives reach
that layer as the messages their algorithm sends, so the count is checked against what
moved between the processes.

A run's measured bytes include start-up (the layout, the model's broadcast) and the
end; the difference between a 6-step and a 2-step run of the same job is 4 steps'
traffic. comm_bytes assumes ring algorithms, so it is rank 0's share of a bandwidth-
optimal collective: the mean over the ranks of the measured per-step bytes must equal
it. Where ftrain's own ring or Open MPI's all-gather does the work, every rank sends
that share; under ZeRO-0 Open MPI's all-reduce sends unevenly (two ranks twice what the
others send, 4 ranks here), so there the per-rank check is the mean's."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from ftrain_jobs import ENV, TIMEOUT, as_options, command, prepare_corpus, tiny_gpt2  # noqa: E402

RANKS = 4
# Per step, the measured bytes may exceed the count only by the scalar reductions it
# leaves out (the loss, the gradient norm's partial sums, the step's token count).
SLACK_BYTES = 256


def monitoring_available():
    info = shutil.which("ompi_info")
    if not info:
        return "ompi_info not found: not Open MPI"
    listed = subprocess.run([info], capture_output=True, text=True).stdout
    if "MCA pml: monitoring" not in listed:
        return "this Open MPI has no pml monitoring component"
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if reason := monitoring_available():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("comm_bytes")
    return {"root": root, "data": prepare_corpus(root, 200), "model": tiny_gpt2(root / "model")}


def sent_by_rank(output_dir):
    """{rank: bytes it sent to every peer}, from the monitoring lines 'E|I <tab> rank
    <tab> peer <tab> N bytes <tab> ...' (E: user point-to-point, I: inside collectives)
    that each rank prints at MPI_Finalize. Each rank's output is read from its own file
    (mpirun --output-filename): on one shared pipe, lines of ranks finishing together can
    interleave and a rank's count come out short."""
    sent = {}
    for path in sorted(output_dir.glob("*/rank.*/std*")):
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) >= 4 and fields[0] in ("E", "I") and (match := re.fullmatch(r"(\d+) bytes", fields[3])):
                sent[int(fields[1])] = sent.get(int(fields[1]), 0) + int(match.group(1))
    return sent


def monitored_run(ws, name, steps, layout):
    run_dir = ws["root"] / f"{name}_{steps}"
    options = {"run.dir": run_dir, "model.path": ws["model"], "model.dropout": 0, "data.path": ws["data"],
               "data.micro_batch_size": 2, "train.global_batch_size": 8, "train.steps": steps,
               "train.eval_every": 0, "optim.warmup_steps": 0, "checkpoint.every": 0, "checkpoint.at_end": "false",
               "checkpoint.export_hf": "false", **layout}
    env = {**ENV, "OMPI_MCA_pml_monitoring_enable": "1", "OMPI_MCA_pml_monitoring_enable_output": "1"}
    output_dir = ws["root"] / f"{name}_{steps}_output"
    mpirun, *rest = command(RANKS, *as_options(options))
    result = subprocess.run([mpirun, "--output-filename", str(output_dir), *rest], capture_output=True, text=True,
                            timeout=TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr
    sent = sent_by_rank(output_dir)
    assert sorted(sent) == list(range(RANKS)), f"no monitoring output for every rank:\n{result.stderr[-3000:]}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = {r["comm_bytes"] for r in records if "comm_bytes" in r}
    assert len(counted) == 1, f"every step of this job counts the same bytes: {counted}"
    return sent, counted.pop()


LAYOUTS = {
    "dp4-zero0": {"dist.zero": 0},
    "dp4-zero2": {"dist.zero": 2},
    "dp4-zero3": {"dist.zero": 3},
    "tp2-dp2-zero1": {"dist.tp": 2, "dist.zero": 1},
    "tp2-sp-dp2-zero3": {"dist.tp": 2, "dist.sequence_parallel": "true", "dist.zero": 3},
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_counted_comm_bytes_are_what_the_ranks_sent(workspace, name):
    short, counted = monitored_run(workspace, name, 2, LAYOUTS[name])
    long, counted_again = monitored_run(workspace, name, 6, LAYOUTS[name])
    assert counted == counted_again and counted > 0
    per_step = {rank: (long[rank] - short[rank]) / 4 for rank in range(RANKS)}
    mean = sum(per_step.values()) / RANKS
    print(f"{name}: counted {counted:.0f} B/step, measured per rank {per_step}, mean {mean:.0f}")
    assert counted <= mean <= counted + SLACK_BYTES, f"{name}: measured {mean:.0f} B/step, counted {counted:.0f}"
    if LAYOUTS[name].get("dist.zero", 0) > 0:
        for rank, measured in per_step.items():
            assert counted <= measured <= counted + SLACK_BYTES, \
                f"{name}: rank {rank} sent {measured:.0f} B/step, counted {counted:.0f}"
