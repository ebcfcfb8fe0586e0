#!/usr/bin/env python3
"""Checks the confidence policy on the real pair (not part of `make test`: needs the models).

On the first --problems GSM8K problems, at each threshold: calls are served (above the lowest
threshold), answers carry a \\boxed{}, the trace adds up, and the call ratio grows with the
threshold. Prints a table; exits non-zero when a check fails.

    python3 scripts/check-relay-real.py --relayllm target/release/relayllm --data gsm8k.jsonl
"""
import argparse, json, subprocess, sys

INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relayllm", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--problems", type=int, default=2)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.6])
    ap.add_argument("--max-tokens", type=int, default=320)
    args = ap.parse_args()
    problems = []
    with open(args.data) as f:
        for line in f:
            p = json.loads(line)["problem"]
            problems.append(p if "\\boxed" in p else p + INSTRUCTION)
            if len(problems) == args.problems:
                break
    failures, ratios = [], []
    for th in args.thresholds:
        llm = total = served_calls = boxed = 0
        for i, problem in enumerate(problems):
            out = subprocess.run(
                [args.relayllm, "relay", "--slm", "slm", "--llm", "llm", "--chat", "--json",
                 "--policy", "confidence", "--threshold", str(th), "--call-tokens", "12",
                 "--cooldown", "8", "--max-calls", "8", "--max-tokens", str(args.max_tokens),
                 "--prompt", problem], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"relay failed: {out.stderr}")
            r = json.loads(out.stdout)
            t = r["trace"]
            llm += t["tokens"]["llm"]
            total += t["response_tokens"]
            served_calls += sum(1 for c in t["calls"] if c["served"] > 0)
            boxed += "\\boxed{" in r["text"]
            if sum(c["served"] for c in t["calls"]) != t["tokens"]["llm"]:
                failures.append(f"threshold {th} problem {i}: served tokens do not add up")
            if any(c.get("llm_error") for c in t["calls"]):
                failures.append(f"threshold {th} problem {i}: LLM errors {t['calls']}")
        ratio = llm / max(total, 1)
        ratios.append(ratio)
        print(f"threshold {th:4.2f}: call ratio {100 * ratio:5.1f}%  served calls {served_calls:2d}  "
              f"boxed answers {boxed}/{len(problems)}")
        if boxed == 0:
            failures.append(f"threshold {th}: no \\boxed{{}} answer")
        if th != min(args.thresholds) and served_calls == 0:
            failures.append(f"threshold {th}: no call served")
    if any(b <= a for a, b in zip(ratios, ratios[1:])):
        failures.append(f"call ratio does not grow with the threshold: {ratios}")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
