"""Measure how many messages a second the hub stores without loss, against a minimal hub.

A fleet of ``--devices`` simulated devices (ids bench-00000…) publishes metrics messages at a
fixed total rate through a private Mosquitto (max_queued_messages 0, max_inflight_messages
0, no persistence) to the real hub (``python -m hub.main run``) writing into a private
PostgreSQL. The generator is a small C program on libmosquitto (bench/loadgen/loadgen.c,
built here with cc): the payload is encoded once by agent.encode.build_metrics from
synthetic samples (every section filled) and only device id, seq and ts (= the publish
time) are patched per message.

For each rate: a warm-up, then exactly rate × ``--window-s`` messages; then the bench waits
for the rows and checks them. A rate is *sustained* when every message is stored once (no
loss, no duplicate) and the last row was committed within 1 s of the last publish.
Latency is publish (ts) → commit (PostgreSQL ``track_commit_timestamp``), p50 / p99.
CPU of hub, broker, PostgreSQL (all its processes) and generator over the window.

The same sweep runs the baselines on the same broker settings and database, for QoS 1
and QoS 0: bench/minimal_hub.py (the least a hub can do), and with ``--hubs …,nodered`` the
Node-RED flow users build instead (bench/nodered_flow.py: mqtt in → join 500 / 0.5 s →
function with one multi-row INSERT through ``pg``, into its own flat table
``nodered_metrics``; same sustained rule: a duplicate counts against it, as it would for
its user). Node-RED 4 and pg are installed with npm into a cache outside the repository on
first use; without node or npm the bench says so in one line and runs the other hubs.
Hub RSS (VmRSS at the end of the window, and the peak, VmHWM, after the drain) is reported
for every hub.

    python3 -m bench.hub_ingest                         # full sweep, both hubs, QoS 1 and 0
    python3 -m bench.hub_ingest --qos 1 --rates 15000,20000 --hubs fleetpulse
    python3 -m bench.hub_ingest --profile 20000         # py-spy the hub at 20k msg/s QoS 1
    python3 -m bench.hub_ingest --hubs fleetpulse,minimal,nodered   # with Node-RED

Writes bench/results/hub_ingest.json (and hub_profile.json with --profile).
Needs mosquitto, PostgreSQL server binaries, libmosquitto-dev and a C compiler; Node-RED
needs node (20 or later) and npm.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    children,
    claim_cpu,
    cpu_percent,
    cpu_snapshot,
    describe_machine,
    machine,
    progress,
    status_kb,
    table,
    write_result,
)

sys.path.insert(0, str(ROOT))

import psycopg

from agent.collect import Sample
from agent.encode import build_metrics, encode
from agent.rates import CoreTimes
from bench import nodered_flow
from tests.servers import MosquittoServer, PostgresServer, free_port, wait_for

PREFIX = "bench"
LOADGEN_SRC = ROOT / "bench" / "loadgen" / "loadgen.c"
DEFAULT_RATES = {1: [1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12500, 15000, 17500,
                     20000, 22500, 25000, 27500],
                 0: [2000, 4000, 6000, 8000, 10000, 12500, 15000, 20000, 25000, 30000, 35000,
                     40000, 45000]}
TEMPLATE_EPOCH_S = 946684800.001  # 2000-01-01T00:00:00.001Z: the loadgen's ts placeholder


# --- the message ---------------------------------------------------------------------------

def pi_sample(t: float, k: int, *, small: bool) -> Sample:
    """A Raspberry Pi's reading k seconds in: every section of the message filled."""
    cores = [CoreTimes(100.0 + k * (0.2 + 0.05 * i), 1000.0 + k) for i in range(4)]
    partitions: list[Any] = [
        {"mountpoint": "/", "device": "/dev/mmcblk0p2", "fstype": "ext4",
         "total_bytes": 31_000_000_000, "used_bytes": 5_200_000_000,
         "free_bytes": 24_400_000_000, "percent": 17.6},
        {"mountpoint": "/boot/firmware", "device": "/dev/mmcblk0p1", "fstype": "vfat",
         "total_bytes": 535_805_952, "used_bytes": 66_000_000, "free_bytes": 469_805_952,
         "percent": 12.3}]
    net = {"lo": (356595 + 100 * k, 356595 + 100 * k, 3254 + k, 3254 + k, 0, 0, 0, 0),
           "eth0": (424_758_000 + 5000 * k, 398_355_267 + 9000 * k, 5_396_000 + 12 * k,
                    8_571_000 + 20 * k, 0, 0, 0, 0),
           "wlan0": (1000 + k, 2000 + k, 10, 20, 0, 0, 0, 0)}
    temps: list[Any] = [{"sensor": "cpu_thermal", "label": "", "celsius": 48.3},
                        {"sensor": "rp1_adc", "label": "", "celsius": 45.1}]
    if small:  # the least that still fills every section
        cores, partitions, net, temps = cores[:2], partitions[:1], {"eth0": net["eth0"]}, \
            temps[:1]
    return Sample(
        monotonic_s=t, core_times=cores, freq_mhz=(1500.0, 600.0, 1500.0),
        ctx_switches=123_456_789 + 2400 * k, interrupts=98_765_432 + 1800 * k,
        soft_interrupts=4_567_890 + 300 * k, syscalls=None, load=(0.42, 0.37, 0.31),
        memory={"total_bytes": 3_980_000_000, "available_bytes": 3_100_000_000,
                "used_bytes": 880_000_000, "free_bytes": 2_500_000_000, "percent": 22.1,
                "swap_total_bytes": 104_853_504, "swap_used_bytes": 0,
                "swap_free_bytes": 104_853_504, "swap_percent": 0.0, "swap_in_bytes": 0,
                "swap_out_bytes": 0},
        partitions=partitions,
        disk_io={"mmcblk0": (41000 + 2 * k, 70000 + 9 * k, 1_280_000_000 + 4096 * k,
                             3_500_000_000 + 36864 * k)},
        net_io=net, temperatures=temps, battery=(None, None, None), throttled_raw=0x50000)


