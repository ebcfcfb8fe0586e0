#!/usr/bin/env bash
# relay-train's LoRA step against PyTorch on the same CPU (issue 15): the same GGUF, text, token
# count, LoRA rank and threads. Each round runs one process each of `relayllm bench train`,
# scripts/bench_train_torch.py in f32 and the same in bf16, one after another, rounds
# interleaved so that drift in the machine hits every side alike; then it prints a table of
# medians over the rounds and the ratio of relayllm's tokens/s to each PyTorch run's.
# `make bench-train` runs it with the PyTorch environment it installs.
#
#   scripts/bench-train.sh BIN GGUF [TOKENS=600] [THREADS=2] [ROUNDS=3]
#
# Environment: PYTHON (for the PyTorch side; default third_party/venv-bench-train/bin/python),
# RUNS (timed steps per process after one warm-up; default 3), DTYPES (PyTorch base dtypes;
# default "f32 bf16"), OUT (default runs/bench-train: results.jsonl, one JSON line per process,
# and each process's stderr).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    echo "usage: $0 BIN GGUF [TOKENS=600] [THREADS=2] [ROUNDS=3]" >&2
    exit 2
fi
BIN=$1
GGUF=$2
TOKENS=${3:-600}
THREADS=${4:-2}
ROUNDS=${5:-3}
RUNS=${RUNS:-3}
DTYPES=${DTYPES:-f32 bf16}
PYTHON=${PYTHON:-third_party/venv-bench-train/bin/python}
OUT=${OUT:-runs/bench-train}
TEXT=scripts/bench-train-text.txt
RANK=16

[ -x "$BIN" ] || { echo "bench-train: relayllm binary not found: $BIN (make build)" >&2; exit 1; }
[ -f "$GGUF" ] || { echo "bench-train: model not found: $GGUF (make models)" >&2; exit 1; }
[ -x "$PYTHON" ] || { echo "bench-train: python for the PyTorch side not found: $PYTHON (make bench-train installs it)" >&2; exit 1; }
if ! help=$("$BIN" bench train --help 2>&1); then
    echo "bench-train: $BIN has no working \`bench train\` subcommand, so there is nothing to compare:" >&2
    echo "$help" | head -5 >&2
    exit 1
fi
# The same number of timed steps on both sides, where relayllm takes the flag.
bin_runs=()
if grep -q -- '--runs' <<<"$help"; then bin_runs=(--runs "$RUNS"); fi

# PyTorch's OpenMP threads wait for each other at every op: on cores shared with another job
# (a cargo build) its times grow several-fold and erratically (10x at 64 tokens in one test).
read -r load _ </proc/loadavg
if python3 -c 'import sys; sys.exit(float(sys.argv[1]) < 0.5)' "$load"; then
    echo "bench-train: warning: load average is $load; other work on these cores skews the PyTorch times most" >&2
fi
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
echo "bench-train: $GGUF, $TOKENS tokens, $THREADS threads, LoRA r$RANK, $ROUNDS rounds x $RUNS steps; raw results in $RESULTS"

# Runs one process; its single JSON line goes to results.jsonl, its stderr to a log.
run() {
    local label=$1 round=$2
    shift 2
    local log=$OUT/$label-round$round.log line
    if ! line=$("$@" 2>"$log" | tail -n 1); then
        echo "bench-train: $label failed in round $round; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    if ! python3 -c 'import json,sys; json.loads(sys.argv[1])' "$line" 2>/dev/null; then
        echo "bench-train: $label printed no JSON in round $round (got: ${line:-nothing}); see $log" >&2
        exit 1
    fi
    echo "$line" >>"$RESULTS"
    python3 -c "$SHOW" "$line" "$round" "$label"
}
# One progress line per process.
SHOW=$(cat <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
step = r.get("step_s") or r["tokens"] / r["tokens_per_s"]
loss = r.get("loss")
print(f"  round {sys.argv[2]} {sys.argv[3]:<13} {step:7.2f} s/step  {r['tokens_per_s']:6.1f} tok/s  "
      f"peak RSS {r['peak_rss_mib']:6.0f} MiB" + (f"  loss {loss:.4f}" if loss is not None else ""))
EOF
)

for round in $(seq "$ROUNDS"); do
    run relayllm "$round" "$BIN" bench train --model "$GGUF" --tokens "$TOKENS" --threads "$THREADS" \
        --lora-rank "$RANK" --text-file "$TEXT" "${bin_runs[@]}" --json
    for dtype in $DTYPES; do
        run "pytorch-$dtype" "$round" "$PYTHON" scripts/bench_train_torch.py --model "$GGUF" \
            --text-file "$TEXT" --tokens "$TOKENS" --threads "$THREADS" --runs "$RUNS" \
            --lora-rank "$RANK" --dtype "$dtype" --json
    done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r.get("impl") or "relayllm", []).append(r)

def med(rs, key):
    vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None

def fmt(v, spec):
    return format(v, spec) if v is not None else "-"

summary = {}
for impl, rs in by.items():
    step = med(rs, "step_s")
    if step is None and med(rs, "tokens_per_s"):
        step = rs[0]["tokens"] / med(rs, "tokens_per_s")
    summary[impl] = {
        "n": len(rs), "step_s": step, "forward_s": med(rs, "forward_s"), "backward_s": med(rs, "backward_s"),
        "optimizer_s": med(rs, "optimizer_s"), "tokens_per_s": rs[0]["tokens"] / step if step else None,
        "peak_rss_mib": med(rs, "peak_rss_mib"),
    }

print()
print("| impl | runs | s/step | forward s | backward s | optimizer s | tokens/s | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for impl, s in summary.items():
    print(f"| {impl} | {s['n']} | {fmt(s['step_s'], '.2f')} | {fmt(s['forward_s'], '.2f')} | "
          f"{fmt(s['backward_s'], '.2f')} | {fmt(s['optimizer_s'], '.3f')} | {fmt(s['tokens_per_s'], '.1f')} | "
          f"{fmt(s['peak_rss_mib'], '.0f')} |")
ours = next((s for impl, s in summary.items() if not impl.startswith("pytorch")), None)
print()
for ref in ("pytorch-f32", "pytorch-bf16"):
    if ours and ref in summary and ours["tokens_per_s"] and summary[ref]["tokens_per_s"]:
        print(f"relayllm tokens/s / {ref}: {ours['tokens_per_s'] / summary[ref]['tokens_per_s']:.2f}x "
              f"(peak RSS {ours['peak_rss_mib'] / summary[ref]['peak_rss_mib']:.2f}x)")
torch_rows = [r for r in rows if str(r.get("impl", "")).startswith("pytorch")]
if torch_rows:
    v = torch_rows[0].get("versions", {})
    print(f"PyTorch side: torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
          f"CPU kernels {torch_rows[0].get('cpu_capability')}, bf16 matmul {torch_rows[0].get('bf16_matmul')}")
EOF
