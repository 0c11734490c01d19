"""The model half of ``avmae benchmark``: machine facts, timing, peak memory, the training step
(forward + backward + AdamW, built as the trainer builds it), its FLOPs and profile."""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

import avmae
from avmae.layers import WindowAttention
from avmae.train.optim import build_optimizer, param_groups
from avmae.train.precision import cpu_flags, cpu_model, linear_shapes

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# --optimizer -> optim.fused: "auto" is the trainer's default, the others force one implementation
OPTIMIZERS = {"auto": "auto", "adamw": "false", "adamw-fused": "true"}
# profiler regions of a training step (``--profile``)
REGION_FORWARD, REGION_BACKWARD, REGION_OPTIMIZER = "step::forward", "step::backward", "step::optimizer"


# ----------------------------------------------------------------------------------- machine
MATRIX_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16"}


def machine_info(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": cpu_model(),
        # what decides bf16 speed on a CPU (BENCHMARKS.md's CPU kinds): AVX2 only, AVX-512 BF16, AMX
        "host_cpu_flags": sorted(cpu_flags() & MATRIX_FLAGS),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> List[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def matmul_peak(device: torch.device, precision: str, n: Optional[int] = None, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n x n matmul in ``precision`` (fp32 plain; bf16/fp16 tensors)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = PRECISIONS[precision]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device, repeats))
    return 2 * n**3 / best


# ----------------------------------------------------------------------------------- memory
def _trim_heap() -> None:
    """Return freed heap memory to the OS (glibc), so a section's RSS starts from what is in use."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a section: CUDA max allocated, or (CPU) peak RSS from /proc (reset through
    ``clear_refs`` where the kernel allows it; else the process's lifetime ``ru_maxrss``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _status(field: str) -> Optional[float]:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024  # kB -> MiB
        except OSError:
            pass
        return None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self.reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.reset = True
        except OSError:
            pass
        self.start = self._status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = self._status("VmHWM") if self.reset else None
            self.peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def report(self) -> Dict[str, Any]:
        kind = "cuda_max_allocated" if self.device.type == "cuda" else ("rss_hwm" if self.reset else "ru_maxrss")
        return {"peak_mb": round(self.peak, 1), "delta_mb": round(self.peak - self.start, 1), "kind": kind}


# ----------------------------------------------------------------------------------- model step
def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    """Switch every timm Attention (``fused_attn``) and WindowAttention (``fused``). -> modules set."""
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
            n += 1
        if isinstance(m, WindowAttention):
            m.fused = fused
            n += 1
    return n


def model_shapes(name: str, decoder: Optional[str], frames: Optional[int]) -> List[Any]:
    """The matmul shapes ``train.mixed_precision=auto`` probes for this preset (built on meta)."""
    kwargs: Dict[str, Any] = {"decoder": decoder} if decoder else {}
    if frames:
        kwargs["target_length"] = frames
    with torch.device("meta"):
        return linear_shapes(avmae.create_model(name, **kwargs))


def random_inputs(model: torch.nn.Module, batch_size: int, device: torch.device) -> Dict[str, torch.Tensor]:
    mods = getattr(model, "modalities", None)
    if mods is None:
        raise ValueError("the benchmark needs an avmae model with .modalities")
    return {k: torch.randn(batch_size, *m.input_shape, device=device) for k, m in mods.items()}


def default_loss(model: torch.nn.Module, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(inputs)
    if hasattr(out, "loss"):
        return out.loss
    return out.float().pow(2).mean()  # a classifier: any scalar of its logits


def count_step_flops(forward_backward: Callable[[], None]) -> int:
    """FLOPs of one call (``FlopCounterMode``: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward()
    return int(counter.get_total_flops())


class TrainingStep:
    """One configuration of the training step: ``loss_fn`` under autocast, backward, AdamW.

    ``loss_fn`` closes over the model and its inputs. AdamW comes from the trainer's builder
    (parameter groups with weight decay 0.05, betas (0.9, 0.95)); ``optimizer``: "auto" (the
    trainer's default, ``optim.fused=auto``: fused where torch has the kernels for ``device``),
    "adamw" (torch's default implementation) or "adamw-fused" (``fused=True``). ``warm_up`` runs
    the first steps (compilation with ``torch.compile``); ``run_timed`` times one more step.
    Several configurations are timed in alternation (``time_interleaved``), so that a busy moment
    on a shared machine hits all of them alike.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[], torch.Tensor],
        *,
        device: torch.device,
        precision: str,
        batch_size: int,
        optimizer: str = "auto",
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; one of {list(OPTIMIZERS)}")
        self.opt = build_optimizer(
            param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=OPTIMIZERS[optimizer], devices=[device]
        )
        self.loss_fn, self.device, self.precision = loss_fn, device, precision
        self.batch_size = batch_size
        self.optimizer = "adamw-fused" if self.opt.defaults["fused"] else "adamw"  # what "auto" resolved to
        self.first: Optional[float] = None
        self.times: List[float] = []
        self.cpu_times: List[float] = []  # process CPU time of each timed step (all threads)

    def forward_backward(self) -> None:
        with torch.profiler.record_function(REGION_FORWARD):
            with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=self.precision != "fp32"):
                loss = self.loss_fn()
        with torch.profiler.record_function(REGION_BACKWARD):
            loss.backward()

    def step(self) -> None:
        self.forward_backward()
        with torch.profiler.record_function(REGION_OPTIMIZER):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def warm_up(self, steps: int) -> None:
        self.first = timed(self.step, self.device, 1)[0]
        if steps > 1:
            timed(self.step, self.device, steps - 1)

    def run_timed(self) -> None:
        cpu = time.process_time()
        self.times += timed(self.step, self.device, 1)
        self.cpu_times.append(time.process_time() - cpu)

    def report(self, flops: Optional[int] = None, peak: Optional[float] = None) -> Dict[str, Any]:
        t = self.times
        out: Dict[str, Any] = {
            "precision": self.precision,
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            "first_step_s": round(self.first or 0.0, 4),
            "step_s_best": round(min(t), 4),
            "step_s_median": round(statistics.median(t), 4),
            "step_s_all": [round(x, 4) for x in t],
            # CPU time of the process per step: on a shared machine with one intra-op thread, the
            # step's own work (time spent waiting for a core is not counted)
            "step_cpu_s_best": round(min(self.cpu_times), 4) if self.cpu_times else None,
            "step_cpu_s_median": round(statistics.median(self.cpu_times), 4) if self.cpu_times else None,
            "samples_per_s": round(self.batch_size / min(t), 3),
            "samples_per_s_median": round(self.batch_size / statistics.median(t), 3),
        }
        if flops:
            out["flops_per_step"] = int(flops)
            out["tflops_achieved"] = round(flops / min(t) / 1e12, 4)
            if peak:
                out["peak_fraction"] = round(flops / min(t) / peak, 4)
        return out


def time_interleaved(runs: List[TrainingStep], steps: int) -> None:
    """``steps`` rounds; each round times one step of every run, in turn."""
    for _ in range(steps):
        for r in runs:
            r.run_timed()


def measure_training_step(
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    steps: int,
    warmup: int,
    count_flops: bool = True,
    peak: Optional[float] = None,
    optimizer: str = "auto",
) -> Dict[str, Any]:
    """Warm up and time one configuration on its own (see ``TrainingStep``)."""
    run = TrainingStep(model, loss_fn, device=device, precision=precision, batch_size=batch_size, optimizer=optimizer)
    run.warm_up(warmup)
    time_interleaved([run], steps)
    flops = None
    if count_flops:
        flops = count_step_flops(run.forward_backward)
        run.opt.zero_grad(set_to_none=True)
    return run.report(flops, peak)


# op classes of ``--profile``, first match wins (self CPU time of each op; the optimizer region
# counts whole, whatever its ops)
OP_CLASSES = [
    (
        "matmul",
        (
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::baddbmm",
            "aten::addbmm",
            "aten::_addmm_activation",
            "aten::matmul",
            "aten::linear",
            "aten::mkldnn_convolution",
            "aten::convolution_backward",
            "aten::_convolution",
            "aten::convolution",
            "aten::conv2d",
            "aten::mkldnn_rnn_layer",
        ),
    ),
    ("attention (fused SDPA)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    (
        "norms, GELU, softmax",
        ("layer_norm", "gelu", "softmax", "aten::relu", "threshold_backward", "aten::norm", "vector_norm"),
    ),
    (
        "casts and copies",
        ("aten::_to_copy", "aten::copy_", "aten::to", "aten::clone", "aten::contiguous", "aten::_copy_from"),
    ),
]


def op_class(name: str) -> str:
    for cls, keys in OP_CLASSES:
        if name in keys or any(k in name for k in keys if not k.startswith("aten::")):
            return cls
    return "elementwise, reshapes, other"


def profile_step(step: TrainingStep, steps: int = 1) -> Dict[str, Any]:
    """``torch.profiler`` over ``steps`` training steps: self CPU time per op class (``OP_CLASSES``)
    and per region (forward, backward, optimizer); seconds per step. The profiler adds its own
    overhead (a few % of the step); shares, not the totals, are what to compare."""
    from torch.profiler import ProfilerActivity, profile

    regions = (REGION_FORWARD, REGION_BACKWARD, REGION_OPTIMIZER)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.step()
    by_class: Dict[str, float] = {}
    by_region: Dict[str, float] = {}
    by_op: Dict[str, float] = {}
    for ev in prof.events():
        if ev.name in regions:
            by_region[ev.name.split("::")[1]] = by_region.get(ev.name.split("::")[1], 0.0) + ev.cpu_time_total / 1e6
            continue
        region, parent = None, ev.cpu_parent
        while parent is not None:
            if parent.name in regions:
                region = parent.name
                break
            parent = parent.cpu_parent
        if region is None:
            continue
        t = ev.self_cpu_time_total / 1e6
        cls = "optimizer" if region == REGION_OPTIMIZER else op_class(ev.name)
        by_class[cls] = by_class.get(cls, 0.0) + t
        by_op[ev.name] = by_op.get(ev.name, 0.0) + t
    total = sum(by_class.values())
    order = [c for c, _ in OP_CLASSES] + ["elementwise, reshapes, other", "optimizer"]
    return {
        "profiled_s_per_step": round(total / steps, 4),
        "by_region_s": {k: round(v / steps, 4) for k, v in by_region.items()},
        "by_class_s": {c: round(by_class.get(c, 0.0) / steps, 4) for c in order},
        "by_class_share": {c: round(by_class.get(c, 0.0) / total, 4) for c in order} if total else {},
        "top_ops_s": {k: round(v / steps, 4) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:15]},
    }


class ModelRun:
    """A preset built for the benchmark: model, inputs, FLOPs, warmed-up ``TrainingStep`` and the
    peak memory of building it and its warm-up steps."""

    def __init__(
        self,
        name: str,
        *,
        decoder: Optional[str],
        batch_size: int,
        precision: str,
        warmup: int,
        device: torch.device,
        fused: bool = True,
        compile: bool = False,
        seed: int = 0,
        optimizer: str = "auto",
        frames: Optional[int] = None,
    ) -> None:
        torch.manual_seed(seed)
        kwargs: Dict[str, Any] = {"decoder": decoder} if decoder else {}
        if frames:
            kwargs["target_length"] = frames
        with PeakMemory(device) as mem:
            model = avmae.create_model(name, **kwargs).to(device).train()
            n_set = set_fused_attention(model, fused)
            inputs = random_inputs(model, batch_size, device)
            # FLOPs of the algorithm, counted once on the plain-math path: the counter does not
            # see inside every fused attention kernel, and both paths do the same arithmetic
            set_fused_attention(model, False)
            plain = TrainingStep(
                model, lambda: default_loss(model, inputs), device=device, precision=precision, batch_size=batch_size
            )
            self.flops = count_step_flops(plain.forward_backward)
            model.zero_grad(set_to_none=True)
            del plain
            set_fused_attention(model, fused)
            run = torch.compile(model) if compile else model
            self.step = TrainingStep(
                model,
                lambda: default_loss(run, inputs),
                device=device,
                precision=precision,
                batch_size=batch_size,
                optimizer=optimizer,
            )
            self.step.warm_up(warmup)
        self.model = model
        self.info = dict(
            model=name,
            decoder=decoder,
            input_shape={k: list(v.shape) for k, v in inputs.items()},
            attention="fused (SDPA)" if fused else "plain math",
            attention_modules=n_set,
            compile=compile,
            params=sum(p.numel() for p in model.parameters()),
            memory=mem.report(),
        )

    def report(self, peak: Optional[float] = None) -> Dict[str, Any]:
        out = {**self.step.report(self.flops, peak), **self.info}
        if self.info["compile"]:  # the first step compiles: its excess over a compiled step
            out["compile_s"] = round(out["first_step_s"] - out["step_s_median"], 2)
        return out


def bench_model(name: str, *, steps: int, peak: Optional[float] = None, **kwargs: Any) -> Dict[str, Any]:
    """One preset, timed on its own."""
    run = ModelRun(name, **kwargs)
    time_interleaved([run.step], steps)
    out = run.report(peak)
    del run
    gc.collect()
    return out
