"""Evaluate the alert rules against the database and announce what changed.

The edge around :mod:`hub.alerts`: reads device states, recent readings and open alerts,
runs the pure evaluation, stores the changes in one transaction, and only then publishes
each alert retained on ``<prefix>/<device>/alert/<rule>`` — JSON while open, an empty
retained payload when closed (which clears the retained message, MQTT 5.0 §3.3.1.3).
:func:`run_alerts_loop` is the hub's alerts thread: a round every ``alert_check_s``, and the
daily housekeeping (partitions ahead, retention).
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from hub.alerts import (
    Change,
    DeviceState,
    FleetInput,
    OpenAlert,
    Rule,
    Run,
    SessionSpan,
    alert_payload,
    duplicate_window_s,
    evaluate_fleet,
    fold_reading,
    reading_values,
    run_pairs,
    window_s,
)
from hub.columns import DISK_MAX_PERCENT
from hub.detect.outlook import Outlook, throttle_limit
from hub.retention import HousekeepingStore, Retention, housekeep
from shared.errors import StoreError
from shared.schema import metrics_columns
from shared.topics import alert_topic

log = logging.getLogger(__name__)

_STATES = (
    "select d.device_id, d.status, d.status_since, d.meta->>'pi_model' as pi_model, "
    # The interval the device's newest reading says it keeps (its meta may predate a
    # change of interval), else its meta's.
    "coalesce(m.interval_s, (d.meta->>'interval_s')::float8, 1.0) as interval_s, "
    "m.received_at as last_reading_received_at from devices d "
    "left join lateral (select interval_s, received_at from metrics m "
    "where m.device_id = d.device_id and m.ts <= d.last_seen "
    "and m.ts > d.last_seen - interval '1 day' order by ts desc limit 1) m on true order by 1")
# Readings up to the window before each device's newest one (its own clock), newer than the
# newest one this watcher already holds for the device (``known``): each round reads only
# what arrived since the last, not the whole window of every device again. Both bounds are
# one range on the primary key (greatest() passes over a NULL: a device not yet known), and
# ``offset 0`` keeps the lateral a scan of that range per device. Flattened into a join,
# the planner scanned the day's partition and filtered afterwards, a cost that grew with
# the partition: 1,000 devices, 5 s of new readings, 32-52 µs of PostgreSQL a reading
# after 1 minute of history and 92-195 after 10, against 11 and 15-20 with the range.
_READ_COLUMNS = (
    "select m.device_id, m.ts, m.sensors_cpu_celsius, m.memory_percent, "
    "m.memory_swap_in_bytes_per_s, m.memory_swap_out_bytes_per_s, "
    "m.throttling_under_voltage_now, m.throttling_throttled_now, "
    "m.throttling_freq_capped_now, m.throttling_soft_temp_limit_now, m.anomaly_score, "
    # As text: hub/detect/outlook.py parses one reading's partitions per 10 s step.
    "m.memory_available_bytes, m.memory_total_bytes, "
    "m.disk_partitions::text as disk_partitions, "
    + DISK_MAX_PERCENT + " ")
_READINGS = (
    _READ_COLUMNS +
    "from devices d left join unnest(%(known_ids)s::text[], %(known_ts)s::timestamptz[]) "
    "as k(device_id, ts) on k.device_id = d.device_id "
    "join lateral (select * from metrics m where m.device_id = d.device_id "
    "and m.ts > greatest(d.last_seen - make_interval(secs => %(window)s), k.ts) "
    "and m.ts <= d.last_seen offset 0) m on true "
    # Only devices with a reading newer than the watcher's newest: a fed device's range is
    # empty, and probing it still cost ~250 µs a device (6,000 devices: 74 µs a message).
    "where d.last_seen > coalesce(k.ts, '-infinity') order by m.device_id, m.ts")
# A fed watcher's history of devices new to it: each one's window before its first reading
# fed (AlertWatcher.drain), one primary-key range per device.
_HISTORY = (
    _READ_COLUMNS +
    "from unnest(%(ids)s::text[], %(before)s::timestamptz[]) as k(device_id, ts) "
    "join lateral (select * from metrics m where m.device_id = k.device_id "
    "and m.ts >= k.ts - make_interval(secs => %(window)s) and m.ts < k.ts offset 0) m on true "
    "order by m.device_id, m.ts")
# Agent sessions that delivered readings lately (duplicate_device).
_SESSIONS = (
    "select device_id, session_id, hostname, first_ts, last_ts from device_sessions "
    "where last_received_at > now() - make_interval(secs => %(window)s) "
    "and first_ts is not null order by device_id, first_ts")
_OPEN = "select device_id, rule, started_at, peak_value from alerts where ended_at is null"
_INSERT = (
    "insert into alerts (device_id, rule, started_at, peak_value, last_value, threshold, "
    "message, updated_at) values (%(device_id)s, %(rule)s, %(started_at)s, %(peak)s, "
    "%(value)s, %(threshold)s, %(message)s, %(now)s) "
    "on conflict (device_id, rule) where ended_at is null do nothing")
_UPDATE = (
    "update alerts set peak_value = %(peak)s, last_value = %(value)s, message = %(message)s, "
    "updated_at = %(now)s where device_id = %(device_id)s and rule = %(rule)s "
    "and ended_at is null")
_CLOSE = (
    "update alerts set ended_at = %(ended_at)s, updated_at = %(now)s "
    "where device_id = %(device_id)s and rule = %(rule)s and ended_at is null")


class WatchStore(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...
    def stream(self, text: str, params: Any = None, chunk_rows: int = 5000
               ) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]: ...
    def execute(self, statements: Sequence[tuple[str, Any]]) -> None: ...


# Readings a round holds at once: a round reads every reading stored since the last (5 s of
# the whole fleet's), which as one list of dicts was most of the hub's peak memory.
READ_CHUNK_ROWS = 2000

# The columns of a reading the rules and forecasts read, as the writer's rows hold them (a
# hub alone on its database is fed them: AlertWatcher.feed). disk_partitions is JSON bytes.
_FED = ("device_id", "ts", "sensors_cpu_celsius", "memory_percent",
        "memory_swap_in_bytes_per_s", "memory_swap_out_bytes_per_s",
        "throttling_under_voltage_now", "throttling_throttled_now",
        "throttling_freq_capped_now", "throttling_soft_temp_limit_now", "anomaly_score",
        "memory_available_bytes", "memory_total_bytes", "disk_partitions")
_COLUMN_NAMES = [c.name for c in metrics_columns()]
_PICK = operator.itemgetter(*(_COLUMN_NAMES.index(name) for name in _FED))
_DEVICE_TS = operator.itemgetter(0, 1)
# Fed readings waiting for a drain, at most (~0.55 KB each): beyond, the watcher drops them
# and reads them back from the database at its next round, as it would without the feed.
# That read-back is slow, and readings go on arriving meanwhile: with 20,000 (1.4 s at
# 14,000 msg/s) one slow round led to the next, each reading back ~20,000-80,000 readings.
MAX_FED_ROWS = 60_000
# How often the alerts thread folds in what it was fed, between rounds; sooner once
# DRAIN_ROWS wait (it looks every DRAIN_POLL_S).
DRAIN_S = 1.0
DRAIN_ROWS = 5_000
DRAIN_POLL_S = 0.1


def _disk_max_percent(partitions: bytes | list[Any] | None) -> float | None:
    """The largest partition use of a reading (as the query's ``disk_max_percent``), from
    its partitions as JSON (as the writer holds them) or as a list."""
    listed = orjson.loads(partitions) if isinstance(partitions, bytes) else partitions
    percents = [float(p["percent"]) for p in listed if isinstance(p, dict)
                and p.get("percent") is not None] if isinstance(listed, list) else []
    return max(percents) if percents else None


Publish = Callable[[str, bytes], object]  # topic, payload: retained, QoS 1


class AlertWatcher:
    """Run one evaluation round at a time; :meth:`check` is called by the hub's loop.

    ``fed``: the hub's writer hands it every reading it stores (:meth:`feed`, for a hub alone
    on its database), so a round reads back only readings stored by other writers; otherwise
    each round reads from PostgreSQL every reading stored since the last.
    """

    def __init__(self, store: WatchStore, publish: Publish, prefix: str,
                 rules: Sequence[Rule], fed: bool = False) -> None:
        self._store = store
        self._publish = publish
        self._prefix = prefix
        self._rules = list(rules)
        self._by_name = {r.name: r for r in rules}
        self._window_s = window_s(rules)
        self._sessions_window_s = duplicate_window_s(rules)
        # Each device's forecasts, fed the readings this watcher reads (in memory: after a
        # restart they speak again once a minute of readings has come in).
        self._outlooks: dict[str, Outlook] = {}
        # Each device's runs (hub/alerts.py: Run) by rule, and the newest reading folded in.
        # A reading stored after newer ones of its device (replayed from an agent's spool)
        # is not read back: rules judge the live stream.
        self._runs: dict[str, dict[str, Run]] = {}
        self._newest: dict[str, datetime] = {}
        self._pairs: dict[str, list[tuple[Rule, Run]]] = {}  # each device's runs, by rule
        # Readings the writer committed (feed), folded by drain() in the alerts thread.
        self._is_fed = fed
        self._fed: list[list[tuple[Any, ...]]] = []
        self._fed_rows = 0
        self._fed_lock = threading.Lock()
        # Some were dropped (or a device's history could not be read): none is folded until
        # a round has read back what is missing, as an unfed watcher does.
        self._fed_gap = not fed

    def feed(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Take readings the writer has just committed (its rows, hub/ingest/batch.py).

        Called by the writer's thread when this hub is alone on its database (no workers,
        no share group): the alerts thread folds them in (:meth:`drain`) instead of reading
        them back from PostgreSQL. Only the columns the rules read are kept.
        """
        picked = [_PICK(row) for row in rows]
        with self._fed_lock:
            if self._fed_rows + len(picked) > MAX_FED_ROWS:  # the alerts thread is stuck
                if not self._fed_gap:
                    log.warning("The alert rules fell behind: %d readings wait to be folded "
                                "in. The next round reads them back from the database.",
                                self._fed_rows + len(picked))
                self._fed, self._fed_rows, self._fed_gap = [], 0, True
                return
            self._fed.append(picked)
            self._fed_rows += len(picked)

    def waiting(self) -> int:
        """How many fed readings wait for :meth:`drain`."""
        return self._fed_rows

    def drain(self) -> int:
        """Fold in the readings fed since the last drain; return how many.

        A device new to this watcher first gets its window of history before its first fed
        reading, read from PostgreSQL. A reading no newer than its device's newest folded
        one (a redelivery, or a reading replayed from an agent's spool) is skipped, as the
        query of an unfed watcher skips it.
        """
        with self._fed_lock:
            batches, gap = self._fed, self._fed_gap
            self._fed, self._fed_rows = [], 0
        if gap or not batches:
            return 0  # dropped: the next round reads all of them back
        picked = [row for batch in batches for row in batch]
        picked.sort(key=_DEVICE_TS)
        by_device = [(device, list(rows)) for device, rows in
                     itertools.groupby(picked, key=operator.itemgetter(0))]
        new = {device: rows[0][1] for device, rows in by_device if device not in self._newest}
        if new:
            try:
                self._read_history(new)
            except StoreError as exc:
                log.warning("Cannot read the history of %d devices new to the alert rules: "
                            "%s. The next round reads it.", len(new), exc)
                with self._fed_lock:
                    self._fed_gap = True
                return 0
        folded = 0
        for device, rows in by_device:
            newest = self._newest.get(device)
            dicts = []
            for values_of_row in rows:
                if newest is not None and values_of_row[1] <= newest:
                    continue
                row = dict(zip(_FED, values_of_row, strict=True))
                row["disk_max_percent"] = _disk_max_percent(row["disk_partitions"])
                dicts.append(row)
                newest = row["ts"]
            if dicts:
                self._fold(device, dicts)
                folded += len(dicts)
        return folded

    def _read_history(self, first_fed: dict[str, datetime]) -> None:
        """Fold in each device's window of readings before its first fed one."""
        for device in first_fed:
            self._outlooks.setdefault(device, Outlook())
        params = {"ids": list(first_fed), "before": list(first_fed.values()),
                  "window": self._window_s}
        for names, chunk in self._store.stream(_HISTORY, params, READ_CHUNK_ROWS):
            by_device = names.index("device_id")
            for device, rows in itertools.groupby(chunk, key=lambda r: r[by_device]):
                self._fold(device, [dict(zip(names, row, strict=True)) for row in rows])

    def _fold(self, device: str, rows: list[dict[str, Any]]) -> None:
        """Fold a device's readings, oldest first, into its forecasts and rule runs."""
        outlook = self._outlooks.get(device)
        if outlook is None:  # not setdefault: an Outlook is costly to build
            outlook = self._outlooks[device] = Outlook()
        pairs = self._pairs.get(device)
        if pairs is None:
            pairs = self._pairs[device] = run_pairs(self._rules,
                                                    self._runs.setdefault(device, {}))
        for row in rows:
            values = reading_values(row)
            values.update(outlook.add(row["ts"], row))
            fold_reading(pairs, row["ts"], values)
        self._newest[device] = rows[-1]["ts"]

    def load(self) -> FleetInput:
        fleet = FleetInput()
        sessions: dict[str, list[SessionSpan]] = {}
        if self._sessions_window_s is not None:
            for row in self._store.query(_SESSIONS, {"window": self._sessions_window_s}):
                sessions.setdefault(row["device_id"], []).append(SessionSpan(
                    row["session_id"], row["hostname"], row["first_ts"], row["last_ts"]))
        for row in self._store.query(_STATES):
            if row["device_id"] not in self._outlooks:
                self._outlooks[row["device_id"]] = Outlook(throttle_limit(row["pi_model"]))
            fleet.devices.append(DeviceState(row["device_id"], row["status"],
                                             row["status_since"], float(row["interval_s"]),
                                             row["last_reading_received_at"],
                                             tuple(sessions.get(row["device_id"], ()))))
        self.drain()  # what the writer fed, if it feeds this watcher
        with self._fed_lock:
            self._fed_gap = not self._is_fed  # the query below reads what was dropped
        # What arrived since the last round and was not fed: stored by another writer (an
        # import, another hub), dropped from the feed, or everything when not fed. A fed
        # device's newest reading is the feed's, so its range is empty.
        known = self._newest
        params = {"window": self._window_s, "known_ids": list(known),
                  "known_ts": list(known.values())}
        for names, chunk in self._store.stream(_READINGS, params, READ_CHUNK_ROWS):
            by_device = names.index("device_id")
            # Rows come ordered by device, then time: each device's are folded in at once.
            for device, rows in itertools.groupby(chunk, key=lambda r: r[by_device]):
                self._fold(device, [dict(zip(names, row, strict=True)) for row in rows])
        listed = {device.device_id for device in fleet.devices}
        for device in [d for d in self._runs if d not in listed]:
            del self._runs[device]  # removed from the devices table
            self._pairs.pop(device, None)
            self._newest.pop(device, None)
            self._outlooks.pop(device, None)
        fleet.runs = self._runs  # evaluation only reads them
        for row in self._store.query(_OPEN):
            fleet.open_alerts.setdefault(row["device_id"], {})[row["rule"]] = OpenAlert(
                row["device_id"], row["rule"], row["started_at"], row["peak_value"])
        return fleet

    def check(self, now: datetime) -> list[Change]:
        """Evaluate every device, store the changes, then publish them."""
        changes = evaluate_fleet(self._rules, self.load(), now)
        if not changes:
            return []
        statements: list[tuple[str, Any]] = []
        for c in changes:
            params = {"device_id": c.device_id, "rule": c.rule, "started_at": c.started_at,
                      "ended_at": c.ended_at, "peak": c.peak_value, "value": c.value,
                      "threshold": c.threshold, "message": c.message, "now": now}
            statements.append(({"open": _INSERT, "update": _UPDATE, "close": _CLOSE}[c.action],
                               params))
        self._store.execute(statements)
        for c in changes:
            if c.action == "open":
                log.warning("Alert: %s.", c.message)
            elif c.action == "close":
                log.info("Alert over: %s on %s (peak %s).", c.rule, c.device_id, c.peak_value)
            self._announce(c)
        return changes

    def republish_open(self) -> int:
        """Publish every open alert again (retained), e.g. after the hub restarts."""
        rows = self._store.query("select * from alerts where ended_at is null")
        for row in rows:
            self._announce(Change("open", row["device_id"], row["rule"], row["started_at"],
                                  None, row["last_value"], row["peak_value"],
                                  row["threshold"] or 0.0, row["message"]))
        return len(rows)

    def _announce(self, change: Change) -> None:
        topic = alert_topic(self._prefix, change.device_id, change.rule)
        if change.action == "close":
            self._publish(topic, b"")
        else:
            self._publish(topic, orjson.dumps(alert_payload(change, self._by_name.get(
                change.rule))))


def run_alerts_loop(store: HousekeepingStore, watcher: AlertWatcher, retention: Retention,
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
        due = time.monotonic() + every_s
        drained = time.monotonic()
        # Between rounds, fold in what the writer fed (if it feeds this watcher): every
        # DRAIN_S, or sooner when many readings wait (a busy hub).
        while not stop.wait(max(0.0, min(DRAIN_POLL_S, due - time.monotonic()))):
            now_s = time.monotonic()
            if now_s >= due:
                break
            if now_s - drained >= DRAIN_S or watcher.waiting() >= DRAIN_ROWS:
                watcher.drain()
                drained = now_s
