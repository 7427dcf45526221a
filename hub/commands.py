"""The one-shot commands of ``fleetpulse-hub``: status, compact, export, migrate, and a
device's broker account; and the database URL (given, or the embedded cluster) they share
with ``run``. ``hub/main.py`` maps the command line to them.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from hub.credentials import run_add_device, run_revoke_device
from hub.read import FleetReader
from hub.retention import ColdStats, Compactor, Retention, tier_summary
from hub.store import Store
from hub.table import format_fleet, format_tiers
from shared.config import HubSettings, with_password
from shared.errors import StoreError


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


def retention_of(settings: HubSettings) -> Retention:
    return Retention(settings.retention_days, settings.rollup_minute_days,
                     settings.rollup_hour_days, hot_window_h=settings.hot_window_h,
                     quarantine_days=settings.quarantine_days,
                     process_days=settings.process_days,
                     budget_bytes=settings.storage_budget_bytes)


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
        print(format_fleet(FleetReader(store).devices(), datetime.now(UTC)))
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
    compactor = Compactor(store, retention_of(settings), stats,
                          check_every=settings.cold_check_every, clock=lambda: datetime.now(UTC))
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


def train(settings: HubSettings, args: argparse.Namespace) -> int:
    """``fleetpulse-hub train``: train a device's anomaly detector (or every device's)."""
    from hub.models import run_train  # numpy only for this command

    if (args.device is None) == (not args.all):
        print("fleetpulse-hub train needs --device ID or --all.", file=sys.stderr)
        return 2
    store = Store(database_url(settings), application_name="fleetpulse-hub-train")
    try:
        store.migrate()
        return run_train(store, device_id=args.device, kind=settings.detect_kind,
                         window_h=settings.train_window_h,
                         min_readings=settings.train_min_readings, now=datetime.now(UTC),
                         out=sys.stderr)
    except StoreError as exc:
        print(f"Cannot train: {exc}. Check --db / FLEETPULSE_DB.", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # e.g. detect_kind autoencoder without PyTorch
        print(f"Cannot train: {exc}.", file=sys.stderr)
        return 1
    finally:
        store.close()


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
        code = run_add_device(args.device_id, args.password_file, settings, args.reload_pid,
                              explicit_url=args.broker_url is not None)
        if code == 0:
            record_revocation(settings, args.device_id, revoked=False)
        return code
    code = run_revoke_device(args.device_id, args.password_file, args.reload_pid)
    if code == 0 and record_revocation(settings, args.device_id, revoked=True):
        print(f"The hub removes what {args.device_id!r} announced to Home Assistant, if "
              "anything, within a few seconds while it runs (no need for the command above).",
              file=sys.stderr)
    return code


_REVOKE = ("insert into device_revocations (device_id, revoked_at) values (%(d)s, now()) "
           "on conflict (device_id) do update set revoked_at = now(), cleared_at = null")
# A revoked device can no longer connect: settings asked of it would wait for ever, and its
# last settings report is stale. Added again, it reports its settings when it connects.
_FORGET_SETTINGS = ("delete from device_settings where device_id = %(d)s",
                    "delete from device_config where device_id = %(d)s")
_UNREVOKE = "delete from device_revocations where device_id = %(d)s"


def record_revocation(settings: HubSettings, device_id: str, revoked: bool) -> bool:
    """Tell the hub's database that a device was revoked (or added again); False when there
    is no database to tell (the account commands also work with the broker alone)."""
    from hub.embedded import cluster_exists

    if settings.db is None and not cluster_exists(settings.data_dir):
        return False
    store = None
    try:
        store = Store(database_url(settings), application_name="fleetpulse-hub-accounts")
        statements = [_REVOKE, *_FORGET_SETTINGS] if revoked else [_UNREVOKE]
        store.execute([(text, {"d": device_id}) for text in statements])
        return True
    except StoreError as exc:
        if revoked:
            print(f"Could not tell the hub's database ({exc}); remove the device from Home "
                  "Assistant by hand as said above.", file=sys.stderr)
        return False
    finally:
        if store is not None:
            store.close()
