#!/bin/sh
# The learned relay on the real pair (issue 16; docs/results/training.md, "The learned relay"):
# GRPO from a warm-up SLM on GSM8K train problems, run in chunks across sessions. Every stage
# resumes: rerun the same line.
#
#   scripts/learned-relay.sh filter   # the paper's pool filter (K samples per model), resumable
#   scripts/learned-relay.sh grpo     # GRPO steps (GRPO_STEPS total; --resume continues)
#   scripts/learned-relay.sh report   # curves and the step log's summary
#
# INIT is the warm-up SLM GRPO starts from (an exported GGUF: scripts/warmup-compare.sh sft
# writes runs/warm/slm-<placement>.gguf). POOL is the problems file GRPO samples from: the
# filter's --kept output once the filter has run, else GSM8K train problems 0-999 (the
# warm-up used 1000-1199, the held-out slice is 7000-7039; GSM8K test is never used).
set -eu
stage=${1:?stage: filter, grpo or report}
bin=${BIN:-target/release/relayllm}
train=${TRAIN:-../shared/data/train/gsm8k-train.jsonl}
threads=${THREADS:-2}
out=${GRPO_OUT:-runs/learned/grpo}
mkdir -p runs/learned runs/pool

case $stage in
filter)
  resume=""
  [ -s runs/pool/gsm8k-k4.jsonl ] && resume=--resume
  $bin data filter --data "$train" --slm slm --llm llm --samples 4 --limit "${FILTER_N:-1000}" \
    --max-tokens 400 --concurrency 8 --drop-slm-solved --threads "$threads" --no-progress \
    --out runs/pool/gsm8k-k4.jsonl --kept runs/pool/gsm8k-k4.kept.jsonl $resume
  ;;
grpo)
  init=${INIT:?INIT=runs/warm/slm-<placement>.gguf}
  pool=${POOL:-runs/pool/gsm8k-train-0-999.jsonl}
  [ -f "$pool" ] || head -1000 "$train" > "$pool"
  resume=""
  [ -d "$out" ] && resume=--resume
  $bin train grpo --slm "$init" --llm llm --data "$pool" --out "$out" --group 8 \
    --prompts-per-step 2 --steps "${GRPO_STEPS:-300}" --max-tokens 320 --temperature 1.0 \
    --reward difficulty --rho requested --kl-coef 0.01 --clip-low 0.2 --clip-high 0.3 \
    --lr "${GRPO_LR:-2e-5}" --save-every 1 --threads "$threads" --seed 0 $resume
  ;;
report)
  $bin report "$out"
  ;;
*)
  echo "unknown stage $stage (filter, grpo, report)" >&2
  exit 2
  ;;
esac
