"""``fleetpulse-hub``: load the settings, wire ingest, alerts, compaction and HTTP (``run``),
and map each command to its function (:data:`COMMANDS`; the one-shot ones are in
``hub/commands.py``).

    fleetpulse-hub run       subscribe, validate, store; serve the API and dashboard
    fleetpulse-hub status    print the fleet as a table, and the bytes of each storage tier
    fleetpulse-hub compact   move what is older than the hot window into the cold tier now
    fleetpulse-hub train     train the anomaly detector of a device (--device ID) or all (--all)
    fleetpulse-hub migrate   create or upgrade the tables, then exit
    fleetpulse-hub export    write a device's or the fleet's history to CSV or Parquet
    fleetpulse-hub add-device ID      give a device a broker account; print its agent.toml
    fleetpulse-hub revoke-device ID   remove a device's broker account
    fleetpulse-hub init-deploy --dir DIR   make docker-compose's secrets and certificates
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from hub.alerts import DEFAULT_RULES, Rule, rules_from_table
from hub.commands import (
    compact,
    database_url,
    retention_of,
    run_device_account,
    run_export,
    run_migrate,
    status,
    train,
)
from hub.credentials import DEFAULT_PASSWORD_FILE, run_add_admin
from hub.detect.live import LiveScorer
from hub.ingest import Inbox, IngestStats, Receiver, backoff_s, run_ingest_loop
from hub.models import Retrainer
from hub.retention import ColdStats, Compactor, tier_summary
from hub.store import Store, StorePool
from hub.sync import SettingsDesk, SettingsSync
from hub.watch import AlertWatcher, run_alerts_loop
from shared import __version__
from shared.config import DEFAULT_HUB_CONFIG, HubSettings, add_setting_flags, settings_from_args
from shared.errors import ConfigError, StoreError
from shared.schema import metrics_columns

if TYPE_CHECKING:
    from hub.api import HttpServer

log = logging.getLogger("fleetpulse.hub")
DEFAULT_CONFIG = DEFAULT_HUB_CONFIG
GC_YOUNG_OBJECTS = 50_000  # allocations between collections of young objects (see run())


def open_store(settings: HubSettings, stop: threading.Event) -> Store | None:
    """Connect and migrate, waiting (one log line) while the database is unreachable.

    Raise the StoreError when the server refuses the login or the database for good (wrong
    role, password or database name): waiting would not fix a setting.
    """
    # The writer's store: its rollups trail by up to rollup_flush_s, marked as this hub's
    # (its client id is unique among the hubs on the broker, so on the database too).
    owner = settings.client_id if settings.rollup_flush_s > 0 else None
    store = Store(database_url(settings),
                  quarantine_payload_bytes=settings.quarantine_payload_bytes,
                  rollup_owner=owner)
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


def start_http(settings: HubSettings, pool: StorePool, receiver: Receiver,
               inbox: Inbox, stats: IngestStats,
               rules: list[Rule], cold_stats: ColdStats | None = None,
               settings_desk: SettingsDesk | None = None,
               scorer: LiveScorer | None = None) -> HttpServer:
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
        detection: dict[str, object] | None = None
        if scorer is not None:
            detection = {"models": scorer.devices, "readings": scorer.stats.readings,
                         "scored": scorer.stats.scored,
                         "cpu_us_per_reading": scorer.stats.us_per_reading}
        return HubHealth(receiver.mqtt.connected, stats.last_write_at,
                         len(inbox) + stats.received - stats.acked, stats.received,
                         stats.stored, stats.quarantined, storage, detection)

    server = HttpServer(create_app(FleetReader(pool), streamer=pool, health=health,
                                   token=settings.api_token, rules=rules,
                                   settings_desk=settings_desk),
                        settings.http_host, settings.http_port)
    server.start()
    return server


def start_detection(settings: HubSettings, url: str,
                    trains: bool = True) -> tuple[LiveScorer, Retrainer, Store]:
    """The live scorer with every device's newest model loaded, and the retrainer (which
    only picks up new models when ``trains`` is False: a worker of ``--workers`` > 0)."""
    scorer = LiveScorer([c.name for c in metrics_columns()])
    # Its own connection: training reads a device-day of history at a time.
    train_store = Store(url, application_name="fleetpulse-hub-train")
    retrainer = Retrainer(train_store, lambda m: scorer.install(m.device_id, m.detector),
                          kind=settings.detect_kind, window_h=settings.train_window_h,
                          min_readings=settings.train_min_readings,
                          retrain_h=settings.retrain_h if trains else 0.0,
                          duty=settings.train_duty_percent / 100,
                          clock=lambda: datetime.now(UTC))
    try:
        retrainer.load_all()  # before the first reading: a model survives a restart
    except StoreError as exc:
        log.error("Cannot load the anomaly models: %s. Readings are stored unscored until "
                  "they load (retrying).", exc)
    return scorer, retrainer, train_store


def run(settings: HubSettings, worker_index: int | None = None) -> int:
    """Run the hub; ``worker_index`` > 0: a worker of ``--workers`` that only ingests
    (worker 0, or a hub on its own, also serves HTTP and runs alerts, compaction and
    retention: see hub/supervise.py)."""
    primary = not worker_index
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
    # Alone on the database (no workers, no share group), the hub's writer hands the
    # watcher the readings it stored: no reading back (hub/watch.py, AlertWatcher.feed).
    alone = worker_index is None and settings.share_group is None
    watcher = AlertWatcher(watch_store, lambda topic, payload: receiver.mqtt.publish(
        topic, payload, qos=1, retain=True), settings.topic_prefix, rules, fed=alone)
    # Settings changed remotely: a thread and a connection of their own; the API records
    # requests through the pool and wakes the thread (hub/sync.py).
    sync_store = Store(store.url, application_name="fleetpulse-hub-settings")
    sync = SettingsSync(sync_store, lambda topic, payload: receiver.mqtt.publish(
        topic, payload, qos=1, retain=False), settings.topic_prefix, lambda: datetime.now(UTC),
        lambda topic, payload: receiver.mqtt.publish(topic, payload, qos=1, retain=True))
    syncing = threading.Thread(target=sync.run, name="settings", daemon=True, args=(stop,))
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
                          check_every=settings.cold_check_every,
                          clock=lambda: datetime.now(UTC))
    compacting = threading.Thread(target=compactor.run, name="compact", daemon=True,
                                  args=(stop,))
    scorer, retrainer, train_store = start_detection(settings, store.url, primary)
    training = threading.Thread(target=retrainer.run, name="train", daemon=True, args=(stop,))
    try:
        # Whatever can fail at start (the database above, the HTTP port here) is checked
        # before connecting to the broker: the first connect creates the persistent session,
        # which the broker would keep (and fill) for session_expiry_s after a failed start.
        if settings.http_port and primary:
            try:
                http = start_http(settings, pool, receiver, inbox, stats, rules, cold_stats,
                                  SettingsDesk(pool, sync.wake.set), scorer)
            except OSError as exc:
                log.error("%s", exc)
                return 1
        # What is loaded by now lives as long as the hub (modules, schemas, models): out of
        # the cyclic collector's way, so a full collection scans the readings in flight only.
        gc.freeze()
        # A reading makes ~100 objects, none in a cycle, most alive until its batch is
        # stored. Collecting young objects every 700 allocations (Python's default) walked
        # the readings in flight again and again: ~10 µs a message, a quarter of validating
        # and batching one. Every 50,000, that is all but gone (bench/README.md).
        gc.set_threshold(GC_YOUNG_OBJECTS, 10, 10)
        receiver.start()
        if primary:
            watching.start()
            compacting.start()
            syncing.start()
        training.start()
        run_ingest_loop(inbox, receiver, store, settings, stop, stats, scorer.score,
                        watcher.feed if alone else None)
    finally:
        stop.set()
        if http is not None:
            http.stop()
        receiver.stop()
        if watching.is_alive():
            watching.join(10)
        if compacting.is_alive():
            compacting.join(10)
        if syncing.is_alive():
            syncing.join(10)
        sync_store.close()
        if training.is_alive():
            training.join(10)
        train_store.close()
        cold_store.close()
        pool.close()
        watch_store.close()
        store.close()
        log.info("Stopped: %d messages received, %d rows stored, %d quarantined, %d left "
                 "for redelivery after a reconnect.", stats.received, stats.stored,
                 stats.quarantined, stats.stale)
        if scorer.stats.readings:
            log.info("Anomaly scores: %d of %d readings scored, %.1f µs of CPU per reading.",
                     scorer.stats.scored, scorer.stats.readings, scorer.stats.us_per_reading)
    return 0


def run_command(settings: HubSettings, args: argparse.Namespace) -> int:
    """``run``: one hub, or with ``--workers N`` a supervisor of N hubs (hub/supervise.py)."""
    if settings.workers > 1 and args.worker_index is None:
        # The supervisor needs none of the hub's modules: this process becomes a fresh one
        # running hub/supervise.py alone (its memory counts against the hub's).
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable,  # noqa: S606 - our own module, with our own arguments
                 [sys.executable, "-m", "hub.supervise", *args.argv])
    return run(settings, args.worker_index)


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
    export = parser.add_argument_group("export / train")
    export.add_argument("--device", help="export or train this device only (default for "
                        "export: the whole fleet)")
    export.add_argument("--all", action="store_true", help="train: every device")
    export.add_argument("--start", default="24h", help="ISO 8601 time or an age such as 90m, "
                        "24h, 7d (default 24h)")
    export.add_argument("--end", default="now", help="ISO 8601 time, 'now' or an age")
    export.add_argument("--output", "-o", help="file to write; .parquet/.pq means Parquet, "
                        "anything else CSV; '-' for stdout")
    export.add_argument("--format", choices=["csv", "parquet"],
                        help="override the format the file name implies")
    # Set by the supervisor of --workers for each hub process it starts (hub/supervise.py).
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=f"TOML settings file (default {DEFAULT_CONFIG} if it "
                        "exists, or FLEETPULSE_CONFIG)")
    add_setting_flags(parser, HubSettings)
    return parser


# The commands that need the settings, each a function of them and the parsed arguments.
# The parser's choices are this table's keys (and init-deploy, which needs no settings), so
# a command without a function here cannot be given.
COMMANDS: dict[str, Callable[[HubSettings, argparse.Namespace], int]] = {
    "run": lambda settings, args: run_command(settings, args),
    "status": lambda settings, args: status(settings),
    "migrate": lambda settings, args: run_migrate(settings),
    "export": lambda settings, args: run_export(settings, args),
    "compact": lambda settings, args: compact(settings),
    "train": train,
    "add-device": lambda settings, args: run_device_account(settings, args),
    "revoke-device": lambda settings, args: run_device_account(settings, args),
    "add-admin": lambda settings, args: run_add_admin(args.device_id or "", args.password_file,
                                                      settings, args.reload_pid),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv  # the supervisor of --workers starts its hubs with the same arguments
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
    worker = "" if args.worker_index is None else f"[{args.worker_index}]"
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s{worker}: %(message)s")
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
