"""What the end-to-end tests of tests/launch share: where the programs are, how a job
is started (under mpirun, or as one process the way srun starts each task), and how
its metrics.jsonl is read."""
import json
import os
import subprocess
import sys
from pathlib import Path

SOURCE = Path(os.environ.get("FTRAIN_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD = Path(os.environ.get("FTRAIN_BUILD_DIR", SOURCE / "build"))
FTRAIN = BUILD / "ftrain"
PREP = BUILD / "ftrain-prep"
MPIEXEC = os.environ.get("MPIEXEC", "mpirun")
TIMEOUT = 300  # seconds; a hung job fails its test instead of the suite

# Open MPI as root, more ranks than cores, one thread per rank (ftrain reads
# OMP_NUM_THREADS): the tests compare runs to a reference run, and MKL on two threads
# rounds differently from run to run (1 in 6 one-rank runs of the dropout layout test
# ended with 8 embedding weights 1.5e-4 away, once Adam had normalised their near-zero
# gradients); on one thread a run repeats to the bit.
ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
    "OMP_NUM_THREADS": "1",
}


def command(ranks, *arguments, program=FTRAIN):
    """The command line of a job of `ranks` ranks; 0: one process without mpirun."""
    if ranks == 0:
        return [str(program), *map(str, arguments)]
    return [MPIEXEC, "-np", str(ranks), "--oversubscribe", "--bind-to", "none", str(program), *map(str, arguments)]


def run_ftrain(ranks, *arguments, check=True, timeout=TIMEOUT):
    result = subprocess.run(command(ranks, *arguments), capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command(ranks, *arguments))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def as_options(options):
    return [f"--{key}={value}" for key, value in options.items()]


def records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def grad_norms(run_dir):
    """{step: the global gradient norm before clipping}, as metrics.jsonl logs it."""
    return {r["step"]: r["grad_norm"] for r in records(run_dir) if "grad_norm" in r}


def validation_of(run_dir):
    """The last validation record of a run's metrics.jsonl."""
    return [r for r in records(run_dir) if "val_loss" in r][-1]


def assert_same_steps(reference_dir, got_dir, steps, loss_rel=1e-5, grad_norm_rel=1e-4):
    """The run in got_dir logged exactly `steps` (a count from step 1, or the step
    numbers), each with the reference run's loss and gradient norm within the
    tolerances: the equivalence every layout test asserts."""
    import pytest
    expected = list(range(1, steps + 1)) if isinstance(steps, int) else list(steps)
    reference = {r["step"]: r for r in records(reference_dir) if "loss" in r}
    got = {r["step"]: r for r in records(got_dir) if "loss" in r}
    assert sorted(got) == expected and set(expected) <= set(reference)
    for step in expected:
        assert got[step]["loss"] == pytest.approx(reference[step]["loss"], rel=loss_rel), f"step {step}"
        assert got[step]["grad_norm"] == pytest.approx(reference[step]["grad_norm"], rel=grad_norm_rel), f"step {step}"


def sample_rows(run_dir):
    """{step: the sorted dataset rows that step trained on, over every data-parallel
    rank}, from run.log_samples' <run.dir>/samples/dp_N.jsonl. Where processes that
    started at different steps logged the same step (a lost process ran steps after its
    last checkpoint, and its successor ran them again), the later start's rows count."""
    lines = []
    for path in (Path(run_dir) / "samples").glob("dp_*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    starts = sorted({line["start"] for line in lines})
    rows = {}
    for line in lines:
        if line["start"] == max(start for start in starts if start < line["step"]):
            rows.setdefault(line["step"], []).extend(line["rows"])
    return {step: sorted(r) for step, r in rows.items()}


def prepare_corpus(root, documents):
    """A generated text corpus tokenized by ftrain-prep for the tiny GPT-2 tokenizer:
    32-token rows, a tenth of the documents in validation."""
    corpus = Path(root) / "corpus.jsonl"
    subprocess.run([sys.executable, SOURCE / "scripts/make_demo_corpus.py", corpus, "--documents", str(documents)],
                   check=True)
    data = Path(root) / "data.h5"
    subprocess.run([PREP, "--tokenizer", SOURCE / "configs/models/tiny-gpt2", "--input", corpus, "--seq-len", "32",
                    "--validation-fraction", "0.1", "--output", data], check=True, capture_output=True)
    return data


def tiny_gpt2(directory, vocab_size=1024, width=32):
    """A random GPT-2 small enough for multi-rank runs on a CPU (by default the tiny
    tokenizer's vocabulary, 2 layers of width 32), saved as a Hugging Face directory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=width, n_layer=2,
                               n_head=4)).save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def tiny_llama(directory, vocab_size=1024, width=32):
    """A random Llama of 2 layers with grouped-query attention (4 query heads, 2 key/value
    heads: split at tp 2, replicated at tp 4) and untied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64, tie_word_embeddings=False)).save_pretrained(
        directory, safe_serialization=True)
    return Path(directory)


def tiny_gpt2_workspace(root):
    """The generated corpus and the tiny GPT-2 that the end-to-end tests of short runs share."""
    return {"root": Path(root), "data": prepare_corpus(root, 400), "model": tiny_gpt2(Path(root) / "model")}
