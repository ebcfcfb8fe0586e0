"""Build cases.jsonl: grader test cases whose `expected` comes from the Python graders.

Each case is written by hand below (gold, prediction, category); its expectation is what
the reference grader answers, run here:
  - mode "mathruler" follows `mathruler.grader.grade_answer(extract_boxed_content(pred), gold)`
    (a prediction without any `\\boxed{` is graded as written when it is a bare answer);
  - mode "verify" follows `math_verify.verify(parse("\\boxed{" + gold + "}"), parse(pred))`;
    multiple-choice cases add math-verify's StringExtractionConfig (letters A-E);
  - group "bare_as_written" follows math-verify on a bare prediction as written, inside `$...$`
    (from the bare text alone math-verify takes a `\\frac{a}{b}` or the last number in it);
    its prose predictions are parsed as they are.
Run: python crates/relay-grader/tests/corpus/make_cases.py  (needs `pip install math-verify mathruler pylatexenc tqdm`).
"""
import json
import os
import re
import sys

from math_verify import (ExprExtractionConfig, LatexExtractionConfig, StringExtractionConfig,
                         parse, verify)
from mathruler.grader import extract_boxed_content, grade_answer

HERE = os.path.dirname(os.path.abspath(__file__))


def looks_bare(text):
    """Our convention for a prediction without a box (relay_grader::extract::looks_like_bare_answer):
    a short text whose words outside LaTeX commands (and environment names) are single letters
    or function names."""
    t = text.strip()
    if not t or len(t) > 200:
        return False
    words = re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}", re.sub(r"\\(?:begin|end)\{[^}]*\}", "", t))
    return all(w in ("sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi") for w in words)


def mathruler(gold, pred):
    if "\\boxed{" in pred:
        ans = extract_boxed_content(pred)
    else:
        # A bare answer is graded as written; otherwise mathruler's extraction finds no box
        # and returns the string "None".
        ans = pred if looks_bare(pred) else "None"
    return bool(grade_answer(ans, gold))


def math_verify(gold, pred, mc=False):
    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    if mc:
        cfg = cfg + [StringExtractionConfig(strings=("A", "B", "C", "D", "E"))]
    g = parse("\\boxed{" + gold + "}", extraction_config=cfg)
    p = parse(pred, extraction_config=cfg)
    return bool(verify(g, p))


def B(x):
    """A short model-style response ending in a boxed answer."""
    return "Let me work through it step by step.\nSo the result is $\\boxed{" + x + "}$."


BOTH, MR, MV = ("mathruler", "verify"), ("mathruler",), ("verify",)

