"""Sequence-to-sequence fine-tuning end to end: a random T5 v1.1 (gated GELU; its head
tied to the embedding, as transformers 5 saves it) learns to reverse word sequences, prepared by ftrain-prep
--task seq2seq with the repository's tiny GPT-2 tokenizer, under mpirun; and a T5 with
T5's own tokenizer (SentencePiece Unigram) from data to generated text.

Checked against independent references: the training loss against transformers' T5 on
the rows the step logged; the generated validation texts against transformers'
generate() (greedy and beam search) on the exported model, decoded by transformers'
tokenizer; ROUGE and BLEU against rouge-score and sacreBLEU on those texts; data-parallel
runs against one rank; layouts not supported yet refused by key.
"""
import json
import random
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from ftrain_jobs import PREP, SOURCE, assert_same_steps, records, run_ftrain, sample_rows, validation_of

sys.path.insert(0, str(SOURCE / "tests" / "data"))
from unigram_models import corpus, write_t5_directory  # noqa: E402

TOKENIZER = SOURCE / "configs" / "models" / "tiny-gpt2"
WORDS = "red green blue cat dog fish one two three river stone".split()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    rng = random.Random(0)
    with open(root / "pairs.jsonl", "w") as f:
        for _ in range(320):
            source = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
            f.write(json.dumps({"source": source, "target": " ".join(reversed(source.split()))}) + "\n")
    data = root / "reverse.h5"
    subprocess.run([str(PREP), "--task", "seq2seq", "-i", str(root / "pairs.jsonl"), "-t", str(TOKENIZER),
                    "-o", str(data), "--seq-len", "16", "--target-len", "16", "--validation-fraction", "0.1"],
                   check=True, capture_output=True, timeout=120)
    torch.manual_seed(0)
    config = T5Config(vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=0)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(root / "t5", safe_serialization=True)
    # transformers 5 ties T5's head whatever the config says: a file with its own
    # lm_head.weight (T5 v1.1 as published) is written by hand.
    untied = root / "t5_untied"
    untied.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "embed_tokens" not in k}
    state["lm_head.weight"] = torch.randn(config.vocab_size, config.d_model) * config.d_model ** -0.5
    save_file(state, str(untied / "model.safetensors"), metadata={"format": "pt"})
    (untied / "config.json").write_text(json.dumps({**model.config.to_dict(), "tie_word_embeddings": False}))
    return {"root": root, "data": data, "model": root / "t5", "untied": untied}


def args(ws, run_dir, **overrides):
    options = {
        "run.dir": run_dir, "model.path": ws["model"], "data.path": ws["data"], "data.micro_batch_size": 8,
        "train.global_batch_size": 16, "train.steps": 60, "train.eval_every": 0, "train.eval_samples": 0,
        "train.test_split": "", "optim.lr": 3e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 5,
        "checkpoint.every": 0, "checkpoint.keep_best": "false", "run.log_samples": "true",
    }
    options.update(overrides)
    return [f"--{key}={value}" for key, value in options.items()]


def split_rows(path, split):
    with h5py.File(path, "r") as f:
        return {name: f[split][name][()] for name in f[split]}


def hf_loss(model_dir, rows, which):
    model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    labels = torch.from_numpy(rows["labels"][which].astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(rows["input_ids"][which].astype(np.int64)),
                    attention_mask=torch.from_numpy(rows["attention_mask"][which].astype(np.int64)), labels=labels)
    return out.loss.item()


