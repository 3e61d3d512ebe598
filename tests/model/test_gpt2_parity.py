"""ftrain's GPT-2 against Hugging Face transformers.

Small random GPT2LMHeadModels are saved with save_pretrained; the gpt2_forward tool
loads them, writes logits and the next-token loss, and saves the model back, which
transformers must load to the same logits. gpt2_init's initialisation is compared
statistically with transformers' own.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
GPT2_FORWARD = BUILD_DIR / "tests" / "model" / "gpt2_forward"
GPT2_INIT = BUILD_DIR / "tests" / "model" / "gpt2_init"

VOCAB = 97
POSITIONS = 24


def make_config(**overrides):
    settings = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=POSITIONS,
                    bos_token_id=0, eos_token_id=0)
    settings.update(overrides)
    return GPT2Config(**settings)


def make_model(seed, **overrides):
    torch.manual_seed(seed)
    # Weights ten times the usual scale give activations of order one, where the
    # comparison can tell apart e.g. the tanh and erf forms of GELU.
    overrides.setdefault("initializer_range", 0.2)
    model = GPT2LMHeadModel(make_config(**overrides)).eval()
    # Fresh LayerNorms are 1/0 and biases 0; randomise them so the comparison
    # exercises every parameter and its layout.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def hf_forward(model, input_ids):
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=input_ids)
    return out.logits, out.loss


def run(tool, *args):
    result = subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{tool.name} failed:\n{result.stderr}"


def ftrain_forward(model_dir, input_ids, work_dir, save_dir=None):
    inputs = work_dir / "input.safetensors"
    output = work_dir / "output.safetensors"
    save_file({"input_ids": input_ids.contiguous()}, str(inputs))
    run(GPT2_FORWARD, model_dir, inputs, output, *([save_dir] if save_dir else []))
    result = load_file(str(output))
    return result["logits"], result["loss"]


def random_ids(seed, batch=3, length=POSITIONS):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator, dtype=torch.int64)


VARIANTS = {
    "tied": dict(),
    "untied": dict(tie_word_embeddings=False),
    "n_inner": dict(n_inner=80),
    "exact_gelu_layer_scaled": dict(activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
                                    n_layer=3),
    "unscaled_upcast": dict(scale_attn_weights=False, reorder_and_upcast_attn=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_loss_and_save_match_transformers(variant, tmp_path):
    model = make_model(seed=len(variant), **VARIANTS[variant])
    model_dir = tmp_path / "hf"
    model.save_pretrained(model_dir, safe_serialization=True)
    input_ids = random_ids(seed=1)

    expected_logits, expected_loss = hf_forward(model, input_ids)
    save_dir = tmp_path / "saved"
    logits, loss = ftrain_forward(model_dir, input_ids, tmp_path, save_dir)

    assert logits.shape == expected_logits.shape
    assert (logits - expected_logits).abs().max().item() < 1e-4
    assert loss.shape == ()
    assert abs(loss.item() - expected_loss.item()) < 1e-4

    # The saved directory is a Hugging Face model with the same tensors and names.
    with safe_open(str(save_dir / "model.safetensors"), "pt") as saved:
        assert saved.metadata() == {"format": "pt"}
        saved_names = set(saved.keys())
    original = load_file(str(model_dir / "model.safetensors"))
    assert saved_names == set(original)
    assert ("lm_head.weight" in saved_names) == (variant == "untied")
    resaved = load_file(str(save_dir / "model.safetensors"))
    for name, tensor in original.items():
        assert torch.equal(resaved[name], tensor), name

    reloaded = GPT2LMHeadModel.from_pretrained(save_dir).eval()
    assert reloaded.config.tie_word_embeddings == model.config.tie_word_embeddings
    assert reloaded.config.n_inner == model.config.n_inner
    assert reloaded.config.activation_function == model.config.activation_function
    assert reloaded.config.bos_token_id == 0
    reloaded_logits, _ = hf_forward(reloaded, input_ids)
    assert (reloaded_logits - logits).abs().max().item() < 1e-5


def test_parameter_names_match_transformers(tmp_path):
    for variant, overrides in VARIANTS.items():
        model = make_model(seed=0, **overrides)
        model.save_pretrained(tmp_path / variant, safe_serialization=True)
        run(GPT2_FORWARD, tmp_path / variant, _write_ids(tmp_path, random_ids(0, 1, 4)),
            tmp_path / "out.safetensors", tmp_path / f"{variant}_saved")
        with safe_open(str(tmp_path / f"{variant}_saved" / "model.safetensors"), "pt") as saved:
            names = set(saved.keys())
        # named_parameters() lists a tied head once, under transformer.wte.weight.
        expected = {name for name, _ in model.named_parameters()}
        assert names == expected, variant


def _write_ids(work_dir, input_ids):
    path = work_dir / "ids.safetensors"
    save_file({"input_ids": input_ids}, str(path))
    return path


def test_sharded_and_unprefixed_checkpoints(tmp_path):
    model = make_model(seed=11)
    input_ids = random_ids(seed=2, batch=2, length=10)
    expected_logits, expected_loss = hf_forward(model, input_ids)

    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert not (sharded / "model.safetensors").exists()
    logits, loss = ftrain_forward(sharded, input_ids, tmp_path)
    assert (logits - expected_logits).abs().max().item() < 1e-4
    assert abs(loss.item() - expected_loss.item()) < 1e-4

    # GPT2Model's layout: no "transformer." prefix and no head.
    base = tmp_path / "base"
    model.transformer.save_pretrained(base, safe_serialization=True)
    with safe_open(str(base / "model.safetensors"), "pt") as saved:
        assert not any(name.startswith("transformer.") for name in saved.keys())
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    logits, loss = ftrain_forward(base, input_ids, tmp_path)
    assert (logits - expected_logits).abs().max().item() < 1e-4


def test_init_matches_transformers_statistics(tmp_path):
    overrides = dict(n_layer=4, n_embd=128, n_head=4, vocab_size=500, n_positions=64,
                     tie_word_embeddings=False)
    config = make_config(**overrides)
    config_dir = tmp_path / "config"
    config.save_pretrained(config_dir)
    run(GPT2_INIT, config_dir / "config.json", 1234, tmp_path / "init")
    run(GPT2_INIT, config_dir / "config.json", 1234, tmp_path / "again")
    run(GPT2_INIT, config_dir / "config.json", 99, tmp_path / "other")

    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "init")
    torch.manual_seed(0)
    reference = dict(GPT2LMHeadModel(config).named_parameters())

    for name, parameter in ours.named_parameters():
        expected = reference[name].detach()
        mine = parameter.detach()
        assert mine.shape == expected.shape, name
        if expected.std() == 0:  # biases and LayerNorms are constants
            assert torch.equal(mine, expected), name
            continue
        # Per-tensor std within 10% (tensors have >= 8k entries: sampling error ~1%).
        ratio = mine.std().item() / expected.std().item()
        assert 0.9 < ratio < 1.1, f"{name}: std {mine.std().item():.5f} vs {expected.std().item():.5f}"
        assert abs(mine.mean().item()) < 0.1 * expected.std().item(), name

    # The seed alone decides the draws.
    init = load_file(str(tmp_path / "init" / "model.safetensors"))
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    other = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert set(init) == set(again) == set(other)
    for name in init:
        assert torch.equal(init[name], again[name]), name
        if init[name].std() > 0:
            assert not torch.equal(init[name], other[name]), name
