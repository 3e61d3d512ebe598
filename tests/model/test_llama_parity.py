"""ftrain's Llama family (Llama, Mistral, Qwen2) against Hugging Face transformers.

Small random models are saved with save_pretrained; the llama_forward tool loads
them, writes logits and the next-token loss, and saves the model back, which
transformers must load to the same logits. llama_init's initialisation is compared
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
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
LLAMA_FORWARD = BUILD_DIR / "tests" / "model" / "llama_forward"
LLAMA_INIT = BUILD_DIR / "tests" / "model" / "llama_init"

VOCAB = 101
LENGTH = 24

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def make_config(family, **overrides):
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    if family == "mistral":
        settings["sliding_window"] = None
    settings.update(overrides)
    config = FAMILIES[family][0](**settings)
    # The reference computes attention the plain way (matmul, mask, softmax), not with
    # the fused kernel ftrain calls.
    config._attn_implementation = "eager"
    return config


def make_model(seed, family="llama", **overrides):
    torch.manual_seed(seed)
    # Weights ten times the usual scale give activations of order one, where wrong
    # rotary angles, head grouping or normalisation change the logits visibly.
    overrides.setdefault("initializer_range", 0.2)
    model = FAMILIES[family][1](make_config(family, **overrides)).eval()
    # Fresh RMSNorms are 1 and biases 0; randomise them so the comparison exercises
    # every parameter.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def hf_forward(model, input_ids, attention_mask=None, position_ids=None):
    labels = input_ids
    if attention_mask is not None:
        # Only predictions of a token from a token count: transformers shifts labels
        # left by one, so position t's label is the target of position t - 1.
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, 1:].masked_fill_(attention_mask[:, :-1] == 0, -100)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels)
    return out.logits, out.loss


def run(tool, *args):
    result = subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{tool.name} failed:\n{result.stderr}"


def ftrain_forward(model_dir, input_ids, work_dir, save_dir=None, attention_mask=None):
    inputs = work_dir / "input.safetensors"
    output = work_dir / "output.safetensors"
    tensors = {"input_ids": input_ids.contiguous()}
    if attention_mask is not None:
        tensors["attention_mask"] = attention_mask.contiguous()
    save_file(tensors, str(inputs))
    run(LLAMA_FORWARD, model_dir, inputs, output, *([save_dir] if save_dir else []))
    result = load_file(str(output))
    return result["logits"], result["loss"]


def random_ids(seed, batch=3, length=LENGTH):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator, dtype=torch.int64)


def max_difference(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def check_saved_directory(family, model, model_dir, save_dir, input_ids, logits):
    """The directory ftrain saved holds the same tensors under the same names and
    loads in transformers to the same logits."""
    with safe_open(str(save_dir / "model.safetensors"), "pt") as saved:
        assert saved.metadata() == {"format": "pt"}
    resaved = load_file(str(save_dir / "model.safetensors"))
    original = {name: tensor for name, tensor in model.state_dict().items() if "rotary_emb" not in name}
    if model.config.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    assert set(resaved) == set(original)
    for name, tensor in original.items():
        assert torch.equal(resaved[name], tensor), name

    reloaded = FAMILIES[family][1].from_pretrained(save_dir, attn_implementation="eager").eval()
    assert type(reloaded.config) is type(model.config)
    for key in ("tie_word_embeddings", "num_key_value_heads", "head_dim", "rope_parameters", "sliding_window",
                "attention_bias", "mlp_bias", "max_window_layers", "layer_types", "bos_token_id"):
        assert getattr(reloaded.config, key, None) == getattr(model.config, key, None), key
    reloaded_logits, _ = hf_forward(reloaded, input_ids)
    assert max_difference(reloaded_logits, logits) < 1e-5


LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)

# (family, config overrides). The sequence is LENGTH = 24 tokens long.
VARIANTS = {
    # Two query heads per key/value head, separate head.
    "llama_gqa": ("llama", dict()),
    # Tied embeddings and biases on every projection.
    "llama_tied_bias": ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                      num_key_value_heads=4)),
    # Llama 3.1 rotary scaling. With head size 16 and theta 500000 the wavelengths are
    # 6.3, 33, 169, ... so against original_max_position_embeddings 64 one pair is
    # kept, one blended and the rest stretched.
    "llama3_rope": ("llama", dict(rope_parameters=dict(rope_theta=500000.0, **LLAMA3_ROPE),
                                  max_position_embeddings=256)),
    # Position interpolation divides every angle by 4.
    "linear_rope": ("llama", dict(rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10000.0))),
    # NTK scaling acts once the sequence (24) is longer than max_position_embeddings (16).
    "dynamic_rope": ("llama", dict(rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0),
                                   max_position_embeddings=16)),
    # Biases on q, k, v but not o.
    "qwen2": ("qwen2", dict()),
    # Qwen2's second layer attends within a window of 5.
    "qwen2_sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    # Mistral with a head size (24) other than hidden / heads (16) and a window of 6.
    "mistral": ("mistral", dict(head_dim=24, sliding_window=6, num_key_value_heads=1)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_loss_and_save_match_transformers(variant, tmp_path):
    family, overrides = VARIANTS[variant]
    model = make_model(seed=len(variant), family=family, **overrides)
    model_dir = tmp_path / "hf"
    model.save_pretrained(model_dir, safe_serialization=True)
    input_ids = random_ids(seed=1)

    expected_logits, expected_loss = hf_forward(model, input_ids)
    save_dir = tmp_path / "saved"
    logits, loss = ftrain_forward(model_dir, input_ids, tmp_path, save_dir)

    assert max_difference(logits, expected_logits) < 1e-4
    assert loss.shape == ()
    assert abs(loss.item() - expected_loss.item()) < 1e-4
    check_saved_directory(family, model, model_dir, save_dir, input_ids, logits)


def test_settings_that_matter_change_the_logits(tmp_path):
    """The variants above would not catch a setting that is ignored if it made no
    difference at this size: check that each one changes transformers' logits."""
    input_ids = random_ids(seed=1)
    for variant in ("llama3_rope", "linear_rope", "dynamic_rope", "qwen2_sliding", "mistral"):
        family, overrides = VARIANTS[variant]
        model = make_model(seed=0, family=family, **overrides)
        plain = dict(overrides, rope_parameters=None, sliding_window=None, use_sliding_window=False)
        if "rope_parameters" in overrides:
            plain["rope_parameters"] = dict(rope_type="default", rope_theta=overrides["rope_parameters"]["rope_theta"])
        reference = make_model(seed=0, family=family, **plain)
        reference.load_state_dict(model.state_dict())
        difference = max_difference(hf_forward(model, input_ids)[0], hf_forward(reference, input_ids)[0])
        assert difference > 1e-2, variant