def transformers_texts(model_dir, rows, num_beams):
    """What transformers generates for the split's sources, decoded by its tokenizer
    (special tokens skipped), and the references (the labels) decoded alike."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER / "tokenizer.json"), eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        generated = model.generate(input_ids=torch.from_numpy(rows["input_ids"].astype(np.int64)),
                                   attention_mask=torch.from_numpy(rows["attention_mask"].astype(np.int64)),
                                   max_new_tokens=16, num_beams=num_beams, do_sample=False)
    references = [[t for t in row if t != -100] for row in rows["labels"].tolist()]
    return (tokenizer.batch_decode(generated, skip_special_tokens=True),
            tokenizer.batch_decode(references, skip_special_tokens=True))


@pytest.fixture(scope="module")
def trained(workspace):
    run = workspace["root"] / "trained"
    run_ftrain(2, *args(workspace, run, **{"dist.zero": 1}), timeout=600)
    return run


def test_training_loss_is_transformers_loss(workspace):
    run = workspace["root"] / "untrained"
    run_ftrain(1, *args(workspace, run, **{"train.steps": 1, "optim.lr": 1e-30, "optim.min_lr": 0,
                                           "optim.warmup_steps": 0}))
    rows = split_rows(workspace["data"], "train")
    step_rows = sample_rows(run)[1]
    logged = [r for r in records(run) if r.get("step") == 1 and "loss" in r][0]
    assert logged["loss"] == pytest.approx(hf_loss(run / "final", rows, step_rows), rel=1e-5)


def test_generated_texts_and_scores_match_transformers(workspace, trained):
    from rouge_score import rouge_scorer
    import sacrebleu

    rows = split_rows(workspace["data"], "validation")
    predictions, references = transformers_texts(trained / "final", rows, num_beams=1)
    ours = json.loads((trained / "predictions-validation.json").read_text())
    assert [p["prediction"] for p in ours] == predictions
    assert [p["reference"] for p in ours] == references

    metrics = validation_of(trained)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert metrics[f"val_{key}"] == pytest.approx(100 * np.mean([s[key].fmeasure for s in scores]), abs=1e-9)
    assert metrics["val_bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)
    assert metrics["val_loss"] == pytest.approx(hf_loss(trained / "final", rows, slice(None)), rel=1e-4)
    # Reversing words is learnable: the model must get well beyond nothing.
    first = [r for r in records(trained) if r.get("step") == 1 and "loss" in r][0]["loss"]
    assert metrics["val_loss"] < first / 3
    assert metrics["val_rougeL"] > 30, metrics


def test_beam_search_evaluation_matches_transformers(workspace, trained):
    run = workspace["root"] / "beams"
    # Resume the trained model's weights as a starting point: one more step at a tiny rate.
    run_ftrain(1, *args(workspace, run, **{"model.path": trained / "final", "train.steps": 1, "optim.lr": 1e-30,
                                           "optim.min_lr": 0, "optim.warmup_steps": 0, "train.eval_num_beams": 3}))
    predictions, _ = transformers_texts(run / "final", split_rows(workspace["data"], "validation"), num_beams=3)
    ours = json.loads((run / "predictions-validation.json").read_text())
    assert [p["prediction"] for p in ours] == predictions


@pytest.mark.parametrize("tp,dp,zero", [(1, 2, 0), (1, 2, 2), (1, 2, 3), (2, 1, 0), (2, 2, 1), (2, 2, 3)])
def test_layouts_match_one_rank(workspace, tp, dp, zero):
    """Data parallelism at every ZeRO stage and tensor parallelism (encoder, decoder and
    cross-attention split by heads, feed-forwards by width) train as one rank does."""
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false"}
    one = workspace["root"] / "one_rank"
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, **short))
    run = workspace["root"] / f"tp{tp}_dp{dp}_zero{zero}"
    run_ftrain(tp * dp, *args(workspace, run, **short, **{"dist.tp": tp, "dist.zero": zero}))
    assert_same_steps(one, run, 6)
    assert validation_of(run)["val_bleu"] == pytest.approx(validation_of(one)["val_bleu"], abs=1e-6)


@pytest.mark.parametrize("head,tp", [("tied", 1), ("untied", 1), ("tied", 2)])
def test_zero3_gathers_one_block_at_a_time_and_generates_as_one_rank(workspace, head, tp):
    """At ZeRO-3 T5's encoder and decoder blocks are units of their own, gathered one at a
    time (dist.prefetch = false); the shared embedding and an untied head are sharded by rows
    and never gathered whole (dist/streamed_vocab.h), under tensor parallelism too, which
    leaves them whole in every part; the root holds the final norms and each stack's
    relative position bias, which every block reads. Bookkeeping, so computed: besides the
    shards, the parameters held at once are the root and the largest block, never the
    whole model nor the embedding. Beam-search evaluation, whose decoding steps gather the
    blocks and stream the embedding and head on every rank, writes what one rank writes."""
    from safetensors.numpy import load_file
    dp = 2
    model = workspace["model" if head == "tied" else "untied"]
    config = json.loads((model / "config.json").read_text())
    vocab, width = config["vocab_size"], config["d_model"]
    units = {}
    for name, tensor in load_file(model / "model.safetensors").items():
        parts = name.split(".")
        if parts[-2] in ("shared", "embed_tokens", "lm_head"):
            continue  # the streamed matrices, counted below
        in_block = parts[0] in ("encoder", "decoder") and parts[1] == "block"
        unit = f"{parts[0]}{parts[2]}" if in_block and "relative_attention_bias" not in name else "root"
        # Tensor parallelism splits attention by heads and feed-forwards by width; the
        # layer norms stay whole.
        split = "layer_norm" not in name
        units[unit] = units.get(unit, 0) + (tensor.size // tp if split else tensor.size)
    padded = {unit: -(-n // dp) * dp for unit, n in units.items()}
    blocks = [n for unit, n in padded.items() if unit != "root"]
    assert len(blocks) == 4
    # shared.weight and an untied lm_head.weight: ceil(V / dp) whole rows per rank each
    matrices = 1 if config["tie_word_embeddings"] else 2
    assert matrices == (1 if head == "tied" else 2)
    shards = sum(padded.values()) // dp + matrices * -(-vocab // dp) * width
    options = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false",
               "train.eval_num_beams": 3, "train.eval_samples": 8, "model.path": model}
    one, sharded = workspace["root"] / f"beams_one_{head}", workspace["root"] / f"beams_zero3_{head}_tp{tp}"
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, **options))
    run_ftrain(tp * dp, *args(workspace, sharded, **options, **{"dist.zero": 3, "dist.prefetch": "false",
                                                                  "dist.tp": tp}))
    assert_same_steps(one, sharded, 6)
    read = [json.loads((run / "predictions-validation.json").read_text()) for run in (one, sharded)]
    assert read[0] == read[1] and len(read[0]) == 8
    [record] = [r for r in records(sharded) if "memory" in r]
    assert len(record["memory"]) == tp * dp
    for entry in record["memory"]:
        assert entry["parameter_bytes"] == 4 * (shards + padded["root"] + max(blocks))
    gathered = padded["root"] + max(blocks)
    assert gathered < vocab * width  # less than the embedding alone
    assert gathered < (sum(padded.values()) + matrices * vocab * width) / 4  # far from whole


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_zero3_loads_and_draws_each_shard_as_one_rank(workspace, init):
    """At ZeRO-3 each rank reads from the file (or draws, from the seed) only the elements
    of its shards, block by block; the model it trains is the one one rank loads whole."""
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false", "model.init": init}
    one, sharded = workspace["root"] / f"{init}_one", workspace["root"] / f"{init}_zero3_dp2"
    run_ftrain(1, *args(workspace, one, **short))
    run_ftrain(2, *args(workspace, sharded, **short, **{"dist.zero": 3}))
    assert_same_steps(one, sharded, 6)


def test_dropout_is_the_same_under_tensor_parallelism(workspace):
    """Hashed dropout on attention probabilities and feed-forward units draws, on each
    rank, its heads' and units' part of the one-rank mask."""
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false", "model.dropout": 0.2}
    one, split = workspace["root"] / "dropout_one", workspace["root"] / "dropout_tp2"
    run_ftrain(1, *args(workspace, one, **short))
    run_ftrain(2, *args(workspace, split, **short, **{"dist.tp": 2}))
    assert_same_steps(one, split, 6)


@pytest.mark.parametrize("tp,dp,zero", [(1, 2, 3), (2, 1, 0)])
def test_sharded_exports_stream_the_same_model(workspace, tp, dp, zero):
    """At ZeRO-3 and under tensor parallelism final/ is written tensor by tensor from the
    shards and parts: the same weights as one rank's, and transformers loads them."""
    from safetensors.torch import load_file
    short = {"train.steps": 4, "optim.warmup_steps": 2, "run.log_samples": "false", "train.eval_samples": 8}
    one, sharded = workspace["root"] / "export_one", workspace["root"] / f"export_tp{tp}_dp{dp}_zero{zero}"
    if not (one / "final").exists():
        run_ftrain(1, *args(workspace, one, **short))
    run_ftrain(tp * dp, *args(workspace, sharded, **short, **{"dist.tp": tp, "dist.zero": zero}))
    a, b = load_file(str(one / "final" / "model.safetensors")), load_file(str(sharded / "final" / "model.safetensors"))
    assert sorted(a) == sorted(b) and "shared.weight" in a
    for name in a:
        # Adam normalises gradients: a last-bit difference of summation order moves a few
        # near-zero-gradient weights by up to ~lr x 1e-2 in 4 steps.
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)
    T5ForConditionalGeneration.from_pretrained(sharded / "final")


