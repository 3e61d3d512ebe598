"""Text generation (model/generation.h, the cached forward of GPT-2 and the Llama family,
ftrain-generate) against Hugging Face transformers and numpy.

Small random models are saved with save_pretrained. generation_tool runs ftrain's
cached forward, generation loop, next-token filter and sampler on them; the results
are compared with transformers' logits and generate(), and with a numpy
implementation of temperature, top-k and top-p written here.
"""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

SOURCE_DIR = Path(os.environ.get("FTRAIN_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", SOURCE_DIR / "build"))
GENERATION_TOOL = BUILD_DIR / "tests" / "model" / "generation_tool"
FTRAIN_GENERATE = BUILD_DIR / "ftrain-generate"
GPT2_FORWARD = BUILD_DIR / "tests" / "model" / "gpt2_forward"  # saves a model as ftrain exports it
TINY_GPT2 = SOURCE_DIR / "configs" / "models" / "tiny-gpt2"

VOCAB = 89


# ---------------------------------------------------------------------------------
# Models


def gpt2_model():
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=40,
                                      initializer_range=0.2))


def llama_family_model(config_class, model_class, **overrides):
    settings = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    tie_word_embeddings=False, initializer_range=0.2)
    settings.update(overrides)
    config = config_class(**settings)
    config._attn_implementation = "eager"
    return model_class(config)


FAMILIES = {
    "gpt2": gpt2_model,
    # Grouped-query attention (4 query heads share 2 key/value heads), untied lm_head.
    "llama": lambda: llama_family_model(LlamaConfig, LlamaForCausalLM),
    # A window shorter than the sequences, so cached steps must forget the oldest keys.
    "mistral": lambda: llama_family_model(MistralConfig, MistralForCausalLM, sliding_window=5),
    # Biases on the query, key and value projections.
    "qwen2": lambda: llama_family_model(Qwen2Config, Qwen2ForCausalLM),
}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """family -> (transformers model in eval mode, directory it was saved to)."""
    models = {}
    for index, (family, build) in enumerate(FAMILIES.items()):
        torch.manual_seed(100 + index)
        model = build().eval()
        # Fresh norms are 1 and biases 0; randomise them so every parameter matters.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(".bias") or "norm" in name or ".ln_" in name:
                    parameter.add_(0.1 * torch.randn_like(parameter))
        directory = tmp_path_factory.mktemp(family)
        model.save_pretrained(directory)  # config.json and model.safetensors
        assert (directory / "model.safetensors").exists()
        models[family] = (model, directory)
    return models