# (category, modes, [(gold, pred), ...])
GROUPS = [
    ("boxed_extraction", BOTH, [
        ("5", B("5")), ("5", "\\boxed{4} no wait \\boxed{5}"), ("5", "\\boxed{5} no wait \\boxed{4}"),
        ("\\frac{1}{2}", "answer: \\boxed{\\frac{1}{2}}"), ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}"),
        ("12", "The total is \\boxed{{12}}."), ("x^2", "so \\boxed{x^{2}} is it"), ("7", "\\boxed {7}"),
        ("3", "We find $\\boxed{3}$ and we are done."), ("3", "\\boxed{\\boxed{3}}"),
    ]),
    ("left_right", BOTH, [
        ("\\left( 3, \\frac{\\pi}{2} \\right)", B("(3, \\frac{\\pi}{2})")),
        ("(3,\\frac{\\pi}{2})", B("\\left(3,\\frac{\\pi}{2}\\right)")),
        ("\\left[ 1, 2 \\right]", B("[1,2]")), ("\\left|x\\right|", B("|x|")),
        ("\\left(\\frac{1}{2}\\right)^2", B("\\frac{1}{4}")),
    ]),
    ("inverse_space", BOTH, [
        ("10,\\!000", B("10000")), ("1,\\!234,\\!567", B("1234567")), ("10\\!000", B("10000")),
        ("5\\,000", B("5000")),
    ]),
    ("dfrac_tfrac", BOTH, [
        ("\\frac{3}{4}", B("\\dfrac{3}{4}")), ("\\frac{3}{4}", B("\\tfrac{3}{4}")),
        ("\\dfrac{\\sqrt{3}}{2}", B("\\frac{\\sqrt{3}}{2}")), ("\\tfrac12", B("\\frac{1}{2}")),
        ("\\frac{3}{4}", B("\\dfrac{4}{3}")),
    ]),
    ("degrees", BOTH, [
        ("90^\\circ", B("90")), ("90", B("90^\\circ")), ("45^{\\circ}", B("45")), ("30", B("30^{\\circ}")),
        ("30^\\circ", B("60^\\circ")), ("120", B("120 degrees")),
    ]),
    ("dollars", BOTH, [
        ("\\$18.90", B("18.90")), ("18.90", B("\\$18.90")), ("18", B("\\$18")), ("\\$5", B("5")),
        ("\\$42", B("\\$43")), ("18.9", B("18.90")),
    ]),
    ("percent", BOTH, [
        ("50\\%", B("50")), ("50", B("50\\%")), ("25\\%", B("0.25")), ("25", B("25 \\%")), ("12.5\\%", B("12.5")),
        ("40\\%", B("45\\%")), ("10\\%", B("10 percent")),
    ]),
    ("units_text", BOTH, [
        ("10", B("10\\text{ cm}")), ("10", B("10 \\text{ cm}")), ("5", B("5\\text{ hours}")),
        ("\\text{Evelyn}", B("\\text{Evelyn}")), ("\\text{Evelyn}", B("Evelyn")), ("12", B("12 \\mbox{ inches}")),
        ("20", B("20\\text{ meters}")), ("7", B("7 \\text{ days}")), ("3", B("3 \\text{ feet}")),
        ("100", B("100 \\text{ dollars}")), ("8", B("9\\text{ cm}")), ("\\text{east}", B("\\text{East}")),
        ("4", B("4\\text{ units}^2")),
    ]),
    ("assignment", BOTH, [
        ("5", B("x = 5")), ("x=5", B("5")), ("k = 3", B("3")), ("3", B("k=3")), ("5", B("y=5")),
        ("x=5", B("x=6")), ("-2", B("x = -2")), ("\\frac{1}{2}", B("a=\\frac{1}{2}")),
        ("x = 2", B("y = 2")),
    ]),
    ("frac_shorthand", BOTH, [
        ("\\frac12", B("\\frac{1}{2}")), ("\\frac{1}{2}", B("\\frac12")), ("\\frac34", B("0.75")),
        ("\\frac1{72}", B("\\frac{1}{72}")), ("\\frac{3}{2}", B("\\frac32")),
    ]),
    ("sqrt_shorthand", BOTH, [
        ("\\sqrt3", B("\\sqrt{3}")), ("2\\sqrt{3}", B("2\\sqrt3")), ("\\sqrt{12}", B("2\\sqrt{3}")),
        ("\\sqrt2", B("\\sqrt{3}")), ("\\frac{\\sqrt{3}}{3}", B("\\frac{1}{\\sqrt{3}}")),
    ]),
    ("a_slash_b", BOTH, [
        ("\\frac{3}{4}", B("3/4")), ("3/4", B("\\frac{3}{4}")), ("\\frac{3}{4}", "3/4"),
        ("\\frac{2}{3}", B("4/6")), ("\\frac{7}{2}", B("7/2")), ("\\frac{1}{3}", B("1/4")),
    ]),
    ("leading_dot", BOTH, [
        ("0.5", B(".5")), (".25", B("0.25")), ("0.75", B(".75")), ("\\frac{1}{2}", B(".5")),
        ("0.3", B(".4")),
    ]),
    ("spaces", BOTH, [
        ("x^2 + 2x + 1", B("x^2+2x+1")), ("2 \\pi", B("2\\pi")), ("(1, 2)", B("(1,2)")),
        ("3 \\sqrt{2}", B("3\\sqrt{2}")), ("a + b", B("b + a")),
    ]),
    ("tuple", BOTH, [
        ("(1,2,3)", B("(1,2,3)")), ("(1,2,3)", B("(3,2,1)")), ("(1,2,3)", B("(1,2)")),
        ("(2,-1)", B("\\left(2, -1\\right)")), ("(\\frac{1}{2}, 3)", B("(0.5, 3)")),
        ("(1,2)", B("[1,2]")), ("(0, 5)", B("(0, 5)")), ("(3, 4, 5)", B("(3,4,5)")),
        ("(1,8,19), (2,7,13), (4,5,7)", B("(1,8,19), (2,7,13), (4,5,7)")),
        ("(-1, 2)", B("(-1, 3)")),
    ]),
    ("interval", BOTH, [
        ("[1,2]", B("[1,2]")), ("[1,2]", B("(1,2)")), ("(1,2]", B("(1,2]")), ("(1,2]", B("[1,2)")),
        ("(-\\infty, 3)", B("(-\\infty,3)")), ("[2, \\infty)", B("[2,\\infty)")),
        ("(-\\infty, 0) \\cup (1, \\infty)", B("(-\\infty,0)\\cup(1,\\infty)")),
        ("(-\\infty, 0) \\cup (1, \\infty)", B("(1,\\infty)\\cup(-\\infty,0)")),
        ("[0, \\frac{1}{2}]", B("[0, 0.5]")), ("(-\\infty,3)", B("x<3")),
        ("[-2, 5)", B("[-2,5)")), ("(0,1)", B("(0,2)")),
    ]),
    ("unreduced_fraction", BOTH, [
        ("\\frac{1}{2}", B("\\frac{2}{4}")), ("\\frac{2}{4}", B("\\frac{1}{2}")), ("1/2", B("2/4")),
        ("\\frac{6}{8}", B("\\frac{6}{8}")), ("\\frac{3}{6}", B("0.5")), ("\\frac{10}{4}", B("\\frac{5}{2}")),
    ]),
    ("integer_vs_noninteger", BOTH, [
        ("2", B("2.5")), ("2", B("2.0")), ("2", B("2.00")), ("3", B("\\frac{6}{2}")), ("3", B("\\sqrt{9}")),
        ("1", B("0.999")), ("1", B("0.9999999")), ("10", B("10.0")), ("4", B("\\frac{9}{2}")),
        ("5", B("4.9999999")), ("100", B("1e2")),
    ]),
    ("symbolic", BOTH, [
        ("x^2+2x+1", B("(x+1)^2")), ("(x+1)^2", B("x^2+2x+1")), ("x^2+1", B("(x+1)^2")),
        ("p - q", B("-q + p")), ("2\\sqrt{2}", B("\\sqrt{8}")), ("\\frac{\\pi}{2}", B("\\frac{1}{2}\\pi")),
        ("\\pi", B("3.14")), ("\\frac{\\sqrt{3}}{2}", B("\\frac{\\sqrt{3}}{2}")), ("2^{10}", B("1024")),
        ("1024", B("2^{10}")), ("\\frac{1}{\\sqrt{2}}", B("\\frac{\\sqrt{2}}{2}")), ("6", B("3!")),
        ("10", B("\\binom{5}{2}")), ("3", B("\\log_2 8")), ("x(x+1)", B("x^2+x")), ("\\sin^2 x + \\cos^2 x", B("1")),
        ("a^2 - b^2", B("(a-b)(a+b)")), ("e^2", B("e^{2}")), ("\\frac{x}{2}", B("0.5x")),
        ("2x+3", B("3+2x")), ("\\sqrt{2}+\\sqrt{3}", B("\\sqrt{3}+\\sqrt{2}")), ("4\\pi", B("12.566")),
        ("\\frac{4}{3}\\pi", B("\\frac{4\\pi}{3}")), ("3\\sqrt{3}", B("\\sqrt{27}")),
    ]),
    ("thousands_separator", BOTH, [
        ("1000", B("1,000")), ("1,000", B("1000")), ("1234567", B("1,234,567")), ("70000", B("70,000")),
        ("1000", B("1{,}000")), ("1,000", B("1,001")), ("12,345.5", B("12345.5")),
        ("1000", "The final answer is 1,000."),
    ]),
    ("mixed_number", BOTH, [
        ("3\\frac{1}{2}", B("\\frac{7}{2}")), ("\\frac{7}{2}", B("3\\frac{1}{2}")), ("2\\frac{1}{4}", B("2.25")),
        ("7 3/4", B("31/4")),
    ]),
    ("fraction_decimal", BOTH, [
        ("\\frac{1}{3}", B("0.333333")), ("\\frac{1}{3}", B("0.33")), ("\\frac{1}{3}", B("0.3333333")),
        ("0.5", B("\\frac{1}{2}")), ("\\frac{2}{3}", B("0.666667")), ("\\frac{2}{3}", B("0.6667")),
        ("0.25", B("\\frac{1}{4}")), ("\\frac{1}{8}", B("0.125")), ("1.5", B("\\frac{3}{2}")),
        ("\\frac{5}{3}", B("1.666667")), ("0.1", B("\\frac{1}{10}")), ("\\frac{\\sqrt{3}}{2}", B("0.866025")),
        ("\\frac{\\sqrt{3}}{2}", B("0.866")), ("3.14159", B("\\pi")),
        ("\\frac{1}{128}", B("0.007812")), ("\\frac{1}{128}", B("0.007813")), ("\\frac{3}{128}", B("0.023438")),
        ("\\frac{439}{640}", B("0.685937")), ("\\frac{439}{640}", B("0.685938")), ("8\\%", B("8\\%+1")),
    ]),
    ("set_order", BOTH, [
        ("\\{1,2\\}", B("\\{2,1\\}")), ("\\{1,2\\}", B("2,1")), ("1, 2", B("2, 1")), ("-1, 2", B("2, -1")),
        ("\\{1,2,3\\}", B("\\{1,2\\}")), ("2, 3", B("3 \\text{ and } 2")), ("\\{-3, 3\\}", B("\\{3, -3\\}")),
        ("1, 2", B("1, 3")), ("\\frac{1}{2}, -3", B("-3, \\frac{1}{2}")), ("\\pm 2", B("2, -2")),
        ("5", B("5, 5")), ("1,2,3", B("3, 1, 2")),
    ]),
    ("matrix", BOTH, [
        ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", B("\\begin{pmatrix}1\\\\2\\end{pmatrix}")),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", B("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}")),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", B("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}")),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", B("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}")),
        ("\\begin{pmatrix}\\frac{1}{2}\\\\0\\end{pmatrix}", B("\\begin{pmatrix}0.5\\\\0\\end{pmatrix}")),
        ("\\begin{pmatrix} -1 \\\\ 3 \\end{pmatrix}", B("\\begin{pmatrix}-1\\\\3\\end{pmatrix}")),
        ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", B("\\begin{pmatrix}2\\\\1\\end{pmatrix}")),
    ]),
    ("inequality", BOTH, [
        ("x<3", B("3>x")), ("x<3", B("x<3")), ("x \\le 3", B("x \\leq 3")), ("x \\ge 2", B("2 \\le x")),
        ("x < 3", B("x \\le 3")), ("1 < x < 2", B("1<x<2")), ("x > 1", B("x > 2")), ("x<3", B("(-\\infty, 3)")),
        ("2x < 6", B("x < 3")), ("x \\geq -1", B("x \\ge -1")),
    ]),
    ("complex", BOTH, [
        ("3+4i", B("4i+3")), ("3+4i", B("3+4i")), ("3+4i", B("3-4i")), ("i", B("i")), ("-1", B("i^2")),
        ("1+i", B("i+1")), ("2i", B("2i")), ("\\frac{1}{2}+\\frac{\\sqrt{3}}{2}i", B("\\frac{1+i\\sqrt{3}}{2}")),
        ("5-2i", B("5 - 2i")), ("-i", B("\\frac{1}{i}")),
    ]),
    ("multiple_choice", BOTH, [
        ("C", B("C")), ("C", B("\\text{C}")), ("\\text{(C)}", B("C")), ("C", B("(C)")), ("C", B("D")),
        ("\\text{(B)}", B("\\text{(B)}")), ("A", B("\\textbf{(A)}")), ("E", B("\\text{(D)}")),
        ("C", "The answer is (C)."), ("C", "The answer is (B)."), ("B", "**Answer:** B"), ("D", "Answer: D"),
        ("A", "So the correct option is (A)"), ("\\text{(C)}", "Therefore the answer is C."),
        ("E", "The final answer is E. I hope it is correct."), ("B", "The answer is (A) or maybe not."),
    ]),
    ("final_answer_fallback", MV, [
        ("18", "The final answer is 18. I hope it is correct."),
        ("18", "The final answer is $18$. I hope it is correct."),
        ("\\frac{1}{2}", "The final answer is $\\frac{1}{2}$."),
        ("5", "so x = 5"), ("5", "Therefore, the answer is 5."), ("42", "Answer: 42"),
        ("7", "We get 3 apples and then 7 more."), ("18", "The final answer is 17. I hope it is correct."),
        ("\\frac{3}{4}", "The answer is $\\frac{3}{4}$"), ("12", "Thus we obtain $x = 12$."),
        ("0.5", "The probability is $\\frac{1}{2}$."), ("100", "The final answer is: 100"),
        ("25", "**Answer:** 25"), ("3", "I think it is 3"), ("-4", "The final answer is -4."),
        ("2", "There are 3 cases, so the answer is 2."), ("9", "The answer is \\(9\\)."),
        ("9", "So \\[ x = 9 \\]"),
    ]),
    ("joined_math_envs", MV, [
        ("$f(n)=n$, $g(n)=1$", "We compute as above.\nThe final answer is $f(n)=n$, $g(n)=1$. I hope it is correct."),
        ("$6764$,$10945$", "Putting it together, the answer is $6764$,$10945$."),
        ("1, 2", "The roots are $1$ and $2$."), ("\\{1, 2\\}", "The solutions are $x=1$ or $x=2$."),
        ("$\\frac{32}{9}$,$\\frac{1}{2}$", "The final answer is $\\frac{32}{9}$,$\\frac{1}{2}$. I hope it is correct."),
        ("3", "We get $x = 3$ and $y = 4$."),
    ]),
    ("base_subscript", MV, [
        ("40_9", B("40_9")), ("40_9", B("\\left(40_9\\right)")), ("4210_{5}", B("4210_{5}")), ("40_9", B("41_9")),
        ("2516_8", B("2516_8")),
    ]),
    ("extraction_fallback", MV, [
        ("(2,12) \\cup (12,102)", B("\\left((2,12) \\cup (12,102)\\right)")), ("(3,4]", "Answer: $x = (3,4]$"),
        ("17.5\\%", "So we get \\(\\left(17.5\\%\\right)\\)."), ("3, 5, 7", B("{3, 5, 7}")), ("13535", B("{13535\\%}")),
        ("y = -2x", B("y\\ =\\ -2x")), ("-1./3", B("-1./3")), ("\\frac{11}{2}", B("\\frac{11}{2} \\text{ units}\\text{ cm}")),
    ]),
    ("function_application", BOTH, [
        ("I(0) e^{-\\frac{t}{R C}}", B("-(I(0) e^{-\\frac{t}{R C}})")), ("I(0) e^{-\\frac{t}{R C}}", B("I(0)e^{-\\frac{t}{RC}}")),
        ("x(x+1)", B("x^2+x")), ("f(x)", B("f(x)")), ("f(2)", B("f(3)")),
    ]),
    ("named_symbols", BOTH, [
        ("\\hbar \\omega", B("\\hbar\\omega")), ("\\arcsin{1.3 \\sin{\\theta_w}}", B("\\arcsin{1.3\\sin{\\theta_w}}")),
        ("\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2}", B("\\frac{2}{3}E_{2}+\\frac{1}{3}E_{1}")), ("\\alpha+\\beta", B("\\beta+\\alpha")),
        ("\\alpha", B("\\beta")), ("y^{\\prime}+r y", B("ry+y^{\\prime}")),
    ]),
    ("floor_binomial", BOTH, [
        ("\\lfloor\\frac{2 n-1}{5}\\rfloor", B("\\lfloor\\frac{2n-1}{5}\\rfloor")),
        ("\\lfloor\\frac{2 n-1}{5}\\rfloor", B("2\\lfloor\\frac{2n-1}{5}\\rfloor")),
        ("\\lceil n / 2\\rceil+1", B("\\lceil n/2\\rceil+1")), ("\\binom{2n}{n}", B("\\binom{2n}{n}")),
        ("\\binom{2n}{n}", B("\\binom{2n}{n+1}")), ("\\frac{d !}{2 k(d-k) !}", B("\\frac{d!}{2k(d-k)!}")),
    ]),
    ("realistic_responses", BOTH, [
        ("18", "Janet sells 16 - 3 - 4 = 9 eggs.\n9 * 2 = 18.\n#### 18"),
        ("18", "She makes 9 * $2 = $18 every day.\nThe answer is: 18"),
        ("18", "So she makes \\boxed{\\$18} per day."), ("18", "\\boxed{18 \\text{ dollars}}"),
        ("18", "\\boxed{18.00}"), ("18", "She earns 18 dollars."),
        ("18", "```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```\nOutput: 18\n\nSo the answer is $18."),
        ("3", "It takes 2 + 1 = 3 bolts.\n\\[\\boxed{3}\\]"), ("70000", "The profit is $70,000.\n\n\\boxed{70000}"),
        ("70000", "The profit is \\$70,000."), ("70000", "Profit = 200000 - 130000 = 70000 dollars. The answer is 70000."),
        ("540", "He runs 3*3*60 = 540 meters a week.\n\nFinal answer: \\boxed{540}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "The polar coordinates are $\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}$."),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "The polar coordinates are $(3, \\pi/2)$."),
        ("\\frac{14}{3}", "$f(-2)+f(-1)+f(0) = \\frac{14}{3}$, so the answer is $\\boxed{\\frac{14}{3}}$."),
        ("\\text{Evelyn}", "Evelyn has the greatest average speed. $\\boxed{\\text{Evelyn}}$"),
        ("90^\\circ", "The angle is $\\boxed{90}$ degrees."),
        ("27", "The answer is $\\boxed{27}$. Hmm wait, let me re-check... yes \\boxed{27}."),
        ("\\frac{1}{2}", "Probability = 1/2"), ("\\frac{1}{2}", "The probability is 0.5."),
        ("3\\sqrt{13}", "The distance is $\\sqrt{117} = 3\\sqrt{13}$.\n\\boxed{3\\sqrt{13}}"),
        ("x^2+7x+10", "Expanding gives \\boxed{x^2 + 7x + 10}"), ("-2", "Solving, we get $x=-2$."),
        ("6", "The remainder is \\boxed{6}.\n\nNote: \\boxed{7} was wrong earlier"),
        ("12", "The total is 3 * 4"), ("7", "x - 5 = 2, so x = 7"),
    ]),
    ("garbage", BOTH, [
        ("5", ""), ("5", "I don't know"), ("5", "\\boxed{}"), ("5", "\\boxed{\\frac{}{}}"), ("5", B("((((")),
        ("5", B("\\frac{1}{0}")), ("0", B("0^{-1}")), ("5", B("2^{2^{2^{2^{2^{2}}}}}")), ("5", B("}{")),
        ("1", B("10^{10^{10}}")), ("5", B("\\sqrt{-1}")), ("5", B("\\text{five}")), ("\\text{None}", "None"),
        ("5", "\\boxed{5"),
    ]),
]


