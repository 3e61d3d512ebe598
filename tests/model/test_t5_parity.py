"""ftrain's T5 against transformers' T5ForConditionalGeneration.

Small random T5s in the three layouts that matter (T5 v1.0: relu, head tied to the
embedding and scaled; T5 v1.1 / flan-t5: gated GELU and an unscaled head, tied as
transformers 5 ties it; and an untied head stored as lm_head.weight) are saved with
transformers; the t5_forward tool loads each with ftrain's T5 and computes the encoder
output, the logits and the loss for padded sources and labels padded with -100. Its
export must load back in transformers to the same logits. Configs ftrain cannot build
are refused naming the key.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5ForConditionalGeneration

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD_DIR / "tests" / "model" / "t5_forward"
VOCAB = 96


def make_config(variant, decoder_layers=3):
    common = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=decoder_layers, num_heads=4,
                  relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if variant == "v1.0":
        return T5Config(feed_forward_proj="relu", **common)
    return T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, **common)


def randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0, 0.3)
    return model.eval()


def save_model(variant, directory, decoder_layers=3):
    model = randomise(T5ForConditionalGeneration(make_config(variant, decoder_layers)))
    if variant == "untied":
        # transformers 5 ties T5's head to its embedding whatever the config says; a file
        # with its own lm_head.weight (T5 v1.1 as published) is written by hand.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.3)
        directory.mkdir(parents=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if "embed_tokens" not in k}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config["tie_word_embeddings"] = False
        (directory / "config.json").write_text(json.dumps(config))
    else:
        model.save_pretrained(directory, safe_serialization=True)
    return model


def batch(seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, 27), generator=generator)  # longer than max_distance: far buckets
    mask = torch.ones_like(ids)
    mask[1, 19:] = 0
    mask[2, 7:] = 0
    ids[mask == 0] = 0
    labels = torch.randint(2, VOCAB, (3, 25), generator=generator)
    labels[0, 20:] = -100
    labels[2, 5:] = -100
    return ids, mask, labels


def run_tool(model_dir, inputs, tmp_path, save_dir=None, check=True):
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    command = [str(TOOL), str(model_dir), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")]
    if save_dir:
        command.append(str(save_dir))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
        return load_file(str(tmp_path / "out.safetensors"))
    return result


@pytest.mark.parametrize("variant", ["v1.0", "v1.1", "untied"])
def test_logits_loss_and_export_match_transformers(variant, tmp_path):
    model = save_model(variant, tmp_path / "hf")
    ids, mask, labels = batch(1)
    ours = run_tool(tmp_path / "hf", {"input_ids": ids, "attention_mask": mask, "labels": labels}, tmp_path,
                    save_dir=tmp_path / "export")
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    torch.testing.assert_close(ours["encoder_output"][real], reference.encoder_last_hidden_state[real],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["logits"], reference.logits, rtol=1e-4, atol=1e-4)
    assert ours["loss"].item() == pytest.approx(reference.loss.item(), rel=1e-5)

    if variant == "untied":
        exported = load_file(str(tmp_path / "export" / "model.safetensors"))
        torch.testing.assert_close(exported["lm_head.weight"], model.lm_head.weight.detach(), rtol=0, atol=0)
        assert json.loads((tmp_path / "export" / "config.json").read_text())["tie_word_embeddings"] is False
        return  # transformers 5 would tie the exported head back to the embedding
    back = T5ForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(again.logits, reference.logits, rtol=1e-4, atol=1e-4)


def test_decoder_input_ids_and_mask(tmp_path):
    model = save_model("v1.1", tmp_path / "hf")
    ids, mask, _ = batch(2)
    decoder_ids = torch.randint(2, VOCAB, (3, 9))
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[1, 6:] = 0
    ours = run_tool(tmp_path / "hf", {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
                                      "decoder_attention_mask": decoder_mask}, tmp_path)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                          decoder_attention_mask=decoder_mask).logits
    real = decoder_mask.bool()
    torch.testing.assert_close(ours["logits"][real], reference[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key,value,message", [
    ("feed_forward_proj", "gated-swish", "key 'feed_forward_proj' is 'gated-swish'; supported"),
    ("is_encoder_decoder", False, "key 'is_encoder_decoder' is false"),
    ("num_heads", 0, "key 'num_heads' must be positive"),
    ("decoder_start_token_id", 500, "key 'decoder_start_token_id' is 500, outside the vocabulary"),
])
def test_unsupported_configs_are_refused_by_key(tmp_path, key, value, message):
    save_model("v1.0", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config[key] = value
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    ids, mask, labels = batch(3)
    result = run_tool(tmp_path / "hf", {"input_ids": ids, "labels": labels}, tmp_path, check=False)
    assert result.returncode == 1
    assert str(tmp_path / "hf" / "config.json") in result.stderr and message in result.stderr, result.stderr


# ---- generation: greedy and beam search token for token ----

GENERATE = BUILD_DIR / "tests" / "model" / "t5_generate"


def run_generate(model_dir, inputs, tmp_path, max_new_tokens, num_beams, length_penalty, early_stopping):
    save_file(inputs, str(tmp_path / "gen_inputs.safetensors"))
    stopping = {False: "heuristic", True: "on_full", "never": "never"}[early_stopping]
    result = subprocess.run([str(GENERATE), str(model_dir), str(tmp_path / "gen_inputs.safetensors"),
                             str(tmp_path / "gen_out.safetensors"), str(max_new_tokens), str(num_beams),
                             str(length_penalty), stopping], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return load_file(str(tmp_path / "gen_out.safetensors"))["sequences"]


def with_likely_eos(model, ids, mask, strength=0.8):
    """Sharper next-token distributions (fewer near-ties), and an EOS embedding along the
    decoder's mean output, so that sequences and beams end at different lengths."""
    with torch.no_grad():
        model.shared.weight.mul_(2.0)
        decoded = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14)
        hidden = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoded,
                       output_hidden_states=True).decoder_hidden_states[-1]
        direction = hidden.reshape(-1, hidden.shape[-1]).mean(0)
        model.shared.weight[1] = strength * direction / direction.norm() * model.shared.weight.norm(dim=1).mean()
    return model


@pytest.mark.parametrize("variant,num_beams,length_penalty,early_stopping", [
    ("v1.0", 1, 1.0, False),
    ("v1.1", 1, 1.0, False),
    ("v1.0", 3, 1.0, False),
    ("v1.1", 4, 0.6, False),
    ("v1.0", 3, 2.0, True),
    ("v1.1", 3, 1.5, "never"),
    ("v1.0", 2, -0.5, "never"),
])
def test_generate_matches_transformers(tmp_path, variant, num_beams, length_penalty, early_stopping):
    # transformers' generation cache sizes the decoder's by num_layers: equal stacks here.
    ids, mask, _ = batch(4)
    ids, mask = ids[:, :12].contiguous(), mask[:, :12].contiguous()
    ids[mask == 0] = 0
    model = with_likely_eos(save_model(variant, tmp_path / "hf", decoder_layers=2), ids, mask)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, num_beams=num_beams,
                                  length_penalty=length_penalty, early_stopping=early_stopping, do_sample=False)
    if length_penalty <= 1.0:  # a larger penalty prefers the long beams in the end
        assert any(1 in row[1:-1] for row in expected.tolist()), "some sequences should end before max_new_tokens"
    ours = run_generate(tmp_path / "hf", {"input_ids": ids, "attention_mask": mask}, tmp_path, 14, num_beams,
                        length_penalty, early_stopping)
    assert ours.tolist() == expected.tolist()
