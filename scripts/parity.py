#!/usr/bin/env python3
"""Greedy-token parity between `relayllm generate` and llama.cpp on the same GGUF.

For the first K GSM8K problems, renders the chat prompt with relayllm, decodes N tokens
greedily with relayllm and with a real llama-server fed the very same prompt token ids, and
compares the two token sequences. Also checks that our chat-template rendering equals
llama.cpp's own (/apply-template). Exits non-zero when fewer than --need prompts match.

    python3 scripts/parity.py --relayllm target/release/relayllm \
        --llama-server third_party/llama.cpp/build/bin/llama-server --data gsm8k.jsonl
"""
import argparse, json, os, socket, subprocess, sys, time, urllib.request

INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=300):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def start_server(binary, model, threads):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
         "-c", "4096", "-np", "1", "--jinja"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except Exception:
            pass
        if proc.poll() is not None:
            sys.exit(f"llama-server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    sys.exit("llama-server did not become healthy")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relayllm", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs="+", default=["slm", "llm"])
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--need", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="candle",
                    help="relayllm's engine: candle, or llama-cpp (a build with --features llama-cpp)")
    args = ap.parse_args()

    problems = []
    with open(args.data) as f:
        for line in f:
            p = json.loads(line)["problem"]
            problems.append(p if "\\boxed" in p else p + INSTRUCTION)
            if len(problems) == args.prompts:
                break

    failed = False
    for model in args.models:
        path = subprocess.run([args.relayllm, "generate", "--model", model, "--print-path"],
                              capture_output=True, text=True, check=True).stdout.strip()
        proc, base = start_server(args.llama_server, path, args.threads)
        matches = 0
        try:
            for i, problem in enumerate(problems):
                ours = json.loads(subprocess.run(
                    [args.relayllm, "generate", "--model", model, "--engine", args.engine, "--chat",
                     "--json", "--temperature", "0", "--max-tokens", str(args.tokens), "--prompt", problem],
                    capture_output=True, text=True, check=True).stdout)
                theirs = post(base + "/completion", {
                    "prompt": ours["prompt_tokens"], "n_predict": args.tokens, "temperature": 0,
                    "top_k": 1, "samplers": ["top_k"], "return_tokens": True, "cache_prompt": False})
                template = post(base + "/apply-template", {"messages": [{"role": "user", "content": problem}]})
                same_template = template.get("prompt") == ours["prompt"]
                a, b = ours["tokens"][: args.tokens], theirs["tokens"][: args.tokens]
                first_diff = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
                ok = a == b
                matches += ok
                print(f"{model} prompt {i}: {'MATCH' if ok else 'DIFF at %s' % first_diff} "
                      f"(ours {len(a)} tokens, llama.cpp {len(b)}); chat template equal: {same_template}")
                if not ok:
                    print(f"   ours:      {a}\n   llama.cpp: {b}")
        finally:
            proc.terminate()
            proc.wait()
        print(f"{model} ({args.engine} engine): {matches}/{len(problems)} prompts match for the first {args.tokens} greedy tokens")
        failed |= matches < args.need
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