# Deliberate differences: (category, gold, pred, mode) -> why we answer otherwise.
DIVERGENCES = {
    ("boxed_extraction", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}", "verify"):
        "an unclosed box is a bare answer to us, graded as written (math-verify gives False for it "
        "inside `$...$`); math-verify takes the plain `\\frac{1}{2}` inside it, so it would credit "
        "`\\boxed{\\frac{1}{2}+1` too (see bare_as_written)",
    ("complex", "-1", B("i^2"), "verify"):
        "math-verify reads a lone `i` as a plain symbol, so i^2 stays i**2; we read it as the "
        "imaginary unit, which complex-number answers need",
    ("complex", "-i", B("\\frac{1}{i}"), "verify"):
        "same: 1/i is -i once `i` is the imaginary unit",
    ("named_symbols", "\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2}", B("\\frac{2}{3}E_{2}+\\frac{1}{3}E_{1}"), "verify"):
        "math-verify cannot parse `E_{1}` (E is Euler's number to it) and falls back to comparing the "
        "strings; we read E_1 as a symbol and the sum as commutative",
    ("garbage", "\\text{None}", "None", "mathruler"):
        "with no box, mathruler's extraction returns the string 'None', which then matches a gold "
        "of 'None'; we treat a response without a box as having no answer",
    ("multiple_choice", "C", "The answer is (C).", "verify"):
        "math-verify's letter patterns want whitespace right before the letter, so `(C)` is missed",
    ("multiple_choice", "A", "So the correct option is (A)", "verify"):
        "math-verify's letter patterns want whitespace right before the letter, so `(A)` is missed",
    ("multiple_choice", "\\text{(C)}", "Therefore the answer is C.", "verify"):
        "math-verify parses the gold `\\text{(C)}` to a sympy symbol and the prediction to the string "
        "'c', which it never compares; we compare choice letters",
}