def template(session_id: str, *, small: bool) -> bytes:
    """The payload with the loadgen's placeholders (device id, seq, ts)."""
    message = build_metrics(pi_sample(0.0, 0, small=small), pi_sample(1.0, 1, small=small),
                            device_id="bench-XXXXX", session_id=session_id,
                            seq=999_999_999_999, epoch_s=TEMPLATE_EPOCH_S, interval_s=1.0)
    payload = encode(message)
    assert b'"ts":"2000-01-01T00:00:00.001000Z"' in payload
    return payload


def patch(payload: bytes, device_id: str, seq: int, ts: datetime) -> bytes:
    """Fill the template's placeholders as the loadgen does (ts to the millisecond)."""
    return (payload.replace(b"bench-XXXXX", device_id.encode())
            .replace(b"999999999999", b"%12d" % seq)
            .replace(b"2000-01-01T00:00:00.001000Z",
                     ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23].encode() + b"000Z"))


def check_template(payload: bytes) -> None:
    """Patch the placeholders as the loadgen does and make sure the hub accepts the result."""
    from hub.ingest.validate import Accepted, validate

    now = datetime.now(UTC)
    patched = patch(payload, "bench-00042", 7, now)
    result = validate(f"{PREFIX}/bench-00042/metrics", patched, now, PREFIX)
    if not isinstance(result, Accepted):
        raise SystemExit(f"the bench's message is not valid: {result}")


def build_loadgen(workdir: Path) -> Path:
    binary = workdir / "loadgen"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/mosquitto.h").exists():
        raise SystemExit("need a C compiler and libmosquitto-dev (apt-get install "
                         "libmosquitto-dev gcc)")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(LOADGEN_SRC), "-lmosquitto"],
                   check=True)
    return binary


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds all cores were busy since boot, and of those in interrupts (/proc/stat).

    Interrupt time (irq + softirq: here mostly loopback TCP) is charged to no process.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / ticks, (fields[5] + fields[6]) / ticks


# --- the hubs -------------------------------------------------------------------------------
# fleetpulse-wN: fleetpulse run --workers N (one supervisor, N hub processes on a share group)
_WORKERS = re.compile(r"fleetpulse-w([1-9][0-9]*)")


def workers_of(kind: str) -> int:
    """Hub processes of one fleetpulse hub (``fleetpulse-w2``: 2); 1 for the others."""
    match = _WORKERS.fullmatch(kind)
    return int(match.group(1)) if match else 1


def known_hub(kind: str) -> bool:
    return kind in ("fleetpulse", "minimal", "nodered") or _WORKERS.fullmatch(kind) is not None


# --- detectors ------------------------------------------------------------------------------

def install_models(url: str, devices: int) -> dict[str, Any]:
    """Give every simulated device a trained detector, as a hub whose fleet has history has
    (one ``novelty`` model trained on the real agent's recording, stored once per device):
    the hub loads them at start and scores every reading, as in the field."""
    from bench.detect_cost import recorded_rows, recorded_signals
    from hub.detect.features import SIGNALS
    from hub.detect.train import TooLittleHistory, params_of, train

    rows = recorded_rows()
    model = train(recorded_signals(rows), "novelty", 1000)
    assert not isinstance(model, TooLittleHistory)
    now = datetime.now(UTC)
    record = (model.KIND, json.dumps(params_of(model)), list(SIGNALS), now, now, now,
              len(rows), 0.0, model.to_bytes())
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("truncate detector_models")
        cur.executemany(
            "insert into detector_models (device_id, version, kind, params, signals, "
            "trained_at, history_start, history_end, history_rows, train_cpu_s, state) "
            "values (%s, 1, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)",
            [(f"{PREFIX}-{d:05d}", *record) for d in range(devices)])
    return {"kind": model.KIND, "devices": devices, "trained_on_readings": len(rows)}


_SCORES = re.compile(r"Anomaly scores: (\d+) of (\d+) readings scored, ([\d.]+) µs")