@pytest.mark.parametrize("tp,dp,zero", [(1, 1, 0), (1, 2, 3), (2, 1, 0)])
def test_activation_checkpointing_trains_the_same(workspace, tp, dp, zero):
    """Each encoder and decoder block recomputed in the backward pass, with dropout on (the
    masks must be drawn again the same): the losses, gradient norms and final weights of
    the same layout without checkpointing. The blocks' reads (the position bias, the
    encoder's output) get their gradients from the recomputed blocks."""
    from safetensors.numpy import load_file
    short = {"train.steps": 6, "run.log_samples": "false", "model.dropout": 0.1, "train.eval_samples": 8,
             "dist.tp": tp, "dist.zero": zero}
    runs = {}
    for checkpointing in ("false", "true"):
        runs[checkpointing] = workspace["root"] / f"ac_{checkpointing}_tp{tp}_dp{dp}_zero{zero}"
        run_ftrain(tp * dp, *args(workspace, runs[checkpointing], **short,
                                  **{"train.activation_checkpointing": checkpointing}))
    assert_same_steps(runs["false"], runs["true"], 6, loss_rel=1e-6, grad_norm_rel=1e-5)
    a, b = (load_file(runs[c] / "final" / "model.safetensors") for c in ("false", "true"))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_follows_fp32(workspace, precision):
    """T5 under CPU autocast (the attention's position bias, the streamed embedding and
    head at ZeRO-3 on two ranks, the loss scale for fp16) follows one fp32 rank closely,
    not exactly."""
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false"}
    one = workspace["root"] / "one_rank"
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, **short))
    run = workspace["root"] / f"precision_{precision}_zero3"
    # T5's logits are large at the start: a scale of 2^16 overflows fp16 in the first step.
    run_ftrain(2, *args(workspace, run, **short, **{"train.precision": precision, "dist.zero": 3,
                                                    "train.loss_scale": 1024, "train.eval_samples": 8}))
    expected = {r["step"]: r for r in records(one) if "loss" in r}
    got = {r["step"]: r for r in records(run) if "loss" in r}
    assert sorted(got) == list(range(1, 7))
    for step in got:
        assert got[step]["skipped"] is False, f"step {step}"
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=2e-2), f"step {step}"
        assert got[step]["grad_norm"] == pytest.approx(expected[step]["grad_norm"], rel=5e-2), f"step {step}"
    assert any(got[step]["loss"] != expected[step]["loss"] for step in got), "autocast changed nothing"
    # Evaluation generates under autocast too, scoring the streamed head window by window.
    assert len(json.loads((run / "predictions-validation.json").read_text())) == 8
    assert np.isfinite(validation_of(run)["val_loss"])