# Groups where our `verify` is deliberately more lenient than math-verify: every pair is an
# equivalent answer; where math-verify says False the case records why we say True.
LENIENT = [
    ("bare_answer", MV, "math-verify extracts nothing from bare LaTeX without `$` or a box; our API "
     "grades a bare answer as written", [
        ("p - q", "p - q"), ("\\frac{\\pi}{2}", "\\frac{\\pi}{2}"), ("(1,2)", "(1,2)"), ("18", "18"),
        ("3 \\sqrt{5}", "3 \\sqrt{5}"), ("x^3+3x-6", "x^3+3x-6"), ("-2 + 7i", "-2+7i"), ("\\frac{3}{4}", "3/4"),
        ("117", "{117}"),
    ]),
    ("lenient_formatting", MV, "math-verify fails to parse a trailing period inside the math, or "
     "`\\mathbf{}`/`\\text{}` around an expression, and then grades it wrong; we read the math", [
        ("24", B("24.")), ("\\frac{1}{25}", B("\\frac{1}{25}.")), ("\\frac{11}{36}", B("\\mathbf{\\frac{11}{36}}")),
        ("x^3+3x-6", B("\\mathbf{x^3+3x-6}")), ("6+9i", B("\\text{6+9i}")), ("9.5", B("\\mathbf{9.5}")),
        ("70 \\sqrt{2}", B("\\text{70 \\sqrt{2}}")),
    ]),
]


