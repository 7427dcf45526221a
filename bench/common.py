"""Helpers shared by the benchmarks: machine facts, per-process CPU and memory, results.

CPU is read from /proc: ``utime + stime`` of /proc/<pid>/stat in clock ticks (what the
brief and ``top`` use; 10 ms resolution) and, for precision over short windows, the
nanosecond ``sum_exec_runtime`` of every thread in /proc/<pid>/task/*/schedstat.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine() -> dict[str, Any]:
    """Describe the machine and the versions of what the benchmarks run."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("psutil", "paho-mqtt", "orjson", "pydantic", "psycopg", "fleetpulse"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["mosquitto"] = _first_line(["mosquitto", "-h"])
    versions["collectd"] = _first_line(["collectd", "-h"])
    pg = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    versions["postgresql"] = _first_line([str(pg[-1]), "--version"]) if pg else None
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "versions": versions}


def describe_machine(info: dict[str, Any]) -> str:
    v = info["versions"]
    return (f"machine: {info['nproc']} cores, {info['cpu_model']}, Linux {info['kernel']}; "
            f"Python {v['python']}, psutil {v['psutil']}, paho-mqtt {v['paho-mqtt']}, "
            f"orjson {v['orjson']}, pydantic {v['pydantic']}, psycopg {v['psycopg']}; "
            f"{v['mosquitto']}; {v['postgresql']}")


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # monotonic
    ticks: int  # utime + stime, clock ticks
    ns: int  # sum of the threads' schedstat run time


def _ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _schedstat_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total


def children(pid: int) -> list[int]:
    """Return every descendant of ``pid`` (e.g. PostgreSQL's backends)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                found.append(int(kid))
                todo.append(int(kid))
    return found


def cpu_snapshot(pids: list[int]) -> CpuSnapshot:
    ticks = ns = 0
    for pid in pids:
        try:
            ticks += _ticks(pid)
            ns += _schedstat_ns(pid)
        except (OSError, ValueError):
            pass  # exited
    return CpuSnapshot(time.monotonic(), ticks, ns)


def cpu_percent(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """% of one core between two snapshots, from ticks and from schedstat."""
    dt = b.at - a.at
    return {"ticks_percent": 100.0 * (b.ticks - a.ticks) / CLOCK_TICKS / dt,
            "schedstat_percent": 100.0 * (b.ns - a.ns) / 1e9 / dt,
            "cpu_s": (b.ns - a.ns) / 1e9, "ticks": b.ticks - a.ticks, "window_s": dt}


def status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def io_field(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def claim_cpu(nice: int) -> str:
    """Lower the niceness of this benchmark and what it starts, for a quieter measurement.

    With sched_autogroup (the default on desktop kernels) CPU is first shared equally
    between sessions, whatever the processes' nice values: the session's own autogroup
    niceness (/proc/self/autogroup, see sched(7)) must be set too. It belongs to the whole
    session (the shell that started the benchmark), so it is put back at exit. Other work
    on the machine gets less CPU while the benchmark runs; say so in any figure taken so.
    """
    if nice == 0:
        return "not changed"
    os.nice(nice)
    autogroup = Path("/proc/self/autogroup")
    try:
        before = autogroup.read_text().split()[-1]
        autogroup.write_text(str(nice))
    except (OSError, IndexError):
        return f"nice {nice} (autogroup unchanged)"
    atexit.register(lambda: autogroup.write_text(before))
    return f"nice {nice}, autogroup nice {nice} (was {before}; restored at exit)"
