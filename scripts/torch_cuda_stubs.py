#!/usr/bin/env python3
# Why this exists: PyPI's only torch wheel for Linux x86-64 is the CUDA build, and it declares
# ~2.3 GB of nvidia-* / triton wheels as dependencies. Its CPU kernels (libtorch_cpu.so, with
# oneDNN and OpenMP bundled) need none of them, but the CUDA side libraries are linked in as
# DT_NEEDED, so `import torch` fails without them. The PyTorch training baseline
# (scripts/bench_train_torch.py, `make bench-train`) runs on CPU only, and the machines have no
# GPU and no other package index, so this script makes a torch installed with `pip --no-deps`
# importable: for every NVIDIA library that torch loads at import and that is not on the
# machine, it compiles a small stand-in with the same soname, symbol versions and symbols into
# torch/lib (found there through torch's own $ORIGIN RUNPATH). The CUDA runtime's functions
# answer cudaErrorNoDevice, so torch sees a machine without a GPU (torch.cuda.is_available()
# is False); any other CUDA library function aborts with its name, so nothing can silently run
# on a fake GPU. The CPU code paths are untouched: the same binaries as a full install.
#
# Usage: python scripts/torch_cuda_stubs.py  (with the virtual environment's python; needs
# readelf and a C compiler). Idempotent; prints what it wrote.
import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

MARKER = "RELAYLLM_CUDA_STUBS"
# Libraries torch links against whose absence is what this script answers for.
NVIDIA_LIB = re.compile(r"^lib(cu|nv|nccl)[A-Za-z_]*\.so(\.\d+)*$")
# Unversioned symbols that belong to those libraries (nccl, cusparseLt, cuFile and nvshmem
# export no symbol versions).
NVIDIA_SYM = re.compile(r"^(cu|nccl|nvshmem|nvrtc)")


def die(msg):
    sys.exit(f"torch_cuda_stubs: {msg}")


def run(*cmd):
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        die(f"`{cmd[0]}` not found (install binutils and a C compiler: `make setup`)")
    except subprocess.CalledProcessError as e:
        die(f"{' '.join(cmd)} failed:\n{e.stderr}")


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", "-W", path))


def version_needs(path):
    """version name -> file that must define it (from .gnu.version_r)."""
    out, current = {}, None
    for line in run("readelf", "-V", "-W", path).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and current:
            out[m.group(1)] = current
    return out


def dyn_syms(path):
    """(undefined global symbols as (name, version, type), defined names)."""
    und, defined = [], set()
    for line in run("readelf", "--dyn-syms", "-W", path).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].rstrip(":").isdigit():
            continue
        typ, bind, ndx, name = f[3], f[4], f[6], f[7]
        base, _, ver = name.partition("@")
        if ndx == "UND":
            if bind == "GLOBAL" and base:
                und.append((base, ver.lstrip("@"), typ))
        else:
            defined.add(base)
    return und, defined


def system_has(soname):
    return f"{soname} " in run("ldconfig", "-p")


