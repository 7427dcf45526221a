"""Measure what the agent costs the machine it watches, against collectd in the same run.

Runs the real agent (``python -m agent.main run``, every 1 s) and collectd 5 (cpu, memory,
swap, df, disk, interface, thermal, battery, load → its mqtt plugin, Interval 1, QoS 1)
side by side, both publishing to a private Mosquitto. After a warm-up it measures, over a
window of at least two minutes:

* CPU: utime+stime ticks of /proc/<pid>/stat (and the threads' nanosecond schedstat run
  time), as % of one core;
* RSS: median of a per-second VmRSS sample (steady) and VmHWM (peak);
* values published per second: numeric leaf values in the payloads a subscriber receives
  (null / NaN not counted), payload bytes, and MQTT bytes (the QoS 1 PUBLISH packets that
  carried them and their PUBACKs, sized from what arrived: the MQTT version is known).

Then, in a fresh process, a per-call breakdown of one collection: each psutil call and each
collector step timed as the agent makes them, once a second (cold caches), and back to back.

    python3 -m bench.agent_cost                 # 20 s warm-up, 120 s window, 30 s breakdown
    python3 -m bench.agent_cost --window-s 300
    python3 -m bench.agent_cost --breakdown-only 60
    python3 -m bench.agent_cost --floor         # also the stack's floor (bench/agent_floor.py)
    python3 -m bench.agent_cost --processes     # also the agent with process metrics off

The agent runs with its default settings: process metrics on, every 10 s. With
``--processes`` the broker holds a hub's capability message (retained, as a hub of this code
publishes it), so the agent sends its process samples (the section ``processes`` of one
reading in ten); a second agent runs beside it with ``--process-period-s 0`` (off), and the
breakdown times the per-second reading with and without a process watcher thread running
(p50 / p99 at 1 Hz), and one process scan: /proc read directly vs psutil's process_iter.

Writes bench/results/agent_cost.json. Needs mosquitto and collectd-core (apt-get install).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

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

COLLECTD_PLUGINS = ("cpu", "memory", "swap", "df", "disk", "interface", "thermal", "battery",
                    "load")
AGENT_TOPIC = "benchagent"
COLLECTD_TOPIC = "collectd"


def collectd_conf(workdir: Path, port: int) -> str:
    plugin_dir = "/usr/lib/collectd"
    lines = ['Hostname "bench"', "FQDNLookup false", "Interval 1", f'BaseDir "{workdir}"',
             f'PIDFile "{workdir}/collectd.pid"', f'PluginDir "{plugin_dir}"',
             'TypesDB "/usr/share/collectd/types.db"']
    lines += [f"LoadPlugin {p}" for p in (*COLLECTD_PLUGINS, "mqtt")]
    lines += ["<Plugin mqtt>", '  <Publish "bench">', '    Host "127.0.0.1"', f"    Port {port}",
              '    ClientId "collectd-bench"', "    QoS 1", f'    Prefix "{COLLECTD_TOPIC}"',
              "  </Publish>", "</Plugin>"]
    return "\n".join(lines) + "\n"


def count_json_values(node: Any) -> int:
    """Count numeric leaves (not booleans, not null) of a decoded JSON document."""
    if isinstance(node, dict):
        return sum(count_json_values(v) for v in node.values())
    if isinstance(node, list):
        return sum(count_json_values(v) for v in node)
    return 1 if isinstance(node, (int, float)) and not isinstance(node, bool) else 0


def count_collectd_values(payload: bytes) -> int:
    """collectd's mqtt plugin sends ``<time>:<v1>[:<v2>…]``; count the values that are numbers."""
    count = 0
    for part in payload.rstrip(b"\0").split(b":")[1:]:
        try:
            value = float(part)
        except ValueError:
            continue
        if not math.isnan(value):
            count += 1
    return count


def publish_packet_bytes(topic: str, payload: bytes, *, v5: bool) -> int:
    """Size of the QoS 1 PUBLISH the publisher sent, plus the broker's 4-byte PUBACK.

    (MQTT 5.0 §3.3: fixed header, topic, packet id, properties length in v5, payload.)
    """
    remaining = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining + 4