def scoring_of(log_text: str) -> dict[str, float] | None:
    """The hubs' own account of live scoring, from the line each logs as it stops."""
    found = [(int(a), int(b), float(us)) for a, b, us in _SCORES.findall(log_text)]
    readings = sum(b for _, b, _ in found)
    if not readings:
        return None
    return {"scored": sum(a for a, _, _ in found), "readings": readings,
            "cpu_us_per_reading": sum(b * us for _, b, us in found) / readings}


# --- one window ----------------------------------------------------------------------------

@dataclasses.dataclass
class Bench:
    workdir: Path
    loadgen: Path
    pg: PostgresServer
    devices: int
    window_s: float
    small: bool
    hub_log_level: str = "WARNING"
    processes: int = 1  # fleetpulse hub processes sharing the load ($share subscription)
    nodered: Path | None = None  # the npm cache holding Node-RED and pg
    models: bool = False  # every device has a detector (install_models): readings are scored
    statements: bool = False  # PostgreSQL's time per statement (pg_stat_statements), per window

    @staticmethod
    def table(kind: str) -> str:
        """The table a hub writes: Node-RED's flow has a flat table of its own."""
        return nodered_flow.TABLE if kind == "nodered" else "metrics"

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.url, autocommit=True)

    def reset_tables(self) -> None:
        with self.db() as conn:
            conn.execute("truncate metrics, devices, quarantine")
            for name in ("metrics_1m", "metrics_1h", "alerts", nodered_flow.TABLE):
                exists = conn.execute("select to_regclass(%s)", (name,)).fetchone()
                if exists and exists[0]:
                    conn.execute(f"truncate {name}")
            conn.execute("checkpoint")

    def start_hubs(self, kind: str, broker: MosquittoServer, qos: int,
                   log: Path) -> list[subprocess.Popen[bytes]]:
        """Start the hub: ``processes`` fleetpulse hubs in one share group, or the minimal one."""
        if not kind.startswith("fleetpulse") or self.processes == 1:
            return [self.start_hub(kind, broker, qos, log)]
        group = f"bench-{uuid.uuid4().hex[:6]}"
        return [self.start_hub(kind, broker, qos, log.with_name(f"{log.stem}-{i}.log"),
                               {"FLEETPULSE_SHARE_GROUP": group})
                for i in range(self.processes)]

    def start_hub(self, kind: str, broker: MosquittoServer, qos: int,
                  log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
        if kind.startswith("fleetpulse"):
            env["FLEETPULSE_WORKERS"] = str(workers_of(kind))  # fleetpulse-w2: --workers 2
            env.update({"FLEETPULSE_BROKER_URL": broker.url, "FLEETPULSE_DB": self.pg.url,
                        "FLEETPULSE_TOPIC_PREFIX": PREFIX,
                        "FLEETPULSE_CLIENT_ID": f"bench-hub-{uuid.uuid4().hex[:8]}",
                        "FLEETPULSE_HTTP_PORT": "0", "FLEETPULSE_LOG_LEVEL": self.hub_log_level,
                        "FLEETPULSE_DATA_DIR": str(self.workdir / "hubdata")})
            if self.models:  # the installed models only; the stopping line says the cost
                env.update({"FLEETPULSE_RETRAIN_H": "0", "FLEETPULSE_LOG_LEVEL": "INFO"})
            cmd = [sys.executable, "-m", "hub.main", "run"]
        elif kind == "nodered":
            if self.nodered is None:
                raise RuntimeError("Node-RED is not installed")
            userdir = nodered_flow.write_userdir(
                log.parent / "nodered", self.nodered, broker_port=broker.port, qos=qos,
                prefix=PREFIX, db_url=self.pg.url, ui_port=free_port())
            cmd = ["node", str(nodered_flow.red_js(self.nodered)), "--userDir", str(userdir),
                   "--settings", str(userdir / "settings.js")]
        elif kind == "minimal":
            cmd = [sys.executable, "-m", "bench.minimal_hub", "--broker-port", str(broker.port),
                   "--db", self.pg.url, "--prefix", PREFIX, "--qos", str(qos)]
        else:
            raise ValueError(f"unknown hub {kind!r}: fleetpulse, minimal or nodered")
        with open(log, "wb") as out:
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)

    def publish(self, broker: MosquittoServer, qos: int, rate: float, count: int,
                payload_file: Path) -> tuple[subprocess.Popen[bytes], Path]:
        out = payload_file.with_suffix(".out")
        with open(out, "wb") as stdout:
            proc = subprocess.Popen(
                [str(self.loadgen), "127.0.0.1", str(broker.port), str(qos), str(rate),
                 str(count), str(self.devices), PREFIX, str(payload_file)],
                stdout=stdout, stderr=subprocess.STDOUT)
        return proc, out

    def count(self, session_id: str, kind: str) -> int:
        with self.db() as conn:
            row = conn.execute(f"select count(*) from {self.table(kind)} "
                               "where session_id = %s", (session_id,)).fetchone()
            return int(row[0]) if row else 0

    def inserted(self, kind: str) -> int:
        """Rows inserted into the hub's table (its partitions too) so far, as PostgreSQL's
        statistics count them: cheap to poll, where a count(*) of the window's rows took a
        core for a third of a second each time, slowing the very drain it waited for. The
        statistics may lag by about a second and count a rolled-back insert, so the wait
        below confirms with an exact count."""
        table = self.table(kind)
        with self.db() as conn:
            row = conn.execute(
                "select coalesce(sum(n_tup_ins), 0) from pg_stat_user_tables where relid = "
                "%s::regclass or relid in (select inhrelid from pg_inherits where inhparent = "
                "%s::regclass)", (table, table)).fetchone()
            return int(row[0]) if row else 0

    def run(self, kind: str, qos: int, rate: int) -> dict[str, Any]:
        """One window: warm-up, rate × window_s messages, wait for the rows, check them."""
        tag = f"{kind}-q{qos}-{rate}"
        wd = self.workdir / tag
        wd.mkdir(parents=True, exist_ok=True)
        self.reset_tables()
        broker = MosquittoServer(wd / "mqtt", persistence=False).start()
        hubs = self.start_hubs(kind, broker, qos, wd / "hub.log")
        result: dict[str, Any] = {"hub": kind, "qos": qos, "rate": rate,
                                  "hub_processes": len(hubs)}
        try:
            connections = len(hubs) * workers_of(kind)
            wait_for(lambda: broker.log().count("as bench-") >= connections
                     or any(h.poll() is not None for h in hubs), 30, "the hub to connect")
            if any(h.poll() is not None for h in hubs):
                logs = "".join(p.read_text() for p in wd.glob("hub*.log"))
                raise RuntimeError(f"{kind} hub exited: {logs[-2000:]}")
            time.sleep(1.0)  # its subscription
            # Warm-up: another session id, 2 s at the window's rate (caches, partitions, JIT).
            warm_id = uuid.uuid4().hex
            warm_file = wd / "warm.json"
            warm_file.write_bytes(template(warm_id, small=self.small))
            warm, _ = self.publish(broker, qos, rate, int(rate * 2), warm_file)
            warm.wait(60)
            wait_for(lambda: self.count(warm_id, kind) >= int(rate * 2), 30,
                     "the warm-up rows",
                     interval_s=0.25)

            session_id = uuid.uuid4().hex
            payload_file = wd / "payload.json"
            payload_file.write_bytes(template(session_id, small=self.small))
            expected = int(rate * self.window_s)
            pg_pids = [self.pg.process.pid] if self.pg.process else []
            hub_pids = [h.pid for h in hubs]
            pids = {"hub": hub_pids + [c for p in hub_pids for c in children(p)],
                    "broker": [broker.process.pid] if broker.process else [],
                    "postgresql": pg_pids + children(pg_pids[0])}
            if self.statements:
                with self.db() as conn:
                    conn.execute("select pg_stat_statements_reset()")
            inserted_before = self.inserted(kind)
            before = {name: cpu_snapshot(p) for name, p in pids.items()}
            busy0 = machine_busy_s()
            gen, gen_out = self.publish(broker, qos, rate, expected, payload_file)
            gen.wait(self.window_s * 3 + 60)
            after = {name: cpu_snapshot(p) for name, p in pids.items()}
            busy1 = machine_busy_s()
            result["hub_rss_mb"] = sum(status_kb(p, "VmRSS") or 0 for p in pids["hub"]) / 1024
            generator = json.loads(gen_out.read_text().strip().splitlines()[-1])
            # Wait for the rows: until all are in, or nothing arrives for 15 s (60 s at most;
            # a hub far behind may be writing one very large batch).
            deadline = time.monotonic() + 60
            stored, last_change, last = 0, time.monotonic(), -1
            while time.monotonic() < deadline:
                stored = self.inserted(kind) - inserted_before
                if stored >= expected and self.count(session_id, kind) >= expected:
                    break
                if stored != last:
                    last, last_change = stored, time.monotonic()
                elif time.monotonic() - last_change > 15:
                    break
                time.sleep(0.25)
            drained = {name: cpu_snapshot(p) for name, p in pids.items()}
            # The peak over the whole life of the hub, warm-up, window and drain included.
            result["hub_peak_rss_mb"] = sum(status_kb(p, "VmHWM") or 0
                                            for p in pids["hub"]) / 1024
            if self.statements:
                result["statements"] = self.statement_times(max(1, expected))
            result.update(self.check(kind, session_id, expected, generator))
            # CPU per stored message, window and drain together: robust to other load.
            result["cpu_us_per_message"] = {
                name: (drained[name].ns - before[name].ns) / 1e3 / max(1, result["distinct"])
                for name in pids}
            result["cpu_us_per_message"]["generator"] = (
                1e6 * generator["cpu_s"] / max(1, generator["sent"]))
            # What the rest of the pipeline alone would allow on these cores: the rate at
            # which broker, PostgreSQL and generator would fill them with a hub costing 0.
            rest = sum(result["cpu_us_per_message"][k]
                       for k in ("broker", "postgresql", "generator"))
            result["ceiling_with_free_hub_msg_per_s"] = (os.cpu_count() or 1) * 1e6 / rest
            window = generator["last_publish"] - generator["first_publish"]
            result["cpu_percent"] = {name: cpu_percent(before[name], after[name])
                                     ["schedstat_percent"] for name in pids}
            result["cpu_percent"]["generator"] = 100 * generator["cpu_s"] / max(window, 1e-9)
            # Other work on the machine meanwhile (other people's tests share these cores).
            span = after["hub"].at - before["hub"].at
            result["cpu_percent"]["machine"] = 100 * (busy1[0] - busy0[0]) / span
            result["cpu_percent"]["interrupts"] = 100 * (busy1[1] - busy0[1]) / span
            result["cpu_percent"]["others"] = result["cpu_percent"]["machine"] - sum(
                result["cpu_percent"][k] for k in ("hub", "broker", "postgresql", "generator",
                                                   "interrupts"))
            result["generator"] = generator
            result["achieved_rate"] = (generator["sent"] - 1) / max(window, 1e-9)
            result["hub_alive"] = all(h.poll() is None for h in hubs)
            result["broker_dropped"] = "dropped" in broker.log()
        finally:
            for hub in hubs:
                if hub.poll() is None:
                    hub.send_signal(signal.SIGTERM)
            for hub in hubs:
                try:
                    hub.wait(20)
                except subprocess.TimeoutExpired:
                    hub.kill()
                    hub.wait(5)
            broker.stop()
        result["hub_log_tail"] = self.log_tail(tag)
        if self.models and kind.startswith("fleetpulse"):
            result["scoring"] = scoring_of(self.log_tail(tag, 10 ** 7))
        return result

    def statement_times(self, messages: int, top: int = 12) -> list[dict[str, Any]]:
        """PostgreSQL's execution time per statement since the window began, in µs per
        message of the window (wall time in the server: CPU, or waiting for locks or I/O)."""
        with self.db() as conn:
            rows = conn.execute(
                "select calls, total_exec_time, rows, query from pg_stat_statements "
                "where query not like '%%pg_stat_statements%%' "
                "order by total_exec_time desc limit %s", (top,)).fetchall()
        return [{"us_per_message": round(1000 * total / messages, 2), "calls": calls,
                 "rows": n, "query": " ".join(query.split())[:160]}
                for calls, total, n, query in rows]

    def log_tail(self, tag: str, chars: int = 600) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted((self.workdir / tag).glob("hub*.log")))[-chars:]

    def check(self, kind: str, session_id: str, expected: int,
              generator: dict[str, Any]) -> dict[str, Any]:
        # Node-RED's table has no receipt time: the flow stores the message as it came.
        recv = "null::float8" if kind == "nodered" else "extract(epoch from received_at - ts)"
        with self.db() as conn:
            row = conn.execute(
                "select count(*), count(distinct (device_id, seq)), "
                "percentile_cont(0.5) within group (order by lat), "
                "percentile_cont(0.99) within group (order by lat), max(lat), "
                "extract(epoch from max(committed)), "
                "percentile_cont(0.5) within group (order by recv) "
                "from (select device_id, seq, pg_xact_commit_timestamp(xmin) as committed, "
                "extract(epoch from pg_xact_commit_timestamp(xmin) - ts) as lat, "
                f"{recv} as recv "
                f"from {self.table(kind)} where session_id = %s) s", (session_id,)).fetchone()
            # The worst latency of each second of publishing: shows whether the p99 comes
            # from a steady queue or from stalls.
            by_second = conn.execute(
                "select s, max(lat) from (select "
                "floor(extract(epoch from ts - min(ts) over ()))::int as s, "
                "extract(epoch from pg_xact_commit_timestamp(xmin) - ts) as lat "
                f"from {self.table(kind)} where session_id = %s) t group by s order by s",
                (session_id,)).fetchall()
        assert row is not None
        rows, distinct, p50, p99, worst, last_commit, recv_p50 = row
        last_after = (float(last_commit) - generator["last_publish"]) if last_commit else None
        ok = (rows == expected and distinct == rows and generator["sent"] == expected
              and last_after is not None and last_after <= 1.0)
        return {"expected": expected, "rows": rows, "distinct": distinct,
                "missing": expected - distinct, "duplicates": rows - distinct,
                "latency_p50_s": float(p50) if p50 is not None else None,
                "latency_p99_s": float(p99) if p99 is not None else None,
                "latency_max_s": float(worst) if worst is not None else None,
                "publish_to_hub_p50_s": float(recv_p50) if recv_p50 is not None else None,
                "last_commit_after_last_publish_s": last_after,
                "worst_latency_by_second_s": [round(float(lat), 2) for _, lat in by_second
                                              if lat is not None],
                "sustained": ok}


