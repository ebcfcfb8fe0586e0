#!/usr/bin/env bash
# The main job on the real pair: a few GSM8K problems, answered and summarised.
# Usage: scripts/demo.sh BIN GSM8K_JSONL N
set -euo pipefail
BIN="$1"; DATA="$2"; N="${3:-3}"
[[ -f "$DATA" ]] || { echo "error: no GSM8K file at $DATA (run: $BIN fetch data)" >&2; exit 1; }
python3 - "$DATA" "$N" <<'PY' | while IFS= read -r -d '' problem; do
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    for i, line in enumerate(f):
        if i >= n:
            break
        problem = json.loads(line)["problem"]
        if "\\boxed" not in problem:  # GSM8K lacks the instruction the others carry
            problem += "\nPlease reason step by step, and put your final answer within \\boxed{}."
        sys.stdout.write(problem + "\0")
PY
    echo "================================================================"
    echo "$problem"
    echo "----------------------------------------------------------------"
    "$BIN" generate --model slm --chat --max-tokens 384 --prompt "$problem"
    echo
done
