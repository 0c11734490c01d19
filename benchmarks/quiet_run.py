#!/usr/bin/env python
"""Run a command when the machine is quiet and say how quiet it stayed (Linux).

    python benchmarks/quiet_run.py [--idle 0.9] [--window 10] [--max-wait 3600] -- CMD ARGS...

Waits until the CPUs were at least ``--idle`` idle over the last ``--window`` seconds (from
/proc/stat), then runs CMD and reports: wall time, the CPU time of CMD and its children, and the
CPU time other processes used meanwhile (all CPU time on the machine minus CMD's), as a share of
the cores. Prints one JSON line at the end (also to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple


def cpu_times() -> Tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / hz, total / hz


def wait_quiet(idle: float, window: float, max_wait: float) -> float:
    """Seconds waited until a ``window`` with at least ``idle`` idle share (or ``max_wait``)."""
    start = time.time()
    while True:
        b0, t0 = cpu_times()
        time.sleep(window)
        b1, t1 = cpu_times()
        if (t1 - t0) > 0 and 1 - (b1 - b0) / (t1 - t0) >= idle:
            return time.time() - start
        if time.time() - start > max_wait:
            return -1.0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle", type=float, default=0.9)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--max-wait", type=float, default=3600.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command")
    waited = wait_quiet(args.idle, args.window, args.max_wait)
    cores = len(os.sched_getaffinity(0))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = cpu_times()
    w0 = time.time()
    status = subprocess.call(cmd)
    wall = time.time() - w0
    b1, t1 = cpu_times()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    machine = os.cpu_count() or cores
    others = max(0.0, (b1 - b0) - own)
    report = {
        "cmd": cmd,
        "status": status,
        "waited_for_quiet_s": round(waited, 1),
        "quiet_threshold": {"idle": args.idle, "window_s": args.window},
        "wall_s": round(wall, 1),
        "cmd_cpu_s": round(own, 1),
        "others_cpu_s": round(others, 1),
        "others_share_of_machine": round(others / (wall * machine), 3) if wall else None,
        "cpus": machine,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
