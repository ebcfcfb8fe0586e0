#!/usr/bin/env python3
"""Agreement between our `verify` grader and HF math-verify (test-time tool only).

  # make rewritten forms of the benchmark gold answers (equivalent and not):
  python scripts/grader_agreement.py rewrites
      -> crates/relay-grader/tests/corpus/rewrites.jsonl, each pair labelled with the verdicts
         of math-verify and mathruler (so `cargo test` checks agreement without Python)

  # grade JSONL of {"gold", "pred"} with both graders; print the rate and disagreements
  # (eval result files, {"gold", "response", ...}, and folders of them work too):
  python scripts/grader_agreement.py check crates/relay-grader/tests/corpus/rewrites.jsonl runs/

Our side runs `relayllm grade --mode verify --jsonl FILE` (lines come back with "correct");
until the CLI is built, or with --cmd, it runs the crate's `grade_jsonl` example, which has
the same contract. The reference is `verify(parse("\\boxed{" + gold + "}"), parse(pred))`
(with --mode mathruler: `mathruler.grader.grade_answer` on the last box).

Needs `pip install math-verify` (and `mathruler pylatexenc tqdm` for --mode mathruler and for
labelling rewrites: mathruler does not declare those two); never a runtime
dependency of relayllm.
"""
import argparse
import collections
import glob
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "data", "benchmarks")
REWRITES = os.path.join(ROOT, "crates", "relay-grader", "tests", "corpus", "rewrites.jsonl")


# ----------------------------------------------------------------------------------------
# Rewrites of gold answers
# ----------------------------------------------------------------------------------------

INT_RE = re.compile(r"^-?\d+$")
DEC_RE = re.compile(r"^-?\d+\.\d+$")
FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")


def _int_forms(n):
    eq = [str(n), f"{n}.0", f"x = {n}", f"\\frac{{{2 * n}}}{{2}}", f"{n}\\text{{ units}}", f"{{{n}}}"]
    if abs(n) >= 1000:
        eq.append(f"{n:,}")
    neq = [str(n + 1), str(n - 1), f"{n}.5", str(n * 10)]
    if n != 0:
        neq.append(str(-n))
    return eq, neq


def _frac_forms(sign, p, q):
    s = "-" if sign else ""
    v = (-1 if sign else 1) * p / q
    eq = [f"{s}{p}/{q}", f"{s}\\dfrac{{{p}}}{{{q}}}", f"{v:.6f}", f"{s}\\frac{{{2 * p}}}{{{2 * q}}}",
          f"{s}\\frac{p}{q}" if p < 10 and q < 10 else f"{s}\\frac{{{p}}}{{{q}}}"]
    neq = [f"{s}\\frac{{{q}}}{{{p}}}" if p != q and p != 0 else f"{s}{p + 1}",
           f"{s}\\frac{{{p + 1}}}{{{q}}}", f"{v:.2f}", f"{'' if sign else '-'}\\frac{{{p}}}{{{q}}}"]
    return eq, neq


def _general_forms(a):
    # Spaces go, except the one that ends a command name (`\\pi r` must not become `\\pir`).
    squeezed = re.sub(r"(?<![\\a-zA-Z])\s+|(?<=[^a-zA-Z])\s+|\s+(?=[^a-zA-Z])", "", a)
    eq = [squeezed, a.replace("\\frac", "\\dfrac"), " ".join(a.split())]
    if a.startswith("(") and a.endswith(")"):
        eq.append("\\left" + a[:-1] + "\\right)")
    parts = [p.strip() for p in a.split(",")]
    if len(parts) > 1 and not any(c in a for c in "()[]{}"):
        eq.append(", ".join(reversed(parts)))  # a bare list is a set: order does not matter
    neq = [a + "+1", "-(" + a + ")", "2(" + a + ")"]
    m = re.search(r"\d", a)
    if m:
        d = int(m.group())
        neq.append(a[:m.start()] + str((d + 1) % 10) + a[m.end():])
    return eq, neq


