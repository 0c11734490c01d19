#!/usr/bin/env python
"""The demo training step on a shared CPU: 1, 2 and N threads, OpenMP wait policies, alone and
beside a busy process.

Each configuration is its own Python process (the OpenMP wait policy is read once, when torch
loads its OpenMP runtime), built and warmed up first; then, in rounds, each process times one step
in turn, so that load from other work hits every configuration alike. The same rounds run again
while one busy process (another Python doing matmuls with torch's default threads and wait policy,
as an unrelated job would) shares the machine. Output: a table and ``--json``.

    python benchmarks/shared_cpu.py --threads 1,2,auto --policies default,passive --rounds 8

``auto`` is what the trainer picks (``avmae.train.threads``); ``default`` leaves OMP_WAIT_POLICY
unset (the process would otherwise get avmae's default: see ``avmae/_openmp.py``), ``passive``
and ``active`` set it, ``spin=N`` sets GNU OpenMP's ``GOMP_SPINCOUNT`` (spin N times, then sleep).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]

# one configuration: reads "step" lines, answers with the step's seconds
CHILD = r"""
import sys, time, json
import torch
import avmae
from avmae.train.optim import build_optimizer, param_groups
from avmae.train.threads import configure_threads
threads = sys.argv[1]
settings = configure_threads(threads if threads == "auto" else int(threads))
torch.manual_seed(0)
model = avmae.create_model(sys.argv[2], decoder="swin", target_length=int(sys.argv[3]), norm_pix_loss=False).train()
cpu = [torch.device("cpu")]
opt = build_optimizer(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused="auto", devices=cpu)
x = {"audio": torch.randn(int(sys.argv[4]), 1, int(sys.argv[3]), 128)}
def step():
    model(x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
step(); step()
print(json.dumps({"ready": True, "threads": settings.intra_op, "wait_policy": settings.wait_policy}), flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    t = time.perf_counter(); step()
    print(time.perf_counter() - t, flush=True)
"""

BUSY = r"""
import torch, time, sys
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a @ b
"""


class Config:
    def __init__(self, threads: str, policy: str, args: argparse.Namespace) -> None:
        self.threads, self.policy = threads, policy
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("OMP_NUM_THREADS", None)
        env.pop("OMP_WAIT_POLICY", None)
        env.pop("GOMP_SPINCOUNT", None)
        if policy.startswith("spin="):  # GNU OpenMP: spin this many times, then sleep
            env["AVMAE_OMP_WAIT_POLICY"] = "keep"
            env["GOMP_SPINCOUNT"] = policy.split("=", 1)[1]
        elif policy != "default":
            env["OMP_WAIT_POLICY"] = policy.upper()
        else:
            env["AVMAE_OMP_WAIT_POLICY"] = "keep"  # leave the OpenMP runtime's own default
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, threads, args.model, str(args.frames), str(args.batch_size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.times: Dict[str, List[float]] = {}
        self.info: Dict[str, object] = {}

    def ready(self) -> None:
        self.info = json.loads(self.proc.stdout.readline())

    def step(self, phase: str) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.times.setdefault(phase, []).append(float(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    @property
    def name(self) -> str:
        return f"threads={self.threads} ({self.info.get('threads')}), wait={self.policy}"


def run_rounds(configs: List[Config], phase: str, rounds: int) -> None:
    for _ in range(rounds):
        for c in configs:
            c.step(phase)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="audiomae_demo")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", default="1,2,auto", help="comma-separated: numbers or auto (the trainer's choice)")
    p.add_argument("--policies", default="default,passive", help="comma-separated: default, passive, active")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument(
        "--busy-threads", type=int, default=None, help="threads of the busy process (default: torch's default)"
    )
    p.add_argument("--no-alone", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    configs = [Config(t, pol, args) for t in args.threads.split(",") for pol in args.policies.split(",")]
    result: Dict[str, object] = {
        "load_before": os.getloadavg(),
        "cpus": len(os.sched_getaffinity(0)),
        "args": vars(args) | {"json": str(args.json)},
    }
    try:
        for c in configs:
            c.ready()
        if not args.no_alone:
            run_rounds(configs, "alone", args.rounds)
        busy_env = dict(os.environ)
        busy_env.pop("OMP_WAIT_POLICY", None)
        if args.busy_threads:
            busy_env["OMP_NUM_THREADS"] = str(args.busy_threads)
        busy = subprocess.Popen([sys.executable, "-c", BUSY, "100000"], env=busy_env)
        try:
            time.sleep(3)
            run_rounds(configs, "beside busy", args.rounds)
        finally:
            busy.terminate()
            busy.wait(timeout=30)
    finally:
        for c in configs:
            c.close()
    result["load_after"] = os.getloadavg()
    rows = []
    print(f"{'configuration':40s} {'phase':12s} {'best s':>8s} {'median s':>9s}")
    for c in configs:
        row = {
            "threads": c.threads,
            "intra_op": c.info.get("threads"),
            "policy": c.policy,
            "wait_policy": c.info.get("wait_policy"),
        }
        for phase, ts in c.times.items():
            row[phase] = {
                "best": round(min(ts), 4),
                "median": round(statistics.median(ts), 4),
                "all": [round(t, 4) for t in ts],
            }
            print(f"{c.name:40s} {phase:12s} {min(ts):8.3f} {statistics.median(ts):9.3f}")
        if "alone" in c.times and "beside busy" in c.times:
            row["slowdown_median"] = round(
                statistics.median(c.times["beside busy"]) / statistics.median(c.times["alone"]), 2
            )
            print(f"{'':40s} {'slow-down':12s} {row['slowdown_median']:8.2f}x (medians)")
        rows.append(row)
    result["configs"] = rows
    print(f"load average before {result['load_before']}, after {result['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