# --- sweeps and profile --------------------------------------------------------------------

def sweep(bench: Bench, kinds: list[str], qos: int, rates: list[int],
          results: list[dict[str, Any]]) -> dict[str, int | None]:
    """Run the rates in order, each hub in turn at the same rate (so both see the same
    conditions); a hub stops after two failures in a row. Return each hub's best rate."""
    best: dict[str, int | None] = dict.fromkeys(kinds)
    failures = dict.fromkeys(kinds, 0)
    for rate in rates:
        for kind in kinds:
            if failures[kind] >= 2:
                continue
            progress(f"{kind} hub, QoS {qos}, {rate:,} msg/s for {bench.window_s:g} s")
            try:
                r = bench.run(kind, qos, rate)
            except Exception as exc:  # a window that breaks is a failed window, not a crash
                r = {"hub": kind, "qos": qos, "rate": rate, "sustained": False,
                     "error": str(exc),
                     "hub_log_tail": bench.log_tail(f"{kind}-q{qos}-{rate}", 2000)}
            results.append(r)
            progress(f"  → {'SUSTAINED' if r.get('sustained') else 'not sustained'}: "
                     f"rows {r.get('rows')}/{r.get('expected')}, p99 {r.get('latency_p99_s')}, "
                     f"to hub p50 {r.get('publish_to_hub_p50_s')}, last commit "
                     f"+{r.get('last_commit_after_last_publish_s')} s, "
                     f"cpu {r.get('cpu_percent')}, gen {r.get('generator')}")
            if r.get("sustained"):
                best[kind], failures[kind] = rate, 0
            else:
                failures[kind] += 1
        if all(f >= 2 for f in failures.values()):
            break
    return best