def forms(gold):
    a = gold.strip()
    if a.startswith("$") and a.endswith("$") and len(a) > 2:
        a = a.strip("$").strip()
    if INT_RE.match(a):
        return _int_forms(int(a))
    m = FRAC_RE.match(a)
    if m:
        return _frac_forms(bool(m.group(1)), int(m.group(2)), int(m.group(3)))
    if DEC_RE.match(a):
        v = float(a)
        return [a + "0", a.rstrip("0") if "." in a else a, f"{v:.6f}"], [f"{v + 0.1:.4f}", f"{-v}", f"{v * 10}"]
    return _general_forms(a)


# Formatting a model may put around a correct answer. Three known ones are left out on purpose:
# `\\mathbf{..}`, `\\text{..}` around math, and a period inside the math, where math-verify
# fails to parse and we read the math; the corpus holds those as documented divergences.
FORMATS = [
    lambda s: s + "\\text{ cm}", lambda s: "\\$" + s, lambda s: s + "\\%", lambda s: "x = " + s,
    lambda s: s.replace("\\frac", "\\dfrac"), lambda s: "\\left(" + s + "\\right)", lambda s: s + "^\\circ",
    lambda s: "{" + s + "}", lambda s: " " + s + " ", lambda s: s.replace(",", ", "),
    lambda s: s.replace("\\sqrt{", "\\sqrt {"), lambda s: s.replace("\\pi", "π"),
    lambda s: s.replace(" ", "\\ "), lambda s: s.replace("\\frac{", "\\tfrac{"),
    lambda s: s.replace("^{", "^"), lambda s: s + " \\text{ units}",
    lambda s: re.sub(r"(\d)(\d{3})$", r"\1,\2", s), lambda s: s.replace("\\left", "").replace("\\right", ""),
    lambda s: "-" + s,
]
FRAMES = [
    lambda x: "Thus, the answer is $\\boxed{" + x + "}$.",
    lambda x: "**Final Answer**\n\\[\n\\boxed{" + x + "}\n\\]",
    lambda x: "The final answer is $" + x + "$. I hope it is correct.",
    lambda x: "So we get \\(" + x + "\\).",
    lambda x: "Answer: $" + x + "$",
    lambda x: "We conclude $\\boxed{" + x + "}$ is the answer. Check: \\boxed{" + x + "}",
    lambda x: "First \\boxed{1}. Then, after fixing the error, \\boxed{" + x + "}",
]

TEMPLATES = [
    ("boxed", 6, lambda x: "Let's solve step by step.\n...\nTherefore, the final answer is $\\boxed{" + x + "}$."),
    ("final_answer", 2, lambda x: "We compute as above.\nThe final answer is $" + x + "$. I hope it is correct."),
    ("answer_is", 1, lambda x: "Putting it together, the answer is $" + x + "$."),
    ("bare", 1, lambda x: x),
]


