#!/usr/bin/env bash
# The main job on the real pair: a few GSM8K problems answered by the relay (the SLM writes,
# the LLM takes over where the SLM is unsure), with the LLM's spans marked, the stats of
# each answer, and whether it is right.
# Usage: scripts/demo.sh BIN GSM8K_JSONL N [extra relay flags...]
set -euo pipefail
BIN="$1"; DATA="$2"; N="${3:-3}"; shift 3 || true
[[ -f "$DATA" ]] || { echo "error: no GSM8K file at $DATA (run: $BIN fetch data)" >&2; exit 1; }
# The stock SLM never learned <call>n</call>, so the demo uses the training-free policy.
POLICY=(--policy confidence --threshold "${DEMO_THRESHOLD:-0.4}" --call-tokens 12 --cooldown 8 --max-calls 8)
if [[ -t 1 ]]; then MARK=color; else MARK=brackets; fi
out="$(mktemp)"; trap 'rm -f "$out"' EXIT
right=0; total=0
while IFS=$'\t' read -r problem answer; do
    problem="$(printf '%b' "$problem")"
    echo "================================================================"
    echo "$problem"
    echo "---------------------------------------------------------------- (LLM text: $([[ $MARK == color ]] && echo yellow || echo '[[...]]'))"
    "$BIN" relay --slm slm --llm llm --chat --max-tokens 512 "${POLICY[@]}" --mark "$MARK" "$@" \
        --prompt "$problem" | tee "$out"
    answer_text="$(sed -e '$d' -e 's/\x1b\[[0-9;]*m//g' -e 's/\[\[//g; s/\]\]//g' "$out")"
    verdict="$("$BIN" grade --mode verify --gold "$answer" --pred "$answer_text")"
    total=$((total + 1)); [[ "$verdict" == true ]] && right=$((right + 1))
    echo "gold answer: $answer · graded: $verdict"
done < <(python3 - "$DATA" "$N" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    for i, line in enumerate(f):
        if i >= n:
            break
        row = json.loads(line)
        problem = row["problem"]
        if "\\boxed" not in problem:  # GSM8K lacks the instruction the other benchmarks carry
            problem += "\nPlease reason step by step, and put your final answer within \\boxed{}."
        # One line per problem: escape backslashes, newlines and tabs for `read`/printf %b.
        esc = problem.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", " ")
        print(f"{esc}\t{row['answer']}")
PY
)
echo "================================================================"
echo "demo: $right of $total answers right"
