"""bench/overlap.py on the tiny GPT-2, 2 ranks: both sides of ZeRO 0 and 2 run, the
table has its rows, both sides send the same bytes and give the same losses, and
overlap's peak gradient bytes at ZeRO-2 are its extra block above the other side's.
No speed is asserted: speeds belong to the benchmark's own runs (bench/RESULTS.md)."""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from ftrain_jobs import BUILD, ENV, MPIEXEC, SOURCE  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compare import table  # noqa: E402


def test_tiny_gpt2_both_sides_of_two_stages(tmp_path):
    command = [sys.executable, SOURCE / "bench/overlap.py", "--model", "gpt2-tiny", "--stages", "0,2", "--steps", "3",
               "--repeats", "1", "--out", tmp_path]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280,
                            env={**ENV, "BUILD": str(BUILD), "MPIEXEC": MPIEXEC})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert (tmp_path / "overlap.md").read_text().strip() in result.stdout
    rows = table(result.stdout, "| ZeRO |")
    assert [row[0] for row in rows] == ["0", "2"], result.stdout
    for stage, off_ms, on_ms, ratio, sent, gradients, same in rows:
        assert float(off_ms) > 0 and float(on_ms) > 0 and float(ratio) > 0
        assert " / " not in sent, f"ZeRO {stage}: the sides sent different bytes"
        assert same == "yes", f"ZeRO {stage}: overlap changed the losses"
    runs = json.loads((tmp_path / "overlap.json").read_text())["results"]
    for key in ("0,0", "0,1", "2,0", "2,1"):
        [run] = runs[key]["runs"]
        assert len(run["step_times"]) == 3 and len(run["losses"]) == 3
    # ZeRO-2 with overlap holds both blocks' full gradients at once, without one.
    off, on = runs["2,0"]["runs"][0]["gradient_bytes"], runs["2,1"]["runs"][0]["gradient_bytes"]
    # A GPT-2 block of width C: attention 4C^2 + 4C, MLP 8C^2 + 5C, two LayerNorms 4C;
    # C = 64, even, so no padding over 2 ranks; fp32.
    C = 64
    assert on - off == 4 * (12 * C * C + 13 * C)
