#!/bin/sh
# The real-pair evaluation behind docs/results/eval-*.md: SLM alone, LLM alone, and the
# training-free confidence policy at several thresholds, on the first N problems of a
# benchmark. Resumable: rerun the same line to go on after an interruption, or raise N to
# widen a finished run (answers already there are reused).
#
#   scripts/real-results.sh gsm8k 50 1024     # benchmark name, problems, response budget
#
# Runs go to runs/<bench>/<policy> (OUT=dir to change); the report (report.md, plot.svg, plot.png) to
# runs/<bench>/. Needs the fetched pair (`make models`). LLM=http://host:port puts the LLM
# behind an OpenAI-compatible server (e.g. llama-server on the same GGUF); the SLM is embedded.
set -eu
bench=${1:-gsm8k}
n=${2:-50}
max_tokens=${3:-1024}
bin=${BIN:-target/release/relayllm}
data=${DATA_DIR:-../shared/data/benchmarks}/$bench.jsonl
out=${OUT:-runs/$bench}
thresholds=${THRESHOLDS:-0.25 0.4 0.55}
llm=${LLM:-llm}
# EVAL_FLAGS: more flags for every run (e.g. --threads 1).
common="--data $data --limit $n --max-tokens $max_tokens --no-progress ${EVAL_FLAGS:-}"
relay="--call-tokens 12 --cooldown 8 --max-calls 8"

# The two ends first: the report needs them, and they are the cheaper runs.
$bin eval $common --policy slm-only --out $out/slm-only
$bin eval $common --llm "$llm" --policy llm-only --out $out/llm-only
for t in $thresholds; do
  $bin eval $common --llm "$llm" --policy confidence --threshold "$t" $relay --out "$out/confidence-$t"
done

dirs="$out/slm-only $out/llm-only"
for t in $thresholds; do dirs="$dirs $out/confidence-$t"; done
# shellcheck disable=SC2086
$bin report $dirs --out $out
