#!/usr/bin/env bash
# GPU recipe for the default PICARD bundle on the realistic phantoms, at the official width.
#
# NOT RUN YET: written on a CPU-only session (2026-11-30) for a later session that gets a
# CUDA GPU; the shipped bundle 0.2.1-synthetic-realistic (as 0.2 and 0.1) was trained on a
# 2-core CPU at ngf = ndf = 8. Nothing here has been executed on a GPU: check the first part's
# log (iterations per minute, GPU memory) before relying on the part lengths below.
#
# Every part stays under 10 minutes of wall time and is resumable: checkpoints, history and
# the selections are kept under $OUT, and re-running a part continues where it stopped.
#
#   scripts/train_default_bundle_gpu.sh train-part    # repeat: each adds PART_MINUTES of training
#   scripts/train_default_bundle_gpu.sh select        # rule/p/threshold on validation (seeds 5000+),
#                                                     # also for the bundle to beat (COMPARE_WITH)
#   scripts/train_default_bundle_gpu.sh test          # picard-node evaluate on the test seeds 9000+
#   scripts/train_default_bundle_gpu.sh install       # card + copy to models/bundles/default,
#                                                     # only if it beat COMPARE_WITH on validation
#   scripts/train_default_bundle_gpu.sh all           # PARTS train parts, then the rest (several calls
#                                                     # of < 10 min each; run them one by one on a
#                                                     # machine with a per-command limit)
#
# Settings (environment): OUT (runs/default-gpu), PARTS (6), PART_MINUTES (8), NGF/NDF (32, the
# official width; 3.6 M generator parameters), BATCH (55, official), SPACING (1.0: the model's
# pixel size in mm; the shipped bundle is at 0.4 mm; window 64 / hole 32 px are then 64 / 32 mm,
# so a 5-30 mm mass fits in the hole -- at 0.4 mm the 12.8 mm hole sits inside a large mass and
# is completed as mass, see the README), STRIDE (5 px = 5 mm, a 5 mm mass), P_GRID (dropout p tried on
# validation: 0.5 0.25 0.1), DEVICE (cuda), COMPARE_WITH
# (models/bundles/default), INIT_FROM (empty: cold start; a bundle of the SAME width to
# warm-start, e.g. an earlier ngf-32 run's bundle), THREADS (CPU threads for the host side, 4).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
NODE=${NODE:-.venv/bin/picard-node}
OUT=${OUT:-runs/default-gpu}
PARTS=${PARTS:-6}
PART_MINUTES=${PART_MINUTES:-8}
NGF=${NGF:-32}
NDF=${NDF:-32}
BATCH=${BATCH:-55}
SPACING=${SPACING:-1.0}
STRIDE=${STRIDE:-5}
P_GRID=${P_GRID:-0.5 0.25 0.1}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-4}
COMPARE_WITH=${COMPARE_WITH:-models/bundles/default}
INIT_FROM=${INIT_FROM:-}
# the evaluation protocol of issue 10 (same seeds and shapes as the CPU figures)
EVAL=(--count 6 --seed 9000 --validation-count 6 --validation-seed 5000
      --slices 24 --rows 224 --cols 160 --m 10)

mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "no CUDA device visible: this recipe is for a GPU machine" >&2; exit 1; }

train_part() {
  local init=()
  if [[ -n "$INIT_FROM" && ! -f "$OUT/checkpoint.pt" ]]; then init=(--init-from "$INIT_FROM"); fi
  # --resume continues from $OUT/checkpoint.pt (a fresh run when there is none);
  # PART_MINUTES of training plus ~1 min making the 40 normal phantoms
  "$PY" scripts/train_default_bundle.py train --out "$OUT" --device "$DEVICE" \
    --ngf "$NGF" --ndf "$NDF" --batch-size "$BATCH" --stride "$STRIDE" --spacing "$SPACING" \
    --minutes "$PART_MINUTES" --threads "$THREADS" --resume "${init[@]}" \
    2>&1 | tee -a "$OUT/train.log"
}

select_rule() {
  # validation only (--count 0: no test volume is made or scored); --resume keeps a finished
  # selection, so a rerun after a timeout only redoes the unfinished bundle
  "$PY" scripts/train_default_bundle.py evaluate --out "$OUT" --device "$DEVICE" \
    --stride "$STRIDE" --threads "$THREADS" --count 0 --compare-with "$COMPARE_WITH" --resume \
    --p-grid $P_GRID \
    "${EVAL[@]:2}" 2>&1 | tee -a "$OUT/select.log"
}

test_run() {
  # the chosen rule/p/threshold go into a card first, so picard-node evaluate scores the test
  # seeds exactly as for the shipped bundle (same command, same seeds)
  "$PY" scripts/train_default_bundle.py choose --out "$OUT" 2>&1 | tee -a "$OUT/test.log"
  "$NODE" evaluate --model "$OUT/bundle_chosen" "${EVAL[@]}" --device "$DEVICE" \
    --threads "$THREADS" --json "$OUT/test.json" 2>&1 | tee -a "$OUT/test.log"
}

install() {
  "$PY" scripts/train_default_bundle.py install --out "$OUT" --test-json "$OUT/test.json" \
    --stride "$STRIDE" 2>&1 | tee -a "$OUT/install.log"
}

case "${1:-}" in
  train-part) train_part ;;
  select) select_rule ;;
  test) test_run ;;
  install) install ;;
  all)
    for _ in $(seq "$PARTS"); do train_part; done
    select_rule; test_run; install ;;
  *) sed -n '2,29p' "$0"; exit 2 ;;
esac
