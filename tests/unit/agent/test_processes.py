"""Process metrics: pure ranking, state counts and CPU % from deltas; /proc read on fake trees."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.collect import Collector, PsutilProcesses
from agent.processes import (
    ProcessSampler,
    ProcessWatcher,
    ProcRecord,
    ProcScanner,
    build_processes,
    count_states,
    cpu_percents,
    full_name,
    parse_stat,
    process_info,
    real_uid,
    select_top,
)
from tests.servers import wait_for
from tests.unit.agent import fake_psutil

# A real line (kernel 6.1), then one whose name holds spaces and a ')'.
STAT_LINE = (b"1234 (python3) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 3 0 "
             b"987654 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 "
             b"17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
ODD_LINE = STAT_LINE.replace(b"(python3)", b"(my (odd) name)")


def rec(pid: int, cpu_s: float = 0.0, rss: int = 0, status: str = "sleeping",
        start: float = 100.0, name: str = "p") -> ProcRecord:
    return ProcRecord(pid, start, status, cpu_s, rss, 1, name, "root")


# --- pure functions ---------------------------------------------------------------------------

def test_parse_stat_reads_state_cpu_threads_start_and_rss():
    comm, state, cpu_ticks, threads, start_ticks, rss_pages = parse_stat(STAT_LINE)
    assert (comm, state, cpu_ticks, threads, start_ticks, rss_pages) == (
        b"python3", b"S", 300, 3, 987654, 2048)


def test_parse_stat_takes_fields_after_the_last_parenthesis():
    comm, _, cpu_ticks, _, _, rss_pages = parse_stat(ODD_LINE)
    assert comm == b"my (odd) name" and cpu_ticks == 300 and rss_pages == 2048


def test_parse_stat_refuses_what_is_not_a_stat_line():
    with pytest.raises(ValueError):
        parse_stat(b"garbage")
    with pytest.raises(ValueError):
        parse_stat(b"1 (x) S 1 2 3")


def test_full_name_extends_a_cut_name_from_argv0_as_psutil_does():
    assert full_name("gnome-shell-cal", b"/usr/libexec/gnome-shell-calendar-server\0--x\0") \
        == "gnome-shell-calendar-server"
    assert full_name("short", b"/bin/other\0") == "short"
    assert full_name("abcdefghijklmno", b"/bin/unrelated\0") == "abcdefghijklmno"
    assert full_name("abcdefghijklmno", b"") == "abcdefghijklmno"  # kernel thread


def test_real_uid_is_the_first_uid_of_the_status_file():
    assert real_uid(b"Name:\tx\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1\n") == 1000
    assert real_uid(b"Name:\tx\n") is None


def test_cpu_percent_is_none_on_the_first_scan():
    assert cpu_percents(None, [rec(1, 5.0)], 10.0) == [None]
    assert cpu_percents({(1, 100.0): 1.0}, [rec(1, 5.0)], 0.0) == [None]


def test_cpu_percent_comes_from_the_cpu_time_delta_of_one_core():
    prev = {(1, 100.0): 10.0, (2, 100.0): 3.0}
    # 2.5 s of CPU in 10 s = 25 %; 20 s in 10 s (two cores busy) = 200 %, as top shows.
    got = cpu_percents(prev, [rec(1, 12.5), rec(2, 23.0)], 10.0)
    assert got == [25.0, 200.0]


def test_a_new_process_counts_all_its_cpu_time_in_the_period():
    assert cpu_percents({(1, 100.0): 1.0}, [rec(7, 4.0)], 10.0) == [40.0]


def test_a_reused_pid_is_a_new_process_not_a_negative_delta():
    prev = {(1, 100.0): 50.0}
    assert cpu_percents(prev, [rec(1, 2.0, start=900.0)], 10.0) == [20.0]
    assert cpu_percents(prev, [rec(1, 40.0)], 10.0) == [None]  # impossible: no figure


def test_count_states_groups_as_top_does():
    counts = count_states(["running", "sleeping", "disk-sleep", "idle", "zombie", "stopped",
                           "tracing-stop", "running"])
    assert counts == {"count": 8, "running": 2, "sleeping": 3, "zombie": 1, "other": 2}


def test_select_top_ranks_by_cpu_and_by_memory_with_stable_ties():
    records = [rec(1, rss=100), rec(2, rss=300), rec(3, rss=200), rec(4, rss=300)]
    cpus: list[float | None] = [50.0, 5.0, 50.0, None]
    by_cpu, by_mem = select_top(records, cpus, 3)
    assert [records[i].pid for i in by_cpu] == [3, 1, 2]  # tie on 50 %: more RSS first
    assert [records[i].pid for i in by_mem] == [2, 4, 3]  # tie on RSS: more CPU first
    assert select_top(records, cpus, 0) == ([], [])
    assert len(select_top(records, cpus, 10)[0]) == 4


def test_process_info_has_memory_percent_only_with_a_total():
    r = rec(5, rss=2_000_000)
    assert process_info(r, 1.5, 8_000_000)["memory_percent"] == 25.0
    assert process_info(r, 1.5, None)["memory_percent"] is None
    info = process_info(r, None, None, (10, 20))
    assert (info["cpu_percent"], info["io_read_bytes"], info["io_write_bytes"]) == (None, 10, 20)


def test_build_processes_counts_everything_and_lists_the_top_n():
    records = [rec(i, cpu_s=0.0, rss=i * 1000, status="zombie" if i == 3 else "sleeping")
               for i in range(1, 8)]
    cpus: list[float | None] = [float(i) for i in range(7)]
    out = build_processes(records, cpus, select_top(records, cpus, 2), 1_000_000, 10.0,
                          {7: (1, 2)})
    assert (out["count"], out["sleeping"], out["zombie"], out["running"], out["other"]) == (
        7, 6, 1, 0, 0)
    assert [p["pid"] for p in out["top_cpu"]] == [7, 6]
    assert [p["pid"] for p in out["top_memory"]] == [7, 6]
    assert out["top_cpu"][0]["io_read_bytes"] == 1
    assert out["top_cpu"][1]["io_read_bytes"] is None
    assert out["period_s"] == 10.0


def test_processes_message_is_valid_for_the_schema():
    from pydantic import TypeAdapter

    from shared.schema import ProcessesV1

    records, cpus = [rec(1, rss=10), rec(2, rss=20)], [1.0, None]
    out = build_processes(records, cpus, select_top(records, cpus, 10), 100, 10.0, {})
    TypeAdapter(ProcessesV1).validate_python(out)


# --- /proc on a fake tree ---------------------------------------------------------------------

def make_proc(root: Path, pid: int, comm: str = "worker", *, state: str = "S", utime: int = 100,
              stime: int = 50, start: int = 5000, rss_pages: int = 10, threads: int = 2,
              uid: int = 0, cmdline: bytes = b"", io: str | None = None) -> None:
    d = root / str(pid)
    d.mkdir(exist_ok=True)
    fields = ["1"] * 49
    fields[0] = state  # field 3
    fields[11], fields[12] = str(utime), str(stime)  # fields 14, 15
    fields[17] = str(threads)  # field 20
    fields[19] = str(start)  # field 22
    fields[21] = str(rss_pages)  # field 24
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "cmdline").write_bytes(cmdline)
    if io is not None:
        (d / "io").write_text(io)


def scanner(root: Path, keep_open: int = 256) -> ProcScanner:
    return ProcScanner(str(root), clock_ticks=100, page_bytes=4096,
                       user_of=lambda uid: {0: "root", 1000: "pi"}.get(uid),
                       keep_open=keep_open)


def test_scanner_reads_every_process_of_a_fake_proc(tmp_path: Path):
    make_proc(tmp_path, 1, "init", utime=200, stime=100, rss_pages=5)
    make_proc(tmp_path, 42, "chromium-browse", state="R", uid=1000,
              cmdline=b"/usr/lib/chromium/chromium-browser\0--type=renderer\0")
    make_proc(tmp_path, 43, "zomb", state="Z")
    (tmp_path / "self").mkdir()  # not a pid
    (tmp_path / "99").mkdir()  # exited between listdir and read: no stat
    (tmp_path / "meminfo").write_text("MemTotal: 1 kB\n")
    records = {r.pid: r for r in scanner(tmp_path).scan()}
    assert set(records) == {1, 42, 43}
    assert records[1] == ProcRecord(1, 5000.0, "sleeping", 3.0, 5 * 4096, 2, "init", "root")
    assert records[42].name == "chromium-browser" and records[42].user == "pi"
    assert records[42].status == "running" and records[43].status == "zombie"


def test_scanner_reads_name_and_user_once_per_process(tmp_path: Path):
    make_proc(tmp_path, 7, "daemon", uid=1000)
    s = scanner(tmp_path)
    assert s.scan()[0].user == "pi"
    (tmp_path / "7" / "status").unlink()  # not read again: the cache answers
    (tmp_path / "7" / "cmdline").unlink()
    make_proc(tmp_path, 7, "daemon", uid=1000, utime=900)
    (tmp_path / "7" / "status").unlink()
    again = s.scan()[0]
    assert (again.user, again.cpu_s) == ("pi", 9.5)


def test_scanner_treats_a_reused_pid_as_a_new_process(tmp_path: Path):
    make_proc(tmp_path, 7, "old", uid=0, start=100)
    s = scanner(tmp_path)
    assert s.scan()[0].user == "root"
    make_proc(tmp_path, 7, "new", uid=1000, start=200)
    new = s.scan()[0]
    assert (new.name, new.user, new.start) == ("new", "pi", 200.0)


def test_scanner_keeps_stat_files_open_up_to_a_limit_and_closes_those_of_exited(
        tmp_path: Path):
    for pid in range(1, 6):
        make_proc(tmp_path, pid, utime=pid)
    s = scanner(tmp_path, keep_open=3)
    assert len(s.scan()) == 5 and len(s._fds) == 3
    make_proc(tmp_path, 2, utime=77)  # read again through the kept file: fresh values
    assert {r.pid: r.cpu_s for r in s.scan()}[2] == 1.27
    for f in (tmp_path / "2").iterdir():
        f.unlink()
    (tmp_path / "2").rmdir()  # process 2 exited
    assert {r.pid for r in s.scan()} == {1, 3, 4, 5} and "2" not in s._fds
    s.close()
    assert s._fds == {}


def test_scanner_reads_io_bytes_and_none_where_not_allowed(tmp_path: Path):
    make_proc(tmp_path, 5, io="rchar: 9\nwchar: 8\nsyscr: 1\nsyscw: 1\nread_bytes: 4096\n"
                              "write_bytes: 8192\ncancelled_write_bytes: 0\n")
    make_proc(tmp_path, 6)  # no io file: as EACCES for another user's process
    s = scanner(tmp_path)
    assert s.io(5) == (4096, 8192)
    assert s.io(6) == (None, None)


class FakeScanner:
    def __init__(self, scans: list[list[ProcRecord]]) -> None:
        self.scans = scans
        self.io_asked: list[int] = []

    def scan(self) -> list[ProcRecord]:
        return self.scans.pop(0) if len(self.scans) > 1 else self.scans[0]

    def io(self, pid: int) -> tuple[int | None, int | None]:
        self.io_asked.append(pid)
        return (pid, pid)


def test_sampler_gives_cpu_percent_between_two_scans_and_reads_io_only_for_the_top():
    first = [rec(i, cpu_s=10.0, rss=i) for i in range(1, 21)]
    second = [rec(i, cpu_s=10.0 + (i == 5) * 2.0, rss=i) for i in range(1, 21)]
    fake = FakeScanner([first, second])
    now = [0.0]
    sampler = ProcessSampler(fake, top_n=2, memory_total_bytes=1000, clock=lambda: now[0])
    sampler.scan()
    now[0] = 10.0
    out = sampler.sample()
    assert out["top_cpu"][0]["pid"] == 5 and out["top_cpu"][0]["cpu_percent"] == 20.0
    assert [p["pid"] for p in out["top_memory"]] == [20, 19]
    assert sorted(fake.io_asked) == sorted({5, 20, 19})  # not the 17 others
    assert out["period_s"] == 10.0 and out["count"] == 20


def test_watcher_samples_every_period_until_stopped():
    fake = FakeScanner([[rec(1, rss=5)]])
    watcher = ProcessWatcher(ProcessSampler(fake, top_n=1), period_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: watcher.scans >= 3, 10, "3 scans", interval_s=0.01)
    stop.set()
    thread.join(5)
    assert watcher.scans >= 3 and not thread.is_alive()
    assert watcher.latest is not None and watcher.latest["top_memory"][0]["pid"] == 1


def test_watcher_survives_a_failing_scan():
    class Broken(FakeScanner):
        def scan(self) -> list[ProcRecord]:
            raise OSError("no /proc")

    watcher = ProcessWatcher(ProcessSampler(Broken([[]]), top_n=1), period_s=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: watcher.scans >= 2, 10, "2 scans", interval_s=0.01)
    stop.set()
    thread.join(5)
    assert watcher.scans >= 2 and watcher.latest is None


# --- the psutil fallback and agreement with psutil --------------------------------------------

def fake_process(pid: int, name: str, *, create: float = 1.0, user: str = "root",
                 asked: list[str] | None = None) -> Any:
    def named(what: str, value: str) -> Any:
        def get() -> str:
            if asked is not None:
                asked.append(f"{what}:{pid}")
            return value
        return get

    return SimpleNamespace(
        pid=pid, create_time=lambda: create, name=named("name", name),
        username=named("user", user),
        info={"cpu_times": SimpleNamespace(user=1.0, system=0.5),
              "memory_info": SimpleNamespace(rss=4096), "num_threads": 3,
              "status": "sleeping"})


def test_psutil_fallback_asks_name_and_user_once_per_process():
    asked: list[str] = []
    procs = [fake_process(1, "init", asked=asked), fake_process(2, "sh", asked=asked)]
    ps = fake_psutil.make(process_iter=lambda attrs: iter(procs))
    scanner = PsutilProcesses(ps)
    first = scanner.scan()
    scanner.scan()
    assert asked == ["name:1", "user:1", "name:2", "user:2"]
    assert first[0] == ProcRecord(1, 1.0, "sleeping", 1.5, 4096, 3, "init", "root")


def test_collector_uses_psutil_for_processes_without_the_proc_fast_path():
    ps = fake_psutil.make(process_iter=lambda attrs: iter([fake_process(3, "x")]))
    assert isinstance(Collector(ps=ps, fast=False).process_scanner(), PsutilProcesses)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_proc_scanner_agrees_with_psutil_on_this_process():
    import psutil

    scanner = ProcScanner()
    scanner.scan()
    me = {r.pid: r for r in scanner.scan()}[os.getpid()]  # the second through kept files
    p = psutil.Process()
    times = p.cpu_times()
    assert me.name == p.name() and me.user == p.username()
    assert me.status == p.status() == "running"
    assert abs(me.cpu_s - (times.user + times.system)) < 0.5
    assert abs(me.rss_bytes - p.memory_info().rss) < 4 * 1024 * 1024
    assert me.threads == p.num_threads()
    assert scanner.io(os.getpid())[0] == p.io_counters().read_bytes
    scanner.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_a_process_that_exits_leaves_the_scan_and_its_file_is_closed():
    # The child lives until its stdin closes: no sleep, and it cannot outlive the test.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        scanner = ProcScanner()
        assert child.pid in {r.pid for r in scanner.scan()}
        assert str(child.pid) in scanner._fds
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert child.pid not in {r.pid for r in scanner.scan()}
    assert str(child.pid) not in scanner._fds
    scanner.close()


def test_process_settings_default_to_ten_seconds_and_ten_processes_and_are_checked():
    from shared.config import AgentSettings, load_settings
    from shared.errors import ConfigError

    default = load_settings(AgentSettings, environ={})
    assert (default.process_period_s, default.process_top_n) == (10.0, 10)
    off = load_settings(AgentSettings, environ={"FLEETPULSE_PROCESS_PERIOD_S": "0"})
    assert off.process_period_s == 0.0
    with pytest.raises(ConfigError) as bad:
        load_settings(AgentSettings, environ={"FLEETPULSE_PROCESS_PERIOD_S": "-5",
                                              "FLEETPULSE_PROCESS_TOP_N": "0"})
    assert bad.value.problems == [
        "FLEETPULSE_PROCESS_PERIOD_S: '-5' must be 0 (off) or more.",
        "FLEETPULSE_PROCESS_TOP_N: '0' must be from 1 to 1000."]


def test_watcher_takes_a_new_period_and_top_n_without_a_restart():
    fake = FakeScanner([[rec(1, rss=5), rec(2, rss=9)]])
    watcher = ProcessWatcher(ProcessSampler(fake, top_n=1), period_s=0)  # off at start
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: thread.is_alive(), 5, "the thread")
        assert watcher.scans == 0 and watcher.latest is None
        watcher.configure(0.05, 2)  # turned on remotely: the thread wakes at once
        wait_for(lambda: watcher.scans >= 2, 10, "scans once turned on", interval_s=0.01)
        assert watcher.latest is not None and len(watcher.latest["top_memory"]) == 2
        watcher.configure(0, 2)  # off again: the last result is forgotten
        wait_for(lambda: watcher.latest is None, 10, "the result dropped", interval_s=0.01)
        scans = watcher.scans
        watcher.configure(3600, 2)
        watcher.configure(3600, 1)
        assert watcher.scans == scans and watcher.sampler.top_n == 1
    finally:
        stop.set()
        watcher.wake()
        thread.join(5)
    assert not thread.is_alive()


# --- on the wire ------------------------------------------------------------------------------

def test_fit_section_shortens_the_lists_until_the_section_fits():
    from agent.processes import fit_section

    procs = [process_info(rec(pid, cpu_s=1.0, rss=pid, name="x" * 200), 1.0, 10**9)
             for pid in range(300)]
    big = build_processes([], [], ([], []), None, 10.0, {})
    big["top_cpu"], big["top_memory"] = procs, procs[::-1]
    import orjson
    assert len(orjson.dumps(big)) > 32 * 1024
    fitted = fit_section(big)
    assert len(orjson.dumps(fitted)) <= 32 * 1024
    assert 0 < len(fitted["top_cpu"]) < 300 and fitted["top_cpu"] == procs[:len(fitted["top_cpu"])]
    small = build_processes([], [], ([], []), None, 10.0, {})
    assert fit_section(small) is small


def test_a_scan_is_sent_once_and_only_to_a_hub_that_reads_processes():
    from agent.encode import build_metrics
    from tests.unit.hub.messages import BASE

    scanner = SimpleNamespace(scan=lambda: [], io=lambda pid: (None, None))
    watcher = ProcessWatcher(ProcessSampler(scanner), 10.0)
    assert watcher.take() is None
    scan = build_processes([], [], ([], []), None, 10.0, {})
    watcher._unsent = scan
    assert watcher.take() is scan and watcher.take() is None

    def reading(hub_reads: frozenset[str]) -> dict[str, Any]:
        return dict(build_metrics(BASE, BASE, device_id="d", session_id="s", seq=1, epoch_s=0.0,
                                  interval_s=1.0, hub_reads=hub_reads, processes=scan))
    assert "processes" not in reading(frozenset())
    assert "processes" not in reading(frozenset({"clock_synced"}))
    assert reading(frozenset({"processes"}))["processes"] is scan
