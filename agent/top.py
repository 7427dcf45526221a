"""``fleetpulse-agent top``: a live view of this machine in the terminal (Textual).

Only ``fleetpulse-agent top`` imports this module, and Textual comes with the optional
extra (``pip install "fleetpulse[top]"``): the agent's own install stays small. What is
shown is worked out in ``agent/live.py`` (pure, tested without a terminal); this module
only draws it. Collection runs in a Textual thread worker, so a slow /proc read never
freezes the keys; the worker hands each reading to the UI thread with call_from_thread.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Static

from agent.live import (
    HISTORY_S,
    SERIES,
    SERIES_LABELS,
    SERIES_SCALE,
    SORT_KEYS,
    History,
    LiveReading,
    LiveSource,
    ServiceStatus,
    alerting,
    bar,
    format_bytes,
    series_values,
    sort_processes,
    sparkline,
    warnings,
)
from agent.processes import count_states

SERVICE_CHECK_S = 5.0  # systemctl is a process start (~5 ms): not every refresh
TABLE_ROWS = 50  # more than a terminal shows; the rest is clipped
# The process table is one block of text, not a DataTable: a DataTable re-renders every
# cell through Rich after each update. A first version (DataTable, and 18 widgets for the
# sparklines) drew at ~140 ms of CPU a refresh, this one ~16 ms (bench/top_cost.py).
# Column: key, title, width, right-aligned.
COLUMNS = (("pid", "PID", 7, True), ("user", "USER", 10, False), ("name", "NAME", 24, False),
           ("cpu", "CPU%", 6, True), ("mem", "MEM%", 5, True), ("rss", "RSS", 7, True),
           ("threads", "THR", 4, True), ("status", "STATE", 12, False))


def _value_text(name: str, value: float | None) -> str:
    if value is None:
        return "no sensor" if name == "temperature" else "–"
    if name in ("disk", "net_in", "net_out"):
        return f"{format_bytes(value)}/s"
    return f"{value:.1f}"


class TopApp(App[None]):
    """The live view; ``source`` gives readings, ``service`` says how the agent service is."""

    TITLE = "fleetpulse top"
    CSS = """
    #status { height: 1; background: $panel; }
    #upper { height: auto; max-height: 20; }
    #cores { width: 44; height: auto; padding: 0 1; }
    #sparks { width: 1fr; height: 6; padding: 0 1; color: $accent; }
    #warnings { height: auto; color: $warning; text-style: bold; padding: 0 1; }
    #warnings.ok { color: $success; text-style: none; }
    #procs { height: 1fr; overflow: hidden; }
    #procs-header { height: 1; background: $panel; text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "sort('cpu')", "Sort CPU"),
        Binding("m", "sort('mem')", "Sort memory"),
        Binding("p", "sort('pid')", "Sort PID"),
        Binding("n", "sort('name')", "Sort name"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: Callable[[], LiveSource], *, refresh_s: float = 1.0,
                 service: Callable[[], ServiceStatus] | None = None,
                 hostname: str | None = None) -> None:
        """Args:
            source: makes the reading source (called in the worker: the first readings
                and the process table's names take a moment on a big machine).
        """
        super().__init__()
        self.make_source = source
        self.refresh_s = refresh_s
        self.service = service
        self.hostname = hostname or platform.node()
        self.sort_key = "cpu"
        self.history = History()
        self.latest: LiveReading | None = None
        self.service_status: ServiceStatus | None = None
        self.refreshes = 0
        self.shown_pids: list[int] = []
        self.alerting_series: set[str] = set()
        self._heights: dict[str, int] = {}
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="upper"):
            yield Static(id="cores")
            # Six sparklines drawn as one block of text: one widget to lay out and render
            # instead of eighteen (see COLUMNS for the cost).
            yield Static(id="sparks")
        yield Static(id="warnings")
        yield Static(id="procs-header")
        yield Static(id="procs")
        yield Footer()

    def on_mount(self) -> None:
        self._draw_status()
        self._draw_header()
        self.run_worker(self._collect, thread=True, name="collect", exit_on_error=False)

    def on_unmount(self) -> None:
        self._stop.set()

    def _collect(self) -> None:
        """The worker thread: one reading per refresh, handed to the UI thread."""
        source = self.make_source()
        next_service = 0.0
        tick = time.monotonic()
        while not self._stop.is_set():
            tick += self.refresh_s
            if self._stop.wait(max(0.0, tick - time.monotonic())):
                return
            try:
                reading = source.read(self.refresh_s)
            except Exception as exc:  # noqa: BLE001 - say so and try again next refresh
                self._tell(f"reading failed: {exc}")
                continue
            status = None
            if self.service is not None and time.monotonic() >= next_service:
                status = self.service()
                next_service = time.monotonic() + SERVICE_CHECK_S
            if time.monotonic() - tick > self.refresh_s:  # suspended: skip, do not burst
                tick = time.monotonic()
            try:
                self.call_from_thread(self.show, reading, status)
            except RuntimeError:  # the app is closing
                return

    def _tell(self, message: str) -> None:
        try:
            self.call_from_thread(self.notify, message, severity="error")
        except RuntimeError:  # the app is closing
            pass

    def show(self, reading: LiveReading, status: ServiceStatus | None = None) -> None:
        """Draw one reading (runs on the UI thread)."""
        self.latest = reading
        if status is not None:
            self.service_status = status
        values = series_values(reading.message)
        self.history.add(values)
        self._draw_status()
        self._draw_cores(reading)
        self._draw_sparks(reading, values)
        self._draw_warnings(reading)
        self._draw_table()
        self.refreshes += 1

    def _set(self, selector: str, content: str | Text, lines: int | None = None) -> None:
        # Static.update lays the whole screen out again unless told the size is unchanged:
        # a new height is set only when the number of lines changes.
        widget = self.query_one(selector, Static)
        if lines is not None and self._heights.get(selector) != lines:
            self._heights[selector] = lines
            widget.styles.height = lines
        widget.update(content, layout=False)

    def _draw_status(self) -> None:
        parts = [self.hostname, f"refresh {self.refresh_s:g} s", f"sort: {self.sort_key}"]
        if self.latest is not None:
            counts = count_states(p["status"] for p in self.latest.processes)
            detail = ", ".join(f"{counts[k]} {k}" for k in ("running", "zombie") if counts[k])
            parts.append(f"{self.latest.process_count} processes"
                         + (f" ({detail})" if detail else ""))
            parts.append(f"read in {1000 * self.latest.took_s:.1f} ms")
        if self.service_status is not None:
            parts.append(self.service_status.describe())
        self._set("#status", Text(" · ".join(parts)))

    def _draw_cores(self, reading: LiveReading) -> None:
        cpu, memory = reading.message["cpu"], reading.message["memory"]
        per_core = cpu["per_core_percent"]
        width = 20 if len(per_core) <= 16 else 8  # many cores: two columns of short bars
        columns = 1 if len(per_core) <= 16 else 2
        lines = []
        row: list[str] = []
        for i, percent in enumerate(per_core):
            row.append(f"{i:>3} [green]{bar(percent, width)}[/] {percent:5.1f}%")
            if len(row) == columns:
                lines.append("  ".join(row))
                row = []
        if row:
            lines.append("  ".join(row))
        total = cpu["percent"]
        lines.append(f"CPU {'–' if total is None else f'{total:.1f} %'}"
                     + (f" · {cpu['freq_current_mhz']:.0f} MHz"
                        if cpu["freq_current_mhz"] else "")
                     + (f" · load {cpu['load_1']:.2f}" if cpu["load_1"] is not None else ""))
        over = alerting(reading.message)
        mem = (f"mem {format_bytes(memory['used_bytes'])} / "
               f"{format_bytes(memory['total_bytes'])}")
        lines.append(f"[b red]{mem} ![/]" if "memory" in over else mem)
        if memory["swap_total_bytes"]:
            swap = (f"swap {format_bytes(memory['swap_used_bytes'])} / "
                    f"{format_bytes(memory['swap_total_bytes'])}")
            lines.append(f"[b red]{swap} ![/]" if "swap" in over else swap)
        self._set("#cores", "\n".join(lines), len(lines))

    def _draw_sparks(self, reading: LiveReading, values: dict[str, float | None]) -> None:
        over = alerting(reading.message)
        # label (10) + sparkline + space + value (11) in the panel's content width
        width = max(8, min(HISTORY_S, self.query_one("#sparks").content_size.width - 22))
        block = Text(no_wrap=True, overflow="crop")
        for name in SERIES:
            line = (f"{SERIES_LABELS[name]:<10}"
                    f"{sparkline(self.history.values(name), width, SERIES_SCALE[name]):<{width}}"
                    f" {_value_text(name, values[name]):>11}\n")
            block.append(line, style="bold red" if name in over else "")
        self.alerting_series = {name for name in SERIES if name in over}
        self._set("#sparks", block, len(SERIES))

    def _draw_warnings(self, reading: LiveReading) -> None:
        lines = warnings(reading.message)
        self.query_one("#warnings", Static).set_class(not lines, "ok")
        if lines:
            self._set("#warnings", Text("\n".join(f"! {line}" for line in lines)), len(lines))
        else:
            self._set("#warnings",
                      Text("no warnings (thresholds: the hub's default alert rules)"), 1)

    def _draw_header(self) -> None:
        cells = []
        for key, title, width, right in COLUMNS:
            title = title + ("▼" if key == self.sort_key else "")
            cells.append(title.rjust(width) if right else title.ljust(width))
        self._set("#procs-header", Text(" ".join(cells)))

    def _draw_table(self) -> None:
        if self.latest is None:
            return
        shown = sort_processes(self.latest.processes, self.sort_key, TABLE_ROWS)
        table = Text(no_wrap=True, overflow="crop")
        for p in shown:
            cpu = "–" if p["cpu_percent"] is None else f"{p['cpu_percent']:.1f}"
            mem = "–" if p["memory_percent"] is None else f"{p['memory_percent']:.1f}"
            threads = "–" if p["threads"] is None else str(p["threads"])
            line = (f"{p['pid']:>7} {(p['user'] or '?')[:10]:<10} {p['name'][:24]:<24} "
                    f"{cpu:>6} {mem:>5} {format_bytes(p['rss_bytes']):>7} {threads:>4} "
                    f"{p['status'][:12]}\n")
            table.append(line, style="bold yellow" if p["status"] == "zombie" else "")
        self.shown_pids = [p["pid"] for p in shown]
        self._set("#procs", table)

    def action_sort(self, key: str) -> None:
        if key not in SORT_KEYS:
            return
        self.sort_key = key
        self._draw_status()
        self._draw_header()
        self._draw_table()

    def table_pids(self) -> list[int]:
        """The pids in the table, top to bottom (for tests and scripts)."""
        return list(self.shown_pids)