def run_tool(*args):
    result = subprocess.run([str(GENERATION_TOOL), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"generation_tool {args[0]} failed:\n{result.stderr}"


def random_ids(seed, batch, length):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator, dtype=torch.int64)


def max_difference(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------
# (1) The cached forward gives the logits of the full forward


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_logits_equal_full_forward_and_transformers(family, saved_models, tmp_path):
    model, directory = saved_models[family]
    input_ids = random_ids(1, batch=2, length=16)
    save_file({"input_ids": input_ids}, str(tmp_path / "in.safetensors"))
    run_tool("cached", directory, tmp_path / "in.safetensors", tmp_path / "out.safetensors", 5)
    result = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        expected = model(input_ids).logits
    assert result["full"].abs().max() > 1.0  # logits large enough for a wrong position to show
    assert max_difference(result["full"], expected) < 1e-4
    # Prompt of 5, then one token at a time; prompt of 5, then 3 at a time (several new
    # positions that must not see each other's future).
    assert max_difference(result["stepwise"], result["full"]) < 1e-4
    assert max_difference(result["chunked"], result["full"]) < 1e-4


# ---------------------------------------------------------------------------------
# (2) Greedy generation is transformers' greedy generate()


def hf_generate(model, prompt_ids, max_new_tokens, eos_id=None):
    """transformers' greedy continuation: stops only at eos_id (never when None) and
    fills rows that ended early with it."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id,
                              pad_token_id=eos_id if eos_id is not None else 0)
    # generate() fills keys left unset from the model's own generation config, which
    # holds the eos_token_id of config.json; without it only `config` counts.
    defaults, model.generation_config = model.generation_config, GenerationConfig()
    try:
        with torch.no_grad():
            out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), generation_config=config)
    finally:
        model.generation_config = defaults
    return out[:, prompt_ids.shape[1]:]


def ftrain_generate_ids(directory, prompt_ids, work_dir, **options):
    save_file({"prompt_ids": prompt_ids}, str(work_dir / "prompt.safetensors"))
    run_tool("generate", directory, work_dir / "prompt.safetensors", work_dir / "new.safetensors",
             *(f"{key}={value}" for key, value in options.items()))
    return load_file(str(work_dir / "new.safetensors"))["new_ids"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_greedy_generation_matches_transformers(family, saved_models, tmp_path):
    model, directory = saved_models[family]
    for prompt_ids in (random_ids(2, batch=1, length=4), random_ids(3, batch=2, length=6)):
        expected = hf_generate(model, prompt_ids, 14)
        assert expected.shape == (prompt_ids.shape[0], 14)
        new_ids = ftrain_generate_ids(directory, prompt_ids, tmp_path, max_new_tokens=14, temperature=0)
        assert torch.equal(new_ids, expected), (new_ids, expected)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_generation_stops_at_eos_as_transformers(family, saved_models, tmp_path):
    model, directory = saved_models[family]
    prompt_ids = random_ids(4, batch=2, length=5)
    free = hf_generate(model, prompt_ids, 12)
    eos_id = free[0, 3].item()  # row 0 emits it by its fourth token
    expected = hf_generate(model, prompt_ids, 12, eos_id=eos_id)
    assert expected.shape[1] <= 12 and (expected[0] == eos_id).any()
    new_ids = ftrain_generate_ids(directory, prompt_ids, tmp_path, max_new_tokens=12, temperature=0, eos=eos_id)
    # Both stop once every row has ended and fill an ended row with the eos id.
    assert torch.equal(new_ids, expected), (new_ids, expected)
    if not (expected[1] == eos_id).any():
        assert expected.shape[1] == 12


# ---------------------------------------------------------------------------------
# (3) The filtered distribution: temperature, then top-k, then top-p


def reference_distribution(logits, temperature, top_k, top_p):
    """numpy, float64: one row of logits -> the distribution the options describe."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        probabilities = np.zeros_like(logits)
        probabilities[np.argmax(logits)] = 1.0
        return probabilities
    scaled = logits / temperature
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")
    keep = np.zeros(len(logits), dtype=bool)
    count = len(logits) if top_k == 0 else min(top_k, len(logits))
    keep[order[:count]] = True
    probabilities = np.where(keep, probabilities, 0.0)
    probabilities /= probabilities.sum()
    # The nucleus: the smallest n such that the n most likely tokens hold at least top_p.
    mass = np.cumsum(probabilities[order])
    n = min(int(np.searchsorted(mass, top_p, side="left")) + 1, len(logits))
    keep = np.zeros(len(logits), dtype=bool)
    keep[order[:n]] = True
    probabilities = np.where(keep, probabilities, 0.0)
    return probabilities / probabilities.sum()


FILTERS = [
    dict(temperature=1.0, top_k=0, top_p=1.0),
    dict(temperature=0.5, top_k=0, top_p=1.0),
    dict(temperature=2.0, top_k=5, top_p=1.0),
    dict(temperature=1.0, top_k=0, top_p=0.8),
    dict(temperature=1.3, top_k=0, top_p=0.5),
    dict(temperature=0.7, top_k=12, top_p=0.6),
    dict(temperature=1.0, top_k=1, top_p=1.0),
    dict(temperature=1.0, top_k=100, top_p=1.0),  # more than the vocabulary: all kept
    dict(temperature=1.0, top_k=0, top_p=1e-9),   # at least one token
    dict(temperature=0.0, top_k=0, top_p=1.0),    # greedy
]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """Random logits (8, 40) and ftrain's distribution for each of FILTERS, in one run."""
    directory = tmp_path_factory.mktemp("filter")
    generator = torch.Generator().manual_seed(5)
    logits = 3.0 * torch.randn(8, 40, generator=generator)
    save_file({"logits": logits}, str(directory / "in.safetensors"))
    run_tool("filter", directory / "in.safetensors", directory / "out.safetensors",
             *(",".join(f"{key}={value}" for key, value in options.items()) for options in FILTERS))
    results = load_file(str(directory / "out.safetensors"))
    return logits, [results[f"probabilities_{i}"].numpy() for i in range(len(FILTERS))]


@pytest.mark.parametrize("case", range(len(FILTERS)), ids=lambda i: "T{temperature}_k{top_k}_p{top_p}".format(**FILTERS[i]))
def test_filtered_distribution_matches_numpy(case, filtered):
    options = FILTERS[case]
    logits, probabilities = filtered[0], filtered[1][case]
    assert probabilities.dtype == np.float64 and probabilities.shape == (8, 40)

    for row, result in zip(logits.numpy(), probabilities):
        expected = reference_distribution(row, **options)
        np.testing.assert_array_equal(result > 0, expected > 0)
        np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-12)
        kept = np.sort(result[result > 0])[::-1]
        assert abs(kept.sum() - 1.0) < 1e-12
        if options["temperature"] == 0:
            assert len(kept) == 1 and result[np.argmax(row)] == 1.0
            continue
        if options["top_k"] > 0 and options["top_p"] == 1.0:
            assert len(kept) == min(options["top_k"], len(row))
        if options["top_k"] == 0 and options["top_p"] == 1.0:
            # Plain temperature: softmax(logits / T), every token kept.
            np.testing.assert_allclose(result, torch.softmax(torch.tensor(row, dtype=torch.float64) /
                                                             options["temperature"], -1).numpy(), rtol=1e-12)
        if options["top_p"] < 1.0 and options["top_k"] == 0:
            # Minimal nucleus: the kept tokens reach top_p, all but the least likely do not.
            full = torch.softmax(torch.tensor(row, dtype=torch.float64) / options["temperature"], -1).numpy()
            nucleus = np.sort(full[result > 0])[::-1]
            assert nucleus.sum() >= options["top_p"]
            assert nucleus[:-1].sum() < options["top_p"]


# ---------------------------------------------------------------------------------
# (4) Sampling: seeded, and only ever inside the filtered set


SAMPLING = dict(temperature=1.5, top_k=12, top_p=0.9)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sampled_generation_is_reproducible_and_inside_the_filtered_set(family, saved_models, tmp_path):
    model, directory = saved_models[family]
    prompt_ids = random_ids(6, batch=2, length=4)
    first = ftrain_generate_ids(directory, prompt_ids, tmp_path, max_new_tokens=20, seed=7, **SAMPLING)
    again = ftrain_generate_ids(directory, prompt_ids, tmp_path, max_new_tokens=20, seed=7, **SAMPLING)
    other = ftrain_generate_ids(directory, prompt_ids, tmp_path, max_new_tokens=20, seed=8, **SAMPLING)
    assert first.shape == (2, 20)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    greedy = hf_generate(model, prompt_ids, 20)
    assert not torch.equal(first, greedy)  # sampling did not fall back to the argmax

    # Each token must have non-zero probability in the filtered distribution of
    # transformers' logits for the sequence so far.
    with torch.no_grad():
        logits = model(torch.cat([prompt_ids, first], dim=1)).logits.double()
    for row in range(2):
        for step in range(20):
            expected = reference_distribution(logits[row, prompt_ids.shape[1] - 1 + step].numpy(), **SAMPLING)
            assert expected[first[row, step]] > 0, (row, step)


def test_sampler_draws_follow_the_filtered_distribution(tmp_path):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 10, generator=generator)
    # Each of the two rows 10000 times: 20000 draws per row from two calls to one sampler.
    repeats = 10000
    save_file({"logits": logits.repeat_interleave(repeats, dim=0)}, str(tmp_path / "in.safetensors"))
    run_tool("sample", tmp_path / "in.safetensors", tmp_path / "out.safetensors", 2, "seed=3",
             *(f"{key}={value}" for key, value in SAMPLING.items()))
    tokens = load_file(str(tmp_path / "out.safetensors"))["tokens"]
    assert tokens.shape == (2, 2 * repeats)
    assert not torch.equal(tokens[0], tokens[1])  # the sampler moves on between calls
    for row in range(2):
        expected = reference_distribution(logits[row].numpy(), **SAMPLING)
        drawn = tokens[:, row * repeats:(row + 1) * repeats].flatten().numpy()
        frequencies = np.bincount(drawn, minlength=10) / drawn.size
        assert (frequencies[expected == 0] == 0).all()
        # Each frequency has a standard deviation below 0.0036 at this many draws.
        assert np.abs(frequencies - expected).max() < 0.02, (frequencies, expected)


