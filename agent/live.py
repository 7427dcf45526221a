"""What ``fleetpulse-agent top`` shows, as values: no Textual here (agent/top.py draws it).

Pure: :class:`History`, :func:`series_values`, :func:`warnings`, :func:`alerting`,
:func:`sort_processes` and the formatters take values and return values, and are tested
without a terminal. Edges: :class:`LiveSource` takes the agent's own readings (the
:class:`~agent.collect.Collector` and :func:`~agent.encode.build_metrics` the agent
publishes with, plus the process scan), and :func:`read_service_status` asks systemd
whether the agent service runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.collect import Collector, Sample
from agent.encode import build_metrics
from agent.processes import ProcessSampler, Scanner, process_info
from shared.schema import MetricsV1, ProcessInfo

# The hub's default alert thresholds (hub/alerts.py DEFAULT_RULES), copied because the
# agent must not import the hub; tests/unit/agent/test_live.py checks that they match.
CPU_CELSIUS_ALERT = 80.0  # cpu_temperature_high
DISK_PERCENT_ALERT = 90.0  # disk_nearly_full
MEMORY_PERCENT_ALERT = 90.0  # memory_pressure
SWAP_BYTES_PER_S_ALERT = 1024.0 * 1024.0  # swap_thrashing (in + out)

HISTORY_S = 60
SERIES = ("cpu", "memory", "temperature", "disk", "net_in", "net_out")
SERIES_LABELS = {"cpu": "CPU %", "memory": "memory %", "temperature": "CPU °C",
                 "disk": "disk r+w", "net_in": "net in", "net_out": "net out"}
SORT_KEYS = ("cpu", "mem", "pid", "name")


class History:
    """The last ``size`` values of each series (None where a reading had none)."""

    def __init__(self, size: int = HISTORY_S, names: Sequence[str] = SERIES) -> None:
        self.size = size
        self.series: dict[str, deque[float | None]] = {n: deque(maxlen=size) for n in names}

    def add(self, values: dict[str, float | None]) -> None:
        for name, values_of in self.series.items():
            values_of.append(values.get(name))

    def values(self, name: str) -> list[float | None]:
        return list(self.series[name])

    def known(self, name: str) -> list[float]:
        """The series' values, unknown ones left out (what a sparkline can draw)."""
        return [v for v in self.series[name] if v is not None]

    def last(self, name: str) -> float | None:
        s = self.series[name]
        return s[-1] if s else None


