"""Gather validated messages into batches, flushed by size or age (pure: time comes in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from hub.ingest.validate import Accepted, Rejected, Result
from hub.processes import COLUMNS as PROCESS_COLUMNS
from hub.processes import SECTION, process_row
from shared.schema import OPTIONAL_PATHS, Column, compile_row_getter, metrics_columns

# Lists of records that nothing before the database reads (the live scorer reads the
# temperatures): their JSON is kept instead of dicts while the reading waits for its commit,
# ~1.2 KB less a reading and fewer objects for the garbage collector. hub/store.py writes
# the bytes as they are into the jsonb columns. msgspec, not orjson: orjson's bytes keep
# the 4 KB buffer they were written in.
_ENCODE = msgspec.json.Encoder().encode
_COLUMN_NAMES = [c.name for c in metrics_columns()]
_JSON_EARLY = [i for i, name in enumerate(_COLUMN_NAMES)
               if name in ("disk_partitions", "disk_per_disk", "network_per_interface")]
_DEVICE_ID, _RECEIVED_AT = _COLUMN_NAMES.index("device_id"), _COLUMN_NAMES.index("received_at")


def _json(value: Any) -> bytes | None:
    return None if value is None else _ENCODE(value)


def _known(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


def _read_struct(column: Column) -> str:
    """A column of the message as the hub decodes it (validate.READING, a struct per
    section): its lists of records kept as JSON bytes (see _JSON_EARLY), the others as
    lists of dicts (the live scorer reads the temperatures)."""
    if column.name == "agent_ts":
        return "agent_ts"  # hub/clock.py: set where the hub moved the reading
    if column.path in OPTIONAL_PATHS:
        return f"_known(m.{column.path[0]})"
    value = "m." + ".".join(column.path)
    if _COLUMN_NAMES.index(column.name) in _JSON_EARLY:
        return f"_json({value})"
    if column.pg_type == "jsonb":
        return f"_builtins({value})"
    return value


# metrics_row for a decoded message; the struct is read as it is, not turned into dicts
# first (~6 µs a message, an eighth of the hub's CPU).
_reading_row = compile_row_getter(_read_struct, {"_json": _json, "_known": _known,
                                                 "_builtins": msgspec.to_builtins})


def row_as_json(row: tuple[Any, ...]) -> bytes:
    """The JSON of a row as the hub built it: its columns by name, processes under theirs."""
    named: dict[str, Any] = dict(zip(_COLUMN_NAMES, row, strict=False))
    for i in _JSON_EARLY:
        if row[i] is not None:
            named[_COLUMN_NAMES[i]] = msgspec.Raw(row[i])
    if len(row) > len(_COLUMN_NAMES):  # the processes row rides at the end
        named[SECTION] = dict(zip(PROCESS_COLUMNS, row[-1], strict=True))
    return _ENCODE(named)


class Ack(NamedTuple):
    """What acknowledging one message takes, once the batch holding it is committed."""

    mid: int  # the packet identifier the broker gave it
    qos: int
    generation: int  # which connection delivered it: acks of a replaced one are not sent


@dataclass(frozen=True)
class Inbound:
    """A message as taken off the broker; ``ack`` is what to acknowledge once it is stored."""

    topic: str
    payload: bytes
    received_at: datetime
    ack: Ack
    # How long the agent held the reading before sending it (MQTT v5 user property, set
    # for readings stamped by an unsynchronised clock: hub/clock.py), else None.
    age_s: float | None = None


@dataclass(frozen=True)
class QuarantineRecord:
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    payload: bytes


def refused_record(row: tuple[Any, ...], topic: str, reason: str) -> QuarantineRecord:
    """The quarantine record of a row the database refused: the row in JSON (row_as_json).

    Not the message it came from: a batch does not keep messages until the commit (a
    payload, ~2.6 KB a reading, would be held for every reading waiting to be stored, for
    the rare row a database rule refuses).
    """
    return QuarantineRecord(row[_RECEIVED_AT], topic, row[_DEVICE_ID], reason, row_as_json(row))


@dataclass
class SessionEvents:
    first_ts: datetime
    last_ts: datetime
    first_received_at: datetime
    last_received_at: datetime

    def add(self, ts: datetime, received_at: datetime) -> None:
        self.first_ts, self.last_ts = min(self.first_ts, ts), max(self.last_ts, ts)
        self.last_received_at = max(self.last_received_at, received_at)


@dataclass
class DeviceEvents:
    """What a batch says about devices, reduced to the last word per device."""

    seen: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)  # ts, received
    status: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    meta: dict[str, tuple[Any, datetime]] = field(default_factory=dict)
    # Per (device, session): span of the readings' ts and of their receive times.
    sessions: dict[tuple[str, str], SessionEvents] = field(default_factory=dict)
    # Per (device, session): the hostname its meta names.
    session_hosts: dict[tuple[str, str], str] = field(default_factory=dict)
    # The device's report of its remote settings (None: cleared), hub/remote.py.
    config: dict[str, tuple[Any, datetime]] = field(default_factory=dict)


@dataclass
class Batch:
    opened_at: float  # monotonic seconds
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    row_topics: list[str] = field(default_factory=list)  # parallel to rows
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    devices: DeviceEvents = field(default_factory=DeviceEvents)
    acks: list[Ack] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.acks)

    def add(self, message: Inbound, result: Result) -> None:
        """Put one message and its validation result into the batch."""
        self.acks.append(message.ack)
        if isinstance(result, Rejected):
            self.quarantine.append(QuarantineRecord(message.received_at, message.topic,
                                                    result.device_id, result.reason,
                                                    message.payload))
            return
        assert isinstance(result, Accepted)
        device, received = result.device_id, message.received_at
        if result.problem is not None:
            self.quarantine.append(QuarantineRecord(received, message.topic, device,
                                                    result.problem, message.payload))
        if result.kind == "metrics":
            value = result.value
            row = _reading_row(value, received, result.agent_ts)
            if value.processes is not msgspec.UNSET:
                # The processes row rides at the end of its reading's row, so the two are
                # stored, split off or quarantined together (hub/store.py, hub/write.py).
                row = (*row, process_row(device, value.ts, value.session_id, value.seq,
                                         received, msgspec.to_builtins(value.processes)))
            self.rows.append(row)
            self.row_topics.append(message.topic)
            ts = value.ts
            seen = self.devices.seen.get(device)
            if seen is None or ts > seen[0]:
                self.devices.seen[device] = (ts, received)
            key = (device, value.session_id)
            span = self.devices.sessions.get(key)
            if span is None:
                self.devices.sessions[key] = SessionEvents(ts, ts, received, received)
            else:
                span.add(ts, received)
        elif result.kind == "status":
            self.devices.status[device] = (result.value, received)
        elif result.kind == "config":
            self.devices.config[device] = (result.value, received)
        else:
            self.devices.meta[device] = (result.value, received)
            self.devices.session_hosts[(device, result.value["session_id"])] = \
                result.value["hostname"]


@dataclass
class Batcher:
    """Hold the open batch; say when it is due: ``max_rows`` reached, ``max_age_s`` old,
    or, when the writer has nothing to do, ``early_rows`` reached.

    So under load a batch waits for a busy writer, growing meanwhile, rather than for the
    clock: the sooner the writer is free, the sooner a reading is stored. A hub with few
    readings still commits every ``max_age_s`` at most (each commit is a write to the
    disk, an SD card on a Pi), and one with many at most once per ``early_rows``.
    """

    max_rows: int
    max_age_s: float
    early_rows: int | None = None
    _batch: Batch | None = None

    def add(self, message: Inbound, result: Result, now: float) -> None:
        if self._batch is None:
            self._batch = Batch(opened_at=now)
        self._batch.add(message, result)

    def due(self, now: float, writer_idle: bool = False) -> bool:
        batch = self._batch
        if batch is None:
            return False
        rows = self.early_rows if writer_idle and self.early_rows is not None else \
            self.max_rows
        return len(batch) >= min(rows, self.max_rows) or \
            now - batch.opened_at >= self.max_age_s

    def seconds_until_due(self, now: float) -> float | None:
        """Seconds until the open batch is due by age; None when there is no batch."""
        if self._batch is None:
            return None
        return max(0.0, self._batch.opened_at + self.max_age_s - now)

    def take(self) -> Batch | None:
        batch, self._batch = self._batch, None
        return batch
