#!/usr/bin/env python3
# Why this exists: relay-train's LoRA step is measured against what a user would otherwise run on
# the same CPU, PyTorch + transformers + peft, on the same GGUF, text, LoRA and threads (issue 15).
# This is that baseline: one LoRA training step (forward, backward, AdamW step), each part timed
# on its own, the same interface and JSON fields as `relayllm bench train`. `make bench-train`
# installs what it needs into a virtual environment and runs both, interleaved
# (scripts/bench-train.sh).
#
#   python scripts/bench_train_torch.py --model models/slm.gguf --text-file scripts/bench-train-text.txt \
#       [--tokens 600] [--threads 2] [--runs 3] [--lora-rank 16] [--dtype f32|bf16] [--json]
#
# The base weights are dequantized from the GGUF by transformers (through the `gguf` package)
# to --dtype and frozen; LoRA (alpha = 2 x rank, no dropout) sits on all seven projections of
# every layer; peft keeps the adapter weights in f32 also for a bf16 base, as it does by default.
# The loss is transformers' own causal-LM loss with labels = input ids: the mean next-token NLL
# over the text's positions. AdamW at relayllm's bench settings (lr 1e-6, no weight decay), so
# `loss` (the last timed step's) is comparable to relayllm's; `loss_first` is before any update.
# One warm-up step runs first and is not counted; the reported times are medians over --runs.
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def die(msg):
    print(f"bench_train_torch: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    p = argparse.ArgumentParser(description="PyTorch + peft LoRA training step timing on a GGUF model (CPU)")
    p.add_argument("--model", required=True, help="path to a .gguf file")
    p.add_argument("--text-file", required=True, help="plain text to train on (tokenized, truncated to --tokens)")
    p.add_argument("--tokens", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="timed steps, after one warm-up step")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="dtype of the dequantized base")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (no weight decay), as relayllm's")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args()
    if not os.path.isfile(a.model):
        die(f"model file not found: {a.model}")
    if not a.model.endswith(".gguf"):
        die(f"--model must be a .gguf file: {a.model}")
    if not os.path.isfile(a.text_file):
        die(f"text file not found: {a.text_file}")
    for name in ("tokens", "threads", "runs", "lora_rank"):
        if getattr(a, name) < 1:
            die(f"--{name.replace('_', '-')} must be at least 1")
    return a


def main():
    a = parse_args()
    # Local files only: no hub look-ups (the machines reach no model hub).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar ignores transformers' switch
    try:
        import torch
        import transformers
        import peft
        import gguf  # noqa: F401 (transformers needs it to read the GGUF)
    except ImportError as e:
        die(f"{e}; run through `make bench-train`, which installs torch, transformers, peft and gguf "
            "into third_party/venv-bench-train, or use that environment's python")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    with open(a.text_file, encoding="utf-8") as f:
        text = f.read()
    folder, name = os.path.split(os.path.abspath(a.model))
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]

    # Without AVX-512 (or AMX), oneDNN has no bf16 matmul and PyTorch falls back to its
    # reference GEMM loops: bf16 is then many times slower than f32, not a fair baseline.
    bf16_onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if a.dtype == "bf16" and not bf16_onednn:
        print("bench_train_torch: warning: this CPU has no oneDNN bf16 matmul (needs AVX-512 or AMX); "
              "PyTorch's bf16 runs on its slow reference GEMM here", file=sys.stderr, flush=True)
    print(f"bench_train_torch: loading {a.model} as {a.dtype} (dequantizing)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < a.tokens:
        die(f"{a.text_file} has {len(ids)} tokens, fewer than --tokens {a.tokens}")
    input_ids = torch.tensor([ids[: a.tokens]], dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    model.config.use_cache = False
    lora = LoraConfig(
        r=a.lora_rank,
        lora_alpha=2 * a.lora_rank,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=a.lr, weight_decay=0.0)
    load_s = time.perf_counter() - t0

    def step():
        t = time.perf_counter()
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        t_fwd = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t_opt = time.perf_counter()
        return {"forward_s": t_fwd - t, "backward_s": t_bwd - t_fwd, "optimizer_s": t_opt - t_bwd,
                "step_s": t_opt - t, "loss": loss.item()}

    print(f"bench_train_torch: loaded in {load_s:.1f} s; 1 warm-up + {a.runs} timed steps", file=sys.stderr, flush=True)
    warm = step()
    runs = [step() for _ in range(a.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in ("forward_s", "backward_s", "optimizer_s", "step_s")}
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    out = {
        "impl": f"pytorch-{a.dtype}",
        "model": os.path.abspath(a.model),
        "tokens": a.tokens,
        "text_tokens": len(ids),
        "threads": a.threads,
        "lora_rank": a.lora_rank,
        "lora_alpha": 2 * a.lora_rank,
        "runs": a.runs,
        **med,
        "tokens_per_s": a.tokens / med["step_s"],
        "peak_rss_mib": peak_rss_mib,
        "load_s": load_s,
        "loss": runs[-1]["loss"],
        "loss_first": warm["loss"],
        "step_s_all": [r["step_s"] for r in runs],
        "trainable_params": sum(p.numel() for p in trainable),
        "base_dtype": str(next(p for p in model.parameters() if not p.requires_grad).dtype),
        "adapter_dtype": str(trainable[0].dtype),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_matmul": "onednn" if bf16_onednn else "reference",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    if a.json:
        print(json.dumps(out), flush=True)
    else:
        print(f"{out['impl']}: {a.tokens} tokens, {a.threads} threads, LoRA r{a.lora_rank}: "
              f"{med['step_s']:.2f} s/step (forward {med['forward_s']:.2f}, backward {med['backward_s']:.2f}, "
              f"optimizer {med['optimizer_s']:.3f}), {out['tokens_per_s']:.1f} tokens/s, "
              f"peak RSS {peak_rss_mib:.0f} MiB, loss {warm['loss']:.4f} -> {runs[-1]['loss']:.4f} "
              f"(median of {a.runs}; load {load_s:.1f} s)")


if __name__ == "__main__":
    main()
