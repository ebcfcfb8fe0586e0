# relayllm — common tasks. `make demo` on a fresh machine sets up, fetches the real pair and
# runs the main job; `make test` runs the test suite (no downloads: tests use tiny models
# the project writes itself).
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/relayllm
GSM8K ?= $(firstword $(wildcard ../shared/data/benchmarks/gsm8k.jsonl) data/gsm8k.jsonl)
DEMO_N ?= 3

.PHONY: setup build models demo test test-llama-cpp test-real parity bench bench-llama-cpp bench-relay bench-relay-split bench-train llama-cpp

# System packages the build and the tests need (Debian). Skipped when already present.
setup:
	@if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq python3-pip; fi
	@if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq cmake g++; fi
	@# libclang for bindgen in the llama-cpp feature's build (llama-cpp-sys-2). Not libclang-cpp,
	@# which some images carry alone and which bindgen cannot use.
	@if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq libclang-dev; fi
	@if ! command -v chromium >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq chromium; fi

build:
	$(CARGO) build --release -p relayllm

models: build
	$(BIN) fetch models

demo: setup models
	@scripts/demo.sh "$(BIN)" "$(GSM8K)" "$(DEMO_N)"

# Includes the remote-engine and server fault tests against a real llama-server (built first; ~8 min once).
# Tests of the real SLM's tokenizer (`make models`) and of ../shared's benchmarks fail without
# them unless RELAYLLM_ALLOW_SKIP_REAL_MODEL_TESTS=1 / RELAYLLM_ALLOW_SKIP_SHARED_DATA_TESTS=1.
test:
	scripts/build-llama-cpp.sh
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	    $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	    $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test -p relay-engine --test remote -- --ignored
	$(CARGO) test -p relay-server --test api -- --ignored

# The engine tests (kv cache, errors, batching) against both engines, and candle vs llama.cpp
# parity, with the llama-cpp feature: builds llama.cpp through llama-cpp-sys-2 (cmake, C++,
# libclang; several minutes once). `make test` stays on the default build.
test-llama-cpp:
	$(CARGO) test -p relay-engine --features llama-cpp --no-fail-fast \
	    --test kv_cache --test errors --test batching --test engine_parity

# The relay on the real pair: the confidence policy serves calls, answers are boxed, and the
# call ratio moves with the threshold (needs the models; not part of `make test`).
test-real: models
	python3 scripts/check-relay-real.py --relayllm $(BIN) --data "$(GSM8K)"

# llama.cpp (llama-bench, llama-server) from the sources vendored in the llama-cpp-python sdist.
llama-cpp: setup
	scripts/build-llama-cpp.sh

# Greedy-token parity with llama.cpp on the real pair (needs the models; not part of `make test`).
parity: models llama-cpp
	python3 scripts/parity.py --relayllm $(BIN) --llama-server third_party/llama.cpp/build/bin/llama-server --data "$(GSM8K)"

# Decode/prefill speed against llama-bench on the same files and threads.
bench: models llama-cpp
	$(BIN) bench decode --model llm --threads 2 --llama-bench third_party/llama.cpp/build/bin/llama-bench
	$(BIN) bench decode --model slm --threads 2 --llama-bench third_party/llama.cpp/build/bin/llama-bench

# The llama.cpp engine against llama-bench. ggml is compiled for this CPU (target-cpu=native, as
# the llama-bench build uses GGML_NATIVE) in its own target folder; the default build's ggml
# gets only the baseline x86-64 instructions. AMX is off, as in the llama-bench build
# (scripts/build-llama-cpp.sh), so both run the same kernels: llama.cpp's AMX path decodes one
# sequence of Q4_K/Q6_K weights slower than its AVX-512 one (docs/results/speed.md).
BIN_NATIVE := target/native/release/relayllm
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
bench-llama-cpp: models llama-cpp
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" RUSTFLAGS="-C target-cpu=native" \
	    $(CARGO) build --release -p relayllm --features llama-cpp --target-dir target/native
	@# The engine's defaults (F32 KV cache, no flash attention), then llama-bench's own.
	$(BIN_NATIVE) bench decode --engine llama-cpp --model llm --threads 2 --llama-bench third_party/llama.cpp/build/bin/llama-bench
	$(BIN_NATIVE) bench decode --engine llama-cpp --model slm --threads 2 --llama-bench third_party/llama.cpp/build/bin/llama-bench
	RELAYLLM_LLAMA_KV_TYPE=f16 RELAYLLM_LLAMA_FLASH_ATTN=auto \
	    $(BIN_NATIVE) bench decode --engine llama-cpp --model llm --threads 2 --llama-bench third_party/llama.cpp/build/bin/llama-bench
	RELAYLLM_LLAMA_KV_TYPE=f16 RELAYLLM_LLAMA_FLASH_ATTN=auto \
	    $(BIN_NATIVE) bench decode --engine llama-cpp --model slm --threads 2 --llama-bench third_party/llama.cpp/build/bin/llama-bench

