"""``fleetpulse-hub``: wire receive → validate → batch → write, load settings, run.

    fleetpulse-hub run       subscribe, validate, store; serve the API and dashboard
    fleetpulse-hub status    print the fleet as a table, and the bytes of each storage tier
    fleetpulse-hub compact   move what is older than the hot window into the cold tier now
    fleetpulse-hub migrate   create or upgrade the tables, then exit
    fleetpulse-hub export    write a device's or the fleet's history to CSV or Parquet
    fleetpulse-hub add-device ID      give a device a broker account; print its agent.toml
    fleetpulse-hub revoke-device ID   remove a device's broker account
    fleetpulse-hub init-deploy --dir DIR   make docker-compose's secrets and certificates
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from hub.alerts import DEFAULT_RULES, Rule, rules_from_table
from hub.batch import Batch, Batcher, Inbound
from hub.clock import ClockPlacer
from hub.credentials import DEFAULT_PASSWORD_FILE, run_add_device, run_revoke_device
from hub.receive import Inbox, Receiver
from hub.retention import ColdStats, Compactor, Retention, housekeep, tier_summary
from hub.store import Store, StorePool
from hub.table import format_fleet, format_tiers
from hub.validate import Limits, Result, validate
from hub.watch import AlertWatcher
from hub.write import backoff_s, write_batch
from shared import __version__
from shared.config import HubSettings, add_setting_flags, settings_from_args, with_password
from shared.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from hub.api import HttpServer

log = logging.getLogger("fleetpulse.hub")
DEFAULT_CONFIG = Path("/etc/fleetpulse/hub.toml")
# How often the ingest loop takes what has arrived: adds at most this to the latency, and
# lets a bunch of messages build up between thread switches.
INGEST_POLL_S = 0.05


@dataclass
class IngestStats:
    """Counters shown by the health endpoint and logged at stop."""

    received: int = 0
    acked: int = 0  # stored or quarantined, and acknowledged to the broker
    stale: int = 0  # from a dropped connection; the broker redelivers them
    stored: int = 0
    quarantined: int = 0
    batches: int = 0
    last_write_at: datetime | None = None


def database_url(settings: HubSettings) -> str:
    if settings.db is not None:
        password = settings.db_password
        return with_password(settings.db.reveal(), password.reveal() if password else None)
    from hub.embedded import start_embedded

    return start_embedded(settings.data_dir)


# Where ./quickstart.sh keeps the hub's data, relative to the repository it ran from.
QUICKSTART_DATA_DIR = Path(".fleetpulse") / "hub"


def read_database_url(settings: HubSettings, command: str) -> str | None:
    """Return the URL of the database a read-only command reads, starting the embedded one
    if it exists; None (after one line on stderr) when there is none: never create one."""
    if settings.db is not None:
        return settings.db.reveal()
    from hub.embedded import cluster_exists, start_embedded

    if cluster_exists(settings.data_dir):
        return start_embedded(settings.data_dir)
    hint = ""
    if cluster_exists(QUICKSTART_DATA_DIR) and \
            QUICKSTART_DATA_DIR.resolve() != settings.data_dir.resolve():
        hint = (f"; ./quickstart.sh keeps its data in {QUICKSTART_DATA_DIR}: run "
                f".fleetpulse/venv/bin/fleetpulse-hub {command}, or add --data-dir "
                f"{QUICKSTART_DATA_DIR}")
    print(f"No fleetpulse database in {settings.data_dir} (no hub has run with this "
          f"data_dir), so nothing to {command}: give the hub's --data-dir, or --db{hint}.",
          file=sys.stderr)
    return None


def schema_problem(store: Store) -> str | None:
    """Say what is wrong when the database's tables are missing or older than this hub."""
    pending = store.pending_migrations()
    if not pending:
        return None
    what = "no fleetpulse tables" if "0001_initial.sql" in pending else \
        f"an older schema (not yet applied: {', '.join(pending)})"
    return (f"The database has {what}: start the hub (fleetpulse-hub run) or run "
            "fleetpulse-hub migrate with the same settings first.")


def open_store(settings: HubSettings, stop: threading.Event) -> Store | None:
    """Connect and migrate, waiting (one log line) while the database is unreachable.

    Raise the StoreError when the server refuses the login or the database for good (wrong
    role, password or database name): waiting would not fix a setting.
    """
    store = Store(database_url(settings),
                  quarantine_payload_bytes=settings.quarantine_payload_bytes)
    attempt = 0
    while not stop.is_set():
        try:
            applied = store.migrate()
            if applied:
                log.info("Database schema upgraded: %s.", ", ".join(applied))
            if attempt:
                log.warning("Database reachable again.")
            return store
        except StoreError as exc:
            if exc.refused:
                store.close()
                raise
            attempt += 1
            if attempt == 1:
                log.error("Cannot use the database: %s. Check --db / FLEETPULSE_DB; "
                          "retrying.", exc)
            stop.wait(backoff_s(attempt))
    return None