class Tally:
    """What a subscriber saw from one source, with a switch to count only inside the window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counting = False
        self.messages = 0
        self.values = 0
        self.payload_bytes = 0
        self.packet_bytes = 0
        self.sizes: list[int] = []
        self.sample: bytes = b""

    def add(self, values: int, payload: bytes, packet: int) -> None:
        with self.lock:
            self.sample = payload
            if self.counting:
                self.messages += 1
                self.values += values
                self.payload_bytes += len(payload)
                self.packet_bytes += packet
                self.sizes.append(len(payload))


def wait_until(deadline: float, what: str, step_s: float = 10.0) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        progress(f"{what}: {left:.0f} s left")
        time.sleep(min(step_s, left))


def measure_window(warmup_s: float, window_s: float, with_collectd: bool,
                   baseline_tree: Path | None, no_site: bool,
                   floor: bool = False, processes_off: bool = False) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from shared.config import parse_broker_url
    from shared.mqtt import MqttConnection, Received
    from shared.topics import hub_schema_topic
    from tests.servers import MosquittoServer, wait_for

    tmp = Path(tempfile.mkdtemp(prefix="fleetpulse-agent-cost-"))
    broker = MosquittoServer(tmp / "mqtt", persistence=False).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    tallies = {"agent": Tally(), "collectd": Tally(), "agent_baseline": Tally(),
               "agent_no_site": Tally(), "floor": Tally(), "agent_processes_off": Tally()}

    def on_message(msg: Received) -> None:
        if msg.topic.startswith(AGENT_TOPIC + "/") and msg.topic.endswith("/metrics"):
            name = ("agent_baseline" if "/bench-baseline/" in msg.topic else "agent_no_site"
                    if "/bench-nosite/" in msg.topic else "agent_processes_off"
                    if "/bench-noproc/" in msg.topic else "floor"
                    if "/bench-floor/" in msg.topic else "agent")
            tallies[name].add(count_json_values(orjson.loads(msg.payload)), msg.payload,
                              publish_packet_bytes(msg.topic, msg.payload, v5=True))
        elif msg.topic.startswith(COLLECTD_TOPIC + "/"):
            tallies["collectd"].add(count_collectd_values(msg.payload), msg.payload,
                                    publish_packet_bytes(msg.topic, msg.payload, v5=False))

    sub = MqttConnection("bench-agent-cost-sub", parse_broker_url(broker.url))
    sub.on_message = on_message
    sub.on_connected = lambda: sub.subscribe([f"{AGENT_TOPIC}/#", f"{COLLECTD_TOPIC}/#"], qos=1)
    sub.start()
    try:
        wait_for(lambda: sub.connected, 10, "the subscriber to connect")
        if processes_off:
            # What a hub of this code says it reads (retained), so the agents put their
            # process samples on the wire, as they do beside a real hub.
            from shared.schema import hub_capabilities
            sub.publish(hub_schema_topic(AGENT_TOPIC), orjson.dumps(hub_capabilities("bench")),
                        qos=1, retain=True)
        agents = {"agent": (ROOT, "bench-agent", False)}
        extra_args = {"agent_processes_off": ["--process-period-s", "0"]}
        if processes_off:
            agents["agent_processes_off"] = (ROOT, "bench-noproc", False)
        if baseline_tree is not None:
            agents["agent_baseline"] = (baseline_tree, "bench-baseline", False)
        if no_site:
            agents["agent_no_site"] = (ROOT, "bench-nosite", True)
        logs = {}
        for name, (tree, device_id, plain) in agents.items():
            logs[name] = open(tmp / f"{name}.log", "wb")
            args = ["run", "--broker-url", broker.url, "--state-dir", str(tmp / name),
                    "--device-id", device_id, "--interval-s", "1", "--topic-prefix",
                    AGENT_TOPIC, "--log-level", "WARNING", *extra_args.get(name, [])]
            cmd = [sys.executable, "-m", "agent.main", *args]
            if plain:
                # As from a wheel: site-packages on the path, but no .pth files run (a
                # development install's editable-import hook imports urllib and http).
                paths = [str(tree), sysconfig.get_paths()["purelib"],
                         sysconfig.get_paths()["platlib"]]
                cmd = [sys.executable, "-S", "-c",
                       f"import sys, runpy; sys.path[:0] = {paths!r}; "
                       f"sys.argv = ['agent.main', *{args!r}]; "
                       "runpy.run_module('agent.main', run_name='__main__')"]
            procs[name] = subprocess.Popen(
                cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                stdout=subprocess.DEVNULL, stderr=logs[name])
        if floor:
            logs["floor"] = open(tmp / "floor.log", "wb")
            procs["floor"] = subprocess.Popen(
                [sys.executable, "-m", "bench.agent_floor", "--broker-url", broker.url,
                 "--topic", f"{AGENT_TOPIC}/bench-floor/metrics"], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=logs["floor"])
        if with_collectd:
            binary = shutil.which("collectd") or "/usr/sbin/collectd"
            if not Path(binary).exists():
                raise SystemExit("collectd is not installed: apt-get install collectd-core")
            (tmp / "collectd").mkdir()
            conf = tmp / "collectd" / "collectd.conf"
            conf.write_text(collectd_conf(tmp / "collectd", broker.port))
            procs["collectd"] = subprocess.Popen([binary, "-f", "-C", str(conf)],
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)
        wait_until(time.monotonic() + warmup_s, "warm-up")
        for name, proc in procs.items():
            log_file = tmp / f"{name}.log"
            if proc.poll() is not None:
                err = log_file.read_text() if log_file.exists() else ""
                raise SystemExit(f"{name} exited during the warm-up: {err[-2000:]}")
        start = {n: cpu_snapshot([p.pid]) for n, p in procs.items()}
        threads0 = {n: thread_split(p.pid) for n, p in procs.items() if n.startswith("agent")}
        for tally in tallies.values():
            tally.counting = True
        rss: dict[str, list[int]] = defaultdict(list)
        deadline = time.monotonic() + window_s
        next_report = time.monotonic()
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                kb = status_kb(proc.pid, "VmRSS")
                if kb:
                    rss[name].append(kb)
            if time.monotonic() >= next_report:
                progress(f"window: {deadline - time.monotonic():.0f} s left")
                next_report += 15
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        end = {n: cpu_snapshot([p.pid]) for n, p in procs.items()}
        for tally in tallies.values():
            tally.counting = False
        results: dict[str, Any] = {}
        for name, proc in procs.items():
            cpu = cpu_percent(start[name], end[name])
            tally = tallies[name]
            threads = None
            if name in threads0:
                now = thread_split(proc.pid)
                threads = {k: round(100 * (now[k] - threads0[name][k]) / cpu["window_s"], 4)
                           for k in now}
            results[name] = {
                "pid": proc.pid, "cpu": cpu,
                "cpu_percent": cpu["ticks_percent"],
                "rss_steady_mb": statistics.median(rss[name]) / 1024 if rss[name] else None,
                "rss_peak_mb": (status_kb(proc.pid, "VmHWM") or 0) / 1024,
                "messages_per_s": tally.messages / cpu["window_s"],
                "values_per_s": tally.values / cpu["window_s"],
                "payload_bytes_per_s": tally.payload_bytes / cpu["window_s"],
                "mqtt_bytes_per_s": tally.packet_bytes / cpu["window_s"],
                "median_payload_bytes": statistics.median(tally.sizes) if tally.sizes else None,
                "threads_cpu_percent": threads,
            }
        results["agent"]["sample_payload"] = tallies["agent"].sample.decode(errors="replace")
        for name in agents:
            text = (tmp / f"{name}.log").read_text(errors="replace")
            results[name]["log_tail"] = text[-1000:]
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        sub.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def thread_split(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (collection loop) and the others (paho's network loop)."""
    out: dict[str, float] = {"main": 0.0, "other_threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out["main" if int(task.name) == pid else "other_threads"] += ns / 1e9
    return out


# --- per-call breakdown ----------------------------------------------------------------------

def breakdown(seconds: int, back_to_back: int = 300) -> dict[str, Any]:
    """Time each step of a collection, once a second as the agent does, then back to back."""
    sys.path.insert(0, str(ROOT))
    import psutil

    from agent.collect import Collector
    from agent.encode import build_metrics, encode

    timings: dict[str, list[float]] = defaultdict(list)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - t0)
        return wrapper

    class TimedPsutil:
        """psutil, with every function call timed (what the collector asks of it)."""

        def __getattr__(self, name: str) -> Any:
            attr = getattr(psutil, name)
            return timed(f"psutil.{name}", attr) if callable(attr) else attr

    collector = Collector()
    # The backends' readings (agent/collect/): the fast path's ProcReader on Linux, and
    # psutil's path, which is also the fast path's fallback.
    collector._portable.ps = TimedPsutil()
    for target in (collector._proc, collector._portable):
        if target is None:
            continue
        kind = type(target)
        for name in dir(kind):
            member = getattr(kind, name)
            if (not name.startswith("__") and callable(member) and not isinstance(member, type)
                    and not name.startswith(("refresh", "close", "process_scanner"))):
                setattr(target, name, timed(f"{kind.__name__}.{name}", getattr(target, name)))

    def one(prev: Any) -> Any:
        t0 = time.perf_counter()
        sample = collector.sample()
        t1 = time.perf_counter()
        message = build_metrics(prev, sample, device_id="bench-agent", session_id="s" * 32,
                                seq=1, epoch_s=time.time(), interval_s=1.0)
        t2 = time.perf_counter()
        payload = encode(message)
        t3 = time.perf_counter()
        timings["sample() total"].append(t1 - t0)
        timings["build_metrics"].append(t2 - t1)
        timings["encode (orjson)"].append(t3 - t2)
        timings["collect+build+encode"].append(t3 - t0)
        return sample, payload

    prev, payload = one(None)
    time.sleep(1.0)
    timings.clear()
    tick = time.monotonic()
    for i in range(seconds):
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
        prev, payload = one(prev)
        if i % 15 == 14:
            progress(f"breakdown at 1 Hz: {seconds - i - 1} s left")
    at_1hz = {k: sorted(v) for k, v in timings.items()}
    timings.clear()
    for _ in range(back_to_back):
        prev, payload = one(prev)
    tight = {k: sorted(v) for k, v in timings.items()}
    rows = {}
    for name, values in at_1hz.items():
        rows[name] = {"calls_per_sample": len(values) / seconds,
                      "median_us_1hz": statistics.median(values) * 1e6,
                      "p90_us_1hz": values[int(0.9 * (len(values) - 1))] * 1e6,
                      "median_us_back_to_back": statistics.median(tight[name]) * 1e6
                      if name in tight else None}
    return {"seconds": seconds, "back_to_back_n": back_to_back, "payload_bytes": len(payload),
            "values_per_message": count_json_values(orjson.loads(payload)), "calls": rows}


