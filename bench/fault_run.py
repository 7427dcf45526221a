"""Record the real agent through a quiet period and a scripted sequence of injected faults.

The real agent (``python -m agent.main run``, every 1 s) publishes to a private Mosquitto; a
``mosquitto_sub`` stores every reading. After ``--quiet-s`` seconds of the machine as it is,
each fault runs for ``--fault-s`` seconds with ``--gap-s`` seconds of calm before it, and
``--after-s`` quiet seconds close the run:

    cpu_spin      one core spun at 100 % (stress-ng --cpu 1, pinned to core 0)
    memory_leak   a process growing by equal steps to ``--leak-fraction`` of available RAM
    disk_flood    sequential writes to a file (stress-ng --hdd 1)
    net_flood     UDP datagrams sent as fast as one process can over loopback (lo is watched)
    fork_storm    processes forked and reaped as fast as possible (stress-ng --fork 2)
    cpu_and_leak  the CPU spin and the memory leak at once

Each fault's label window is [start, end + ``--tail-s``) in reading time (the agent's clock
is this machine's clock). The readings and labels go into one xz-compressed JSON-lines file:
the first line is a header (machine, settings, labels), then one agent message a line. It is
small enough to commit (about 0.6 MB an hour of readings) and is read by
``bench/fault_eval.py``; unit tests can use it without injecting anything.

    python3 -m bench.fault_run                # 1 h quiet, six faults, 20 min quiet (~105 min)
    python3 -m bench.fault_run --quiet-s 600 --out /tmp/faults-short.jsonl.xz   # a trial

For the forecasts, slow runs (``memory_ramp``: the leak over four minutes; ``disk_ramp``: 4 GB
written at a steady rate over four minutes), judged by bench/fault_eval.py too:

    python3 -m bench.fault_run --quiet-s 300 --fault-s 300 --gap-s 60 --after-s 0 \
        --faults memory_ramp,disk_ramp,memory_ramp,disk_ramp,memory_ramp,disk_ramp \
        --out bench/data/ramps.jsonl.xz

Needs mosquitto, mosquitto-clients and stress-ng (apt-get install). Run it on a machine doing
nothing else: what else runs is part of the "quiet" data.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import machine, progress
from tests.servers import MosquittoServer, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "data" / "faults.jsonl.xz"
PREFIX = "faultrun"
DEVICE = "fault-vm"
FAULTS = ("cpu_spin", "memory_leak", "disk_flood", "net_flood", "fork_storm", "cpu_and_leak")
# Slow runs for the forecasts (not in the default sequence): the memory leak, and a file
# written at a steady rate, each over 0.8 of ``--fault-s`` and then held until its end.
RAMPS = ("memory_ramp", "disk_ramp")
FILL_NAME = "fill.bin"

# A child process that leaks: grows by equal steps until it holds ``fraction`` of the RAM that
# was available when it started, over ``seconds``, touching every page, then holds it.
_LEAK = """
import sys, time
fraction, seconds = float(sys.argv[1]), float(sys.argv[2])
with open('/proc/meminfo') as f:
    avail = next(int(l.split()[1]) * 1024 for l in f if l.startswith('MemAvailable:'))
