"""The training loop a PyTorch user writes instead of ftrain: the Hugging Face
`transformers` model, torch.optim.AdamW, gradient clipping, one optimizer step per
micro-batch, reading the same rows of the same ftrain dataset (held in memory, so the
baseline pays nothing for data). bench/compare.py runs it beside ftrain with the same
shape, batch, sequence length, threads and optimizer settings.

    python bench/torch_loop.py --model DIR --data FILE --task causal_lm|sequence_classification
        --micro-batch-size B --steps N --threads T [--compile] [--device cpu|cuda] [--precision fp32|bf16]
        --out FILE.json

Writes {"step_times": [...], "startup_s": ..., "peak_device_bytes": ..., "losses": [...]}.
Start-up is measured from the start of this process (as the kernel records it) to the
start of the first step, as ftrain measures its own.
"""
import argparse
import json
import os
import time


def seconds_since_process_start():
    """Wall seconds since the kernel started this process (/proc/self/stat field 22)."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    started_ticks = int(fields[19])  # field 22 of the whole line
    with open("/proc/uptime") as uptime:
        now = float(uptime.read().split()[0])
    return now - started_ticks / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--task", required=True, choices=["causal_lm", "sequence_classification"])
    parser.add_argument("--micro-batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import h5py
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    device = torch.device(args.device)
    with h5py.File(args.data, "r") as f:
        split = f["train"]
        input_ids = torch.from_numpy(split["input_ids"][:].astype(np.int64))
        labels = torch.from_numpy(split["labels"][:].astype(np.int64)) if "labels" in split else None
        num_labels = int(f.attrs["num_labels"]) if "num_labels" in f.attrs else 0

    if args.task == "causal_lm":
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=num_labels, dtype=torch.float32)
    model.to(device).train()
    # Weight decay on matrices and embeddings only, as ftrain (and the HF Trainer) do.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999))

    def step_loss(ids, targets):
        if args.task == "causal_lm":
            return model(input_ids=ids, labels=ids).loss
        return model(input_ids=ids, labels=targets).loss

    train_step = step_loss
    if args.compile:
        train_step = torch.compile(step_loss)

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device.type, enabled=False))

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows = input_ids.shape[0]
    b = args.micro_batch_size
    step_times, losses = [], []
    startup = None
    for step in range(args.steps):
        start = time.perf_counter()
        if startup is None:
            startup = seconds_since_process_start()
        first = (step * b) % (rows - b + 1)
        ids = input_ids[first:first + b].to(device, non_blocking=True)
        targets = labels[first:first + b].to(device, non_blocking=True) if labels is not None else None
        with autocast:
            loss = train_step(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # one host synchronisation per step, as ftrain's logging
        synchronize()
        step_times.append(time.perf_counter() - start)

    peak_device = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    with open(args.out, "w") as out:
        json.dump({"step_times": step_times, "startup_s": startup, "peak_device_bytes": peak_device,
                   "losses": losses, "torch": torch.__version__, "transformers": transformers.__version__}, out)


if __name__ == "__main__":
    main()
