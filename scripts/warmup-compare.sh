#!/bin/sh
# Warm-up placements compared after SFT alone (docs/results/training.md, "Where to call"):
# warm-up data from GSM8K train problems 1000-1199 with commands placed at random or by the
# models' own log-probs, LoRA SFT of the stock 0.5B on each, then the tag policy on a held-out
# slice of the training pool (GSM8K train 7000-7039), greedy and at t = 0.7.
#
#   scripts/warmup-compare.sh data PLACEMENT    # random | unsure | gap (gap reads the LLM)
#   scripts/warmup-compare.sh data-self PLACEMENT   # the same from the SLM's own solutions
#   scripts/warmup-compare.sh sft PLACEMENT     # LoRA SFT on 160 of its examples, export q8_0
#   scripts/warmup-compare.sh eval PLACEMENT [greedy|t07]   # tag policy, greedy and/or t=0.7
#   scripts/warmup-compare.sh stock             # the stock SLM alone on the same slice, greedy
#
# Everything lands under runs/warm/. Needs the fetched pair (`make models`) and
# ../shared/data/train/gsm8k-train.jsonl. Never an evaluation set: GSM8K's train split only.
set -eu
stage=${1:?stage: data, sft, eval or stock}
bin=${BIN:-target/release/relayllm}
train=${TRAIN:-../shared/data/train/gsm8k-train.jsonl}
out=runs/warm
threads=${THREADS:-2}
mkdir -p $out
heldout="--data $train --offset 7000 --limit ${HELDOUT_N:-40} --max-tokens 400 --concurrency 8 --threads $threads --no-progress"

case $stage in
data)
  p=${2:?placement}
  llm=""
  [ "$p" = gap ] && llm="--llm llm"
  $bin data warmup --problems "$train" --solutions "$train" --model slm $llm --placement "$p" \
    --offset 1000 --limit 200 --calls 0-2 --n-dist uniform:8-32 --max-len 400 --seed 0 \
    --threads "$threads" --no-progress --out $out/"$p".jsonl
  ;;
data-self)
  # The paper's way: solutions sampled from the SLM itself (2 per problem at t = 0.7, the
  # correct ones kept), so SFT teaches the command and not a new style. Resumes its samples
  # from runs/warm/self-PLACEMENT.samples/.
  p=${2:?placement}
  $bin data warmup --problems "$train" --sample-from slm --samples 2 --temperature 0.7 \
    --max-tokens 400 --concurrency 8 --model slm --placement "$p" --offset 1000 --limit 200 \
    --calls 0-2 --n-dist uniform:8-32 --max-len 600 --seed 0 --threads "$threads" \
    --no-progress --out $out/self-"$p".jsonl
  ;;
sft)
  p=${2:?placement}
  resume=""
  [ -d $out/sft-"$p" ] && resume=--resume
  $bin train sft --model slm --data $out/"$p".jsonl --out $out/sft-"$p" --limit 160 \
    --lora-rank 16 --lr 2e-4 --warmup-steps 4 --grad-accum 4 --save-every 10 \
    --threads "$threads" --seed 0 $resume
  $bin export --model slm --adapter $out/sft-"$p" --out $out/slm-"$p".gguf --dtype q8_0
  ;;
eval)
  p=${2:?placement}
  case ${3:-both} in
  greedy | both)
    $bin eval --slm $out/slm-"$p".gguf --llm llm --policy tag $heldout --out $out/eval-"$p"-greedy ;;
  esac
  case ${3:-both} in
  t07 | both)
    $bin eval --slm $out/slm-"$p".gguf --llm llm --policy tag $heldout --temperature 0.7 \
      --samples "${SAMPLES:-1}" --seed 0 --out $out/eval-"$p"-t07 ;;
  esac
  ;;
stock)
  $bin eval --slm slm --llm llm --policy slm-only $heldout --out $out/eval-stock-greedy
  ;;
*)
  echo "unknown stage $stage (data, sft, eval, stock)" >&2
  exit 2
  ;;
esac
