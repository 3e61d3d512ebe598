"""Sharded loading under tensor parallelism, measured and end to end.

Memory: a GPT-2 of about 60 MB (fp32) is read at tp 4, once the old way (whole model,
then split) and once split as it is built, each in a fresh mpirun job. The old way's
peak growth shows the measurement sees the whole model; the split read must stay near
a quarter of it plus one stored tensor.

Bad input: ftrain at tp 2 on a model whose file lacks a tensor, or holds one of the
wrong shape, stops with a non-zero exit naming the file and the tensor."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from ftrain_jobs import BUILD, ENV, TIMEOUT, command, prepare_corpus, run_ftrain, tiny_gpt2  # noqa: E402

TOOL = BUILD / "tensor_parallel_load_memory"
MiB = 1 << 20


@pytest.fixture(scope="module")
def medium_gpt2(tmp_path_factory):
    """About 60 MB of fp32 weights in one model.safetensors: 4 layers of width 512, a
    vocabulary of 4002 tokens (padding rows at tp 4); the largest tensor is the 8 MB
    token embedding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("medium") / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=4002, n_positions=128, n_embd=512, n_layer=4, n_head=8)).save_pretrained(
        directory, safe_serialization=True)
    return directory


def measure(model_dir, how, ranks=4):
    result = subprocess.run(command(ranks, model_dir, how, program=TOOL), capture_output=True, text=True,
                            timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["rank"] for line in lines) == list(range(ranks))
    return lines


def test_peak_memory_while_loading_is_a_shard_plus_one_tensor(medium_gpt2):
    from safetensors import safe_open
    with safe_open(medium_gpt2 / "model.safetensors", "pt") as f:
        sizes = [f.get_slice(name).get_shape() for name in f.keys()]
    elements = [math.prod(shape) for shape in sizes]
    model_bytes = 4 * sum(elements)  # fp32 in the file and in memory
    largest_tensor = 4 * max(elements)
    assert 50 * MiB < model_bytes < 70 * MiB

    whole = measure(medium_gpt2, "whole")
    split = measure(medium_gpt2, "split")
    report = {"model_bytes": model_bytes, "largest_tensor_bytes": largest_tensor, "whole": whole, "split": split}
    print(json.dumps(report, indent=1))
    for old, new in zip(sorted(whole, key=lambda r: r["rank"]), sorted(split, key=lambda r: r["rank"])):
        local = new["local_parameter_bytes"]
        assert local == old["local_parameter_bytes"]
        assert model_bytes / 4 < local < model_bytes / 4 + 2 * MiB  # a quarter, plus what is whole on every rank
        # The old way holds the whole model at once (and the file's pages): the
        # measurement sees it.
        assert old["peak_growth_bytes"] > model_bytes
        # The split read: this rank's part, at most one stored tensor's pages and its
        # part in flight, and a little for the allocator and the plan.
        assert new["peak_growth_bytes"] < local + largest_tensor + 4 * MiB, report
        # Without giving back each tensor's file pages the peak would include the
        # whole file; without skipping initialisation, the whole model.
        assert new["peak_growth_bytes"] < old["peak_growth_bytes"] / 3, report


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    return {"root": root, "data": prepare_corpus(root, 100)}


def broken_copy(workspace, name, change):
    """The tiny GPT-2 with `change` applied to its tensors (a dict name -> tensor)."""
    from safetensors.torch import load_file, save_file
    directory = tiny_gpt2(workspace["root"] / name)
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def run_split(workspace, model_dir, run_name):
    return run_ftrain(2, f"--run.dir={workspace['root'] / run_name}", f"--model.path={model_dir}",
                      "--model.init=pretrained", f"--data.path={workspace['data']}", "--data.micro_batch_size=2",
                      "--train.global_batch_size=2", "--train.steps=2", "--dist.tp=2", check=False)


def test_a_missing_tensor_stops_the_run_naming_the_file_and_the_tensor(workspace):
    model_dir = broken_copy(workspace, "missing", lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    result = run_split(workspace, model_dir, "missing_run")
    assert result.returncode != 0
    assert str(model_dir / "model.safetensors") in result.stderr, result.stderr
    assert "missing 'transformer.h.1.mlp.c_fc.weight'" in result.stderr, result.stderr


def test_a_tensor_of_the_wrong_shape_stops_the_run_naming_the_file_and_the_tensor(workspace):
    import torch

    def misshape(tensors):
        tensors["transformer.h.0.attn.c_proj.weight"] = torch.zeros(32, 16)
    model_dir = broken_copy(workspace, "misshaped", misshape)
    result = run_split(workspace, model_dir, "misshaped_run")
    assert result.returncode != 0
    assert str(model_dir / "model.safetensors") in result.stderr, result.stderr
    assert "'transformer.h.0.attn.c_proj.weight' is [32, 16], expected [32, 32]" in result.stderr, result.stderr
