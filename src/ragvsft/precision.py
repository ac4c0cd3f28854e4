"""Precision chosen by measurement: `models.dtype: auto` and `finetune.precision: auto` (the defaults) become float32
or bfloat16, whichever multiplies matrices faster on this machine.

    ragvsft run experiments/quick.yaml          # prints "precision: float32 (float32 212 GFLOP/s, bfloat16 9 GFLOP/s)"

Why measure: a CPU with AMX multiplies bfloat16 ~10x faster than float32, one with only AVX512-BF16 slower, most
laptops have neither and emulate it far slower. The probe times a matrix product of SmolLM2's MLP width (576 x 1536)
in both precisions (well under a second) and is cached per machine (CPU model, torch version, threads,
ONEDNN_MAX_CPU_ISA) in `$RAGVSFT_CACHE/precision.json`. bfloat16 is chosen only when it is clearly faster
(`BFLOAT16_MARGIN`): its scores differ slightly from float32's (README, "Measured"), so it must buy real time.
The manifest and results.json record the choice, both rates and the CPU's flags.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .files import atomic_write_json

AUTO = "auto"
PRECISIONS = ("float32", "bfloat16")
BFLOAT16_MARGIN = 1.2  # bfloat16 must be this much faster than float32 to be chosen
PROBE_SHAPE = (256, 576, 1536)  # tokens x SmolLM2's hidden size x its MLP width
PROBE_SECONDS = 0.2  # per precision, after one warm-up product
FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for timings that must name where they were measured."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The matrix-unit flags of this CPU that decide which precision is fast (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in FLAGS if flag in present]


def machine_key() -> str:
    return "|".join([cpu_name(), torch.__version__, str(torch.get_num_threads()),
                     os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "cuda" if torch.cuda.is_available() else "cpu"])


def matmul_rate(dtype: str, shape: tuple[int, int, int] = PROBE_SHAPE, seconds: float = PROBE_SECONDS) -> float:
    """GFLOP/s of an (m x k) @ (k x n) product in `dtype` on the CPU, timed for about `seconds` after a warm-up (an
    emulated precision whose warm-up alone takes that long is timed on the warm-up: it is slow either way)."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
    began = time.perf_counter()
    torch.matmul(a, b)
    elapsed = time.perf_counter() - began
    repeats = 1
    if elapsed < seconds:
        repeats, began = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds or repeats == 0:
            torch.matmul(a, b)
            repeats += 1
    return 2 * m * k * n * repeats / elapsed / 1e9


def choose(rates: dict[str, float]) -> str:
    """bfloat16 where it multiplies clearly faster than float32, else float32."""
    return "bfloat16" if rates["bfloat16"] > BFLOAT16_MARGIN * rates["float32"] else "float32"


def measured_rates(cache: Path, measure: Callable[[str], float] = matmul_rate) -> tuple[dict[str, float], bool]:
    """Both precisions' GFLOP/s on this machine, from the cache when this machine was measured before; (rates, cached)."""
    key = machine_key()
    try:
        stored = json.loads(cache.read_text())
    except (OSError, ValueError):
        stored = {}
    entry = stored.get(key) if isinstance(stored, dict) else None
    if isinstance(entry, dict) and all(isinstance(entry.get(p), (int, float)) and entry[p] > 0 for p in PRECISIONS):
        return {p: float(entry[p]) for p in PRECISIONS}, True
    rates = {p: round(measure(p), 1) for p in PRECISIONS}
    try:
        atomic_write_json(cache, {**(stored if isinstance(stored, dict) else {}), key: rates})
    except OSError:  # a read-only home: measure again next time
        pass
    return rates, False


def resolve(asked: dict[str, str], cache: Path, measure: Callable[[str], float] = matmul_rate,
            device: str = "cpu") -> tuple[dict[str, str], dict]:
    """`asked` maps config keys ("models.dtype", "finetune.precision") to a precision or `auto`; returns them with
    every `auto` replaced by the measured choice, and the record the manifest and results.json keep. Nothing is
    measured when nothing is `auto`; on an accelerator (`device`) nothing is measured either."""
    record: dict = {"asked": dict(asked), "cpu": cpu_name(), "flags": cpu_flags(), "device": device}
    if AUTO not in asked.values():
        return dict(asked), record | {"chosen": dict(asked), "gflops": None}
    if device == "cuda":  # generation and training then run where bfloat16 is native, if it is
        best, rates, cached = ("bfloat16" if torch.cuda.is_bf16_supported() else "float32"), None, False
    elif device == "mps":
        best, rates, cached = "float32", None, False
    else:
        rates, cached = measured_rates(cache, measure)
        best = choose(rates)
    chosen = {key: best if value == AUTO else value for key, value in asked.items()}
    return chosen, record | {"chosen": chosen, "gflops": rates, "cached": cached, "margin": BFLOAT16_MARGIN}


def torch_dtype(name: str, cache: Path | None = None) -> torch.dtype:
    """The torch dtype of a precision setting; `auto` is resolved as the run resolves it (the cached measurement),
    for callers handed a config that did not go through a run (the library used directly, tests)."""
    if name == AUTO:
        from .models import cache_dir

        name = resolve({"dtype": AUTO}, cache or cache_dir() / "precision.json")[0]["dtype"]
    return getattr(torch, name)


def performance(work: dict[str, dict], params: int, record: dict) -> dict:
    """results.json `performance`: per stage the work done (tokens through the model, forward and backward), its
    FLOPs at about 2 x parameters per forward token and 6 x per trained token (attention and the LoRA weights left out:
    a floor, not a count), the stage's seconds, the achieved GFLOP/s and their share of the peak measured for the
    precision used. `work` maps a stage to {"forward_tokens": n, "trained_tokens": n, "seconds": s}."""
    used = (record.get("chosen") or {}).get("models.dtype")
    peak = (record.get("gflops") or {}).get(used)
    stages = {}
    for stage, tokens in work.items():
        forward, trained = tokens.get("forward_tokens", 0), tokens.get("trained_tokens", 0)
        flops = 2 * params * forward + 6 * params * trained
        took = tokens.get("seconds")
        rate = flops / took / 1e9 if took else None
        stages[stage] = {"forward_tokens": forward, "trained_tokens": trained, "gflop": round(flops / 1e9, 1),
                         "seconds": took, "gflops": round(rate, 1) if rate is not None else None,
                         "share_of_peak": round(rate / peak, 4) if rate is not None and peak else None,
                         "floor_seconds": round(flops / (peak * 1e9), 1) if peak else None}
    return {"parameters": params, "precision": used, "peak_gflops": peak, "cpu": record.get("cpu"),
            "amx": "amx_bf16" in (record.get("flags") or []), "stages": stages}