def _add(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def series_values(m: MetricsV1) -> dict[str, float | None]:
    """Return the values the sparklines follow, from one reading."""
    d, n = m["disk"], m["network"]
    return {"cpu": m["cpu"]["percent"], "memory": m["memory"]["percent"],
            "temperature": m["sensors"]["cpu_celsius"],
            "disk": _add(d["read_bytes_per_s"], d["write_bytes_per_s"]),
            "net_in": n["bytes_recv_per_s"], "net_out": n["bytes_sent_per_s"]}


def alerting(m: MetricsV1) -> set[str]:
    """Return the series (and 'swap', 'disk_full') over the hub's default alert thresholds."""
    over: set[str] = set()
    celsius = m["sensors"]["cpu_celsius"]
    if celsius is not None and celsius > CPU_CELSIUS_ALERT:
        over.add("temperature")
    memory = m["memory"]["percent"]
    if memory is not None and memory > MEMORY_PERCENT_ALERT:
        over.add("memory")
    swap = _add(m["memory"]["swap_in_bytes_per_s"], m["memory"]["swap_out_bytes_per_s"])
    if swap is not None and swap > SWAP_BYTES_PER_S_ALERT:
        over.add("swap")
    if any(p["percent"] > DISK_PERCENT_ALERT for p in m["disk"]["partitions"]):
        over.add("disk_full")
    return over


def warnings(m: MetricsV1) -> list[str]:
    """Return one line per thing to look at now: throttling, heat, full disks, memory."""
    out: list[str] = []
    t = m["throttling"]
    now = [what for flag, what in ((t["under_voltage_now"], "under-voltage"),
                                   (t["throttled_now"], "throttled"),
                                   (t["freq_capped_now"], "frequency capped"),
                                   (t["soft_temp_limit_now"], "soft temperature limit"))
           if flag]
    if now:
        out.append("Pi firmware NOW: " + ", ".join(now))
    since = [what for flag, what in ((t["under_voltage_occurred"], "under-voltage"),
                                     (t["throttled_occurred"], "throttling"),
                                     (t["freq_capped_occurred"], "frequency capping"),
                                     (t["soft_temp_limit_occurred"], "soft temperature limit"))
             if flag]
    if since:
        out.append("Since boot: " + ", ".join(since))
    celsius = m["sensors"]["cpu_celsius"]
    if celsius is not None and celsius > CPU_CELSIUS_ALERT:
        out.append(f"CPU temperature {celsius:.1f} °C > {CPU_CELSIUS_ALERT:g} °C")
    memory = m["memory"]["percent"]
    if memory is not None and memory > MEMORY_PERCENT_ALERT:
        out.append(f"Memory {memory:.1f} % > {MEMORY_PERCENT_ALERT:g} %")
    swap = _add(m["memory"]["swap_in_bytes_per_s"], m["memory"]["swap_out_bytes_per_s"])
    if swap is not None and swap > SWAP_BYTES_PER_S_ALERT:
        out.append(f"Swapping {format_bytes(swap)}/s > {format_bytes(SWAP_BYTES_PER_S_ALERT)}/s")
    for p in m["disk"]["partitions"]:
        if p["percent"] > DISK_PERCENT_ALERT:
            out.append(f"Disk {p['mountpoint']} {p['percent']:.1f} % full > "
                       f"{DISK_PERCENT_ALERT:g} %")
    return out


def sort_processes(procs: Iterable[ProcessInfo], key: str, limit: int) -> list[ProcessInfo]:
    """Return the first ``limit`` processes by ``key``: cpu, mem (highest first), pid, name."""
    if key == "cpu":
        order = sorted(procs, key=lambda p: (-(p["cpu_percent"] or 0.0), -p["rss_bytes"],
                                             p["pid"]))
    elif key == "mem":
        order = sorted(procs, key=lambda p: (-p["rss_bytes"], p["pid"]))
    elif key == "pid":
        order = sorted(procs, key=lambda p: p["pid"])
    elif key == "name":
        order = sorted(procs, key=lambda p: (p["name"].lower(), p["pid"]))
    else:
        raise ValueError(f"unknown sort key {key!r} (use {', '.join(SORT_KEYS)})")
    return order[:limit]


def format_bytes(value: float | None) -> str:
    """Return a size in the largest binary unit that keeps it above 1 (1.5M, 12K, 900B)."""
    if value is None:
        return "–"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def bar(percent: float | None, width: int) -> str:
    """Return a bar of ``width`` cells filled to ``percent`` (eighths of a cell)."""
    if percent is None or width <= 0:
        return " " * max(width, 0)
    eighths = round(max(0.0, min(100.0, percent)) / 100 * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + ("" if part == 0 else " ▏▎▍▌▋▊▉"[part])
    return text.ljust(width)


_TICKS = "▁▂▃▄▅▆▇█"
# Fixed scales where a series has one (percentages); the others scale to their own peak.
SERIES_SCALE: dict[str, tuple[float, float] | None] = {
    "cpu": (0.0, 100.0), "memory": (0.0, 100.0), "temperature": None, "disk": None,
    "net_in": None, "net_out": None}


def sparkline(values: Sequence[float | None], width: int,
              scale: tuple[float, float] | None = None) -> str:
    """Return the last ``width`` values as one line of eighth-blocks, oldest first.

    Args:
        scale: (low, high) to draw against; None: from 0 (or the lowest value, if below)
            to the highest value shown. Unknown values are blanks.
    """
    shown = list(values)[-width:] if width > 0 else []
    known = [v for v in shown if v is not None]
    if not known:
        return " " * len(shown)
    low, high = scale if scale is not None else (min(0.0, *known), max(known))
    span = high - low
    out = []
    for v in shown:
        if v is None:
            out.append(" ")
        else:
            level = 0 if span <= 0 else int((min(max(v, low), high) - low) / span * 7 + 0.5)
            out.append(_TICKS[level])
    return "".join(out)


@dataclass(frozen=True)
class ServiceStatus:
    """What systemd says of the agent service (None: no systemd here, or no such unit)."""

    active: str | None  # active, inactive, failed, activating…
    status_text: str | None  # the agent's own STATUS= line (sd_notify), if it sends one

    def describe(self) -> str:
        if self.active is None:
            return "agent service: not installed here (no systemd unit)"
        text = f"agent service: {self.active}"
        return f"{text}, {self.status_text}" if self.status_text else text


def parse_systemctl_show(output: str) -> ServiceStatus:
    """Parse ``systemctl show -p LoadState,ActiveState,StatusText`` output."""
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    if values.get("LoadState") in (None, "not-found"):
        return ServiceStatus(None, None)
    return ServiceStatus(values.get("ActiveState") or None, values.get("StatusText") or None)


def read_service_status(unit: str = "fleetpulse-agent",
                        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                        ) -> ServiceStatus:
    """Ask systemd about the agent's unit; a machine without systemd gives ServiceStatus(None)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return ServiceStatus(None, None)
    try:
        done = run([systemctl, "show", unit, "-p", "LoadState,ActiveState,StatusText"],
                   capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return ServiceStatus(None, None)
    if done.returncode != 0:  # e.g. systemd installed but not running (a container)
        return ServiceStatus(None, None)
    return parse_systemctl_show(done.stdout)


@dataclass
class LiveReading:
    """One refresh: the reading the agent would publish, and every process."""

    message: MetricsV1
    processes: list[ProcessInfo]
    process_count: int
    took_s: float  # collection time (shown, so the view's own cost is visible)


@dataclass
class LiveSource:
    """The agent's readings, taken here rather than received: no hub or broker needed."""

    collector: Collector
    scanner: Scanner | None = None  # None: the collector's own (/proc or psutil)
    device_id: str = "local"
    memory_total_bytes: int | None = None
    _prev: Sample | None = field(default=None, init=False)
    _seq: int = field(default=0, init=False)
    _sampler: ProcessSampler | None = field(default=None, init=False)
    _session: str = field(default_factory=lambda: uuid.uuid4().hex, init=False)

    def __post_init__(self) -> None:
        self._sampler = ProcessSampler(self.scanner or self.collector.process_scanner(),
                                       memory_total_bytes=self.memory_total_bytes)
        self._prev = self.collector.sample()
        self._sampler.scan()

    def read(self, interval_s: float) -> LiveReading:
        """Take a reading (rates over the time since the previous one) and scan processes."""
        started = time.perf_counter()
        sample = self.collector.sample()
        self._seq += 1
        message = build_metrics(self._prev, sample, device_id=self.device_id,
                                session_id=self._session, seq=self._seq,
                                epoch_s=time.time(), interval_s=interval_s)
        self._prev = sample
        assert self._sampler is not None
        records, cpus, _ = self._sampler.scan()
        procs = [process_info(r, c, self.memory_total_bytes) for r, c in zip(records, cpus,
                                                                             strict=True)]
        return LiveReading(message, procs, len(records), time.perf_counter() - started)


def run_top(refresh_s: float) -> int:
    """Run ``fleetpulse-agent top``; without Textual, say in one line how to install it."""
    if not 0.1 <= refresh_s <= 3600:
        print(f"Invalid --refresh {refresh_s:g}: use 0.1 to 3600 seconds.", file=sys.stderr)
        return 2
    try:
        from agent.top import TopApp  # the optional extra: the agent runs without it
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(("textual", "rich")):
            raise
        print('fleetpulse-agent top needs Textual: pip install "fleetpulse[top]"',
              file=sys.stderr)
        return 2
    collector = Collector()
    memory_total = collector.static_facts().memory_total_bytes
    TopApp(lambda: LiveSource(collector, memory_total_bytes=memory_total),
           refresh_s=refresh_s, service=read_service_status).run()
    return 0
