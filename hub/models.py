"""Trained detectors in the database: train a device from its history, keep versions, load
the newest; and the hub's throttled retraining thread.

The edge around :mod:`hub.detect.train` (pure): reads a device's history of both tiers
through :func:`hub.cold.history_source` (the same reader as series and export), trains, and
stores the model as a new version in ``detector_models`` (migration 0007) and the outcome in
``detector_training`` — trained, or too little history, which the API shows. Runs through any
object with ``query``/``execute``/``stream`` (a :class:`~hub.store.Store`), so it stays free
of the driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TextIO

import numpy as np
import orjson

from hub import cold
from hub.detect.features import SIGNAL_SQL, SIGNALS, SOURCE_COLUMNS
from hub.detect.model import Floats
from hub.detect.train import Detector, TooLittleHistory, load_detector, params_of, train
from shared.errors import StoreError

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3  # versions kept per device: the newest scores, the others explain changes

_HISTORY = ("select ts, " + ", ".join(SIGNAL_SQL) + " from "
            + cold.history_source(["ts", *SOURCE_COLUMNS]) + " order by ts")
_LATEST = (
    "select distinct on (device_id) device_id, version, kind, signals, trained_at, "
    "history_start, history_end, history_rows, state from detector_models "
    "{where} order by device_id, version desc")
_VERSIONS = "select device_id, max(version) as version from detector_models group by 1"
_SAVE = (
    "insert into detector_models (device_id, version, kind, params, signals, trained_at, "
    "history_start, history_end, history_rows, train_cpu_s, state) select %(device_id)s, "
    "coalesce(max(version), 0) + 1, %(kind)s, %(params)s::jsonb, %(signals)s, %(trained_at)s, "
    "%(start)s, %(end)s, %(rows)s, %(cpu_s)s, %(state)s from detector_models "
    "where device_id = %(device_id)s returning version")
_PRUNE = ("delete from detector_models where device_id = %(device_id)s and version <= "
          "%(version)s - %(keep)s")
_RECORD = (
    "insert into detector_training (device_id, outcome, message, history_rows, attempted_at) "
    "values (%(device_id)s, %(outcome)s, %(message)s, %(rows)s, %(at)s) "
    "on conflict (device_id) do update set outcome = excluded.outcome, "
    "message = excluded.message, history_rows = excluded.history_rows, "
    "attempted_at = excluded.attempted_at")
# Devices to (re)train: no model over today's signals (an older hub's models are not used),
# or one older than the retraining age; a device whose last attempt found too little history
# waits ``retry`` before the next.
_DUE = (
    "select d.device_id from devices d "
    "left join (select device_id, max(trained_at) as trained_at from detector_models "
    "where signals = %(signals)s::text[] group by 1) m on m.device_id = d.device_id "
    "left join detector_training t on t.device_id = d.device_id "
    "where d.last_seen is not null "
    "and (m.trained_at is null or m.trained_at < %(now)s - %(age)s) "
    "and (t.outcome is null or t.outcome = 'trained' "
    "or t.attempted_at < %(now)s - %(retry)s) "
    "order by m.trained_at nulls first, d.device_id")


class ModelDb(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...
    def execute(self, statements: Sequence[tuple[str, Any]]) -> None: ...
    def stream(self, text: str, params: Any = None,
               chunk_rows: int = 5000) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]: ...


@dataclass(frozen=True)
class History:
    signals: Floats  # T x len(SIGNALS), oldest first
    start: datetime | None
    end: datetime | None


def read_history(db: ModelDb, device_id: str, start: datetime, end: datetime) -> History:
    """Read a device's signals in [start, end) from both tiers, chunk by chunk."""
    parts: list[Floats] = []
    first: datetime | None = None
    last: datetime | None = None
    for _, rows in db.stream(_HISTORY, {"device": device_id, "start": start, "end": end}):
        if first is None:
            first = rows[0][0]
        last = rows[-1][0]
        parts.append(np.array([row[1:] for row in rows], dtype=np.float64))  # None: NaN
    signals = np.concatenate(parts) if parts else np.zeros((0, len(SIGNALS)))
    return History(signals, first, last)


@dataclass(frozen=True)
class StoredModel:
    device_id: str
    version: int
    kind: str
    trained_at: datetime
    history_start: datetime
    history_end: datetime
    history_rows: int
    detector: Detector


