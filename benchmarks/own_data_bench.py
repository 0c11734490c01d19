#!/usr/bin/env python
"""The bench of ``avmae finetune``: generated labelled sets of several kinds, each run with several seeds.

    python benchmarks/own_data_bench.py generate [--root runs/own-data-bench]
    python benchmarks/own_data_bench.py run [--sets digits,commands-noisy,events,demo] [--seeds 0 1 2]
        [--jobs 2] [--tag NAME] [-- finetune args and key=value overrides]

``generate`` writes the sets once (cached: kept while their parameters are unchanged; about a minute):

- ``digits``: the ten digits said by espeak-ng, 40 training clips per class from 18 voices, 12 test
  clips per class from 18 other voices (other accents, other variants), speeds 0.75-1.35, SNR 35-45 dB;
- ``commands-noisy``: ten command words said by espeak-ng and flite (alternating), the same
  disjoint-voice rule for both, 40 + 12 per class, background noise (white, pink, brown, hum, band)
  at 5-30 dB SNR;
- ``events``: eight kinds of short synthesised sounds (pluck, bell, drum, claps, whistle, buzz,
  knocks, bowed note) with drawn pitch, timbre, length and onset, 40 + 12 per class, SNR 10-30 dB;
- ``demo``: the demo clips (six classes, 2.6 s, 40 + 10 per class).

A set whose synthesiser is missing is skipped with the reason (apt-get install espeak-ng flite).
``run`` runs ``avmae finetune`` on each set and seed (one thread and no loader workers a run,
``--jobs`` at a time), keeps
each run's output in ``<root>/runs/<tag>/<set>-s<seed>.log``, and prints the held-out accuracy per
run and its mean and spread per set, plus the training accuracy where the command printed one;
``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ["digits", "commands-noisy", "events", "demo"]
PER_CLASS = {"train": 40, "test": 12}


def generate(root: Path, names: List[str]) -> Dict[str, Tuple[List[str], str]]:
    """Write the sets named in ``names`` under ``root`` -> {set: (finetune arguments, '' or why skipped)}."""
    from avmae.data import ensure_demo_audio
    from avmae.data.labelled_sets import (
        COMMANDS,
        DIGITS,
        SynthesiserMissing,
        ensure_sound_events,
        ensure_spoken_words,
    )

    out: Dict[str, Tuple[List[str], str]] = {}
    for name in names:
        t0 = time.time()
        try:
            if name == "digits":
                d = ensure_spoken_words(root / name, PER_CLASS, words=DIGITS, synths=("espeak-ng",), snr=(35.0, 45.0))
            elif name == "commands-noisy":
                d = ensure_spoken_words(
                    root / name, PER_CLASS, words=COMMANDS, synths=("espeak-ng", "flite"), snr=(5.0, 30.0), seed=1
                )
            elif name == "events":
                d = ensure_sound_events(root / name, PER_CLASS, seed=2)
            elif name == "demo":
                demo = ensure_demo_audio(root / name, num_train_per_class=40, num_eval_per_class=10)
                out[name] = (
                    [str(demo / "train.json"), "--eval", str(demo / "eval.json")]
                    + ["--label-csv", str(demo / "class_labels_indices.csv")],
                    "",
                )
                continue
            else:
                raise SystemExit(f"unknown set {name!r}; one of {SETS}")
        except SynthesiserMissing as exc:
            out[name] = ([], str(exc))
            print(f"{name}: skipped: {exc}", flush=True)
            continue
        out[name] = ([str(d["train"]), "--eval", str(d["test"])], "")
        print(f"{name}: {d['train'].parent} ({time.time() - t0:.0f} s)", flush=True)
    return out


_ACC = re.compile(r"^held-out accuracy:\s+([\d.]+) %", re.M)
_TRAIN = re.compile(r"^train accuracy:\s+([\d.]+) %", re.M)
_LOSS = re.compile(r"^train loss:\s+[\d.]+ -> ([\d.]+)", re.M)


def run_one(args: List[str], log: Path) -> Dict[str, Optional[float]]:
    """One ``avmae finetune`` in a child process -> {acc, train_acc, seconds, rc}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins")]))
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "avmae", "finetune", *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        ).returncode
    text = log.read_text(errors="replace")
    pick = lambda rx: float(rx.search(text).group(1)) if rx.search(text) else None  # noqa: E731
    return {
        "acc": pick(_ACC),
        "train_acc": pick(_TRAIN),
        "train_loss": pick(_LOSS),
        "seconds": time.time() - t0,
        "rc": rc,
    }


def _mean_spread(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["generate", "run"])
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "own-data-bench")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--tag", default="default", help="name of this configuration (its logs' folder)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    extra = argv[cut + 1 :]  # after --: finetune arguments and key=value overrides
    names = [s for s in a.sets.split(",") if s]
    sets = generate(a.root, names)
    if a.command == "generate":
        return 0
    jobs = []
    for seed in a.seeds:  # every set's first seed first: a bench cut short still covers every set
        for name in names:
            base, why = sets[name]
            if why:
                continue
            out = a.root / "runs" / a.tag / f"{name}-s{seed}"
            args = base + ["-o", str(out), "--seed", str(seed), "train.threads=1", "data.num_workers=0"]
            args += ["logging.progress=false", "logging.tensorboard=false"] + extra
            jobs.append((name, seed, args, out.with_suffix(".log")))
    print(f"{len(jobs)} runs, {a.jobs} at a time, tag {a.tag}: {' '.join(extra)}", flush=True)
    results: Dict[str, List[Dict]] = {}

    def work(job):
        name, seed, args, log = job
        r = run_one(args, log)
        with open(a.root / "runs" / f"{a.tag}.jsonl", "a") as f:  # as they come: a bench cut short keeps its runs
            f.write(json.dumps({"set": name, "seed": seed, "extra": extra, **r}) + "\n")
        print(
            f"  {name} seed {seed}: held-out {r['acc']} %, train {r['train_acc']} % (loss {r['train_loss']}),"
            f" {r['seconds']:.0f} s (rc {r['rc']})",
            flush=True,
        )
        return name, seed, r

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for name, seed, r in pool.map(work, jobs):
            results.setdefault(name, []).append({"seed": seed, **r})
    print(f"\n| set | held-out top-1 % (mean ± sd) | train % | per seed | s / run |  [{a.tag}]")
    print("|---|---|---|---|---|")
    for name in names:
        rs = sorted(results.get(name, []), key=lambda r: r["seed"])
        if sets[name][1]:
            print(f"| {name} | skipped: {sets[name][1]} | | | |")
            continue
        accs = [r["acc"] for r in rs if r["acc"] is not None]
        trains = [r["train_acc"] for r in rs if r["train_acc"] is not None]
        per = " / ".join("-" if r["acc"] is None else f"{r['acc']:.1f}" for r in rs)
        secs = statistics.mean(r["seconds"] for r in rs) if rs else 0
        print(f"| {name} | {_mean_spread(accs)} | {_mean_spread(trains)} | {per} | {secs:.0f} |")
    if a.json:
        info = {"tag": a.tag, "extra": extra, "machine": platform.processor() or platform.machine(), "results": results}
        a.json.write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
