"""Measure what `fleetpulse-agent top` costs at its default refresh, against its own readings.

Runs ``python -m agent.main top`` on a real pseudo-terminal (120×40, as an SSH session
gives it), draining what it writes, and beside it, in the same run, the baseline: a
process that takes the very same readings (the agent's Collector + build_metrics and the
process scan, agent/live.py LiveSource) once a second and draws nothing. After a warm-up it
measures over the window:

* CPU: utime+stime ticks and schedstat run time of each process, as % of one core;
* RSS: VmRSS at the end, and VmHWM (peak);
* bytes written to the terminal per second (what an SSH link carries).

The difference between the two is the cost of drawing with Textual.

    python3 -m bench.top_cost                  # 5 s warm-up, 60 s window
    python3 -m bench.top_cost --window-s 120 --refresh 2

Writes bench/results/top_cost.json. Needs the extra `top` (Textual).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from importlib import metadata
from typing import Any

from bench.common import (
    ROOT,
    cpu_percent,
    cpu_snapshot,
    describe_machine,
    machine,
    progress,
    status_kb,
    table,
    write_result,
)

BASELINE = """
import sys, time
from agent.collect import Collector
from agent.live import LiveSource
refresh = float(sys.argv[1])
collector = Collector()
source = LiveSource(collector, memory_total_bytes=collector.static_facts().memory_total_bytes)
tick = time.monotonic()
while True:
    tick += refresh
    time.sleep(max(0.0, tick - time.monotonic()))
    source.read(refresh)
"""


def start_on_pty(cmd: list[str], cols: int, rows: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``cmd`` on a new pseudo-terminal of cols×rows; return it and the master fd."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color",
                                 "COLORTERM": "truecolor"},
                            start_new_session=True)
    os.close(slave)
    return proc, master


class Drain(threading.Thread):
    """Read what the app writes to its terminal (a full pty would block it) and count it."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.bytes = 0
        self.counting = False
        self.counted = 0

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)
            if self.counting:
                self.counted += len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args()
    cols, rows = (int(x) for x in args.size.split("x"))
    info = machine()
    info["versions"]["textual"] = metadata.version("textual")

    top, master = start_on_pty([sys.executable, "-m", "agent.main", "top", "--refresh",
                                str(args.refresh)], cols, rows)
    drain = Drain(master)
    drain.start()
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE, str(args.refresh)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    procs = {"top": top, "baseline (same readings, no UI)": baseline}
    try:
        progress(f"warm-up {args.warmup_s:.0f} s")
        time.sleep(args.warmup_s)
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited during the warm-up (code {proc.returncode})")
        if drain.bytes == 0:
            raise SystemExit("top drew nothing on its terminal during the warm-up")
        start = {n: cpu_snapshot([p.pid]) for n, p in procs.items()}
        drain.counting = True
        deadline = time.monotonic() + args.window_s
        while time.monotonic() < deadline:
            progress(f"window: {deadline - time.monotonic():.0f} s left")
            time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
        end = {n: cpu_snapshot([p.pid]) for n, p in procs.items()}
        drain.counting = False
        runs: dict[str, Any] = {}
        for name, proc in procs.items():
            cpu = cpu_percent(start[name], end[name])
            runs[name] = {"cpu": cpu, "rss_mb": (status_kb(proc.pid, "VmRSS") or 0) / 1024,
                          "rss_peak_mb": (status_kb(proc.pid, "VmHWM") or 0) / 1024}
        runs["top"]["terminal_bytes_per_s"] = drain.counted / runs["top"]["cpu"]["window_s"]
    finally:
        os.write(master, b"q")  # quit as a person would, then make sure
        for proc in procs.values():
            try:
                proc.wait(5 if proc is top else 0.1)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        os.close(master)

    t, b = runs["top"], runs["baseline (same readings, no UI)"]
    print(f"\nfleetpulse-agent top, refresh {args.refresh:g} s, {cols}×{rows} pty: window "
          f"{t['cpu']['window_s']:.0f} s after {args.warmup_s:.0f} s warm-up; "
          f"{describe_machine(info)}; Textual {info['versions']['textual']}")
    print(table(["process", "CPU % (ticks)", "CPU % (schedstat)", "RSS MB", "peak RSS MB"],
                [[n, r["cpu"]["ticks_percent"], r["cpu"]["schedstat_percent"], r["rss_mb"],
                  r["rss_peak_mb"]] for n, r in runs.items()]))
    drawing = t["cpu"]["schedstat_percent"] - b["cpu"]["schedstat_percent"]
    print(f"top: {t['cpu']['schedstat_percent']:.2f} % of one core; the same readings without "
          f"a UI, same run: {b['cpu']['schedstat_percent']:.2f} % "
          f"({t['cpu']['schedstat_percent'] / max(b['cpu']['schedstat_percent'], 1e-9):.1f}×); "
          f"drawing costs {drawing:.2f} % ≈ {10 * drawing * args.refresh:.1f} ms of CPU per "
          f"refresh; terminal output {t['terminal_bytes_per_s'] / 1024:.1f} KiB/s")
    path = write_result("top_cost", {
        "benchmark": "top_cost", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "warmup_s": args.warmup_s, "window_s": args.window_s,
        "refresh_s": args.refresh, "size": args.size, "runs": runs})
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