# Relay overhead and KV-reuse savings on the real pair.
bench-relay: models
	$(BIN) bench relay --policy confidence --threshold 0.4 --call-tokens 12 --cooldown 8 --max-calls 8

# The same with the LLM on hardware of its own: a llama-server pinned to the last core, the relay
# on the first, without and with read-ahead, 3 interleaved rounds (~45 min on GSM8K's first 10).
bench-relay-split: models llama-cpp
	scripts/bench-relay-split.sh 0 1 16

# relay-train's LoRA step against PyTorch + transformers + peft on the same GGUF, text, LoRA
# (r16, all seven projections), tokens and threads: 3 interleaved rounds of relayllm, PyTorch
# f32 and PyTorch bf16, medians and ratios (scripts/bench-train.sh; raw JSON in
# runs/bench-train/). Not part of `make test`; ~20 min on 2 Xeon cores with AVX-512. Without
# AVX-512 bf16 (AMD EPYC/Zen 3, AVX2 only) PyTorch has no fast bf16 matmul and a bf16 step takes
# tens of minutes, so bf16 is measured only where /proc/cpuinfo lists avx512_bf16
# (BENCH_TRAIN_DTYPES overrides).
#
# The PyTorch side lives in its own virtual environment, never the system Python. PyPI's torch
# for Linux x86-64 is the CUDA build, and its metadata pulls ~2.3 GB of nvidia-*, cuda-* and
# triton wheels (torch 2.15: 2.8 GB of downloads in all); the CPU-only builds are on PyTorch's
# own index, which these machines cannot reach. So the environment is installed from a full pin
# list with `pip --no-deps` (scripts/bench-train-requirements.txt: torch and everything
# transformers, peft and gguf need, without the CUDA wheels), and scripts/torch_cuda_stubs.py
# compiles stand-ins for the CUDA libraries torch links against (a CUDA runtime that reports
# no device; anything else aborts by name). Same torch binaries and CPU kernels as a full
# install; ~560 MB downloaded instead of 2.8 GB, 1.6 GB on disk. A torch that is then asked for CUDA fails loudly; a
# machine with a GPU should install torch the ordinary way instead.
BENCH_TRAIN_VENV := third_party/venv-bench-train
SLM_GGUF ?= $(or $(RELAYLLM_MODELS_DIR),models)/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
BENCH_TRAIN_TOKENS ?= 600
BENCH_TRAIN_THREADS ?= 2
BENCH_TRAIN_ROUNDS ?= 3
# bf16 only where the CPU has bf16 matmuls (avx512_bf16): elsewhere PyTorch's bf16 step falls
# back to a reference GEMM and takes tens of minutes, which measures nothing useful.
BENCH_TRAIN_DTYPES ?= f32$(if $(shell grep -m1 -o -w avx512_bf16 /proc/cpuinfo 2>/dev/null), bf16)

$(BENCH_TRAIN_VENV)/.installed: scripts/bench-train-requirements.txt scripts/torch_cuda_stubs.py
	@if ! python3 -c 'import ensurepip' 2>/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv; fi
	@if ! command -v cc >/dev/null || ! command -v readelf >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq gcc binutils; fi
	rm -rf $(BENCH_TRAIN_VENV)
	python3 -m venv $(BENCH_TRAIN_VENV)
	$(BENCH_TRAIN_VENV)/bin/python -m pip install -q --no-deps -r scripts/bench-train-requirements.txt
	$(BENCH_TRAIN_VENV)/bin/python scripts/torch_cuda_stubs.py
	$(BENCH_TRAIN_VENV)/bin/python -c 'import torch, transformers, peft, gguf; assert not torch.cuda.is_available(); \
	    print("bench-train environment:", torch.__version__, transformers.__version__, peft.__version__)'
	touch $@

bench-train: build models $(BENCH_TRAIN_VENV)/.installed
	PYTHON=$(BENCH_TRAIN_VENV)/bin/python DTYPES="$(BENCH_TRAIN_DTYPES)" scripts/bench-train.sh $(BIN) $(SLM_GGUF) \
	    $(BENCH_TRAIN_TOKENS) $(BENCH_TRAIN_THREADS) $(BENCH_TRAIN_ROUNDS)
