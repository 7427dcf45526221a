"""Snapshot tests of `fleetpulse-agent top`: the whole screen, as Textual exports it.

Textual's own ``App.export_screenshot`` renders the screen to SVG (what the
pytest-textual-snapshot plugin compares; the plugin itself pins syrupy 4, which wants
pytest < 9). Each test drives the app on a fake platform until it has drawn three readings,
holds the reading source so nothing moves, and compares the SVG with the file in
``snapshots/``. Two things on screen depend on the wall clock and are masked before the
comparison: the "read in N ms" of the status line and the processes' CPU % (CPU seconds over
the real time between two scans). Layout, colours, bars, sparklines, warnings and every other
number are compared exactly.

A missing snapshot fails. To write them again after a deliberate change of the screen::

    FLEETPULSE_UPDATE_SNAPSHOTS=1 python3 -m pytest -q tests/unit/agent/test_top_snapshots.py

and look at the SVG files (any browser shows them) before committing.
"""

from __future__ import annotations

import asyncio
import difflib
import html
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from agent.collect import Collector
from agent.live import LiveSource
from agent.top import TopApp
from tests.unit.agent import fake_psutil
from tests.unit.agent.test_top import GIB, FakeScanner, fake_platform, wait_for

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("FLEETPULSE_UPDATE_SNAPSHOTS") == "1"
READINGS = 3


def held_app(tmp_path: Path, **platform: Any) -> tuple[TopApp, threading.Event]:
    """A top app whose source gives READINGS readings, then waits until released."""
    collector = Collector(ps=fake_platform(**platform), fast=False, sys_root=tmp_path)
    release = threading.Event()

    class Held(LiveSource):
        given = 0

        def read(self, interval_s: float) -> Any:
            Held.given += 1
            if Held.given > READINGS:
                release.wait(30)
            return super().read(interval_s)

    app = TopApp(lambda: Held(collector, scanner=FakeScanner(), memory_total_bytes=8 * GIB),
                 refresh_s=0.05, hostname="testpi")
    return app, release


def normalise(svg: str) -> str:
    """Mask what depends on the wall clock in the SVG that is written (for people to read)."""
    svg = re.sub(r"terminal-\d+", "terminal-N", svg)  # Textual's per-render id
    svg = re.sub(r"read&#160;in&#160;[0-9.]+&#160;ms", "read&#160;in&#160;#&#160;ms", svg)
    # A process row: PID USER NAME CPU% MEM% ...; the CPU % is the fourth field.
    return re.sub(r"((?:&#160;)*\d+&#160;pi(?:&#160;)+[a-z]+(?:&#160;)+)[0-9.]+(&#160;)",
                  r"\1#\2", svg)


_NBSP = "\u00a0"


def _mask(line: str) -> str:
    line = re.sub(f"read[ {_NBSP}]in[ {_NBSP}][0-9.#]+[ {_NBSP}]ms", "read in # ms", line)
    # The CPU % column is right-aligned: its width (and the spaces before it) vary with the
    # value, so the spaces go with the number.
    return re.sub(f"^([ {_NBSP}]*\\d+[ {_NBSP}]pi[ {_NBSP}]+[a-z]+)[ {_NBSP}]+[0-9.#]+[ {_NBSP}]",
                  r"\1 # ", line)


def canonical(svg: str) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """What a snapshot compares: the style of each class, and each line's (class, text).

    Positions and text lengths in the SVG follow from the text, so they are left out; the
    clock-dependent numbers are masked with the spaces that pad them.
    """
    styles = re.findall(r"\.terminal-[N0-9]+-(r\d+) \{([^}]*)\}", svg)
    lines: dict[float, list[tuple[str, str]]] = {}
    for cls, y, text in re.findall(
            r'<text class="terminal-[N0-9]+-(r\d+)"[^>]* y="([0-9.]+)"[^>]*>([^<]*)</text>', svg):
        lines.setdefault(float(y), []).append((cls, _mask(html.unescape(text))))
    return styles, [lines[y] for y in sorted(lines)]


