#!/usr/bin/env python
"""Measure the pretraining step and the audio data pipeline; print a table and write JSON.

    python tools/benchmark.py --model audiomae_vit_base --decoder swin --batch-size 2 \\
        --precision bf16 --steps 5 --warmup 2 --workers 0,1,2 --json out.json

Sections (each can be switched off):

* ``model``: forward + backward + AdamW step of a preset on random inputs (AdamW built as the
  trainer builds it: ``--optimizer auto`` is ``optim.fused=auto``): step time (best and
  median of ``--steps`` after ``--warmup``; the configurations are built and warmed up first, then
  timed one step each in turn, so that load from other work hits them alike),
  samples/s, FLOPs of one step (``FlopCounterMode``,
  forward + backward), achieved FLOP/s and its fraction of the device's matmul peak measured here
  in the same precision, peak memory (CUDA max allocated; on CPU peak RSS over the section).
* ``baseline``: the same step with plain-math attention (timm ``fused_attn=False``,
  ``WindowAttention.fused=False``) in fp32 with torch's default AdamW (``--baseline-optimizer``),
  and the speed-up of ``model`` over it.
* ``data``: compressed audio from a manifest (default: the demo data) to model-ready normalised
  fbank batches, with 0..N DataLoader workers, for four paths: ``dataset`` (AudioDataset: PyAV
  decode + Kaldi fbank per item in the workers), ``batched-worker`` (decode + batched fbank in the
  workers), ``batched-main`` (workers only decode; the batched fbank runs in the main process on
  the device) and ``decode-only`` (the workers' share of ``batched-main``: what one core delivers
  when the fbank runs on an accelerator). Clips/s are counted after the first batch (steady
  state); the main process uses one thread, each worker one.

The device is CUDA when available (``--device`` to choose). Timings on a shared machine are
noisy: every number is the best (and median) of repeats.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import avmae  # noqa: E402
from avmae.files import to_json  # noqa: E402
from avmae.layers import WindowAttention  # noqa: E402
from avmae.train.optim import build_optimizer, param_groups  # noqa: E402
from avmae.train.precision import choose_precision, cpu_flags, cpu_model, linear_shapes  # noqa: E402

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


# ----------------------------------------------------------------------------------- data
def _items(manifest: Path, clips: int) -> List[Dict[str, Any]]:
    from avmae.data import read_manifest

    base = read_manifest(manifest)
    if not base:
        raise ValueError(f"{manifest} has no items")
    return [base[i % len(base)] for i in range(max(clips, 1))]


class _BatchedCollate:
    """collate_waveforms then the batched fbank, in the worker (picklable)."""

    def __init__(self, frontend) -> None:
        from avmae.data.fast_fbank import BatchedAudioFrontend

        self.fe = BatchedAudioFrontend.from_frontend(frontend, center=False)

    def __call__(self, items):
        from avmae.data.fast_fbank import collate_waveforms

        batch = collate_waveforms(items)
        return {"audio": self.fe(batch["wave"], batch["length"]), "label": batch["label"], "index": batch["index"]}


def _worker_threads(_: int) -> None:
    torch.set_num_threads(1)


def bench_data(
    manifest: Path,
    *,
    mode: str,
    workers: int,
    clips: int,
    batch_size: int,
    target_length: int,
    device: torch.device,
    repeats: int = 1,
) -> Dict[str, Any]:
    from torch.utils.data import DataLoader

    from avmae.data import AudioDataset, AudioFrontend
    from avmae.data.fast_fbank import BatchedAudioFrontend, WaveformDataset, collate_waveforms

    items = _items(manifest, clips)
    fe = AudioFrontend(target_length=target_length)
    main_fe = None
    if mode == "dataset":
        ds, collate = AudioDataset(items, frontend=fe), None
    elif mode == "batched-worker":
        ds, collate = WaveformDataset(items, frontend=fe), _BatchedCollate(fe)
    elif mode == "batched-main":
        ds, collate = WaveformDataset(items, frontend=fe), collate_waveforms
        main_fe = BatchedAudioFrontend.from_frontend(fe, center=False).to(device)
    elif mode == "decode-only":  # the workers' share when the fbank runs on an accelerator
        ds, collate = WaveformDataset(items, frontend=fe), collate_waveforms
    else:
        raise ValueError(f"unknown data mode {mode!r}")
    kwargs = dict(
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        worker_init_fn=_worker_threads if workers else None,
        pin_memory=device.type == "cuda",
    )
    if collate is not None:
        kwargs["collate_fn"] = collate
    if workers:
        kwargs["prefetch_factor"] = 4
    rates, totals = [], []
    threads = torch.get_num_threads()
    # one thread in the main process: with workers=0 the numbers are per core, and with workers
    # it does not compete with them (intra-op thread pools on busy cores stall on every op)
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            t_first, n_after = None, 0
            for batch in DataLoader(ds, **kwargs):
                if main_fe is not None:
                    x = main_fe(batch["wave"].to(device, non_blocking=True), batch["length"].to(device))
                elif mode == "decode-only":
                    x = batch["wave"]
                else:
                    x = batch["audio"].to(device, non_blocking=True)
                sync(device)
                if t_first is None:
                    t_first = time.perf_counter()
                else:
                    n_after += x.shape[0]
            t_end = time.perf_counter()
            rates.append(n_after / max(t_end - t_first, 1e-9))
            totals.append(len(items) / (t_end - t0))
    finally:
        torch.set_num_threads(threads)
    best = max(rates)
    return {
        "mode": mode,
        "workers": workers,
        "clips": len(items),
        "batch_size": batch_size,
        "target_length": target_length,
        "fbank_device": {"batched-main": str(device), "decode-only": "-"}.get(mode, "cpu"),
        "clips_per_s": round(best, 1),
        "clips_per_s_per_worker": round(best / max(workers, 1), 1),
        "clips_per_s_incl_startup": round(max(totals), 1),
    }


def bench_fbank(
    device: torch.device, *, batch_size: int, seconds: float, target_length: int, repeats: int = 3
) -> List[Dict[str, Any]]:
    """The fbank alone on random clips: torchaudio's Kaldi fbank per item (AudioFrontend, one CPU
    thread), the batched fbank on one CPU thread, and the batched fbank on ``device``."""
    from avmae.data import AudioFrontend
    from avmae.data.fast_fbank import BatchedAudioFrontend

    g = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(batch_size, int(seconds * 16000), generator=g)
    fe = AudioFrontend(target_length=target_length)
    bfe = BatchedAudioFrontend.from_frontend(fe)
    runs = [("kaldi-per-item", torch.device("cpu"), lambda: [fe(w[None]) for w in waves])]
    runs.append(("batched", torch.device("cpu"), lambda: bfe(waves)))
    if device.type != "cpu":
        dev_fe, dev_waves = copy.deepcopy(bfe).to(device), waves.to(device)  # .to moves a module in place
        runs.append(("batched", device, lambda: dev_fe(dev_waves)))
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, dev, fn in runs:
            fn()
            best = min(timed(fn, dev, repeats))
            out.append(
                {
                    "fbank": name,
                    "device": str(dev),
                    "clips": batch_size,
                    "seconds_per_clip": seconds,
                    "clips_per_s": round(batch_size / best, 1),
                }
            )
    finally:
        torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------------- report
def format_table(result: Dict[str, Any]) -> str:
    lines = []
    m = result["machine"]
    lines.append(
        f"device: {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; CPU: {m['host_cpu']} x{m['cpus_usable']}"
        f"{' (' + ' '.join(m['host_cpu_flags']) + ')' if m.get('host_cpu_flags') else ''};"
        f" torch {m['torch']}; threads {m['torch_threads']}; {m['date']}"
    )
    if result.get("matmul_peak_tflops"):
        lines.append(
            "matmul peak: " + ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in result["matmul_peak_tflops"].items())
        )
    auto = result.get("precision_auto")
    if auto:
        probe = (
            f": F.linear fp32 {auto['fp32_gflops']:.1f}, bf16 autocast {auto['bf16_gflops']:.1f} GFLOP/s"
            f" ({auto['source']})"
            if auto.get("fp32_gflops")
            else ""
        )
        lines.append(f"precision auto (as train.mixed_precision=auto) -> {auto['precision']}{probe}")
    runs = result.get("model_step", {})
    if runs:
        lines.append("")
        lines.append(
            f"{'model step':34s} {'prec':5s} {'AdamW':11s} {'B':>4s} {'best s':>8s} {'median s':>9s} {'CPU s':>7s}"
            f" {'samples/s':>10s} {'TFLOP/s':>8s} {'of peak':>8s} {'MFU':>6s} {'mem MB':>9s} {'compile s':>9s}"
        )
        for key, r in runs.items():
            if not isinstance(r, dict) or "step_s_best" not in r:
                continue
            label = f"{key}: {r['model']}/{r['decoder'] or '-'} {'compiled' if r['compile'] else ''}".strip()
            lines.append(
                f"{label[:34]:34s} {r['precision']:5s} {r['optimizer']:11s} {r['batch_size']:4d}"
                f" {r['step_s_best']:8.3f} {r['step_s_median']:9.3f} {r.get('step_cpu_s_best') or float('nan'):7.3f}"
                f" {r['samples_per_s']:10.2f} {r.get('tflops_achieved', float('nan')):8.3f}"
                f" {r.get('peak_fraction', float('nan')):8.1%} {r.get('mfu', float('nan')):6.1%}"
                f" {r['memory']['delta_mb']:9.0f} {r.get('compile_s', float('nan')):9.1f}"
            )
        if "speedup_vs_baseline" in runs:
            lines.append(
                f"speed-up over the fp32 plain-math baseline: {runs['speedup_vs_baseline']:.2f}x (best step times)"
            )
        profiled = {k: r["profile"] for k, r in runs.items() if isinstance(r, dict) and "profile" in r}
        if profiled:
            lines.append("")
            lines.append(
                "profile, self CPU time per step (s, share): "
                + "; ".join(f"{k} {p['profiled_s_per_step']:.3f} s" for k, p in profiled.items())
            )
            lines.append(f"{'op class':30s} " + " ".join(f"{k[:18]:>18s}" for k in profiled))
            for cls in next(iter(profiled.values()))["by_class_s"]:
                lines.append(
                    f"{cls:30s} "
                    + " ".join(
                        f"{p['by_class_s'][cls]:9.3f} {p['by_class_share'].get(cls, 0):7.1%} "
                        for p in profiled.values()
                    )
                )
    if result.get("data"):
        lines.append("")
        lines.append(
            f"{'data pipeline':16s} {'workers':>7s} {'fbank on':>8s} {'clips/s':>9s} {'per worker':>11s}"
            f" {'incl. startup':>14s}"
        )
        for r in result["data"]:
            lines.append(
                f"{r['mode']:16s} {r['workers']:7d} {r['fbank_device']:>8s} {r['clips_per_s']:9.1f}"
                f" {r['clips_per_s_per_worker']:11.1f} {r['clips_per_s_incl_startup']:14.1f}"
            )
    if result.get("fbank"):
        lines.append("")
        lines.append(f"{'fbank only':16s} {'device':>8s} {'clip s':>7s} {'clips/s':>9s}")
        for r in result["fbank"]:
            lines.append(f"{r['fbank']:16s} {r['device']:>8s} {r['seconds_per_clip']:7.2f} {r['clips_per_s']:9.1f}")
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="audiomae_vit_base", help="a pretraining preset (avmae.list_models())")
    p.add_argument("--decoder", default="swin", help="decoder of the preset ('' keeps the preset's default)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument(
        "--precision",
        choices=["auto", *sorted(PRECISIONS)],
        default="auto",
        help=(
            "autocast dtype of the main run; auto: as the trainer's train.mixed_precision=auto (bf16 on CUDA; on a CPU"
            " the faster of fp32 and bf16 in its cached matmul probe)"
        ),
    )
    p.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default="auto",
        help=(
            "auto: as the trainer's default (optim.fused=auto: fused AdamW where torch has it for the device); adamw:"
            " torch's default implementation; adamw-fused: fused"
        ),
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="the model's input length in fbank frames (target_length; default: the preset's)",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile the model of the main run")
    p.add_argument(
        "--also-compile",
        action="store_true",
        help="also time every configuration of ours compiled (torch.compile), beside eager",
    )
    p.add_argument(
        "--spec-peak-tflops",
        type=float,
        default=None,
        help=(
            "the device's dense bf16/fp16 peak from its data sheet (H100/H200 SXM: 989); MFU = achieved / this, for"
            " bf16 and fp16 runs"
        ),
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument(
        "--peak-size", type=int, default=None, help="n of the n x n x n peak matmul (default 2048 CPU, 8192 CUDA)"
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N steps of every configuration: time per op class (torch.profiler)",
    )
    p.add_argument("--no-model", action="store_true", help="skip the model step")
    p.add_argument("--no-baseline", action="store_true", help="skip the fp32 plain-math baseline")
    p.add_argument("--baseline-steps", type=int, default=None, help="timed steps of the baseline (default --steps)")
    p.add_argument(
        "--baseline-optimizer",
        choices=list(OPTIMIZERS),
        default="adamw",
        help="AdamW of the baseline (default: torch's default implementation)",
    )
    p.add_argument(
        "--also-precision", choices=sorted(PRECISIONS), default=None, help="also time the fused model in this precision"
    )
    p.add_argument("--no-data", action="store_true", help="skip the data pipeline")
    p.add_argument("--manifest", type=Path, default=None, help="AudioMAE JSON manifest (default: demo train.json)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--data-modes", default="dataset,batched-worker,batched-main,decode-only")
    p.add_argument("--data-clips", type=int, default=240, help="clips per data run (the manifest repeats)")
    p.add_argument("--data-batch-size", type=int, default=16)
    p.add_argument("--data-repeats", type=int, default=2)
    p.add_argument("--target-length", type=int, default=1024, help="fbank frames of the data pipeline")
    p.add_argument("--no-fbank", action="store_true", help="skip the fbank-only comparison")
    p.add_argument("--fbank-batch", type=int, default=32, help="clips per fbank-only run")
    p.add_argument("--fbank-seconds", type=float, default=10.0, help="clip length of the fbank-only runs")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """The benchmark of ``argv`` (as on the command line): prints the table, writes ``--json``
    and returns the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    result: Dict[str, Any] = {"command": [sys.executable, *sys.argv] if argv is None else ["tools/benchmark.py", *argv]}
    result["machine"] = machine_info(device)
    result["matmul_peak_tflops"] = {}
    if not args.no_model:
        peaks = {}
        for prec in sorted({args.precision, args.also_precision, "fp32", "bf16"} - {"auto", None}):
            peaks[prec] = matmul_peak(device, prec, args.peak_size)
            result["matmul_peak_tflops"][prec] = round(peaks[prec] / 1e12, 4)
        if args.precision == "auto":
            # the trainer's choice (train.mixed_precision=auto), from the same cached probe
            choice = choose_precision(device, shapes=model_shapes(args.model, args.decoder or None, args.frames))
            args.precision = {"no": "fp32"}.get(choice.mixed_precision, choice.mixed_precision)
            result["precision_auto"] = {**choice.as_dict(), "precision": args.precision}
            print(f"precision auto: {choice.describe()}", file=sys.stderr)
        runs: Dict[str, Any] = {}
        common = dict(
            decoder=args.decoder or None,
            batch_size=args.batch_size,
            warmup=args.warmup,
            device=device,
            frames=args.frames,
        )
        configs = {"ours": dict(precision=args.precision, fused=True, compile=args.compile, optimizer=args.optimizer)}
        if args.also_precision and args.also_precision != args.precision:
            configs[f"ours_{args.also_precision}"] = dict(
                precision=args.also_precision, fused=True, compile=args.compile, optimizer=args.optimizer
            )
        if args.also_compile and not args.compile:
            for key, cfg in list(configs.items()):
                configs[f"{key}_compiled"] = dict(cfg, compile=True)
        if not args.no_baseline:
            configs["baseline"] = dict(precision="fp32", fused=False, optimizer=args.baseline_optimizer)
        built = {}
        for key, cfg in configs.items():
            built[key] = ModelRun(args.model, **cfg, **common)
            print(f"{key}: built and warmed up", file=sys.stderr)
        # timed steps in alternation; the baseline may take fewer rounds
        for i in range(max(args.steps, args.baseline_steps or 0)):
            for key, run in built.items():
                if key != "baseline" or i < (args.baseline_steps or args.steps):
                    run.step.run_timed()
        for key, run in built.items():
            runs[key] = run.report(peaks.get(run.step.precision))
            print(f"{key}: {runs[key]['step_s_best']:.3f} s/step", file=sys.stderr)
        if args.profile:
            for key, run in built.items():
                runs[key]["profile"] = profile_step(run.step, args.profile)
        built.clear()
        del run
        gc.collect()
        if "baseline" in runs:
            runs["speedup_vs_baseline"] = round(runs["baseline"]["step_s_best"] / runs["ours"]["step_s_best"], 3)
            runs["speedup_vs_baseline_median"] = round(
                runs["baseline"]["step_s_median"] / runs["ours"]["step_s_median"], 3
            )
        # the peaks again after the runs (on a shared machine one measurement can land in a busy
        # moment); the higher value of the two counts
        for prec in peaks:
            peaks[prec] = max(peaks[prec], matmul_peak(device, prec, args.peak_size))
            result["matmul_peak_tflops"][prec] = round(peaks[prec] / 1e12, 4)
        for r in runs.values():
            if isinstance(r, dict) and r.get("tflops_achieved") and r["precision"] in peaks:
                r["peak_fraction"] = round(r["tflops_achieved"] * 1e12 / peaks[r["precision"]], 4)
            if (
                isinstance(r, dict)
                and r.get("tflops_achieved")
                and args.spec_peak_tflops
                and r["precision"] in ("bf16", "fp16")
            ):
                r["mfu"] = round(r["tflops_achieved"] / args.spec_peak_tflops, 4)
        result["model_step"] = runs
    if not args.no_data:
        manifest = args.manifest
        if manifest is None:
            from avmae.data import ensure_demo_audio

            manifest = ensure_demo_audio() / "train.json"
        result["data_manifest"] = str(manifest)
        result["data"] = []
        for mode in [m for m in args.data_modes.split(",") if m]:
            for w in [int(x) for x in args.workers.split(",") if x != ""]:
                r = bench_data(
                    manifest,
                    mode=mode,
                    workers=w,
                    clips=args.data_clips,
                    batch_size=args.data_batch_size,
                    target_length=args.target_length,
                    device=device,
                    repeats=args.data_repeats,
                )
                result["data"].append(r)
                print(f"data {mode} workers={w}: {r['clips_per_s']:.1f} clips/s", file=sys.stderr)
    if not args.no_fbank:
        result["fbank"] = bench_fbank(
            device, batch_size=args.fbank_batch, seconds=args.fbank_seconds, target_length=args.target_length
        )
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(to_json(result, indent=1))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry (``avmae benchmark``): runs the benchmark -> exit status 0."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