def profile(bench: Bench, rate: int, seconds: int) -> dict[str, Any]:
    """Run the fleetpulse hub at ``rate`` (QoS 1) under py-spy; sum time by function."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("pip install py-spy")
    wd = bench.workdir / "profile"
    wd.mkdir(parents=True, exist_ok=True)
    bench.reset_tables()
    broker = MosquittoServer(wd / "mqtt", persistence=False).start()
    hub = bench.start_hub("fleetpulse", broker, 1, wd / "hub.log")
    raw = wd / "hub.collapsed"
    try:
        wait_for(lambda: "as bench-" in broker.log(), 30, "the hub to connect")
        time.sleep(1.0)
        payload_file = wd / "payload.json"
        payload_file.write_bytes(template(uuid.uuid4().hex, small=bench.small))
        gen, _ = bench.publish(broker, 1, rate, int(rate * (seconds + 4)), payload_file)
        time.sleep(2)
        subprocess.run([pyspy, "record", "--pid", str(hub.pid), "--duration", str(seconds),
                        "--rate", "200", "--format", "raw", "--output", str(raw),
                        "--nonblocking"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        gen.wait(120)
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(20)
        except subprocess.TimeoutExpired:
            hub.kill()
        broker.stop()
    return summarise_profile(raw.read_text())


STAGES = {  # function names (py-spy frames "name (file:line)") → a stage of the hub
    "alert watcher (hub/watch.py, hub/alerts.py)": ("hub/watch.py", "hub/alerts.py"),
    "housekeeping (hub/retention.py)": ("hub/retention.py",),
    # Before the session: the inbox and the acks run inside the session's frames.
    "receive → inbox, acks (hub/ingest/receive.py)": ("hub/ingest/receive.py",),
    "MQTT session (hub/ingest/session.py, asyncio, mqtt5)": ("hub/ingest/session.py",
                                                             "asyncio/"),
    "validate (msgspec; pydantic for refusals)": ("hub/ingest/validate.py",),
    "batch + metrics_row": ("hub/ingest/batch.py", "<metrics_row>", "shared/schema.py"),
    "write (psycopg COPY, SQL)": ("hub/store.py", "hub/ingest/write.py", "psycopg/"),
}


def summarise_profile(text: str) -> dict[str, Any]:
    """Self time by function and inclusive time by stage, from py-spy's collapsed stacks."""
    leaf: collections.Counter[str] = collections.Counter()
    stage: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        leaf[frames[-1]] += count
        for name, markers in STAGES.items():
            if any(m in f for f in frames[1:] for m in markers):
                stage[name] += count
                break
        else:
            stage["other"] += count
    return {"samples": total,
            "by_stage_percent": {k: round(100 * v / total, 1) for k, v in stage.most_common()},
            "by_thread_percent": {k: round(100 * v / total, 1) for k, v in threads.most_common()},
            "top_self_percent": {k: round(100 * v / total, 1) for k, v in leaf.most_common(25)}}