# A bare answer is graded as written: none of these may be judged by a part of it (the
# `\frac{1}{2}` of `\frac{1}{2}+1`, a matrix's last entry), and each whole still counts.
# Prose keeps its fallbacks (the last plain fraction, the last number).
AS_WRITTEN = ("bare_as_written", [
    ("\\frac{1}{2}", "\\frac{1}{2}+1"), ("\\frac{1}{2}", "\\sqrt{\\frac{1}{2}}"), ("\\frac{1}{2}", "2\\frac{1}{2}"),
    ("\\frac{1}{2}", "\\frac{1}{2}x"), ("1", "\\begin{pmatrix}1 & 1\\end{pmatrix}"), ("\\frac{1}{2}", "-\\frac{1}{2}"),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}+1"),
    ("2", "1+2"), ("1", "2x+1"), ("4", "2^{4}"), ("1", "(1, 2)"), ("2", "\\sqrt{2}"),
    ("\\frac{3}{2}", "\\frac{1}{2}+1"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt{\\frac{1}{2}}"), ("\\frac{5}{2}", "2\\frac{1}{2}"),
    ("\\frac{x}{2}", "\\frac{1}{2}x"), ("\\begin{pmatrix}1 & 1\\end{pmatrix}", "\\begin{pmatrix}1 & 1\\end{pmatrix}"),
    ("3", "1+2"), ("16", "2^{4}"), ("\\frac{1}{2}", "\\frac{1}{2}"), ("72", "72"),
    ("72", "Each crate holds 8 rows of 9, so the answer is 72."), ("72", "8 * 9 = 72"),
    ("\\frac{1}{2}", "So the probability is \\frac{1}{2}."), ("\\frac{1}{2}", "Half of them, \\frac{1}{2}, are red."),
])