def test_dynamic_padding_changes_nothing_but_the_width(workspace):
    """Sources cut by attention and targets by their last label: the same steps as full rows."""
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false"}
    one = workspace["root"] / "one_rank"
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, **short))
    full = workspace["root"] / "full_width"
    run_ftrain(1, *args(workspace, full, **short, **{"data.dynamic_padding": "false"}))
    assert_same_steps(one, full, 6, loss_rel=1e-6, grad_norm_rel=1e-5)


def test_a_checkpoint_resumes_on_another_layout(workspace):
    """Saved at tp 2 after step 3, resumed at dp 2 ZeRO-3: steps 4-6 as one rank runs them."""
    short = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false"}
    one = workspace["root"] / "one_rank"
    if not (one / "metrics.jsonl").exists():
        run_ftrain(1, *args(workspace, one, **short))
    run = workspace["root"] / "resharded"
    run_ftrain(2, *args(workspace, run, **short, **{"dist.tp": 2, "checkpoint.every": 3, "checkpoint.keep": 2}))
    checkpoint = run / "checkpoints" / "step_00000003"
    assert checkpoint.is_dir()
    resumed = workspace["root"] / "resumed"
    run_ftrain(2, *args(workspace, resumed, **short, **{"dist.zero": 3, "run.resume": checkpoint}))
    assert_same_steps(one, resumed, [4, 5, 6])


