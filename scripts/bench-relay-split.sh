#!/usr/bin/env bash
# Relay overhead with the LLM on hardware of its own: the LLM is a llama-server pinned to the
# last core, the relay (SLM embedded) is pinned to the first core with one thread. Runs
# `bench relay` once per read-ahead setting per round, rounds interleaved so that drift in the
# machine hits every setting alike, and prints each run and the median overhead per setting.
#
#   scripts/bench-relay-split.sh [READ_AHEAD...]      (default: 0 16)
#
# Environment: RELAYLLM (binary), LLAMA_SERVER, LLM_GGUF, DATA (GSM8K jsonl), PROBLEMS (10),
# ROUNDS (3), PORT (8091), OUT (folder for the JSON reports; default a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."

RELAYLLM=${RELAYLLM:-target/release/relayllm}
LLAMA_SERVER=${LLAMA_SERVER:-third_party/llama.cpp/build/bin/llama-server}
LLM_GGUF=${LLM_GGUF:-${RELAYLLM_MODELS_DIR:-models}/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
if [ -z "${DATA:-}" ]; then
    for DATA in ../shared/data/benchmarks/gsm8k.jsonl data/gsm8k.jsonl; do [ -e "$DATA" ] && break; done
fi
PROBLEMS=${PROBLEMS:-10}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-8091}
OUT=${OUT:-$(mktemp -d)}
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(0 16)

for f in "$RELAYLLM" "$LLAMA_SERVER" "$LLM_GGUF" "$DATA"; do
    [ -e "$f" ] || { echo "missing: $f (make models llama-cpp builds and fetches them)" >&2; exit 1; }
done
cores=$(nproc)
[ "$cores" -ge 2 ] || { echo "needs 2 cores, found $cores" >&2; exit 1; }
llm_core=$((cores - 1))
mkdir -p "$OUT"

taskset -c "$llm_core" "$LLAMA_SERVER" -m "$LLM_GGUF" -t 1 --port "$PORT" -c 4096 --parallel 1 \
    >"$OUT/llama-server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { echo "llama-server exited; see $OUT/llama-server.log" >&2; exit 1; }
    sleep 1
done

echo "LLM: llama-server on core $llm_core (1 thread); relay on core 0 (1 thread); $PROBLEMS problems x $ROUNDS rounds; reports in $OUT"
for round in $(seq "$ROUNDS"); do
    for ra in "${SETTINGS[@]}"; do
        report="$OUT/ra$ra-round$round.json"
        taskset -c 0 "$RELAYLLM" bench relay --llm "http://127.0.0.1:$PORT" --threads 1 \
            --data "$DATA" --problems "$PROBLEMS" --policy confidence --threshold 0.3 \
            --call-tokens 12 --cooldown 8 --max-calls 8 --llm-read-ahead "$ra" --json \
            >"$report" 2>"$OUT/ra$ra-round$round.log"
        python3 - "$report" "$ra" "$round" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["measured"]
print(f"read-ahead {sys.argv[2]:>3} round {sys.argv[3]}: overhead {r['overhead_ratio']:.3f} "
      f"(relay {r['relay_wall_s']:.1f}s vs {r['decoded_alone_s']:.1f}s), calls {100*r['call_ratio']:.1f}%, "
      f"LLM {m['llm_in_relay_s']:.1f}/{m['llm_alone_s']:.1f}s, SLM {m['slm_in_relay_s']:.1f}/{m['slm_alone_s']:.1f}s, "
      f"loop {m['loop_s']:.1f}s, LLM prefill {r['llm_prefill_tokens']} ({r['llm_read_ahead_tokens']} ahead)")
EOF
    done
done

python3 - "$OUT" "${SETTINGS[@]}" <<'EOF'
import json, statistics, sys, glob
out = sys.argv[1]
for ra in sys.argv[2:]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/ra{ra}-round*.json"))]
    ratios = sorted(r["overhead_ratio"] for r in runs)
    calls = statistics.median(r["call_ratio"] for r in runs)
    print(f"read-ahead {ra:>3}: overhead median {statistics.median(ratios):.3f} "
          f"(runs {', '.join(f'{x:.3f}' for x in ratios)}), call ratio {100*calls:.1f}%")
EOF
