"""The tests' side of tests/data/tokenize_dump: runs the C++ tokenizer that
load_tokenizer picks for a model directory over JSON, for comparison with Hugging Face."""

import json
import os
import random
import subprocess
from pathlib import Path

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD_DIR / "tests" / "data" / "tokenize_dump"


def run_tool(model_dir, *args):
    """The tool's completed process, whatever its exit status."""
    return subprocess.run([str(TOOL), str(model_dir), *map(str, args)], capture_output=True, timeout=300)


def run_cpp(model_dir, mode, payload, tmp_path, expect_success=True):
    """The tool's answer for `payload` (see tokenize_dump.cpp for each mode's JSON); with
    expect_success=False, its completed process."""
    payload_file = tmp_path / f"{mode}-{random.random()}.json"
    payload_file.write_text(json.dumps(payload), encoding="utf-8")
    result = run_tool(model_dir, mode, payload_file)
    if not expect_success:
        return result
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def info(model_dir):
    result = run_tool(model_dir, "info")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def refusal(model_dir):
    """The error loading the directory, which must fail with exit status 1."""
    result = run_tool(model_dir, "info")
    assert result.returncode == 1, result.stdout.decode(errors="replace")
    return result.stderr.decode(errors="replace")


def assert_same(actual, expected, inputs):
    """Equal lists, the first difference named with its input."""
    assert len(actual) == len(expected)
    mismatches = [(i, a, e) for i, a, e in zip(inputs, actual, expected) if a != e]
    assert not mismatches, f"{len(mismatches)} of {len(inputs)} differ, first: {mismatches[0]!r}"