def _stored(row: dict[str, Any]) -> StoredModel | None:
    if tuple(row["signals"]) != SIGNALS:
        log.warning("Not using model v%d of %s: trained on other signals (%s); it is "
                    "retrained at the next round.", row["version"], row["device_id"],
                    ", ".join(row["signals"]))
        return None
    try:
        detector = load_detector(row["kind"], bytes(row["state"]))
    except ValueError as exc:
        log.warning("Not using model v%d of %s: %s.", row["version"], row["device_id"], exc)
        return None
    return StoredModel(row["device_id"], row["version"], row["kind"], row["trained_at"],
                       row["history_start"], row["history_end"], row["history_rows"], detector)


def latest_models(db: ModelDb, device_ids: Sequence[str] | None = None) -> list[StoredModel]:
    """The newest usable model of every device (or of ``device_ids``)."""
    if device_ids is None:
        rows = db.query(_LATEST.format(where=""))
    else:
        rows = db.query(_LATEST.format(where="where device_id = any(%(ids)s)"),
                        {"ids": list(device_ids)})
    return [m for m in (_stored(row) for row in rows) if m is not None]


def model_versions(db: ModelDb) -> dict[str, int]:
    """The newest version number of every device's model."""
    return {row["device_id"]: int(row["version"]) for row in db.query(_VERSIONS)}


@dataclass(frozen=True)
class TrainResult:
    device_id: str
    rows: int
    cpu_s: float
    model: StoredModel | None  # None: too little history
    message: str

    @property
    def days(self) -> float:
        m = self.model
        return 0.0 if m is None else (m.history_end - m.history_start).total_seconds() / 86400


def train_device(db: ModelDb, device_id: str, *, kind: str, window_h: float,
                 min_readings: int, now: datetime) -> TrainResult:
    """Train ``device_id`` on its newest ``window_h`` of history; store the model or why not.

    ``cpu_s`` is this process's CPU for reading and fitting (PostgreSQL's share is not in it).
    """
    began = time.thread_time()
    history = read_history(db, device_id, now - timedelta(hours=window_h), now)
    outcome = train(history.signals, kind, min_readings)
    rows = len(history.signals)
    if isinstance(outcome, TooLittleHistory):
        cpu_s = time.thread_time() - began
        db.execute([(_RECORD, {"device_id": device_id, "outcome": "too_little_history",
                               "message": outcome.message, "rows": outcome.rows, "at": now})])
        return TrainResult(device_id, outcome.rows, cpu_s, None, outcome.message)
    assert history.start is not None and history.end is not None
    state = outcome.to_bytes()
    cpu_s = time.thread_time() - began
    params = {"device_id": device_id, "kind": outcome.KIND, "signals": list(SIGNALS),
              "params": orjson.dumps(params_of(outcome)).decode(), "trained_at": now,
              "start": history.start, "end": history.end, "rows": rows, "cpu_s": cpu_s,
              "state": state}
    version = int(db.query(_SAVE, params)[0]["version"])
    message = (f"trained v{version} ({outcome.KIND}) on {rows:,} readings from "
               f"{history.start.isoformat(timespec='seconds')} to "
               f"{history.end.isoformat(timespec='seconds')}")
    db.execute([(_PRUNE, {"device_id": device_id, "version": version, "keep": KEEP_VERSIONS}),
                (_RECORD, {"device_id": device_id, "outcome": "trained", "message": message,
                           "rows": rows, "at": now})])
    model = StoredModel(device_id, version, outcome.KIND, now, history.start, history.end,
                        rows, outcome)
    return TrainResult(device_id, rows, cpu_s, model, message)


def devices_due(db: ModelDb, now: datetime, retrain_h: float, retry_s: float) -> list[str]:
    """Devices without a usable model, or with one older than ``retrain_h``, oldest first."""
    return [row["device_id"] for row in db.query(_DUE, {
        "now": now, "age": timedelta(hours=retrain_h), "retry": timedelta(seconds=retry_s),
        "signals": list(SIGNALS)})]


def training_states(db: ModelDb) -> dict[str, dict[str, Any]]:
    """Each device's last training outcome and its newest model, for the API."""
    rows = db.query(
        "select t.device_id, t.outcome, t.message, t.history_rows, t.attempted_at, "
        "m.version, m.kind, m.trained_at from detector_training t left join lateral "
        "(select version, kind, trained_at from detector_models where device_id = "
        "t.device_id order by version desc limit 1) m on true")
    return {row["device_id"]: row for row in rows}


Install = Callable[[StoredModel], None]