class BatchWriter:
    """Write batches in a thread of its own, then acknowledge their messages.

    The ingest loop goes on validating the next batch while one is written: the database's
    part of a write runs without the GIL. One batch waits at most while another is written,
    so memory stays bounded; acks go out in batch order, each only after its commit.
    """

    def __init__(self, store: Store, receiver: Receiver, stats: IngestStats,
                 stop: threading.Event) -> None:
        self._store, self._receiver, self._stats, self._stop = store, receiver, stats, stop
        self._pending: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._gave_up = threading.Event()  # stopped while the database was away
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch | None) -> bool:
        """Queue a batch (None: no more); False once the writer has given up."""
        while not self._gave_up.is_set():
            try:
                self._pending.put(batch, timeout=0.2)
                return True
            except queue.Full:
                continue  # the previous batch still waits: the database is slow or away
        return False

    def finish(self) -> None:
        """Write what is queued, then end the thread."""
        self.submit(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._write_all()
        except Exception:
            # A bug, not the database (write_batch retries those): stop the hub, as an
            # exception in a single-threaded hub would; the broker keeps the messages.
            log.exception("The writer failed; stopping.")
            self.failed = True
            self._gave_up.set()
            self._stop.set()

    def _write_all(self) -> None:
        while (batch := self._pending.get()) is not None:
            started = time.monotonic()
            outcome = write_batch(self._store, batch, self._stop)
            if outcome is None:
                self._gave_up.set()  # the broker keeps the messages
                return
            self._receiver.ack(batch.acks)
            stats = self._stats
            stats.acked += len(batch.acks)
            stats.stored += outcome.inserted
            stats.quarantined += outcome.quarantined
            stats.batches += 1
            stats.last_write_at = datetime.now(UTC)
            log.debug("Stored a batch of %d messages in %.0f ms (%.2f s after it opened).",
                      len(batch), 1000 * (time.monotonic() - started),
                      time.monotonic() - batch.opened_at)


def place_clock(placer: ClockPlacer, result: Result, message: Inbound,
                stop: threading.Event) -> Result | None:
    """Place an unsynchronised reading (hub/clock.py), waiting while the database is away."""
    attempt = 0
    while True:
        try:
            return placer.apply(result, message.received_at, message.age_s)
        except StoreError as exc:
            attempt += 1
            if attempt == 1:
                log.error("Cannot read or record a clock offset: %s. Retrying.", exc)
            if stop.wait(backoff_s(attempt)):
                return None


def ingest(inbox: Inbox, receiver: Receiver, store: Store, settings: HubSettings,
           stop: threading.Event, stats: IngestStats) -> None:
    """Validate and batch; a :class:`BatchWriter` writes and acknowledges; until ``stop``."""
    batcher = Batcher(settings.batch_max_rows, settings.batch_max_age_s)
    limits = Limits(settings.max_payload_bytes, settings.max_future_skew_s,
                    settings.retention_days)
    prefix = settings.topic_prefix
    writer = BatchWriter(store, receiver, stats, stop)
    # Its own connection: only the first unsynchronised reading of a session uses it.
    clock_store = Store(store.url, application_name="fleetpulse-hub-clock")
    placer = ClockPlacer(clock_store, limits)
    try:
        while True:
            stopping = stop.is_set()
            taken = inbox.take_all()
            # Delivered over a connection that has since dropped, a message cannot be
            # acked, and the broker sends it again over the new one: leave it.
            bunch = [m for m in taken if not receiver.is_stale(m)]
            stats.stale += len(taken) - len(bunch)
            stats.received += len(bunch)  # before a submit that may wait: health counts them
            for message in bunch:
                placed = place_clock(placer, validate(message.topic, message.payload,
                                                      message.received_at, prefix, limits),
                                     message, stop)
                if placed is None:
                    return  # stopping while the database is away: the broker keeps it
                result = placed
                now = time.monotonic()
                batcher.add(message, result, now)
                if batcher.due(now) and not writer.submit(batcher.take()):
                    return
            if batcher.due(time.monotonic()) or (stopping and batcher.seconds_until_due(0)
                                                 is not None):
                if not writer.submit(batcher.take()):
                    return
            if stopping and not len(inbox):
                return
            due_in = batcher.seconds_until_due(time.monotonic())
            stop.wait(INGEST_POLL_S if due_in is None else min(due_in, INGEST_POLL_S))
    finally:
        writer.finish()
        clock_store.close()
        if writer.failed:
            raise RuntimeError("the hub's writer thread failed (see the log above)")


def load_rules(settings: HubSettings) -> list[Rule]:
    """Return the alert rules: the defaults, with ``alert_rules_file``'s overrides."""
    if settings.alert_rules_file is None:
        return list(DEFAULT_RULES)
    where = f"alert_rules_file {settings.alert_rules_file}"
    try:
        table = tomllib.loads(settings.alert_rules_file.read_text())
        return rules_from_table(table)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read it ({exc.strerror})."]) from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError([f"{where}: {exc}."]) from None


def run_alerts_loop(store: Store, watcher: AlertWatcher, retention: Retention,
                    every_s: float, stop: threading.Event) -> None:
    """Evaluate the alert rules every ``every_s``; housekeep at start and each new UTC day."""
    housekept: object = None
    postponed: object = None
    failing = False
    republished = False
    while not stop.is_set():
        now = datetime.now(UTC)
        if housekept != now.date():
            try:
                housekeep(store, retention, now)
                housekept = now.date()
            except StoreError as exc:  # e.g. a long export holds the table: next round
                if postponed != now.date():
                    log.warning("Housekeeping (partitions ahead, retention) postponed: %s. "
                                "Retrying every %g s.", exc, every_s)
                postponed = now.date()
        try:
            if not republished:
                watcher.republish_open()
                republished = True
            watcher.check(now)
            if failing:
                log.warning("Alert checks work again.")
            failing = False
        except StoreError as exc:
            if not failing:
                log.error("Cannot check alerts: %s. Retrying every %g s.", exc, every_s)
            failing = True
        stop.wait(every_s)


def retention_of(settings: HubSettings) -> Retention:
    return Retention(settings.retention_days, settings.rollup_minute_days,
                     settings.rollup_hour_days, hot_window_h=settings.hot_window_h,
                     quarantine_days=settings.quarantine_days,
                     process_days=settings.process_days,
                     budget_bytes=settings.storage_budget_bytes)


def start_http(settings: HubSettings, pool: StorePool, receiver: Receiver,
               inbox: Inbox, stats: IngestStats,
               rules: list[Rule], cold_stats: ColdStats | None = None) -> HttpServer:
    """Serve the API and the dashboard in a thread; return the server (it has ``stop()``)."""
    from hub.api import HttpServer, HubHealth, create_app  # FastAPI only when serving
    from hub.read import FleetReader

    def health() -> HubHealth:
        # Backlog: taken off the broker and not yet acknowledged (queued or in a batch that
        # waits for the database); the broker's Receive Maximum bounds it by max_pending.
        storage: dict[str, object] | None = None
        if cold_stats is not None and cold_stats.sizes:
            storage = {**tier_summary(cold_stats.sizes, settings.storage_budget_bytes),
                       "sized_at": cold_stats.sized_at,
                       "compacted_hours": cold_stats.compacted_hours,
                       "budget_dropped_hours": cold_stats.budget_dropped_hours,
                       "budget_dropped_readings": cold_stats.budget_dropped_readings,
                       "over_budget_bytes": cold_stats.over_budget_bytes,
                       "compaction_failures": cold_stats.failures}
        return HubHealth(receiver.mqtt.connected, stats.last_write_at,
                         len(inbox) + stats.received - stats.acked, stats.received,
                         stats.stored, stats.quarantined, storage)

    server = HttpServer(create_app(FleetReader(pool), streamer=pool, health=health,
                                   token=settings.api_token, rules=rules),
                        settings.http_host, settings.http_port)
    server.start()
    return server


def run(settings: HubSettings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("fleetpulse-hub %s starting.", __version__)
    if settings.deploy_dir is not None:
        from hub.deploy import read_welcome

        for line in read_welcome(settings.deploy_dir):
            log.info("%s", line)
    try:
        rules = load_rules(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"Invalid configuration: {problem}", file=sys.stderr)
        return 2
    try:
        store = open_store(settings, stop)
    except StoreError as exc:
        log.error("Cannot use the database: %s. Check --db / FLEETPULSE_DB.", exc)
        return 1
    if store is None:
        return 0
    inbox = Inbox()
    receiver = Receiver(settings, inbox)
    stats = IngestStats()
    watch_store = Store(store.url, application_name="fleetpulse-hub-alerts")
    pool = StorePool(store.url)
    http: HttpServer | None = None
    watcher = AlertWatcher(watch_store, lambda topic, payload: receiver.mqtt.publish(
        topic, payload, qos=1, retain=True), settings.topic_prefix, rules)
    retention = retention_of(settings)
    watching = threading.Thread(target=run_alerts_loop, name="alerts", daemon=True,
                                args=(watch_store, watcher, retention, settings.alert_check_s,
                                      stop))
    # Compaction has a connection and a thread of its own: a block takes a second or so of
    # database work, which must not delay alert checks or ingest.
    cold_store = Store(store.url, application_name="fleetpulse-hub-compact")
    cold_stats = ColdStats()
    compactor = Compactor(cold_store, retention, cold_stats,
                          duty=settings.compact_duty_percent / 100,
                          clock=lambda: datetime.now(UTC))
    compacting = threading.Thread(target=compactor.run, name="compact", daemon=True,
                                  args=(stop,))
    try:
        # Whatever can fail at start (the database above, the HTTP port here) is checked
        # before connecting to the broker: the first connect creates the persistent session,
        # which the broker would keep (and fill) for session_expiry_s after a failed start.
        if settings.http_port:
            try:
                http = start_http(settings, pool, receiver, inbox, stats, rules, cold_stats)
            except OSError as exc:
                log.error("%s", exc)
                return 1
        receiver.start()
        watching.start()
        compacting.start()
        ingest(inbox, receiver, store, settings, stop, stats)
    finally:
        stop.set()
        if http is not None:
            http.stop()
        receiver.stop()
        if watching.is_alive():
            watching.join(10)
        if compacting.is_alive():
            compacting.join(10)
        cold_store.close()
        pool.close()
        watch_store.close()
        store.close()
        log.info("Stopped: %d messages received, %d rows stored, %d quarantined, %d left "
                 "for redelivery after a reconnect.", stats.received, stats.stored,
                 stats.quarantined, stats.stale)
    return 0


def status(settings: HubSettings) -> int:
    url = read_database_url(settings, "status")
    if url is None:
        return 1
    store = Store(url, application_name="fleetpulse-hub-status")
    try:
        problem = schema_problem(store)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        # Storage first: the fleet's summary line stays the last line, as scripts read it.
        print(format_tiers(tier_summary(store.tier_sizes(), settings.storage_budget_bytes)))
        print()
        print(format_fleet(store.fleet_status(), datetime.now(UTC)))
    except StoreError as exc:
        print(f"Cannot read the database: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def compact(settings: HubSettings) -> int:
    """``fleetpulse-hub compact``: compact everything older than the hot window, now."""
    store = Store(database_url(settings), application_name="fleetpulse-hub-compact")
    stats = ColdStats()
    compactor = Compactor(store, retention_of(settings), stats, clock=lambda: datetime.now(UTC))
    try:
        store.migrate()
        started = time.monotonic()
        while compactor.round():  # up to 100 device-hours a round: say how far it got
            print(f"… {stats.compacted_hours:,} device-hours ({stats.compacted_readings:,} "
                  f"readings) in {time.monotonic() - started:.0f} s", file=sys.stderr)
        print(f"Compacted {stats.compacted_readings:,} readings into {stats.compacted_hours:,} "
              "device-hours of the cold tier.", file=sys.stderr)
    except StoreError as exc:
        print(f"Cannot compact: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def run_export(settings: HubSettings, args: argparse.Namespace) -> int:
    """``fleetpulse-hub export``: stream rows to a CSV or Parquet file, progress on stderr."""
    from hub.export import export_to_file, format_for_path, parse_format
    from hub.when import parse_when

    if not args.output:
        print("export needs --output FILE (.csv or .parquet, or - for stdout).", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        start, end = parse_when(args.start, now), parse_when(args.end, now)
        fmt = parse_format(args.format) if args.format else format_for_path(args.output)
    except ValueError as exc:
        print(f"Cannot export: {exc}.", file=sys.stderr)
        return 2
    if end <= start:
        print(f"Cannot export: --end {end.isoformat()} is not after --start "
              f"{start.isoformat()}.", file=sys.stderr)
        return 2
    url = read_database_url(settings, "export")
    if url is None:
        return 1
    store = Store(url, application_name="fleetpulse-hub-export")
    target = Path(args.output)
    partial = target.with_name(target.name + ".partial")
    try:
        problem = schema_problem(store)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        if args.device and not store.query("select 1 from devices where device_id = %s",
                                           (args.device,)):
            print(f"Cannot export: device {args.device!r} is not known.", file=sys.stderr)
            return 1
        if args.output == "-":
            rows = export_to_file(store, sys.stdout.buffer, fmt, start, end, args.device)
        else:
            # Written aside and renamed, so a failed export leaves no truncated file.
            with open(partial, "wb") as out:
                rows = export_to_file(store, out, fmt, start, end, args.device,
                                      progress=sys.stderr)
            partial.replace(target)
        print(f"Exported {rows:,} readings ({args.device or 'all devices'}, "
              f"{start.isoformat()} to {end.isoformat()}) as {fmt}"
              + ("" if args.output == "-" else f" to {target}") + ".", file=sys.stderr)
    except StoreError as exc:
        print(f"Cannot read the database: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Cannot write {args.output}: {exc.strerror}.", file=sys.stderr)
        return 1
    finally:
        partial.unlink(missing_ok=True)
        store.close()
    return 0


class _OneLineErrors(argparse.ArgumentParser):
    """A wrong command or flag: one line saying what, not the whole usage (--help has it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}. See {self.prog} --help.\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="fleetpulse-hub",
                            description="Store and show the metrics of a fleet.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("command", choices=[*COMMANDS, "init-deploy"])
    accounts = parser.add_argument_group("add-device / revoke-device")
    accounts.add_argument("device_id", nargs="?", help="the device's id (= its broker user name)")
    accounts.add_argument("--password-file", type=Path, default=DEFAULT_PASSWORD_FILE,
                          help=f"Mosquitto's password file (default {DEFAULT_PASSWORD_FILE})")
    accounts.add_argument("--reload-pid", type=int, help="send SIGHUP to this process (the "
                          "broker) so it re-reads the password file")
    deploy = parser.add_argument_group("init-deploy")
    deploy.add_argument("--dir", type=Path, help="where to make what docker-compose.yml needs "
                        "(broker/, secrets/, ca/); what exists is kept")
    deploy.add_argument("--shipped", type=Path, default=Path("mosquitto"), help="the "
                        "repository's mosquitto/ directory (default: mosquitto)")
    export = parser.add_argument_group("export")
    export.add_argument("--device", help="export this device only (default: the whole fleet)")
    export.add_argument("--start", default="24h", help="ISO 8601 time or an age such as 90m, "
                        "24h, 7d (default 24h)")
    export.add_argument("--end", default="now", help="ISO 8601 time, 'now' or an age")
    export.add_argument("--output", "-o", help="file to write; .parquet/.pq means Parquet, "
                        "anything else CSV; '-' for stdout")
    export.add_argument("--format", choices=["csv", "parquet"],
                        help="override the format the file name implies")
    parser.add_argument("--config", help=f"TOML settings file (default {DEFAULT_CONFIG} if it "
                        "exists, or FLEETPULSE_CONFIG)")
    add_setting_flags(parser, HubSettings)
    return parser


def run_migrate(settings: HubSettings) -> int:
    """``fleetpulse-hub migrate``: create or upgrade the tables, then exit."""
    store = Store(database_url(settings))
    try:
        print("\n".join(store.migrate()) or "Schema is current.")
    except StoreError as exc:
        print(f"Cannot migrate the database: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def run_device_account(settings: HubSettings, args: argparse.Namespace) -> int:
    """``fleetpulse-hub add-device`` / ``revoke-device``: a device's broker account."""
    if not args.device_id:
        print(f"fleetpulse-hub {args.command} needs a device id.", file=sys.stderr)
        return 2
    if args.command == "add-device":
        return run_add_device(args.device_id, args.password_file, settings, args.reload_pid,
                              explicit_url=args.broker_url is not None)
    return run_revoke_device(args.device_id, args.password_file, args.reload_pid)


# The commands that need the settings, each a function of them and the parsed arguments.
# The parser's choices are this table's keys (and init-deploy, which needs no settings), so
# a command without a function here cannot be given.
COMMANDS: dict[str, Callable[[HubSettings, argparse.Namespace], int]] = {
    "run": lambda settings, args: run(settings),
    "status": lambda settings, args: status(settings),
    "migrate": lambda settings, args: run_migrate(settings),
    "export": lambda settings, args: run_export(settings, args),
    "compact": lambda settings, args: compact(settings),
    "add-device": lambda settings, args: run_device_account(settings, args),
    "revoke-device": lambda settings, args: run_device_account(settings, args),
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init-deploy":
        if args.dir is None:
            print("fleetpulse-hub init-deploy needs --dir DIR.", file=sys.stderr)
            return 2
        from hub.deploy import run_init_deploy

        return run_init_deploy(args.dir, args.shipped)
    try:
        settings = settings_from_args(HubSettings, args, DEFAULT_CONFIG)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"Invalid configuration: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
