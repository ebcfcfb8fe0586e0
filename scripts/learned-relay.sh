#!/bin/sh
# The learned relay on the real pair (issue 16; docs/results/training.md, "The learned relay"):
# a warm-up SFT, then GRPO on GSM8K train problems, run in chunks across sessions. A session
# keeps nothing but what is committed, so the warm-up adapter and the GRPO run's newest
# checkpoint and logs live in docs/results/training/learned-relay/, and every stage picks up
# from there. Every stage resumes: rerun the same line.
#
#   scripts/learned-relay.sh warmup   # warm-up data (unsure placement), LoRA SFT, the adapter
#   scripts/learned-relay.sh init     # the warmed-up SLM (q8_0 GGUF) from the committed adapter
#   scripts/learned-relay.sh grpo     # GRPO steps (GRPO_STEPS total; continues the committed run)
#   scripts/learned-relay.sh stash    # copy the run's newest checkpoint and logs to be committed
#   scripts/learned-relay.sh report   # curves and the step log's summary
#   scripts/learned-relay.sh filter   # the paper's pool filter (K samples per model), resumable
#
# The warm-up is section 6's `unsure` one (GSM8K train 1000-1199, reference solutions, 160
# examples, r16, 40 steps), whose SLM calls under greedy decoding. Its adapter is committed in
# f16 and the GRPO start model is always built from that file, so every session starts GRPO
# from the same weights.
#
# POOL is the problems file GRPO samples from: the filter's --kept output once the filter has
# run, else GSM8K train problems 0-999 (the warm-up used 1000-1199, the held-out slice is
# 7000-7039; GSM8K test is never used). The GRPO LoRA is rank 4 (GRPO_RANK): reinforcement
# learning's updates carry little information per step, low ranks match full fine-tuning there,
# and a rank-4 checkpoint with its Adam moments (26 MB) is small enough to commit between
# sessions, which a run of hundreds of steps on two cores needs. Its LR (GRPO_LR, 5e-5) is
# section 4's. Both are pinned by the run: --resume refuses other values.
set -eu
stage=${1:?stage: warmup, init, grpo, stash, report or filter}
bin=${BIN:-target/release/relayllm}
train=${TRAIN:-../shared/data/train/gsm8k-train.jsonl}
threads=${THREADS:-2}
out=${GRPO_OUT:-runs/learned/grpo}
kept=docs/results/training/learned-relay
init=runs/learned/slm-warm.gguf
mkdir -p runs/learned runs/pool $kept

case $stage in
warmup)
  scripts/warmup-compare.sh data unsure
  scripts/warmup-compare.sh sft unsure
  $bin export --adapter runs/warm/sft-unsure --out $kept/warmup-adapter --format adapter \
    --dtype f16
  cp runs/warm/unsure.summary.json runs/warm/sft-unsure/train_log.jsonl $kept/ 2>/dev/null || true
  "$0" init
  ;;
init)
  $bin export --model slm --adapter $kept/warmup-adapter --out $init --dtype q8_0
  ;;
filter)
  resume=""
  [ -s runs/pool/gsm8k-k4.jsonl ] && resume=--resume
  $bin data filter --data "$train" --slm slm --llm llm --samples 4 --limit "${FILTER_N:-1000}" \
    --max-tokens 400 --concurrency 8 --drop-slm-solved --threads "$threads" --no-progress \
    --out runs/pool/gsm8k-k4.jsonl --kept runs/pool/gsm8k-k4.kept.jsonl $resume
  ;;
grpo)
  [ -f $init ] || "$0" init
  pool=${POOL:-runs/pool/gsm8k-train-0-999.jsonl}
  [ -f "$pool" ] || head -1000 "$train" > "$pool"
  # A new session: the committed run is where this one continues.
  if [ ! -d "$out" ] && [ -d $kept/grpo ]; then
    mkdir -p "$out"
    cp $kept/grpo/* "$out"/
    [ -f "$out"/rollouts.jsonl.gz ] && gunzip "$out"/rollouts.jsonl.gz
  fi
  resume=""
  [ -d "$out" ] && resume=--resume
  $bin train grpo --slm $init --llm llm --data "$pool" --out "$out" --group 8 \
    --prompts-per-step 2 --steps "${GRPO_STEPS:-300}" --max-tokens 320 --temperature 1.0 \
    --reward difficulty --rho requested --kl-coef 0.01 --clip-low 0.2 --clip-high 0.3 \
    --lora-rank "${GRPO_RANK:-4}" --lr "${GRPO_LR:-5e-5}" --save-every 1 --threads "$threads" \
    --seed 0 $resume
  ;;
stash)
  # The newest checkpoint (with its optimizer moments: --resume needs them), the logs and the
  # curves (`report` draws them into the run folder).
  $bin report "$out"
  rm -rf $kept/grpo.new && mkdir -p $kept/grpo.new
  newest=$(ls "$out"/checkpoint-*.safetensors | tail -1)
  cp "$newest" $kept/grpo.new/
  for f in "$out"/*; do
    case $f in
    *.safetensors | *.png) ;;
    */rollouts.jsonl) gzip -c "$f" > $kept/grpo.new/rollouts.jsonl.gz ;;
    *) [ -f "$f" ] && cp "$f" $kept/grpo.new/ ;;
    esac
  done
  rm -rf $kept/grpo && mv $kept/grpo.new $kept/grpo
  ls -la $kept/grpo
  ;;
report)
  $bin report "$out"
  ;;
*)
  echo "unknown stage $stage (warmup, init, grpo, stash, report, filter)" >&2
  exit 2
  ;;
esac