def as_written(gold, pred):
    return math_verify(gold, "$" + pred + "$" if looks_bare(pred) else pred)


def main():
    out = []
    for cat, modes, why, pairs in LENIENT:
        for gold, pred in pairs:
            exp = math_verify(gold, pred)
            case = {"gold": gold, "pred": pred, "expected": exp, "mode": "verify",
                    "follows": "math-verify", "category": cat}
            if not exp:
                case["divergence"] = why
            out.append(case)
    for cat, modes, pairs in GROUPS:
        for gold, pred in pairs:
            for mode in modes:
                if mode == "mathruler":
                    exp = mathruler(gold, pred)
                    follows = "mathruler"
                else:
                    exp = math_verify(gold, pred, mc=(cat == "multiple_choice"))
                    follows = "math-verify"
                case = {"gold": gold, "pred": pred, "expected": exp, "mode": mode,
                        "follows": follows, "category": cat}
                why = DIVERGENCES.get((cat, gold, pred, mode))
                if why:
                    case["divergence"] = why
                out.append(case)
    cat, pairs = AS_WRITTEN
    for gold, pred in pairs:
        out.append({"gold": gold, "pred": pred, "expected": as_written(gold, pred), "mode": "verify",
                    "follows": "math-verify", "category": cat})
    with open(os.path.join(HERE, "cases.jsonl"), "w") as f:
        for c in out:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    print(f"{len(out)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