# Issue 12's targets, all in the same run (QoS 1 with ack after commit unless said).
TARGETS = {"qos1_ratio_to_nodered": 1.5, "qos1_ratio_to_minimal": 1.0, "p99_s": 1.0,
           "hub_rss_mb": 150.0, "qos0_ratio_to_nodered": 1.5}


def _window(results: list[dict[str, Any]], kind: str, qos: int,
            rate: int | None) -> dict[str, Any]:
    return next((r for r in results if r["hub"] == kind and r["qos"] == qos
                 and r["rate"] == rate), {})


def _check(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("met" if ok else "MISSED")


def targets_block(results: list[dict[str, Any]], best: dict[str, int | None],
                  hubs: list[str], qos_list: list[int]) -> list[str]:
    """The issue's targets for each fleetpulse hub of the run, met or missed, with the
    figures they are judged on (a baseline not in the run: n/a)."""
    lines = ["Targets (same run; sustained = every message stored once, last commit ≤ 1 s "
             "after the last publish; rates are the sweep's):"]
    for kind in (h for h in hubs if h.startswith("fleetpulse")):
        for qos in qos_list:
            rate = best.get(f"{kind}_q{qos}")
            w = _window(results, kind, qos, rate)
            parts = [f"{rate or 0:,} msg/s"]
            nodered = best.get(f"nodered_q{qos}") if "nodered" in hubs else None
            need = TARGETS["qos1_ratio_to_nodered" if qos else "qos0_ratio_to_nodered"]
            ratio = rate / nodered if rate and nodered else None
            parts.append(f"≥ {need:g}× Node-RED ({nodered or 0:,}): "
                         + (f"{ratio:.2f}× " if ratio is not None else "")
                         + _check(ratio, ratio is not None and ratio >= need))
            if qos == 1:
                minimal = best.get("minimal_q1") if "minimal" in hubs else None
                ratio = rate / minimal if rate and minimal else None
                need = TARGETS["qos1_ratio_to_minimal"]
                parts.append(f"≥ {need:g}× minimal hub ({minimal or 0:,}): "
                             + (f"{ratio:.2f}× " if ratio is not None else "")
                             + _check(ratio, ratio is not None and ratio >= need))
                p99 = w.get("latency_p99_s")
                parts.append(f"p99 ≤ {TARGETS['p99_s']:g} s: "
                             + (f"{p99:.2f} s " if p99 is not None else "")
                             + _check(p99, p99 is not None and p99 <= TARGETS["p99_s"]))
            rss = w.get("hub_peak_rss_mb") or w.get("hub_rss_mb")
            parts.append(f"hub RSS ≤ {TARGETS['hub_rss_mb']:g} MB: "
                         + (f"{rss:.0f} MB peak " if rss is not None else "")
                         + _check(rss, rss is not None and rss <= TARGETS["hub_rss_mb"]))
            ceiling = w.get("ceiling_with_free_hub_msg_per_s")
            if rate and ceiling:
                parts.append(f"{rate / ceiling:.2f} of the free-hub ceiling ({ceiling:,.0f}/s)")
            lines.append(f"  {kind}, QoS {qos}: " + "; ".join(parts))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qos", type=int, choices=[0, 1], action="append")
    parser.add_argument("--hubs", default="fleetpulse,minimal",
                        help="comma-separated: fleetpulse, minimal, nodered (Node-RED 4, "
                        "installed with npm into a cache on first use)")
    parser.add_argument("--rates", help="comma-separated msg/s (default: a sweep per QoS)")
    parser.add_argument("--processes", type=int, default=1,
                        help="fleetpulse hub processes, sharing the load through an MQTT v5 "
                        "shared subscription (FLEETPULSE_SHARE_GROUP), as a bigger fleet "
                        "would run them")
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--payload", choices=["small", "pi"], default="small",
                        help="small: every section, 2 cores, 1 disk/NIC/sensor; pi: a Pi 5 "
                        "with lo, eth0, wlan0, two partitions, two sensors")
    parser.add_argument("--models", action="store_true",
                        help="give every device a trained detector first, so the fleetpulse "
                        "hub scores every reading as in the field, and report the hub's own "
                        "scoring CPU per reading")
    parser.add_argument("--profile", type=int, metavar="RATE",
                        help="only py-spy the fleetpulse hub at this QoS 1 rate")
    parser.add_argument("--profile-s", type=int, default=15)
    parser.add_argument("--label", default="hub_ingest")
    parser.add_argument("--note", default="",
                        help="stored with the results and drawn on the charts, e.g. "
                        "'smoke run, shared machine'")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the hubs' logs here (with --hub-log-level DEBUG the writer "
                        "logs each batch's wall and CPU time)")
    parser.add_argument("--statements", action="store_true",
                        help="record PostgreSQL's time per statement in each window "
                        "(pg_stat_statements), in µs per message")
    parser.add_argument("--hub-log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING"])
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness (and autogroup niceness) of the bench and all it "
                        "starts: shields the measurement from other work on a shared "
                        "machine, which slows that work meanwhile; 0 to leave it")
    args = parser.parse_args()
    priority = claim_cpu(args.nice)
    progress(f"priority: {priority}")
    qos_list = args.qos or [1, 0]
    small = args.payload == "small"
    hubs = args.hubs.split(",")
    unknown = {h for h in hubs if not known_hub(h)}
    if unknown:
        parser.error(f"unknown hub {', '.join(sorted(unknown))}: fleetpulse, fleetpulse-wN "
                     "(--workers N), minimal or nodered")
    nodered_cache, nodered_versions = None, None
    if "nodered" in hubs:
        nodered_cache, detail = nodered_flow.ensure_installed()
        if nodered_cache is None:
            progress(f"skipping Node-RED: {detail}")
            hubs.remove("nodered")
        else:
            nodered_versions = detail
            progress(detail)
    if not hubs:
        progress("no hub left to measure")
        return 1
    check_template(template(uuid.uuid4().hex, small=small))
    payload_bytes = len(template(uuid.uuid4().hex, small=small))
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-hub-ingest-"))
    pg = PostgresServer(workdir / "pg").init()
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.write("\ntrack_commit_timestamp = on\n")  # latency: publish → commit
        if args.statements:
            conf.write("shared_preload_libraries = 'pg_stat_statements'\n"
                       "pg_stat_statements.track = all\n")
    pg.start()
    if args.statements:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("create extension if not exists pg_stat_statements")
    try:
        subprocess.run([sys.executable, "-m", "hub.main", "migrate", "--db", pg.url], cwd=ROOT,
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       stdout=subprocess.DEVNULL)
        from hub.store import Store
        store = Store(pg.url)
        store.ensure_partitions({date.today() + timedelta(days=d) for d in (-1, 0, 1)})
        store.close()
        if nodered_cache is not None:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(nodered_flow.create_table_sql().encode())
        models = install_models(pg.url, args.devices) if args.models else None
        bench = Bench(workdir, build_loadgen(workdir), pg, args.devices, args.window_s, small,
                      processes=args.processes, nodered=nodered_cache, models=args.models,
                      hub_log_level=args.hub_log_level, statements=args.statements)
        if args.profile:
            prof = profile(bench, args.profile, args.profile_s)
            prof.update({"rate": args.profile, "qos": 1, "payload_bytes": payload_bytes,
                         "machine": info})
            print(json.dumps(prof, indent=2))
            write_result("hub_profile" if args.label == "hub_ingest" else f"{args.label}_profile",
                         prof)
            return 0
        results: list[dict[str, Any]] = []
        best: dict[str, int | None] = {}
        for qos in qos_list:
            rates = [int(r) for r in args.rates.split(",")] if args.rates else DEFAULT_RATES[qos]
            for kind, rate in sweep(bench, hubs, qos, rates, results).items():
                best[f"{kind}_q{qos}"] = rate
    finally:
        pg.stop()
        if args.keep:
            for log in workdir.rglob("hub*.log"):
                target = args.keep / log.relative_to(workdir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, target)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nHub ingest: {args.devices} devices, {payload_bytes}-byte messages ({args.payload}),"
          f" {args.window_s:g} s windows; {describe_machine(info)}"
          + (f"; {nodered_versions}" if nodered_versions else ""))
    rows = []
    for r in results:
        cpu = r.get("cpu_percent", {})
        rows.append([r["hub"], r["qos"], r["rate"], r.get("achieved_rate"), r.get("rows"),
                     r.get("missing"), r.get("duplicates"), r.get("latency_p50_s"),
                     r.get("latency_p99_s"), r.get("last_commit_after_last_publish_s"),
                     cpu.get("hub"), cpu.get("broker"), cpu.get("postgresql"),
                     cpu.get("generator"), cpu.get("interrupts"), cpu.get("others"),
                     r.get("cpu_us_per_message", {}).get("hub"),
                     r.get("cpu_us_per_message", {}).get("postgresql"),
                     r.get("ceiling_with_free_hub_msg_per_s"), r.get("hub_rss_mb"),
                     r.get("hub_peak_rss_mb"),
                     (r.get("scoring") or {}).get("cpu_us_per_reading"),
                     "yes" if r.get("sustained") else "no"])
    print(table(["hub", "QoS", "rate", "published/s", "rows", "missing", "dup", "p50 s", "p99 s",
                 "last +s", "hub %", "broker %", "pg %", "gen %", "irq %", "others %",
                 "hub µs/msg", "pg µs/msg", "free-hub ceiling/s", "hub RSS MB",
                 "peak RSS MB", "scoring µs/reading", "sustained"],
                rows))
    if args.note:
        print(f"note: {args.note}")
    ours = [h for h in hubs if h.startswith("fleetpulse")]
    for qos in qos_list:
        if not ours:
            print(f"QoS {qos}, highest sustained: " + ", ".join(
                f"{kind} {best.get(f'{kind}_q{qos}') or 0:,} msg/s" for kind in hubs))
            continue
        for kind in ours:
            rate = best.get(f"{kind}_q{qos}")
            same_run = []
            for base_kind, label in (("minimal", "minimal hub"), ("nodered", "Node-RED")):
                if base_kind in hubs:
                    base = best.get(f"{base_kind}_q{qos}")
                    ratio = f" ({rate / base:.2f}×)" if rate and base else ""
                    same_run.append(f"{label} same run: {base or 0:,}{ratio}")
            print(f"hub ingest ({kind}), QoS {qos}, validated: {rate or 0:,} msg/s sustained "
                  f"{args.window_s:g} s, 0 lost" + "".join(f"; {t}" for t in same_run))
    print()
    for line in targets_block(results, best, hubs, qos_list):
        print(line)
    path = write_result(args.label, {
        "benchmark": "hub_ingest", "note": args.note,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "devices": args.devices, "payload": args.payload,
        "payload_bytes": payload_bytes, "window_s": args.window_s, "best": best,
        "hub_processes": args.processes, "hubs": hubs, "nodered": nodered_versions,
        "models": models,
        "priority": priority,
        "windows": results,
        "targets": TARGETS})
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
