"""The training precision: ``train.mixed_precision`` ("auto", "no", "bf16", "fp16") for a device.

``auto`` on a GPU is bf16 where the GPU supports it, else fp16. On a CPU it is measured, not read
from a flag list: CPUs differ by an order of magnitude in how bf16 matrix products run (x86 AMX
tiles: several times the fp32 rate; AVX-512 BF16: about half; AVX2 only: a tenth or less), so a
short probe (``probe_matmul``) times ``F.linear`` at the model's typical shapes in fp32 and under
bf16 autocast (weight casts included, as training runs it) and ``auto`` takes bf16 only where it
is faster by ``BF16_MARGIN``. The figures are cached per machine (CPU model and flags, torch
version, shapes; not the thread count, so the trainer and ``tools/benchmark.py`` read the same
figures and make the same choice) in ``$AVMAE_CACHE/precision_probe.json`` (``~/.cache/avmae``), so the
probe runs once; every decision is logged with the figures it used.

    choice = choose_precision(device, shapes=linear_shapes(model))   # -> PrecisionChoice
    choice.mixed_precision                                           # "bf16" | "no" | "fp16"
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from ..files import atomic_write, to_json

_logger = logging.getLogger(__name__)

__all__ = [
    "BF16_MARGIN",
    "DEFAULT_SHAPES",
    "PrecisionChoice",
    "choose_precision",
    "cpu_flags",
    "cpu_model",
    "fresh_precision_state",
    "linear_shapes",
    "probe_cache_path",
    "probe_matmul",
    "resolve_mixed_precision",
]

# bf16 must beat fp32 by this factor in the probe: a step is not all matmul, and bf16 costs accuracy
BF16_MARGIN = 1.15
# (rows, in, out) of the probe when the model is not known: a ViT-B and a small (demo) MLP layer
DEFAULT_SHAPES: Tuple[Tuple[int, int, int], ...] = ((64, 768, 3072), (64, 128, 512))
PROBE_ROWS = 64  # rows of every probe product: a block of tokens, small enough for a CPU without bf16 units

Shape = Tuple[int, int, int]
Probe = Callable[[Sequence[Shape]], Dict[str, float]]


def _cpuinfo(field: str) -> Optional[str]:
    """The value of the first ``field`` line of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set:
    """The CPU's feature flags from /proc/cpuinfo (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...);
    empty where there is no /proc/cpuinfo."""
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` says."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


_cpu_flags, _cpu_model = cpu_flags, cpu_model  # the probe cache's key reads these (tests replace them)


def fresh_precision_state(num_processes: int) -> None:
    """Let this process build an ``Accelerator`` with its own precision: one process may run several
    trainers, or a tool after a trainer (notebooks, tests), and accelerate keeps the first one's
    precision process-wide. Launched processes (several) keep theirs."""
    if num_processes == 1:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()


def linear_shapes(model: nn.Module, *, limit: int = 2, rows: int = PROBE_ROWS) -> List[Shape]:
    """The ``limit`` (rows, in, out) products that carry most of the model's ``nn.Linear`` FLOPs
    (per token: count x in x out), with ``rows`` rows. Works on a model on the ``meta`` device."""
    counts: Counter = Counter()
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.in_features > 2 and m.out_features > 2:
            counts[(m.in_features, m.out_features)] += m.in_features * m.out_features
    return [(rows, k, n) for (k, n), _ in counts.most_common(limit)] or list(DEFAULT_SHAPES)


def probe_matmul(
    shapes: Sequence[Shape] = DEFAULT_SHAPES, *, budget_s: float = 0.05, slow_factor: float = 4.0
) -> Dict[str, float]:
    """FLOP/s of ``F.linear`` on the CPU over ``shapes`` in fp32 and under bf16 autocast (fp32
    inputs and weights, as a training forward sees them). -> {"fp32": FLOP/s, "bf16": FLOP/s}.

    After one untimed round each, the precisions run their products in alternating rounds until
    ``budget_s`` of fp32 time is spent (at least 3 rounds); the best round counts. A bf16 round
    ``slow_factor`` times slower than fp32 decides at once: CPUs without bf16 units run it at a
    tenth of fp32 or less, and more rounds would only cost time (a few ms where bf16 runs well,
    a few hundred where it does not; then once per machine, as the result is cached)."""
    gen = torch.Generator().manual_seed(0)
    args = [
        (torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) * k**-0.5, torch.zeros(n))
        for m, k, n in shapes
    ]
    flops = sum(2 * m * k * n for m, k, n in shapes)

    def run(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for x, w, b in args:
                F.linear(x, w, b)
        return time.perf_counter() - t

    run(False), run(True)  # first calls: kernel selection, allocation
    best = {"fp32": run(False), "bf16": run(True)}
    rounds, spent = 1, best["fp32"]
    while best["bf16"] < slow_factor * best["fp32"] and (rounds < 3 or spent < budget_s) and rounds < 200:
        f, b = run(False), run(True)
        best = {"fp32": min(best["fp32"], f), "bf16": min(best["bf16"], b)}
        rounds, spent = rounds + 1, spent + f
    return {k: flops / v for k, v in best.items()}


@dataclass
class PrecisionChoice:
    """What ``auto`` chose and why: the probe's figures (GFLOP/s), where they came from."""

    mixed_precision: str  # "no" | "bf16" | "fp16"
    device: str
    reason: str
    fp32_gflops: Optional[float] = None
    bf16_gflops: Optional[float] = None
    shapes: List[Shape] = field(default_factory=list)
    source: str = ""  # "measured", "cache <path>", "injected"

    def describe(self) -> str:
        if self.fp32_gflops is None:
            return f"{self.mixed_precision} on {self.device} ({self.reason})"
        return (
            f"{self.mixed_precision} on {self.device}: F.linear at {self.shapes} runs {self.fp32_gflops:.1f} GFLOP/s in"
            f" fp32, {self.bf16_gflops:.1f} GFLOP/s under bf16 autocast ({self.source}); {self.reason}"
        )

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def probe_cache_path() -> Path:
    """``$AVMAE_CACHE/precision_probe.json`` (``~/.cache/avmae/...`` when the variable is unset)."""
    from ..data.demo import _cache_dir

    return _cache_dir("precision_probe.json")


def _cache_key(shapes: Sequence[Shape]) -> str:
    flags = hashlib.sha1(" ".join(sorted(_cpu_flags())).encode()).hexdigest()[:12]
    return f"{_cpu_model()} | flags {flags} | torch {torch.__version__} | {[list(s) for s in shapes]}"


def _read_cache(path: Path) -> Dict[str, dict]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    try:
        doc = _read_cache(path)
        doc[key] = entry
        atomic_write(path, to_json(doc, indent=1))
    except OSError as exc:  # a read-only home: measure again next time
        _logger.debug("could not cache the precision probe in %s: %s", path, exc)


def _measured(shapes: Sequence[Shape], probe: Optional[Probe], use_cache: bool) -> Tuple[Dict[str, float], str]:
    """The probe's FLOP/s: injected, cached for this machine, or measured now (and cached)."""
    if probe is not None:
        return probe(shapes), "injected"
    path, key = probe_cache_path(), _cache_key(shapes)
    if use_cache:
        entry = _read_cache(path).get(key)
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("fp32"), (int, float))
            and isinstance(entry.get("bf16"), (int, float))
        ):
            return {
                "fp32": float(entry["fp32"]),
                "bf16": float(entry["bf16"]),
            }, f"cached in {path}, measured {entry.get('date', '?')}"
    threads = torch.get_num_threads()
    t = time.perf_counter()
    found = probe_matmul(shapes)
    took = time.perf_counter() - t
    if use_cache:
        _write_cache(
            path,
            key,
            {**found, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "probe_s": round(took, 3)},
        )
    return found, f"measured now in {took * 1000:.0f} ms, {threads} thread(s)"


def choose_precision(
    device: torch.device,
    *,
    shapes: Optional[Sequence[Shape]] = None,
    probe: Optional[Probe] = None,
    use_cache: bool = True,
) -> PrecisionChoice:
    """``train.mixed_precision: auto`` for ``device``, with its reasons (see the module doc).

    ``shapes``: (rows, in, out) products of the model (``linear_shapes``; default
    ``DEFAULT_SHAPES``). ``probe(shapes) -> {"fp32": FLOP/s, "bf16": FLOP/s}`` replaces the
    measurement (tests); ``use_cache=False`` measures again and leaves the cache alone."""
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return PrecisionChoice(
            "bf16" if bf16 else "fp16",
            str(device),
            "GPU with bf16" if bf16 else "GPU without bf16: fp16 with loss scaling",
        )
    if device.type != "cpu":
        return PrecisionChoice("no", str(device), f"no measured mixed precision on {device.type}")
    shapes = [tuple(int(v) for v in s) for s in shapes or DEFAULT_SHAPES]
    found, source = _measured(shapes, probe, use_cache)
    fp32, bf16 = found["fp32"], found["bf16"]
    faster = bf16 >= BF16_MARGIN * fp32
    reason = (
        f"bf16 {bf16 / fp32:.2f}x fp32 (>= {BF16_MARGIN}x needed) -> bf16 autocast"
        if faster
        else f"bf16 {bf16 / fp32:.2f}x fp32 (< {BF16_MARGIN}x) -> fp32"
    )
    choice = "bf16" if faster else "no"
    return PrecisionChoice(choice, str(device), reason, fp32 / 1e9, bf16 / 1e9, shapes, source)  # type: ignore[arg-type]


def resolve_mixed_precision(
    choice: str,
    device: torch.device,
    *,
    shapes: Optional[Sequence[Shape]] = None,
    probe: Optional[Probe] = None,
) -> str:
    """``train.mixed_precision`` -> what accelerate runs ("no", "bf16", "fp16"); "auto" through
    ``choose_precision`` (logged with its figures)."""
    if choice == "auto":
        picked = choose_precision(device, shapes=shapes, probe=probe)
        _logger.info("train.mixed_precision=auto: %s", picked.describe())
        return picked.mixed_precision
    if choice == "fp16" and torch.device(device).type != "cuda":
        raise ConfigError(
            "train.mixed_precision", f"fp16 needs a GPU (loss scaling); use bf16 or no on {torch.device(device).type}"
        )
    return choice