def main():
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        die(f"torch is not installed for {sys.executable}")
    torch_dir = spec.submodule_search_locations[0]
    lib_dir = os.path.join(torch_dir, "lib")
    marker = os.path.join(lib_dir, MARKER)

    # What `import torch` loads: _C and libtorch_global_deps, and what they need, transitively,
    # among torch's own libraries (libcaffe2_nvrtc and libtorch_cuda_linalg load on demand only).
    roots = glob.glob(os.path.join(torch_dir, "_C*.so")) + [os.path.join(lib_dir, "libtorch_global_deps.so")]
    own = {os.path.basename(p): p for p in glob.glob(os.path.join(lib_dir, "*.so*"))}
    stubbed_before = set(open(marker).read().split()) if os.path.exists(marker) else set()
    closure, todo, missing = {}, list(roots), set()
    while todo:
        path = todo.pop()
        if path in closure.values() or not os.path.exists(path):
            continue
        closure[os.path.basename(path)] = path
        for dep in needed(path):
            if dep in own and dep not in stubbed_before:
                todo.append(own[dep])
            elif NVIDIA_LIB.match(dep) and (dep in stubbed_before or not system_has(dep)):
                missing.add(dep)
    if not missing:
        print("torch_cuda_stubs: torch finds all the libraries it links against; nothing to do")
        return

    # Symbols each missing library must define, with their symbol versions.
    syms = {lib: {} for lib in missing}  # lib -> name -> (version, type)
    versions = {lib: set() for lib in missing}
    unversioned, defined = {}, set()
    for name, path in closure.items():
        if name in missing:
            continue
        vneed = version_needs(path)
        for ver, lib in vneed.items():
            if lib in missing:
                versions[lib].add(ver)
        und, d = dyn_syms(path)
        defined |= d
        for sym, ver, typ in und:
            lib = vneed.get(ver) if ver else None
            if lib in missing:
                syms[lib][sym] = (ver, typ)
            elif not ver and NVIDIA_SYM.match(sym):
                unversioned[sym] = typ
    # Unversioned ones go into every stand-in: the dynamic linker takes the first definition.
    for sym, typ in unversioned.items():
        if sym in defined:
            continue
        for lib in missing:
            ver = sorted(versions[lib])[0] if versions[lib] else ""
            syms[lib].setdefault(sym, (ver, typ))

    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        for lib in sorted(missing):
            src, vscript = os.path.join(tmp, "stub.c"), os.path.join(tmp, "stub.map")
            cudart = lib.startswith("libcudart")
            lines = [
                "/* Stand-in for %s, written by relayllm's scripts/torch_cuda_stubs.py: this machine"
                " has no GPU. */" % lib,
                "#include <stdio.h>",
                "#include <stdlib.h>",
                "static void fail(const char *f) { fprintf(stderr, \"relayllm CPU-only torch: %s called "
                "%s, which is a stand-in (scripts/torch_cuda_stubs.py); this torch has no CUDA\\n\", f, \""
                + lib + "\"); abort(); }",
            ]
            for sym, (ver, typ) in sorted(syms[lib].items()):
                if typ == "OBJECT" or typ == "TLS":
                    lines.append(f"char {sym}[256] __attribute__((aligned(64)));")
                elif cudart and sym in ("cudaGetErrorString", "cudaGetErrorName"):
                    lines.append(f'const char *{sym}(int e) {{ (void)e; return "no CUDA device (CPU-only torch)"; }}')
                elif cudart:
                    lines.append(f"int {sym}(void) {{ return 100; /* cudaErrorNoDevice */ }}")
                else:
                    lines.append(f'void {sym}(void) {{ fail("{sym}"); }}')
            with open(src, "w") as f:
                f.write("\n".join(lines) + "\n")
            cmd = [cc, "-shared", "-fPIC", "-O1", "-o", os.path.join(lib_dir, lib), src, f"-Wl,-soname,{lib}"]
            if versions[lib]:
                by_ver = {v: [] for v in sorted(versions[lib])}
                for sym, (ver, _) in syms[lib].items():
                    by_ver.setdefault(ver or sorted(versions[lib])[0], []).append(sym)
                with open(vscript, "w") as f:
                    for ver, names in by_ver.items():
                        body = "".join(f"{n}; " for n in sorted(names))
                        f.write(f"{ver} {{ global: {body}}};\n")
                cmd.append(f"-Wl,--version-script={vscript}")
            run(*cmd)
            print(f"torch_cuda_stubs: {lib}: {len(syms[lib])} symbols")
    with open(marker, "w") as f:
        f.write("\n".join(sorted(missing)) + "\n")
    print(f"torch_cuda_stubs: wrote {len(missing)} stand-ins into {lib_dir}")


if __name__ == "__main__":
    main()