def processes_effect(seconds: int, scans: int = 20) -> dict[str, Any]:
    """Time the per-second reading with and without a process watcher thread; time a scan.

    Three phases of ``seconds`` readings at 1 Hz, as the agent reads: no watcher; a watcher
    at the default period (10 s); a watcher every second (the worst case). Then one scan
    back to back: /proc read directly (the agent on Linux) vs psutil's process_iter with
    the four cheap attributes (the fallback's cost per period) and with name + username.
    """
    sys.path.insert(0, str(ROOT))
    import psutil

    from agent.collect import Collector, PsutilProcesses
    from agent.encode import build_metrics, encode
    from agent.processes import ProcessSampler, ProcessWatcher, ProcScanner

    collector = Collector()
    memory_total = collector.static_facts().memory_total_bytes

    def phase(period_s: float | None) -> dict[str, Any]:
        stop = threading.Event()
        watcher = thread = None
        scans_at: list[tuple[float, float]] = []  # when each scan ran (perf_counter)
        if period_s:
            sampler = ProcessSampler(collector.process_scanner(), top_n=10,
                                     memory_total_bytes=memory_total)
            scan = sampler.scan

            def timed_scan() -> Any:
                t0 = time.perf_counter()
                try:
                    return scan()
                finally:
                    scans_at.append((t0, time.perf_counter()))

            sampler.scan = timed_scan  # type: ignore[method-assign]
            watcher = ProcessWatcher(sampler, period_s)
            thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        prev = collector.sample()
        times: list[float] = []
        readings_at: list[tuple[float, float]] = []
        tick = time.monotonic()
        if thread is not None:
            thread.start()  # as agent/main.py: beside the loop, scans half a second off it
        for i in range(seconds):
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
            t0 = time.perf_counter()
            cur = collector.sample()
            encode(build_metrics(prev, cur, device_id="bench-agent", session_id="s" * 32,
                                 seq=i + 1, epoch_s=time.time(), interval_s=1.0))
            t1 = time.perf_counter()
            times.append(t1 - t0)
            readings_at.append((t0, t1))
            prev = cur
        stop.set()
        if thread is not None:
            thread.join(10)
        # A slow reading that overlapped no scan was slowed by something else (the machine).
        overlapped = sum(1 for r0, r1 in readings_at
                         if any(s0 < r1 and r0 < s1 for s0, s1 in scans_at))
        times.sort()
        return {"readings": len(times), "p50_us": statistics.median(times) * 1e6,
                "p99_us": times[min(len(times) - 1, int(0.99 * len(times)))] * 1e6,
                "max_us": times[-1] * 1e6, "scans": watcher.scans if watcher else 0,
                "last_scan_ms": watcher.scan_s * 1000 if watcher else None,
                "readings_during_a_scan": overlapped}

    phases = {}
    for name, period in (("off", None), ("every 10 s (default)", 10.0),
                         ("every 1 s (worst case)", 1.0)):
        progress(f"per-second reading, process watcher {name}: {seconds} s")
        phases[name] = phase(period)

    def per_process(fn: Callable[[], int]) -> float:
        fn()  # warm: caches filled, as every period after the first
        t0 = time.perf_counter()
        count = sum(fn() for _ in range(scans))
        return (time.perf_counter() - t0) / count * 1e6

    proc_scanner = ProcScanner() if sys.platform.startswith("linux") else None
    fallback = PsutilProcesses(psutil)
    four = ["cpu_times", "memory_info", "num_threads", "status"]
    scan = {
        "processes": len(list(psutil.process_iter())),
        "proc_scanner_us_per_process":
            per_process(lambda: len(proc_scanner.scan())) if proc_scanner else None,
        "psutil_fallback_us_per_process": per_process(lambda: len(fallback.scan())),
        "psutil_process_iter_4_attrs_us_per_process":
            per_process(lambda: len(list(psutil.process_iter(four)))),
        "psutil_process_iter_6_attrs_us_per_process":
            per_process(lambda: len(list(psutil.process_iter([*four, "name", "username"])))),
    }
    return {"seconds_per_phase": seconds, "phases": phases, "scan": scan}


