"""Measure the pretraining step and the audio data pipeline; print a table and write JSON.

    avmae benchmark --model audiomae_vit_base --decoder swin --batch-size 2 \\
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
import gc
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from avmae.files import to_json
from avmae.train.precision import choose_precision

from .bench_model import (  # noqa: F401  (the names tests and users reach through this module)
    MATRIX_FLAGS,
    OP_CLASSES,
    OPTIMIZERS,
    PRECISIONS,
    REGION_BACKWARD,
    REGION_FORWARD,
    REGION_OPTIMIZER,
    ModelRun,
    PeakMemory,
    TrainingStep,
    _trim_heap,
    bench_model,
    count_step_flops,
    cpu_model,
    default_loss,
    machine_info,
    matmul_peak,
    measure_training_step,
    model_shapes,
    op_class,
    profile_step,
    random_inputs,
    set_fused_attention,
    sync,
    time_interleaved,
    timed,
)


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
    p = argparse.ArgumentParser(
        prog="avmae benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
