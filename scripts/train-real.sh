#!/bin/sh
# The real-pair training behind docs/results/training.md, stage by stage. Every stage is
# resumable (rerun the same line), and each reads what the previous one wrote under runs/train/.
#
#   scripts/train-real.sh warmup     # warm-up examples from math-train.jsonl's reference solutions
#   scripts/train-real.sh sft        # LoRA SFT of the 0.5B SLM on them, then export to GGUF
#   scripts/train-real.sh eval       # the warmed-up SLM with --policy tag on GSM8K (first $EVAL_N)
#   scripts/train-real.sh grpo       # GRPO steps on math-train prompts (--resume continues;
#                                    # GRPO_OUT, GRPO_STEPS, GRPO_MAX_TOKENS, GRPO_LR override)
#
# Needs the fetched pair (`make models`) and data (`relayllm fetch data`). LLM=http://host:port
# puts the LLM behind an OpenAI-compatible server (llama-server on the same 1.5B GGUF); the SLM
# is embedded. Training data is math-train.jsonl (MATH test minus MATH-500): never a benchmark
# we evaluate on.
set -eu
stage=${1:?stage: warmup, sft, eval or grpo}
bin=${BIN:-target/release/relayllm}
out=runs/train
llm=${LLM:-llm}
threads=${THREADS:-2}
mkdir -p $out

case $stage in
warmup)
  $bin data warmup --problems data/math-train.jsonl --solutions data/math-train.jsonl \
    --model slm --out $out/warmup.jsonl --limit "${WARMUP_PROBLEMS:-1500}" --max-len 320 --seed 0
  ;;
sft)
  resume=""
  [ -d $out/sft ] && resume=--resume
  $bin train sft --model slm --data $out/warmup.jsonl --out $out/sft --lora-rank 16 --lr 2e-4 \
    --warmup-steps 5 --grad-accum 4 --limit "${SFT_EXAMPLES:-240}" --save-every 10 \
    --threads "$threads" --seed 0 $resume
  $bin export --model slm --adapter $out/sft --out $out/slm-warmup.gguf --dtype q8_0
  $bin report $out/sft
  ;;
eval)
  $bin eval --slm $out/slm-warmup.gguf --llm "$llm" --data data/gsm8k.jsonl --policy tag \
    --limit "${EVAL_N:-100}" --max-tokens 1024 --no-progress --threads 1 \
    --out runs/gsm8k/tag-warmup
  ;;
grpo)
  resume=""
  grpo=${GRPO_OUT:-$out/grpo}
  [ -d "$grpo" ] && resume=--resume
  $bin train grpo --slm $out/slm-warmup.gguf --llm "$llm" --data data/math-train.jsonl \
    --out "$grpo" --group 4 --prompts-per-step 2 --steps "${GRPO_STEPS:-200}" \
    --max-tokens "${GRPO_MAX_TOKENS:-512}" --lr "${GRPO_LR:-5e-5}" --save-every 1 \
    --threads "$threads" $resume
  $bin report "$grpo"
  ;;
*)
  echo "unknown stage $stage (warmup, sft, eval, grpo)" >&2
  exit 2
  ;;
esac