class Retrainer:
    """Retrain devices whose model is due, at most ``duty`` of the time; pick up models
    trained by another process (``fleetpulse-hub train``) every ``poll_s``.
    """

    def __init__(self, db: ModelDb, install: Install, *, kind: str, window_h: float,
                 min_readings: int, retrain_h: float, duty: float,
                 clock: Callable[[], datetime], poll_s: float = 10.0,
                 retry_s: float = 3600.0) -> None:
        self.db, self.install, self.clock = db, install, clock
        self.kind, self.window_h, self.min_readings = kind, window_h, min_readings
        self.retrain_h, self.poll_s, self.retry_s = retrain_h, poll_s, retry_s
        self.duty = min(1.0, max(0.001, duty))
        self.versions: dict[str, int] = {}
        self.trained = 0
        self.loaded = False

    def load_all(self) -> int:
        """Install the newest model of every device (at the hub's start); return how many."""
        models = latest_models(self.db)
        for model in models:
            self.install(model)
            self.versions[model.device_id] = model.version
        self.loaded = True
        log.info("Anomaly models loaded for %d devices.", len(models))
        return len(models)

    def pick_up(self) -> int:
        """Install models stored since the last look (trained elsewhere); return how many."""
        newer = [d for d, v in model_versions(self.db).items() if v > self.versions.get(d, 0)]
        if not newer:
            return 0
        models = latest_models(self.db, newer)
        for model in models:
            self.install(model)
            self.versions[model.device_id] = model.version
            log.info("Anomaly model v%d of %s loaded.", model.version, model.device_id)
        return len(models)

    def round(self, stop: threading.Event | None = None) -> int:
        """Train every device that is due (throttled when ``stop`` is given); return how many."""
        if self.retrain_h <= 0:
            return 0
        done = 0
        for device_id in devices_due(self.db, self.clock(), self.retrain_h, self.retry_s):
            if stop is not None and stop.is_set():
                break
            began = time.monotonic()
            try:
                result = train_device(self.db, device_id, kind=self.kind,
                                      window_h=self.window_h, min_readings=self.min_readings,
                                      now=self.clock())
            except RuntimeError as exc:  # e.g. the autoencoder without PyTorch installed
                log.error("Cannot train anomaly models: %s. Retraining is off until the "
                          "hub restarts; stored models still score.", exc)
                self.retrain_h = 0
                return done
            if result.model is not None:
                self.install(result.model)
                self.versions[device_id] = result.model.version
                self.trained += 1
                done += 1
            log.info("Anomaly model of %s: %s (%.2f s CPU).", device_id, result.message,
                     result.cpu_s)
            if stop is not None:
                stop.wait((time.monotonic() - began) * (1 / self.duty - 1))
        return done

    def run(self, stop: threading.Event) -> None:
        """Load at start, then retrain and pick up new models until ``stop`` is set."""
        failing = False
        while not stop.is_set():
            try:
                if not self.loaded:  # the hub's start could not (database away)
                    self.load_all()
                self.pick_up()
                self.round(stop)
                if failing:
                    log.warning("Anomaly model training works again.")
                failing = False
            except StoreError as exc:
                if not failing:
                    log.error("Anomaly model training failed: %s. Retrying every %g s.",
                              exc, self.poll_s)
                failing = True
            stop.wait(self.poll_s)


def run_train(db: ModelDb, *, device_id: str | None, kind: str, window_h: float,
              min_readings: int, now: datetime, out: TextIO) -> int:
    """``fleetpulse-hub train``: train one device or all, one line per device on ``out``.

    Return 1 when the device named is unknown or had too little history, else 0.
    """
    known = [row["device_id"] for row in db.query(
        "select device_id from devices order by device_id")]
    if device_id is not None:
        if device_id not in known:
            print(f"Cannot train: device {device_id!r} is not known.", file=out)
            return 1
        known = [device_id]
    if not known:
        print("No devices to train.", file=out)
        return 0
    missing = 0
    cpu = days = 0.0
    for n, device in enumerate(known, 1):
        result = train_device(db, device, kind=kind, window_h=window_h,
                              min_readings=min_readings, now=now)
        cpu += result.cpu_s
        days += result.days
        missing += result.model is None
        per_day = f", {result.cpu_s / result.days:.2f} s per device-day" if result.days else ""
        print(f"[{n}/{len(known)}] {device}: {result.message} ({result.cpu_s:.2f} s CPU"
              f"{per_day})", file=out, flush=True)
    if len(known) > 1:
        print(f"Trained {len(known) - missing} of {len(known)} devices"
              + (f" ({cpu / days:.2f} s CPU per device-day)" if days else "") + ".", file=out)
    return 1 if missing and device_id is not None else 0