def print_processes_effect(result: dict[str, Any]) -> None:
    phases, scan = result["phases"], result["scan"]
    print(f"\nPer-second reading (collect + build + encode) with the process watcher, "
          f"{result['seconds_per_phase']} readings at 1 Hz per phase (µs)")
    print(table(["process watcher", "p50", "p99", "max", "scans", "last scan ms",
                 "readings during a scan"],
                [[n, r["p50_us"], r["p99_us"], r["max_us"], r["scans"], r["last_scan_ms"],
                  r["readings_during_a_scan"]] for n, r in phases.items()]))
    off = phases["off"]["p99_us"]
    print("p99 vs watcher off, same run: " + ", ".join(
        f"{n} {r['p99_us'] / off:.2f}×" for n, r in phases.items() if n != "off"))
    base = scan["psutil_process_iter_4_attrs_us_per_process"]
    print(f"One scan of {scan['processes']} processes, back to back, µs per process: "
          + ", ".join(f"{k.removesuffix('_us_per_process')} {v:.1f}"
                      + (f" ({v / base:.2f}× process_iter 4 attrs)" if v else "")
                      for k, v in scan.items() if k.endswith("_us_per_process") and v))


def print_breakdown(result: dict[str, Any]) -> None:
    calls = result["calls"]
    order = sorted(calls, key=lambda n: (not n.startswith("psutil."), "." not in n, n))
    print(f"\nPer-call breakdown (N = {result['seconds']} samples at 1 Hz, "
          f"{result['back_to_back_n']} back to back; µs; "
          f"payload {result['payload_bytes']} bytes, {result['values_per_message']} values)")
    print(table(["call", "per sample", "median 1 Hz", "p90 1 Hz", "median back-to-back"],
                [[n, calls[n]["calls_per_sample"], calls[n]["median_us_1hz"],
                  calls[n]["p90_us_1hz"], calls[n]["median_us_back_to_back"]] for n in order]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-s", type=float, default=20.0)
    parser.add_argument("--window-s", type=float, default=120.0)
    parser.add_argument("--breakdown-s", type=int, default=30)
    parser.add_argument("--no-collectd", action="store_true")
    parser.add_argument("--baseline-tree", type=Path, help="also run the agent of this source "
                        "tree (e.g. `git archive` of an older commit) in the same run")
    parser.add_argument("--no-site", action="store_true", help="also run the agent as "
                        "installed from a wheel (python -S, site-packages on the path): a "
                        "development install's import hook adds ~5 MB of RSS")
    parser.add_argument("--floor", action="store_true", help="also run bench/agent_floor.py: "
                        "the same wake-ups, kernel reads and MQTT publishing with no metric "
                        "work, to show what fleetpulse's own code adds")
    parser.add_argument("--processes", action="store_true", help="also run the agent with "
                        "process metrics off, and time the per-second reading with and without "
                        "the process watcher (--processes-s readings per phase)")
    parser.add_argument("--processes-s", type=int, default=40)
    parser.add_argument("--breakdown-only", type=int, metavar="SECONDS")
    parser.add_argument("--processes-only", type=int, metavar="SECONDS")
    parser.add_argument("--label", default="agent_cost", help="results file name")
    args = parser.parse_args()
    if args.breakdown_only:
        result = breakdown(args.breakdown_only)
        if os.environ.get("BENCH_BREAKDOWN_JSON"):
            Path(os.environ["BENCH_BREAKDOWN_JSON"]).write_bytes(orjson.dumps(result))
        else:
            print_breakdown(result)
        return 0
    if args.processes_only:
        result = processes_effect(args.processes_only)
        if os.environ.get("BENCH_BREAKDOWN_JSON"):
            Path(os.environ["BENCH_BREAKDOWN_JSON"]).write_bytes(orjson.dumps(result))
        else:
            print_processes_effect(result)
        return 0

    info = machine()
    runs = measure_window(args.warmup_s, args.window_s, not args.no_collectd,
                          args.baseline_tree, args.no_site, args.floor, args.processes)
    effect = None
    if args.processes:
        progress("per-second reading with and without the process watcher, fresh process")
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, "-m", "bench.agent_cost", "--processes-only",
                            str(args.processes_s)], cwd=ROOT, check=True,
                           env={**os.environ, "BENCH_BREAKDOWN_JSON": out.name})
            effect = orjson.loads(Path(out.name).read_bytes())
    progress("per-call breakdown in a fresh process")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "bench.agent_cost", "--breakdown-only",
                        str(args.breakdown_s)], cwd=ROOT, check=True,
                       env={**os.environ, "BENCH_BREAKDOWN_JSON": out.name})
        calls = orjson.loads(Path(out.name).read_bytes())

    a, c = runs["agent"], runs.get("collectd")
    rows = []
    for name, r in runs.items():
        rows.append([name, r["cpu"]["ticks_percent"], r["cpu"]["schedstat_percent"],
                     r["rss_steady_mb"], r["rss_peak_mb"], r["values_per_s"],
                     r["messages_per_s"], r["payload_bytes_per_s"], r["mqtt_bytes_per_s"]])
    print(f"\nAgent cost: window {a['cpu']['window_s']:.0f} s after {args.warmup_s:.0f} s "
          f"warm-up; {describe_machine(info)}")
    print(table(["agent", "CPU % (ticks)", "CPU % (schedstat)", "RSS MB", "peak RSS MB",
                 "values/s", "messages/s", "payload B/s", "MQTT B/s"], rows))
    ratio = ratio_ticks = None
    if c:
        ratio = a["cpu"]["schedstat_percent"] / c["cpu"]["schedstat_percent"]
        ratio_ticks = a["cpu"]["ticks_percent"] / max(c["cpu"]["ticks_percent"], 1e-9)
        print(f"fleetpulse agent: {a['cpu']['ticks_percent']:.3f} % of one core "
              f"({a['cpu']['schedstat_percent']:.3f} % schedstat), "
              f"{a['values_per_s']:.0f} values/s; collectd same run: "
              f"{c['cpu']['ticks_percent']:.3f} % ({c['cpu']['schedstat_percent']:.3f} %), "
              f"{c['values_per_s']:.0f} values/s → CPU ratio {ratio:.2f}× "
              f"({ratio_ticks:.2f}× by ticks), "
              f"values ratio {a['values_per_s'] / max(c['values_per_s'], 1e-9):.2f}×")
    for name, r in runs.items():
        if r.get("threads_cpu_percent"):
            print(f"{name} CPU % by thread (schedstat): {r['threads_cpu_percent']}")
    if "agent_baseline" in runs:
        b = runs["agent_baseline"]
        print(f"agent now vs baseline tree, same run: {a['cpu']['schedstat_percent']:.3f} % vs "
              f"{b['cpu']['schedstat_percent']:.3f} % "
              f"({a['cpu']['schedstat_percent'] / max(b['cpu']['schedstat_percent'], 1e-9):.2f}×)")
    if "floor" in runs:
        f = runs["floor"]
        print(f"agent vs its stack's floor (wake-ups, kernel reads, MQTT, no metric work), "
              f"same run: {a['cpu']['schedstat_percent']:.3f} % vs "
              f"{f['cpu']['schedstat_percent']:.3f} %: fleetpulse's own per-second work "
              f"{10 * (a['cpu']['schedstat_percent'] - f['cpu']['schedstat_percent']):.2f} "
              f"ms of CPU per second")
    if "agent_processes_off" in runs:
        o = runs["agent_processes_off"]
        print(f"agent with process metrics on (every 10 s, the default) vs off, same run: "
              f"{a['cpu']['schedstat_percent']:.3f} % vs {o['cpu']['schedstat_percent']:.3f} % "
              f"({a['cpu']['schedstat_percent'] / max(o['cpu']['schedstat_percent'], 1e-9):.2f}"
              f"×); RSS {a['rss_steady_mb']:.1f} vs {o['rss_steady_mb']:.1f} MB; payload "
              f"{a['payload_bytes_per_s']:.0f} vs {o['payload_bytes_per_s']:.0f} B/s")
    print_breakdown(calls)
    if effect is not None:
        print_processes_effect(effect)
    path = write_result(args.label, {
        "benchmark": "agent_cost", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "warmup_s": args.warmup_s, "window_s": args.window_s,
        "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
        "runs": runs, "cpu_ratio_agent_to_collectd": ratio,
        "cpu_ratio_agent_to_collectd_ticks": ratio_ticks, "breakdown": calls,
        "processes_effect": effect,
        "targets": {"agent_cpu_percent_max": 0.10, "ratio_to_collectd_max": 0.5,
                    "rss_mb_max": 24}})
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
