"""ftrain-bench-checkpoint under mpirun with tiny sizes: it runs, its table has a row of
positive numbers, its JSON lines give the same table back, and the checkpoints it wrote
are committed. No speed is asserted: speeds belong to bench/checkpoint.sh."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from ftrain_jobs import BUILD, ENV, MPIEXEC  # noqa: E402

BENCH = BUILD / "ftrain-bench-checkpoint"
HEADER = ("| ranks | bytes total | raw write GiB/s | ftrain save GiB/s | save / raw | async blocking ms "
          "| async to commit s | load GiB/s | verify GiB/s |")


def run(*arguments, ranks=None):
    command = [str(BENCH), *map(str, arguments)]
    if ranks:
        command = [MPIEXEC, "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def first_table_rows(stdout):
    lines = stdout.splitlines()
    assert HEADER in lines, f"no table header in:\n{stdout}"
    rows = []
    for line in lines[lines.index(HEADER) + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("tp", [1, 2])
def test_two_ranks_report_positive_speeds_and_commit(tmp_path, tp):
    results = tmp_path / "results.jsonl"
    stdout = run("--dir", tmp_path / "disk", "--mib-per-rank", 4, "--tensors", 8, "--repeats", 1, "--tp", tp,
                 "--json", results, ranks=2)

    rows = first_table_rows(stdout)
    assert len(rows) == 1
    ranks, total, raw, save, ratio, blocking, to_commit, load, verify = rows[0]
    assert ranks == "2" and total == "8 MiB"
    for value in (raw, save, ratio, to_commit, load, verify):
        assert float(value) > 0, f"not a positive number: {rows[0]}"
    assert float(blocking) >= 0

    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["repeat", "median"]
    assert records[-1]["bytes_total"] == 2 * 4 * 2**20 and records[-1]["tp"] == tp
    # --report prints the same table from the JSON lines, without MPI.
    assert first_table_rows(run("--report", results)) == rows

    checkpoints = tmp_path / "disk" / "checkpoints"
    committed = sorted(p.name for p in checkpoints.iterdir() if (p / "COMMITTED").is_file())
    assert committed == ["step_00000001", "step_00000002"]  # the sync and the async save
    assert (checkpoints / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in (checkpoints / "step_00000002").glob("rank_*.h5")) == ["rank_00000.h5",
                                                                                          "rank_00001.h5"]
    assert not (tmp_path / "disk" / "raw").exists()


def test_tp_that_does_not_divide_the_ranks_is_refused(tmp_path):
    command = [MPIEXEC, "-np", "2", "--oversubscribe", "--bind-to", "none", str(BENCH), "--dir", str(tmp_path),
               "--mib-per-rank", "1", "--tp", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode != 0
    assert "--tp 3 must divide the number of ranks (2)" in result.stderr
