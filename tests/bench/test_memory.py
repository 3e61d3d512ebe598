"""bench/memory.py on the 26M-parameter GPT-2, 2 ranks, ZeRO 0 and 3: the table has its
rows and every phase, the predicted training state is 4 fp32 models at ZeRO-0 and
4 / dp at ZeRO-3, ZeRO-3's load is below ZeRO-0's (read into shards, not whole), and
the resume reads the whole saved state at ZeRO-0 and its shard at ZeRO-3.
The bounds themselves are asserted by tests/launch/telemetry/test_memory_phases.py."""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from ftrain_jobs import BUILD, ENV, MPIEXEC, SOURCE  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compare import table  # noqa: E402

PHASES = ["load", "setup", "resume", "first_step", "train", "save", "export"]


def test_two_stages_on_two_ranks(tmp_path):
    command = [sys.executable, SOURCE / "bench/memory.py", "--model", "gpt2-26m", "--stages", "0,3", "--dp", "2",
               "--out", tmp_path]
    result = subprocess.run(command, capture_output=True, text=True, timeout=580,
                            env={**ENV, "BUILD": str(BUILD), "MPIEXEC": MPIEXEC})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert (tmp_path / "memory.md").read_text().strip() in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("| ZeRO |"))
    assert [cell.strip() for cell in header.strip("|").split("|")][3:] == PHASES + ["resume read", "its shard"]
    rows = {row[0]: row for row in table(result.stdout, "| ZeRO |")}
    assert sorted(rows) == ["0", "3"], result.stdout
    assert float(rows["0"][2]) == 4.0 and float(rows["3"][2]) == 2.0
    zero0, zero3 = [dict(zip(PHASES + ["read", "shard"], map(float, rows[s][3:]))) for s in ("0", "3")]
    assert zero3["load"] < zero0["load"] - 0.5, result.stdout
    # The resume reads the saved state's 3 M whole at ZeRO-0 and its half at ZeRO-3.
    assert zero0["shard"] == 3.0 and zero3["shard"] == 1.5
    assert abs(zero0["read"] - 3.0) < 0.05 and abs(zero3["read"] - 1.5) < 0.05, result.stdout
    runs = json.loads((tmp_path / "memory.json").read_text())["runs"]
    assert set(runs["zero3-dp2"]["model"]) == set(PHASES) | {"resume_read"}
