"""``fleetpulse-hub``: wire receive → validate → batch → write, load settings, run.

    fleetpulse-hub run       subscribe, validate, store; serve the API and dashboard
    fleetpulse-hub status    print the fleet as a table
    fleetpulse-hub migrate   create or upgrade the tables, then exit
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from hub.batch import Batcher, Inbound
from hub.receive import Receiver
from hub.status import format_fleet
from hub.store import Store
from hub.validate import Limits, validate
from hub.write import backoff_s, write_batch
from shared import __version__
from shared.config import HubSettings, add_setting_flags, settings_from_args
from shared.errors import ConfigError, StoreError

log = logging.getLogger("fleetpulse.hub")
DEFAULT_CONFIG = Path("/etc/fleetpulse/hub.toml")


@dataclass
class IngestStats:
    """Counters shown by the health endpoint and logged at stop."""

    received: int = 0
    stored: int = 0
    quarantined: int = 0
    batches: int = 0
    last_write_at: datetime | None = None


def database_url(settings: HubSettings) -> str:
    if settings.db is not None:
        return settings.db.reveal()
    from hub.embedded import start_embedded

    return start_embedded(settings.data_dir)


def open_store(settings: HubSettings, stop: threading.Event) -> Store | None:
    """Connect and migrate, waiting (one log line) while the database is unreachable."""
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
            attempt += 1
            if attempt == 1:
                log.error("Cannot use the database: %s. Check --db / FLEETPULSE_DB; "
                          "retrying.", exc)
            stop.wait(backoff_s(attempt))
    return None


def ingest(inbox: queue.Queue[Inbound], receiver: Receiver, store: Store,
           settings: HubSettings, stop: threading.Event, stats: IngestStats) -> None:
    """Validate, batch, write and then acknowledge, until ``stop`` is set."""
    batcher = Batcher(settings.batch_max_rows, settings.batch_max_age_s)
    limits = Limits(settings.max_payload_bytes, settings.max_future_skew_s)
    prefix = settings.topic_prefix
    while True:
        stopping = stop.is_set()
        wait = batcher.seconds_until_due(time.monotonic())
        try:
            message: Inbound | None = inbox.get(timeout=0.2 if wait is None else min(wait, 0.2))
        except queue.Empty:
            message = None
        while message is not None:
            stats.received += 1
            batcher.add(message, validate(message.topic, message.payload, message.received_at,
                                          prefix, limits), time.monotonic())
            if batcher.due(time.monotonic()):
                break
            try:
                message = inbox.get_nowait()
            except queue.Empty:
                message = None
        if batcher.due(time.monotonic()) or (stopping and batcher.seconds_until_due(0) is not None):
            batch = batcher.take()
            assert batch is not None
            outcome = write_batch(store, batch, stop)
            if outcome is None:
                return  # stopped while the database was away: the broker keeps the messages
            receiver.ack(batch.acks)
            stats.stored += outcome.inserted
            stats.quarantined += outcome.quarantined
            stats.batches += 1
            stats.last_write_at = datetime.now(UTC)
        if stopping and inbox.empty():
            return


def run(settings: HubSettings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("fleetpulse-hub %s starting.", __version__)
    store = open_store(settings, stop)
    if store is None:
        return 0
    inbox: queue.Queue[Inbound] = queue.Queue()
    receiver = Receiver(settings, inbox)
    stats = IngestStats()
    receiver.start()
    try:
        ingest(inbox, receiver, store, settings, stop, stats)
    finally:
        receiver.stop()
        store.close()
        log.info("Stopped: %d messages received, %d rows stored, %d quarantined.",
                 stats.received, stats.stored, stats.quarantined)
    return 0


def status(settings: HubSettings) -> int:
    store = Store(database_url(settings))
    try:
        store.migrate()
        print(format_fleet(store.fleet_status(), datetime.now(UTC)))
    except StoreError as exc:
        print(f"Cannot read the database: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetpulse-hub",
                                     description="Store and show the metrics of a fleet.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("command", choices=["run", "status", "migrate"])
    parser.add_argument("--config", help=f"TOML settings file (default {DEFAULT_CONFIG} if it "
                        "exists, or FLEETPULSE_CONFIG)")
    add_setting_flags(parser, HubSettings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(HubSettings, args, DEFAULT_CONFIG)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"Invalid configuration: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return run(settings)
    if args.command == "status":
        return status(settings)
    store = Store(database_url(settings))
    try:
        print("\n".join(store.migrate()) or "Schema is current.")
    except StoreError as exc:
        print(f"Cannot migrate the database: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