target, steps = int(avail * fraction), 50
chunks = []
for _ in range(steps):
    chunks.append(bytearray(target // steps))
    time.sleep(seconds / steps)
time.sleep(3600)
"""

# A child that floods loopback with UDP datagrams (the receiving socket drops what it cannot
# take: what counts is the interface's byte counters).
_FLOOD = """
import socket, sys
port = int(sys.argv[1])
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(('127.0.0.1', port))
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
data = b'x' * 8192
while True:
    out.sendto(data, ('127.0.0.1', port))
"""

# A child that fills the disk at a steady rate: ``total`` bytes over ``seconds``, written in
# chunks and synced, so that the partition's used bytes grow in a line; then it holds.
_FILL = """
import os, sys, time
path, total, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
chunk = 8 * 1024 * 1024
chunks = max(1, total // chunk)
data = os.urandom(chunk)
began = time.monotonic()
with open(path, 'wb') as f:
    for i in range(chunks):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        time.sleep(max(0.0, began + (i + 1) * seconds / chunks - time.monotonic()))
time.sleep(3600)
"""


def _stress_ng() -> str:
    binary = shutil.which("stress-ng")
    if binary is None:
        raise SystemExit("stress-ng is not installed: apt-get install stress-ng")
    return binary


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fault_commands(kind: str, seconds: float, leak_fraction: float, scratch: Path,
                   fill_bytes: int = 4 * 10 ** 9) -> list[list[str]]:
    """Return the command lines that inject one fault kind for ``seconds``."""
    if kind == "memory_ramp":
        return [[sys.executable, "-c", _LEAK, str(leak_fraction), str(seconds * 0.8)]]
    if kind == "disk_ramp":
        return [[sys.executable, "-c", _FILL, str(scratch / FILL_NAME), str(fill_bytes),
                 str(seconds * 0.8)]]
    stress = _stress_ng()
    timeout = f"{int(seconds)}s"
    spin = [stress, "--cpu", "1", "--cpu-load", "100", "--taskset", "0", "--timeout", timeout,
            "--quiet"]
    leak = [sys.executable, "-c", _LEAK, str(leak_fraction), str(seconds * 0.8)]
    if kind == "cpu_spin":
        return [spin]
    if kind == "memory_leak":
        return [leak]
    if kind == "disk_flood":
        return [[stress, "--hdd", "1", "--hdd-bytes", "1g", "--temp-path", str(scratch),
                 "--timeout", timeout, "--quiet"]]
    if kind == "net_flood":
        return [[sys.executable, "-c", _FLOOD, str(_free_udp_port())]]
    if kind == "fork_storm":
        return [[stress, "--fork", "2", "--timeout", timeout, "--quiet"]]
    if kind == "cpu_and_leak":
        return [spin, leak]
    raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULTS)})")


def inject(kind: str, seconds: float, leak_fraction: float, scratch: Path,
           fill_bytes: int = 4 * 10 ** 9) -> tuple[str, str]:
    """Run one fault for ``seconds``; return its start and end as ISO UTC times."""
    start = datetime.now(UTC)
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
             for cmd in fault_commands(kind, seconds, leak_fraction, scratch, fill_bytes)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    (scratch / FILL_NAME).unlink(missing_ok=True)
    return start.isoformat(), datetime.now(UTC).isoformat()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def record(args: argparse.Namespace) -> dict[str, Any]:
    """Run the agent, the quiet period and the faults; return the header (labels included)."""
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    for kind in faults:
        if kind not in FAULTS + RAMPS:
            raise SystemExit(f"unknown fault {kind!r}: use some of {', '.join(FAULTS + RAMPS)}")
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-faults-"))
    if "disk_ramp" in faults and shutil.disk_usage(work).free < 3 * args.fill_bytes:
        raise SystemExit(f"{work} has less than 3 × --fill-bytes free: lower --fill-bytes")
    broker = MosquittoServer(work / "broker", persistence=False).start()
    readings = work / "readings.jsonl"
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q",
                            "1", "-t", f"{PREFIX}/+/metrics"],
                           stdout=open(readings, "wb"), stderr=subprocess.DEVNULL)
    agent = subprocess.Popen([sys.executable, "-m", "agent.main", "run", "--broker-url",
                              broker.url, "--topic-prefix", PREFIX, "--device-id", DEVICE,
                              "--interval-s", "1", "--state-dir", str(work / "agent"),
                              "--process-period-s", "0"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(work / "agent.log", "wb"))
    labels: list[dict[str, str]] = []
    try:
        wait_for(lambda: readings.stat().st_size > 0, 30, "the agent's first reading")
        started = datetime.now(UTC).isoformat()
        quiet_end = time.monotonic() + args.quiet_s
        while (left := quiet_end - time.monotonic()) > 0:
            progress(f"quiet: {left:5.0f} s left, {_count_lines(readings)} readings")
            time.sleep(min(30.0, left))
        for i, kind in enumerate(faults, 1):
            time.sleep(args.gap_s)
            progress(f"fault {i}/{len(faults)}: {kind} for {args.fault_s:g} s")
            start, end = inject(kind, args.fault_s, args.leak_fraction, work, args.fill_bytes)
            labels.append({"kind": kind, "start": start, "end": end})
        time.sleep(args.gap_s)
        after_end = time.monotonic() + args.after_s
        while (left := after_end - time.monotonic()) > 0:
            progress(f"quiet after the faults: {left:5.0f} s left")
            time.sleep(min(30.0, left))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        time.sleep(1.0)
        sub.send_signal(signal.SIGTERM)
        sub.wait(10)
        broker.stop()
    header = {"kind": "fleetpulse-fault-run", "started": started,
              "ended": datetime.now(UTC).isoformat(), "machine": machine(),
              "device_id": DEVICE, "interval_s": 1.0, "quiet_s": args.quiet_s,
              "fault_s": args.fault_s, "gap_s": args.gap_s, "tail_s": args.tail_s,
              "after_s": args.after_s, "fill_bytes": args.fill_bytes,
              "leak_fraction": args.leak_fraction, "labels": labels}
    with lzma.open(args.out, "wb", preset=9) as out:
        out.write(json.dumps(header).encode() + b"\n")
        with open(readings, "rb") as f:
            shutil.copyfileobj(f, out)
    shutil.rmtree(work, ignore_errors=True)
    return header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet-s", type=float, default=3600.0)
    parser.add_argument("--fault-s", type=float, default=60.0)
    parser.add_argument("--gap-s", type=float, default=180.0)
    parser.add_argument("--tail-s", type=float, default=30.0,
                        help="seconds after a fault's end still in its label window")
    parser.add_argument("--after-s", type=float, default=1200.0,
                        help="quiet seconds recorded after the last fault (judged as quiet)")
    parser.add_argument("--leak-fraction", type=float, default=0.5)
    parser.add_argument("--fill-bytes", type=int, default=4 * 10 ** 9,
                        help="what a disk_ramp writes (default 4 GB)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, in order; also {', '.join(RAMPS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    header = record(args)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): {len(header['labels'])} faults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