# ---------------------------------------------------------------------------------
# (5) ftrain-generate


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """configs/models/tiny-gpt2 (config and tokenizer, no weights) with random weights."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    shutil.copytree(TINY_GPT2, directory, dirs_exist_ok=True)
    torch.manual_seed(11)
    config = GPT2Config.from_json_file(str(TINY_GPT2 / "config.json"))
    config.initializer_range = 0.2
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    return model, directory


def run_generate(*args):
    return subprocess.run([str(FTRAIN_GENERATE), *map(str, args)], capture_output=True, text=True, timeout=120)


def expected_text(model, directory, prompt, max_new_tokens, eos_id):
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=True).ids
    new_ids = hf_generate(model, torch.tensor([prompt_ids]), max_new_tokens, eos_id=eos_id)[0].tolist()
    decoded_prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    decoded = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
    assert decoded.startswith(decoded_prompt)
    return prompt + decoded[len(decoded_prompt):] + "\n"


def test_ftrain_generate_prints_the_greedy_continuation(tiny_gpt2, tmp_path):
    model, directory = tiny_gpt2
    prompt = "The quick brown fox"
    result = run_generate("--model", directory, "--prompt", prompt, "--max-new-tokens", 16, "--temperature", 0,
                          "--ignore-eos")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(model, directory, prompt, 16, eos_id=None)
    assert len(result.stdout) > len(prompt) + 1
    assert "16 new tokens" in result.stderr

    # Without --ignore-eos it stops where transformers does, at config.json's eos_token_id.
    result = run_generate("--model", directory, "--prompt", prompt, "--max-new-tokens", 16, "--temperature", 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(model, directory, prompt, 16, eos_id=model.config.eos_token_id)

    # --prompt-file: the file's text less its final newline.
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompt + "\n")
    from_file = run_generate("--model", directory, "--prompt-file", prompt_file, "--max-new-tokens", 16,
                             "--temperature", 0, "--ignore-eos")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == expected_text(model, directory, prompt, 16, eos_id=None)


def test_ftrain_generate_reads_an_exported_model_with_the_tokenizer_of_another_directory(tiny_gpt2, tmp_path):
    """A run's final/ is written by ftrain and holds no tokenizer."""
    model, directory = tiny_gpt2
    exported = tmp_path / "final"
    save_file({"input_ids": torch.zeros(1, 2, dtype=torch.int64)}, str(tmp_path / "in.safetensors"))
    saved = subprocess.run([str(GPT2_FORWARD), directory, tmp_path / "in.safetensors", tmp_path / "out.safetensors",
                            exported], capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0, saved.stderr
    assert not (exported / "tokenizer.json").exists()

    prompt = "The quick brown fox"
    args = ["--prompt", prompt, "--max-new-tokens", 16, "--temperature", 0]
    result = run_generate("--model", exported, "--tokenizer", directory, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(model, directory, prompt, 16, eos_id=model.config.eos_token_id)

    result = run_generate("--model", exported, *args)
    assert result.returncode != 0
    assert "--tokenizer" in result.stderr and "tokenizer.json" in result.stderr, result.stderr


def test_ftrain_generate_samples_reproducibly(tiny_gpt2):
    _, directory = tiny_gpt2
    args = ["--model", directory, "--prompt", "Once upon a time", "--max-new-tokens", 24, "--temperature", 1.2,
            "--top-k", 40, "--top-p", 0.95, "--ignore-eos", "--threads", 1]
    first, again, other = run_generate(*args, "--seed", 1), run_generate(*args, "--seed", 1), \
        run_generate(*args, "--seed", 2)
    for result in (first, again, other):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Once upon a time")
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout


@pytest.mark.parametrize("args, named", [
    (["--model", "{missing}", "--prompt", "hi"], "--model"),
    (["--model", "{model}", "--tokenizer", "{missing}", "--prompt", "hi"], "--tokenizer"),
    (["--model", "{model}"], "--prompt"),
    (["--model", "{model}", "--prompt", "hi", "--prompt-file", "{model}/config.json"], "--prompt-file"),
    (["--model", "{model}", "--prompt-file", "{missing}/prompt.txt"], "--prompt-file"),
    (["--model", "{model}", "--prompt", "hi", "--temperature", "-1"], "--temperature"),
    (["--model", "{model}", "--prompt", "hi", "--temperature", "warm"], "--temperature"),
    (["--model", "{model}", "--prompt", "hi", "--top-p", "1.5"], "--top-p"),
    (["--model", "{model}", "--prompt", "hi", "--top-k", "-3"], "--top-k"),
    (["--model", "{model}", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--model", "{model}", "--prompt", "hi", "--device", "tpu"], "--device"),
    (["--model", "{model}", "--prompt", "hi", "--colour", "red"], "--colour"),
    (["--model", "{model}", "--prompt", ""], "--prompt"),
    # tiny-gpt2 holds 128 positions.
    (["--model", "{model}", "--prompt", "hi", "--max-new-tokens", "500"], "n_positions"),
    # The shipped directory has a config and a tokenizer but no weights.
    (["--model", str(TINY_GPT2), "--prompt", "hi"], "model.safetensors"),
])
def test_ftrain_generate_refuses_bad_input(args, named, tiny_gpt2, tmp_path):
    _, directory = tiny_gpt2
    result = run_generate(*(a.format(model=directory, missing=tmp_path / "missing") for a in args))
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert result.stdout == ""
