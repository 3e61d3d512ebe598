"""bench/compare.py on the tiny GPT-2: every side runs, the tables have their rows with
positive numbers, and ftrain and the PyTorch loops compute the same training (the same
first loss, before any update, from the same weights and rows). No speed is asserted:
speeds belong to the benchmark's own runs (bench/RESULTS.md)."""
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from ftrain_jobs import BUILD, ENV, SOURCE  # noqa: E402

PYTHON = sys.executable


def table(text, header_start):
    """The rows of the Markdown table whose header begins with header_start."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_tiny_gpt2_every_side_and_every_table(tmp_path):
    command = [PYTHON, SOURCE / "bench/compare.py", "--models", "gpt2-tiny", "--steps", "2", "--warmup", "1",
               "--repeats", "2", "--threads", "1", "--checkpoint-mib", "4", "--workdir", tmp_path]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**ENV, "BUILD": str(BUILD), "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert (tmp_path / "results.md").read_text().strip() == out.strip()

    speed = table(out, "| model | batch x seq | side |")
    assert [row[2] for row in speed] == ["ftrain", "eager", "compile"], out
    steps = {}
    for model, shape, side, step_ms, tokens, memory, speedup in speed:
        assert (model, shape) == ("gpt2-tiny", "4 x 64")
        assert float(step_ms) > 0 and float(tokens.replace(",", "")) > 0, out
        assert memory.endswith("GiB") and float(memory.split()[0]) > 0, out
        steps[side] = float(step_ms)
        if side != "ftrain":  # the ratio is the side's step time over ftrain's
            assert float(speedup.rstrip("x")) > 0
    loader = table(out, "| model | ftrain data loader tokens/s |")
    assert len(loader) == 1 and float(loader[0][1].replace(",", "")) > 0
    startup = table(out, "| model | side | start-up")
    assert [row[1] for row in startup] == ["ftrain", "eager", "compile"]
    assert all(float(row[2]) > 0 for row in startup)
    checkpoint = table(out, "| checkpoint (1 rank)")
    assert len(checkpoint) == 1 and all(float(cell) > 0 for cell in checkpoint[0][1:])

    # The same training on every side: same first loss (no dropout in gpt2-tiny), and
    # each process ran warm-up + measured steps.
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]["gpt2-tiny"]
    for side in ("ftrain", "eager", "compile"):
        assert len(runs[side]) == 2
        for run in runs[side]:
            assert len(run["step_times"]) == 3 and len(run["losses"]) == 3
    first = runs["ftrain"][0]["losses"][0]
    for side in ("eager", "compile"):
        assert abs(runs[side][0]["losses"][0] - first) <= 1e-4 * first, (side, runs[side][0]["losses"], first)
    # Random tokens of a 1024-token vocabulary: a fresh model's loss is about ln 1024.
    assert abs(first - 6.93) < 0.5
    # The ratio printed is what the step times say.
    summary = results["summary"]["gpt2-tiny"]
    assert abs(summary["eager"]["ftrain_speedup"] - summary["eager"]["step_s"] / summary["ftrain"]["step_s"]) < 1e-9


def test_unknown_model_is_refused_by_name(tmp_path):
    result = subprocess.run([PYTHON, SOURCE / "bench/compare.py", "--models", "gpt5", "--workdir", tmp_path],
                            capture_output=True, text=True, timeout=120, env={**ENV, "BUILD": str(BUILD)})
    assert result.returncode != 0
    assert "gpt5" in result.stderr
