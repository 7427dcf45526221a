"""`fleetpulse-agent top` driven through Textual's own harness (App.run_test + Pilot).

The app runs with the agent's real Collector on a fake platform (tests/unit/agent/
fake_psutil.py: no sensors unless a test gives some) and a fake process scanner, so what
it shows is known. The whole screen is compared with SVG snapshots in
test_top_snapshots.py; these tests assert on the widgets' content.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Static

from agent.collect import Collector
from agent.live import LiveSource, ServiceStatus
from agent.main import main
from agent.processes import ProcRecord
from agent.top import TopApp
from tests.unit.agent import fake_psutil

ROOT = Path(__file__).resolve().parents[3]
GIB = 1024**3
# pid: (name, CPU seconds gained per scan, RSS)
PROCS = {100: ("zed", 0.0, 3 * GIB), 200: ("alpha", 0.1, 1 * GIB), 300: ("busy", 1.0, 2 * GIB)}


class FakeScanner:
    def __init__(self) -> None:
        self.scans = 0

    def scan(self) -> list[ProcRecord]:
        self.scans += 1
        return [ProcRecord(pid, 1.0, "sleeping" if pid != 300 else "running",
                           gain * self.scans, rss, 1, name, "pi")
                for pid, (name, gain, rss) in PROCS.items()]

    def io(self, pid: int) -> tuple[int | None, int | None]:
        return (None, None)


def fake_platform(**overrides: Any) -> Any:
    ticks = {"n": 0}

    def cpu_times(percpu: bool = False) -> list[Any]:
        ticks["n"] += 1  # time passes between readings: CPU % is known from the second on
        t = ticks["n"]
        return [fake_psutil.CpuTimes(10.0 + 3 * t, 0, 5.0, 100.0 + 7 * t, 0, 0, 0, 0, 0, 0),
                fake_psutil.CpuTimes(10.0 + 9 * t, 0, 5.0, 100.0 + 1 * t, 0, 0, 0, 0, 0, 0)]

    return fake_psutil.make(cpu_times=cpu_times, **overrides)


def app_for(tmp_path: Path, *, service: Callable[[], ServiceStatus] | None = None,
            **platform: Any) -> TopApp:
    collector = Collector(ps=fake_platform(**platform), fast=False, sys_root=tmp_path)
    return TopApp(lambda: LiveSource(collector, scanner=FakeScanner(),
                                     memory_total_bytes=8 * GIB),
                  refresh_s=0.1, service=service, hostname="testpi")


def run(app: TopApp, test: Callable[[TopApp, Pilot[None]], Awaitable[None]],
        size: tuple[int, int] = (120, 40)) -> None:
    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.refreshes >= 2, "two refreshes")
            await test(app, pilot)

    asyncio.run(go())


async def wait_for(pilot: Pilot[None], condition: Callable[[], bool], what: str,
                   timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def text(app: TopApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def test_top_shows_the_process_table_sorted_by_cpu(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert app.table_pids() == [300, 200, 100]
        rows = text(app, "#procs").splitlines()
        assert [row.split()[:3] for row in rows] == [
            ["300", "pi", "busy"], ["200", "pi", "alpha"], ["100", "pi", "zed"]]
        assert rows[2].split()[-3:] == ["3.0G", "1", "sleeping"]
        assert text(app, "#procs-header").split() == [
            "PID", "USER", "NAME", "CPU%▼", "MEM%", "RSS", "THR", "STATE"]
        assert "3 processes (1 running)" in text(app, "#status")
        assert "sort: cpu" in text(app, "#status")

    run(app_for(tmp_path), check)


def test_keys_change_the_sort_order(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        for key, pids, marked in (("m", [100, 300, 200], "MEM%▼"),
                                  ("p", [100, 200, 300], "PID▼"),
                                  ("n", [200, 300, 100], "NAME▼"),
                                  ("c", [300, 200, 100], "CPU%▼")):
            await pilot.press(key)
            assert app.table_pids() == pids, key
            assert [int(row.split()[0]) for row in text(app, "#procs").splitlines()] == pids
            assert marked in text(app, "#procs-header").split()
        await pilot.press("m")
        await wait_for(pilot, lambda: app.refreshes >= 4, "two more refreshes")
        assert app.table_pids() == [100, 300, 200]  # the order holds across refreshes
        assert "sort: mem" in text(app, "#status")

    run(app_for(tmp_path), check)


def test_q_quits(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")

    run(app_for(tmp_path), check)


def spark_line(app: TopApp, label: str) -> str:
    (line,) = [x for x in text(app, "#sparks").splitlines() if x.startswith(label)]
    return line


def red_lines(app: TopApp) -> list[str]:
    block = app.query_one("#sparks", Static).content
    assert isinstance(block, Text)
    return [block.plain[span.start:span.end].split()[0] for span in block.spans
            if "red" in str(span.style)]


def test_a_machine_without_sensors(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert spark_line(app, "CPU °C").endswith("no sensor")
        assert app.history.known("temperature") == []
        assert text(app, "#warnings").startswith("no warnings")
        cores = text(app, "#cores")
        # One bar per core: 3 busy in 10 s of core 0, 9 in 10 of core 1 (fake_platform).
        assert "  0 " in cores and "30.0%" in cores and "  1 " in cores and "90.0%" in cores
        assert "CPU 60.0 %" in cores
        assert spark_line(app, "CPU %").split()[-1] == "60.0"
        assert app.alerting_series == set() and red_lines(app) == []
        assert "agent service" not in text(app, "#status")  # no service check given

    run(app_for(tmp_path), check)


def test_sparklines_fill_with_the_readings(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: app.refreshes >= 4, "four refreshes")
        cpu = spark_line(app, "CPU %").removeprefix("CPU %").split()[0]
        assert len(cpu) >= 3 and set(cpu) == {"▅"}  # 60 % on a 0-100 scale, every second
        assert spark_line(app, "CPU °C").removeprefix("CPU °C").split() == ["no", "sensor"]

    run(app_for(tmp_path), check)


def test_a_hot_machine_is_warned_and_highlighted(tmp_path: Path):
    hot = {"cpu_thermal": [fake_psutil.Temp("", 85.0, None, None)]}

    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert spark_line(app, "CPU °C").endswith("85.0")
        assert "! CPU temperature 85.0 °C > 80 °C" in text(app, "#warnings")
        assert app.alerting_series == {"temperature"}
        assert red_lines(app) == ["CPU"]  # the temperature line, in red

    run(app_for(tmp_path, sensors_temperatures=lambda: hot), check)


def test_a_failed_reading_is_told_and_the_next_one_shown(tmp_path: Path):
    collector = Collector(ps=fake_platform(), fast=False, sys_root=tmp_path)
    calls = {"n": 0}

    class Flaky(LiveSource):
        def read(self, interval_s: float) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("/proc went away")
            return super().read(interval_s)

    app = TopApp(lambda: Flaky(collector, scanner=FakeScanner()), refresh_s=0.1)
    told: list[str] = []
    app.notify = lambda message, **kwargs: told.append(message)  # type: ignore[method-assign]

    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert calls["n"] >= 3  # two shown, so the failed one was passed over
        assert told == ["reading failed: /proc went away"]

    run(app, check)


def test_a_throttled_pi_is_warned(tmp_path: Path):
    firmware = tmp_path / "devices/platform/soc/soc:firmware"
    firmware.mkdir(parents=True)
    (firmware / "get_throttled").write_text("50005\n")  # under-voltage + throttled, now

    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert text(app, "#warnings").splitlines() == [
            "! Pi firmware NOW: under-voltage, throttled",
            "! Since boot: under-voltage, throttling"]

    run(app_for(tmp_path), check)


def test_a_small_terminal_still_shows_the_busiest_process(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert text(app, "#procs").splitlines()[0].split()[:3] == ["300", "pi", "busy"]
        assert app.query_one("#procs").size.height >= 3  # rows left under the panels

    run(app_for(tmp_path), check, size=(80, 24))


def test_the_agent_service_status_is_shown(tmp_path: Path):
    async def check(app: TopApp, pilot: Pilot[None]) -> None:
        assert "agent service: active, connected" in text(app, "#status")

    run(app_for(tmp_path, service=lambda: ServiceStatus("active", "connected")), check)


def test_top_without_textual_prints_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]):
    monkeypatch.delitem(sys.modules, "agent.top")
    monkeypatch.setitem(sys.modules, "textual", None)  # import textual -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "textual.app", None)
    assert main(["top"]) == 2
    err = capsys.readouterr().err
    assert err == 'fleetpulse-agent top needs Textual: pip install "fleetpulse[top]"\n'


def test_a_bad_refresh_is_one_line(capsys: pytest.CaptureFixture[str]):
    assert main(["top", "--refresh", "0"]) == 2
    assert capsys.readouterr().err == "Invalid --refresh 0: use 0.1 to 3600 seconds.\n"


def test_the_agent_itself_does_not_load_textual():
    code = ("import sys, agent.main, agent.live, agent.processes; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