def test_a_zero3_checkpoint_resumes_on_another_layout_and_exports(workspace):
    """Saved at dp 2 ZeRO-3 after step 3 (the embedding as row shards), resumed at tp 2:
    steps 4-6 as one rank runs them. ftrain-ckpt exports that checkpoint as the weights
    one rank's checkpoint of step 3 holds, and transformers loads it."""
    from safetensors.torch import load_file
    saving = {"train.steps": 6, "checkpoint.export_hf": "false", "run.log_samples": "false",
              "checkpoint.every": 3, "checkpoint.keep": 2}
    one, run = workspace["root"] / "saved_one", workspace["root"] / "saved_zero3"
    run_ftrain(1, *args(workspace, one, **saving))
    run_ftrain(2, *args(workspace, run, **saving, **{"dist.zero": 3}))
    resumed = workspace["root"] / "resumed_tp2"
    run_ftrain(2, *args(workspace, resumed, **saving, **{"dist.tp": 2,
                                                         "run.resume": run / "checkpoints" / "step_00000003"}))
    assert_same_steps(one, resumed, [4, 5, 6])

    exported = {}
    for name, source in (("one", one), ("zero3", run)):
        out = workspace["root"] / f"ckpt_export_{name}"
        subprocess.run([str(PREP.parent / "ftrain-ckpt"), "export", str(source / "checkpoints" / "step_00000003"),
                        str(out), "--force"], check=True, capture_output=True, timeout=120)
        exported[name] = load_file(str(out / "model.safetensors"))
    assert sorted(exported["one"]) == sorted(exported["zero3"]) and "shared.weight" in exported["one"]
    for name, value in exported["one"].items():
        torch.testing.assert_close(exported["zero3"][name], value, rtol=1e-3, atol=1e-4)
    T5ForConditionalGeneration.from_pretrained(workspace["root"] / "ckpt_export_zero3")


def test_sequence_parallelism_is_refused(workspace):
    result = run_ftrain(2, *args(workspace, workspace["root"] / "refused",
                                 **{"dist.tp": 2, "dist.sequence_parallel": "true"}), check=False)
    assert result.returncode != 0
    assert "dist.sequence_parallel: is not available for sequence-to-sequence models (T5)" in result.stdout + result.stderr


def test_t5_with_its_unigram_tokenizer_from_data_to_text(tmp_path):
    """ftrain-prep tokenizes with a T5 Unigram tokenizer (unigram_models.py), and the
    evaluation decodes what the model generates with it: the texts equal transformers'
    generate() decoded by transformers' tokenizer, the references its decoding of the labels."""
    tokenizer_dir = tmp_path / "t5_tokenizer"
    reference = write_t5_directory(tokenizer_dir)
    with open(tmp_path / "pairs.jsonl", "w", encoding="utf-8") as f:
        for line in corpus(random.Random(4), 48):
            f.write(json.dumps({"source": line, "target": " ".join(reversed(line.split()))}, ensure_ascii=False) + "\n")
    data = tmp_path / "pairs.h5"
    subprocess.run([str(PREP), "--task", "seq2seq", "-i", str(tmp_path / "pairs.jsonl"), "-t", str(tokenizer_dir),
                    "-o", str(data), "--seq-len", "24", "--target-len", "16", "--validation-fraction", "0.25",
                    "--source-prefix", "summarize: "], check=True, capture_output=True, timeout=120)
    torch.manual_seed(1)
    config = T5Config(vocab_size=reference.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5", safe_serialization=True)
    run = tmp_path / "run"
    run_ftrain(1, *args({"model": tmp_path / "t5", "data": data}, run, **{
        "train.steps": 40, "train.global_batch_size": 8, "run.log_samples": "false"}))

    rows = split_rows(data, "validation")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"), eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    sources = [tokenizer.decode([t for t in row if t != 0], skip_special_tokens=True) for row in rows["input_ids"]]
    assert all(source.startswith("summarize:") for source in sources), sources[:2]
    model = T5ForConditionalGeneration.from_pretrained(run / "final").eval()
    with torch.no_grad():
        generated = model.generate(input_ids=torch.from_numpy(rows["input_ids"].astype(np.int64)),
                                   attention_mask=torch.from_numpy(rows["attention_mask"].astype(np.int64)),
                                   max_new_tokens=16, num_beams=1, do_sample=False)
    predictions = tokenizer.batch_decode(generated, skip_special_tokens=True)
    references = tokenizer.batch_decode([[t for t in row if t != -100] for row in rows["labels"].tolist()],
                                        skip_special_tokens=True)
    ours = json.loads((run / "predictions-validation.json").read_text(encoding="utf-8"))
    assert [p["prediction"] for p in ours] == predictions
    assert [p["reference"] for p in ours] == references
    # Trained a little, the model writes different texts of several words: decoding is exercised.
    assert len(set(predictions)) > 3 and any(len(p.split()) > 1 for p in predictions), predictions