def test_transformers_4_spelling_of_rope_settings(tmp_path):
    """config.json as transformers 4 wrote it: rope_theta beside rope_scaling, whose
    type may be spelled "type"."""
    model = make_model(seed=5, rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=20000.0))
    model_dir = tmp_path / "hf"
    model.save_pretrained(model_dir, safe_serialization=True)
    config = json.loads((model_dir / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_theta"] = 20000.0
    config["rope_scaling"] = {"type": "linear", "factor": 4.0}
    (model_dir / "config.json").write_text(json.dumps(config))

    input_ids = random_ids(seed=3, batch=2)
    expected_logits, expected_loss = hf_forward(model, input_ids)
    save_dir = tmp_path / "saved"
    logits, loss = ftrain_forward(model_dir, input_ids, tmp_path, save_dir)
    assert max_difference(logits, expected_logits) < 1e-4
    assert abs(loss.item() - expected_loss.item()) < 1e-4

    # Both spellings are written, so readers of either version agree.
    saved = json.loads((save_dir / "config.json").read_text())
    assert saved["rope_theta"] == 20000.0
    assert saved["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert saved["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 20000.0}
    assert saved["architectures"] == ["LlamaForCausalLM"]
    check_saved_directory("llama", model, model_dir, save_dir, input_ids, logits)


def test_sharded_unprefixed_and_old_checkpoints(tmp_path):
    model = make_model(seed=11)
    input_ids = random_ids(seed=2, batch=2, length=10)
    expected_logits, expected_loss = hf_forward(model, input_ids)

    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert not (sharded / "model.safetensors").exists()
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 2
    logits, loss = ftrain_forward(sharded, input_ids, tmp_path)
    assert max_difference(logits, expected_logits) < 1e-4
    assert abs(loss.item() - expected_loss.item()) < 1e-4

    # Older transformers saved each layer's rotary inv_freq buffer; it is ignored.
    old = tmp_path / "old"
    model.save_pretrained(old, safe_serialization=True)
    state = load_file(str(old / "model.safetensors"))
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    for layer in range(2):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    state["model.rotary_emb.inv_freq"] = inv_freq.clone()
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    logits, _ = ftrain_forward(old, input_ids, tmp_path)
    assert max_difference(logits, expected_logits) < 1e-4

    # LlamaModel's layout: no "model." prefix; a tied config has no head to miss.
    tied = make_model(seed=12, tie_word_embeddings=True)
    base = tmp_path / "base"
    tied.model.save_pretrained(base, safe_serialization=True)
    with safe_open(str(base / "model.safetensors"), "pt") as saved:
        assert not any(name.startswith("model.") for name in saved.keys())
    logits, _ = ftrain_forward(base, input_ids, tmp_path)
    assert max_difference(logits, hf_forward(tied, input_ids)[0]) < 1e-4


def padded(rows, length, side):
    ids = torch.zeros(len(rows), length, dtype=torch.int64)
    mask = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_padded_batch_matches_unpadded_rows(family, side, tmp_path):
    overrides = dict(sliding_window=7) if family == "mistral" else dict()
    model = make_model(seed=21, family=family, **overrides)
    model_dir = tmp_path / "hf"
    model.save_pretrained(model_dir, safe_serialization=True)
    lengths = [LENGTH, 9, 15, 1]
    rows = [random_ids(seed=30 + i, batch=1, length=n)[0] for i, n in enumerate(lengths)]
    input_ids, attention_mask = padded(rows, LENGTH, side)

    logits, loss = ftrain_forward(model_dir, input_ids, tmp_path, attention_mask=attention_mask)
    assert torch.isfinite(logits).all()
    for i, row in enumerate(rows):
        alone, _ = ftrain_forward(model_dir, row.unsqueeze(0), tmp_path)
        real = attention_mask[i].bool()
        assert max_difference(logits[i][real], alone[0]) < 1e-4, f"row {i}"
        expected, _ = hf_forward(model, row.unsqueeze(0))
        assert max_difference(alone[0], expected[0]) < 1e-4, f"row {i}"

    # transformers numbers positions 0..T-1 whatever the padding unless told otherwise;
    # ftrain counts real tokens, which is the same for right padding.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) if side == "left" else None
    expected_logits, expected_loss = hf_forward(model, input_ids, attention_mask, position_ids)
    real = attention_mask.bool()
    assert max_difference(logits[real], expected_logits[real]) < 1e-4
    assert abs(loss.item() - expected_loss.item()) < 1e-4


def test_init_matches_transformers_statistics(tmp_path):
    config = make_config("llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2, vocab_size=500,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, pad_token_id=3,
                         initializer_range=0.02)
    config_dir = tmp_path / "config"
    config.save_pretrained(config_dir)
    run(LLAMA_INIT, config_dir / "config.json", 1234, tmp_path / "init")
    run(LLAMA_INIT, config_dir / "config.json", 1234, tmp_path / "again")
    run(LLAMA_INIT, config_dir / "config.json", 99, tmp_path / "other")

    ours = LlamaForCausalLM.from_pretrained(tmp_path / "init")
    torch.manual_seed(0)
    reference = dict(LlamaForCausalLM(config).named_parameters())

    for name, parameter in ours.named_parameters():
        expected = reference[name].detach()
        mine = parameter.detach()
        assert mine.shape == expected.shape, name
        if expected.std() == 0:  # biases and norms are constants
            assert torch.equal(mine, expected), name
            continue
        if name == "model.embed_tokens.weight":  # the padding row is zero in both
            assert torch.equal(mine[3], torch.zeros_like(mine[3])) and torch.equal(expected[3], mine[3])
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