def snapshot(tmp_path: Path, name: str, size: tuple[int, int] = (120, 40),
             keys: tuple[str, ...] = (), **platform: Any) -> None:
    app, release = held_app(tmp_path, **platform)

    async def go() -> str:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.refreshes >= READINGS, "three readings")
            for key in keys:
                await pilot.press(key)
            await pilot.pause()
            await _settled(pilot, app)
            svg = app.export_screenshot(title=name)
            release.set()
            return svg

    got = normalise(asyncio.run(go()))
    path = SNAPSHOTS / f"{name}.svg"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(got)
    if not path.exists():
        pytest.fail(f"no snapshot {path.name}: run with FLEETPULSE_UPDATE_SNAPSHOTS=1")
    want = path.read_text()
    if canonical(got) != canonical(want):
        diff = "\n".join(difflib.unified_diff(screen_text(want), screen_text(got), "snapshot",
                                               "now", lineterm="", n=1))
        pytest.fail(f"the screen differs from {path.name} (text diff below; empty: colours or "
                    "layout only). If the change is meant, write it again with "
                    f"FLEETPULSE_UPDATE_SNAPSHOTS=1 and look at the SVG.\n{diff}")


def screen_text(svg: str) -> list[str]:
    """The screen's characters, line by line, from an exported SVG (for failure messages)."""
    lines: dict[str, str] = {}
    for y, chunk in re.findall(r'<text[^>]* y="([0-9.]+)"[^>]*>([^<]*)</text>', svg):
        lines[y] = lines.get(y, "") + html.unescape(chunk)
    return [lines[y].rstrip() for y in sorted(lines, key=float)]


async def _settled(pilot: Pilot[None], app: TopApp) -> None:
    # Two exports in a row that agree: every pending refresh has been drawn.
    before = ""
    for _ in range(50):
        now = normalise(app.export_screenshot())
        if now == before:
            return
        before = now
        await pilot.pause(0.05)
    raise AssertionError("the screen kept changing")


def test_snapshot_default_screen(tmp_path: Path):
    snapshot(tmp_path, "top_default")


def test_snapshot_sorted_by_memory(tmp_path: Path):
    snapshot(tmp_path, "top_sorted_by_memory", keys=("m",))


def test_snapshot_hot_machine(tmp_path: Path):
    hot = {"cpu_thermal": [fake_psutil.Temp("", 85.0, None, None)]}
    snapshot(tmp_path, "top_hot_machine", sensors_temperatures=lambda: hot)


def test_snapshot_small_terminal(tmp_path: Path):
    snapshot(tmp_path, "top_small_terminal", size=(80, 24))


def test_normalise_masks_only_the_clock_dependent_numbers():
    row = ("&#160;&#160;&#160;&#160;300&#160;pi&#160;&#160;&#160;busy&#160;&#160;&#160;"
           "2774.7&#160;&#160;25.0&#160;&#160;2.0G")
    assert normalise(row) == ("&#160;&#160;&#160;&#160;300&#160;pi&#160;&#160;&#160;busy"
                              "&#160;&#160;&#160;#&#160;&#160;25.0&#160;&#160;2.0G")
    assert normalise("read&#160;in&#160;0.4&#160;ms") == "read&#160;in&#160;#&#160;ms"
    assert normalise("load&#160;0.50") == "load&#160;0.50"


def test_canonical_ignores_the_width_of_the_clock_dependent_numbers():
    def row(cpu: str) -> str:
        padded = cpu.rjust(8).replace(" ", "&#160;")
        return ('<text class="terminal-1-r1" x="0" y="20" textLength="9">&#160;&#160;300&#160;'
                f"pi&#160;&#160;busy{padded}&#160;&#160;25.0&#160;2.0G</text>")
    assert canonical(row("2774.7")) == canonical(row("27.7")) == canonical(normalise(row("5.0")))
    assert canonical(row("2774.7").replace("25.0", "26.0")) != canonical(row("27.7"))