def make_rewrites(out_path, seed, per_answer, label):
    rng = random.Random(seed)
    rows = []
    files = sorted(glob.glob(os.path.join(BENCH, "*.jsonl")))
    if not files:
        sys.exit(f"no benchmarks under {BENCH}")
    for path in files:
        name = os.path.basename(path)[:-6]
        answers = [json.loads(l)["answer"] for l in open(path) if l.strip()]
        if name == "gsm8k":  # mostly plain integers: a sample is enough
            answers = rng.sample(answers, 250)
        for gold in answers:
            gold = str(gold)
            eq, neq = forms(gold)
            picks = [(x, True) for x in rng.sample(eq, min(len(eq), per_answer))]
            picks += [(x, False) for x in rng.sample(neq, min(len(neq), max(1, per_answer // 2)))]
            for x, equivalent in picks:
                tname, _, tmpl = rng.choices(TEMPLATES, weights=[t[1] for t in TEMPLATES])[0]
                rows.append({"gold": gold, "pred": tmpl(x), "source": name,
                             "rewrite": "equivalent" if equivalent else "different", "template": tname})
            # One or two formatting changes in a varied frame (equivalent or not, as it falls).
            x = rng.choice(FORMATS)(gold.strip().strip("$").strip())
            if rng.random() < 0.3:
                x = rng.choice(FORMATS)(x)
            rows.append({"gold": gold, "pred": rng.choice(FRAMES)(x), "source": name,
                         "rewrite": "formatting", "template": "framed"})
            # The gold itself, and another problem's gold: real answer shapes, both verdicts.
            bare = gold.strip().strip("$").strip()
            other = rng.choice(answers).strip().strip("$").strip()
            rows.append({"gold": gold, "pred": TEMPLATES[0][2](bare), "source": name,
                         "rewrite": "verbatim", "template": "boxed"})
            if other != bare:
                rows.append({"gold": gold, "pred": TEMPLATES[0][2](other), "source": name,
                             "rewrite": "other_answer", "template": "boxed"})
    if label:
        # Record both reference verdicts so the Rust test suite can check agreement offline.
        refs = {"math_verify": reference("verify"), "mathruler": reference("mathruler")}
        for i, r in enumerate(rows):
            for key, ref in refs.items():
                r[key] = ref(r["gold"], r["pred"])
            if (i + 1) % 1000 == 0:
                print(f"  labelled {i + 1}/{len(rows)}", file=sys.stderr)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {os.path.relpath(out_path, ROOT)}")


# ----------------------------------------------------------------------------------------
# Agreement check
# ----------------------------------------------------------------------------------------

def reference(mode):
    if mode == "verify":
        from math_verify import parse, verify

        def ref(gold, pred):
            try:
                return bool(verify(parse("\\boxed{" + gold + "}"), parse(pred)))
            except Exception:
                return False
        return ref
    from mathruler.grader import extract_boxed_content, grade_answer

    def ref(gold, pred):
        if "\\boxed{" in pred:
            ans = extract_boxed_content(pred)
        else:
            # Our convention: a bare answer is graded as written; prose without a box has no
            # answer ("None", what mathruler's extraction returns).
            words = re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}",
                               re.sub(r"\\(?:begin|end)\{[^}]*\}", "", pred))
            bare = 0 < len(pred.strip()) <= 200 and all(
                w in ("sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi") for w in words)
            ans = pred.strip() if bare else "None"
        try:
            return bool(grade_answer(ans, gold))
        except Exception:
            return False
    return ref


def our_command(mode, path, cmd):
    if cmd:
        return shlex.split(cmd) + ["--mode", mode, "--jsonl", path]
    candidates = [shutil.which("relayllm")] + [os.path.join(ROOT, "target", p, "relayllm") for p in ("release", "debug")]
    for exe in filter(None, candidates):
        if not os.path.exists(exe):
            continue
        probe = subprocess.run([exe, "grade", "--help"], capture_output=True, text=True)
        if probe.returncode == 0:  # a build that has the `grade` command
            return [exe, "grade", "--mode", mode, "--jsonl", path]
    return ["cargo", "run", "-q", "--release", "-p", "relay-grader", "--example", "grade_jsonl", "--",
            "--mode", mode, "--jsonl", path]


def run_ours(mode, rows, cmd):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for r in rows:
            f.write(json.dumps({"gold": r["gold"], "pred": r["pred"]}, ensure_ascii=False) + "\n")
        path = f.name
    try:
        argv = our_command(mode, path, cmd)
        print("ours:", " ".join(shlex.quote(a) for a in argv), file=sys.stderr)
        res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"our grader failed ({res.returncode}):\n{res.stderr[-2000:]}")
        out = [json.loads(l) for l in res.stdout.splitlines() if l.strip()]
    finally:
        os.unlink(path)
    if len(out) != len(rows):
        sys.exit(f"our grader returned {len(out)} lines for {len(rows)} inputs")
    return [bool(o["correct"]) for o in out]


def load_pairs(paths):
    """{gold, pred} lines; eval result lines ({gold, response, ...}) work too, and a folder
    means every *.jsonl under it."""
    rows = []
    for path in paths:
        files = sorted(glob.glob(os.path.join(path, "**", "*.jsonl"), recursive=True)) if os.path.isdir(path) else [path]
        for f in files:
            for line in open(f):
                if not line.strip():
                    continue
                r = json.loads(line)
                pred = r.get("pred", r.get("response"))
                if not isinstance(r.get("gold"), str) or not isinstance(pred, str):
                    continue
                r["pred"] = pred
                r.setdefault("source", os.path.relpath(f, ROOT))
                rows.append(r)
    if not rows:
        sys.exit(f"no {{gold, pred}} pairs in {paths}")
    return rows


def check(paths, mode, cmd, show, report):
    rows = load_pairs(paths)
    ours = run_ours(mode, rows, cmd)
    ref = reference(mode)
    theirs = []
    for i, r in enumerate(rows):
        theirs.append(ref(r["gold"], r["pred"]))
        if (i + 1) % 500 == 0:
            print(f"  reference graded {i + 1}/{len(rows)}", file=sys.stderr)
    agree = sum(a == b for a, b in zip(ours, theirs))
    n = len(rows)
    print(f"\nagreement with {'math-verify' if mode == 'verify' else 'mathruler'}: "
          f"{agree}/{n} = {100 * agree / n:.2f}%")
    conf = collections.Counter((a, b) for a, b in zip(ours, theirs))
    print(f"  both true {conf[(True, True)]}, both false {conf[(False, False)]}, "
          f"only ours true {conf[(True, False)]}, only reference true {conf[(False, True)]}")
    for key in ("source", "rewrite", "template"):
        groups = collections.defaultdict(lambda: [0, 0])
        for r, a, b in zip(rows, ours, theirs):
            if key in r:
                g = groups[r[key]]
                g[0] += a == b
                g[1] += 1
        if groups:
            print(f"  by {key}: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(groups.items())))
    dis = [(r, a, b) for r, a, b in zip(rows, ours, theirs) if a != b]
    if dis:
        print(f"\n{len(dis)} disagreements (first {min(show, len(dis))}):")
        for r, a, b in dis[:show]:
            pred = r["pred"] if len(r["pred"]) < 160 else "…" + r["pred"][-160:]
            print(f"  ours={a!s:5} ref={b!s:5} gold={r['gold']!r}\n      pred={pred!r}")
    if report:
        with open(report, "w") as f:
            json.dump({"n": n, "agree": agree, "rate": agree / n,
                       "disagreements": [dict(r, ours=a, reference=b) for r, a, b in dis]}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rw = sub.add_parser("rewrites", help="write rewritten gold answers")
    rw.add_argument("--out", default=REWRITES)
    rw.add_argument("--seed", type=int, default=0)
    rw.add_argument("--per-answer", type=int, default=2, help="equivalent rewrites per answer")
    rw.add_argument("--no-label", action="store_true",
                    help="skip recording the math-verify and mathruler verdicts (needs both installed)")
    ck = sub.add_parser("check", help="agreement on a JSONL of {gold, pred}")
    ck.add_argument("files", nargs="*", default=[REWRITES],
                    help="JSONL files or folders of {gold, pred} (or eval results: {gold, response})")
    ck.add_argument("--mode", default="verify", choices=["verify", "mathruler"])
    ck.add_argument("--cmd", help="our grader command prefix (gets --mode M --jsonl FILE)")
    ck.add_argument("--show", type=int, default=40, help="disagreements to print")
    ck.add_argument("--report", help="write all disagreements here as JSON")
    a = ap.parse_args()
    if a.cmd == "rewrites":
        make_rewrites(a.out, a.seed, a.per_answer, not a.no_label)
    else:
        check(a.files, a.mode, a.cmd, a.show, a.report)


if __name__ == "__main__":
    main()
