"""PostgreSQL: the only module that imports psycopg.

Writes a batch in one transaction — readings by binary COPY straight into ``metrics``, or,
when the batch holds a redelivery, by COPY into a temporary table and ``INSERT … ON
CONFLICT DO NOTHING`` (so a redelivered message is a no-op); rollups, quarantine records,
device status and meta — and translates psycopg's errors once, by SQLSTATE
class, into :class:`~shared.errors.TransientStoreError` (retry) or
:class:`~shared.errors.PermanentStoreError` (split the batch, quarantine the bad row).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import orjson
import psycopg
from psycopg import postgres, pq, sql
from psycopg.adapt import Dumper
from psycopg.types.json import set_json_dumps

from hub import cold, processes
from hub.ingest.batch import DeviceEvents, QuarantineRecord
from hub.read import FleetReader
from hub.rollup import (
    LOCK_SQL,
    MARK_SQL,
    flush_pending_sql,
    insert_with_rollups_sql,
    subtract_rollups_sql,
)
from shared.errors import PermanentStoreError, StoreError, TransientStoreError
from shared.schema import metrics_columns

log = logging.getLogger(__name__)

COLUMNS = metrics_columns()
_COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(c.name) for c in COLUMNS)
_COPY_TYPES = [c.pg_type.replace("double precision", "float8") for c in COLUMNS]
# SQLSTATE classes (its first two characters), named as in PostgreSQL's Appendix A,
# "PostgreSQL Error Codes". Transient ones are retried with the batch as it is:
_TRANSIENT_CLASSES = (
    "08",  # Connection Exception: the connection failed or broke
    "40",  # Transaction Rollback: serialization failure, deadlock detected
    "53",  # Insufficient Resources: disk full, out of memory, too many connections
    "57",  # Operator Intervention: admin or crash shutdown, "the database system is starting up"
    "58",  # System Error (external to PostgreSQL): an I/O error
)
# Every other class is permanent: retrying the same statement fails the same way. Those seen:
#   22 Data Exception (a value out of range, text a type rejects): the row is bad, so the
#      batch is split and that row quarantined (hub/ingest/write.py);
#   23 Integrity Constraint Violation (not null, check): likewise the row;
#   28 Invalid Authorization Specification (wrong role or password) and
#   3D Invalid Catalog Name (no such database): fix the URL (see _REFUSED_LOGIN below);
#   42 Syntax Error or Access Rule Violation (permission denied, undefined table when the
#      migrations have not run): fix the grants or run ``fleetpulse-hub migrate``.

_INSERT_WITH_ROLLUPS = insert_with_rollups_sql("metrics_in").encode()  # constant SQL of ours
_FLUSH_PENDING = flush_pending_sql().encode()  # constant SQL of ours
_FLUSH_ATTEMPTS = 5  # a flush meeting a concurrent change (serialization failure) again
_NAMES = [c.name for c in COLUMNS]
_TS = _NAMES.index("ts")
_DEVICE = _NAMES.index("device_id")
# Where the cold tier begins to matter: a reading before the end of the newest cold hour
# may be a redelivery of one already compacted (hub/cold.py), which only the duplicate-safe
# path looks for. metrics_cold_hour indexes ``hour``, so this is one index probe.
_COLD_END = b"select max(hour) + interval '1 hour' from metrics_cold"


def _json(value: Any) -> bytes:
    """A jsonb value's text: orjson (~10x faster than json.dumps), or the bytes as they are
    when the value is already JSON (hub/ingest/batch.py encodes some lists early)."""
    return value if isinstance(value, bytes) else orjson.dumps(value)


set_json_dumps(_json)


# --- arrays in PostgreSQL's binary format, for the fast path's rollup statement -------------
# psycopg dumps a list element by element in Python (~40 µs a row for the 14 arrays the
# rollups need, measured with bench/write_rollups.py); struct builds the same bytes in ~2.
class _TextArray(bytes):
    """A text[] already in PostgreSQL's binary array format."""


class _Float8Array(bytes):
    """A double precision[] already in PostgreSQL's binary array format."""


class _TimestamptzArray(bytes):
    """A timestamptz[] already in PostgreSQL's binary array format."""


class _ArrayDumper(Dumper):
    """Send the bytes as they are. No oid: the statement's cast (``%b::float8[]``) gives
    the parameter its type, and the dumpers of real lists (COPY's float8[]) stay psycopg's."""

    format = pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


for _cls in (_TextArray, _Float8Array, _TimestamptzArray):
    psycopg.adapters.register_dumper(_cls, _ArrayDumper)

_ARRAY_HEADER = struct.Struct("!iiIii")  # dimensions, has nulls, element oid, length, lower bound
_NULL = struct.pack("!i", -1)
_FLOAT8 = struct.Struct("!id")  # length 8, value
_INT8 = struct.Struct("!iq")  # length 8, µs since 2000-01-01 UTC
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _header(values: Sequence[Any], type_name: str) -> bytes:
    has_null = any(v is None for v in values)
    return _ARRAY_HEADER.pack(1, has_null, postgres.types[type_name].oid, len(values), 1)


def text_array(values: Sequence[str]) -> bytes:
    """Encode a non-empty list of strings as a binary text[]."""
    parts = [_header(values, "text")]
    for v in values:
        data = v.encode()
        parts += (struct.pack("!i", len(data)), data)
    return _TextArray(b"".join(parts))


def float8_array(values: Sequence[float | None]) -> bytes:
    """Encode a non-empty list of floats (None for null) as a binary double precision[]."""
    pack = _FLOAT8.pack
    return _Float8Array(_header(values, "float8") + b"".join(
        [_NULL if v is None else pack(8, v) for v in values]))


def timestamptz_array(values: Sequence[datetime]) -> bytes:
    """Encode a non-empty list of aware datetimes as a binary timestamptz[]."""
    pack = _INT8.pack
    return _TimestamptzArray(_header(values, "timestamptz") + b"".join(
        [pack(8, (v - _PG_EPOCH) // _MICROSECOND) for v in values]))


class _Float8ListDumper(Dumper):
    """COPY's dumper of double precision[] (per-core CPU): a list of floats, 1-D, in one
    ``struct`` call instead of psycopg's element by element (~5 % of the hub's CPU)."""

    format = pq.Format.BINARY
    oid = postgres.types["float8"].array_oid

    def dump(self, obj: Any) -> bytes:
        values: list[float | None] = obj
        count = len(values)
        if not count:
            return _EMPTY_FLOAT8_ARRAY
        if None in values:
            return bytes(float8_array(values))
        packer = _FLOAT8_ROWS.get(count)
        if packer is None:
            packer = _FLOAT8_ROWS[count] = struct.Struct("!iiIii" + "id" * count)
        args: list[float | None] = [1, 0, _FLOAT8_OID, count, 1]
        for v in values:
            args += (8, v)
        return packer.pack(*args)


_FLOAT8_OID = postgres.types["float8"].oid
_EMPTY_FLOAT8_ARRAY = struct.pack("!iiI", 0, 0, _FLOAT8_OID)
_FLOAT8_ROWS: dict[int, struct.Struct] = {}



def classify(exc: Exception) -> StoreError:
    """Translate a psycopg error into a transient or permanent StoreError."""
    if isinstance(exc, StoreError):
        return exc
    state = getattr(exc, "sqlstate", None) or ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.OperationalError) and not state:
        refused = refused_login(str(exc))
        if refused is not None:
            # "connection failed: connection to server at …, port … failed: FATAL:  why"
            where, _, why = message.rpartition("FATAL:")
            server = where.removeprefix("connection failed: ").removesuffix(" failed: ")
            return PermanentStoreError(f"{server.strip() or 'the server'} refused the login: "
                                       f"{why.strip() or message}", refused)
        return TransientStoreError(f"database unreachable: {message}")
    if state[:2] in _TRANSIENT_CLASSES:
        return TransientStoreError(f"{message} (SQLSTATE {state})", state)
    if isinstance(exc, psycopg.InterfaceError):
        return TransientStoreError(f"database connection lost: {message}")
    return PermanentStoreError(f"{message} (SQLSTATE {state or 'none'})", state or None)


# libpq reports a refused login as text only (psycopg gives no SQLSTATE for a failed
# connection): these are the server's FATAL messages (English) and their SQLSTATEs.
_REFUSED_LOGIN = (
    ("password authentication failed", "28P01"),
    ("authentication failed for user", "28000"),
    ("no pg_hba.conf entry", "28000"),
    ("is not permitted to log in", "28000"),
    ("no password supplied", "28P01"),
    ("role \"", "28000"),  # role "x" does not exist
    ("database \"", "3D000"),  # database "x" does not exist
    ("permission denied for database", "42501"),
    ("tenant or user not found", "28000"),  # Supabase's pooler: unknown project or user
)


def refused_login(message: str) -> str | None:
    """Return the SQLSTATE of a login the server refused for good (wrong role, password,
    database, pg_hba rule) from libpq's connection error text, or None."""
    lowered = message.lower()
    for text, state in _REFUSED_LOGIN:
        if text in lowered and (not text.endswith('"') or "does not exist" in lowered):
            return state
    return None


@dataclass(frozen=True)
class Compacted:
    """One device-hour moved to the cold tier."""

    device_id: str
    hour: datetime
    moved: int  # hot rows deleted
    readings: int  # readings the block holds now
    duplicates: int  # hot rows already in the block (a redelivery), dropped


@dataclass(frozen=True)
class WriteResult:
    inserted: int  # new metrics rows (redelivered ones are not counted)
    quarantined: int
    # The readings went through the duplicate-safe path (the batch held a redelivery, or a
    # reading the cold tier may hold) rather than the COPY fast path.
    duplicate_safe: bool = False


def _partition_name(day: date) -> str:
    return f"metrics_{day:%Y%m%d}"


def _load_migrations() -> list[tuple[int, str, str]]:
    """Return (version, name, sql) of every file in hub/migrations, oldest first."""
    found = []
    for entry in resources.files("hub.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


Minute = tuple[str, int]  # a device id and a minute (Unix seconds // 60)


class PendingMarks:
    """The device-minutes one hub has marked pending and not yet flushed, shared by its
    writer's connection and its flusher's, which run side by side.

    A write inserts a mark only for the minutes not known to be marked. So a flush that
    deletes a mark must not miss a write that counted on it: a write committed after the
    flush's snapshot, whose readings the flush did not see. Such a write is either the one
    under way when the flush began, or one begun since. The flush therefore notes their
    minutes (:meth:`flush_begins`), and before it commits marks again those of its deleted
    minutes that they wrote (:meth:`flush_settles`), with the writes held back meanwhile, so
    the writes that follow see the marks it leaves. Only an optimisation of the number of
    marks inserted: cleared whenever in doubt, and a mark too many only recomputes a minute
    twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marked: set[Minute] = set()
        self._writing: set[Minute] = set()  # the minutes of the write under way
        self._unsure: set[Minute] | None = None  # while a flush runs: minutes written since

    def write_begins(self, minutes: set[Minute]) -> set[Minute]:
        """Note the minutes a write is about to store; return those it must mark."""
        with self._lock:
            self._writing = minutes
            if self._unsure is not None:
                self._unsure |= minutes
            return minutes - self._marked

    def write_ends(self, marked: set[Minute] | None) -> None:
        """The write committed the marks ``marked``; None: it failed."""
        with self._lock:
            if marked:
                self._marked |= marked
            self._writing = set()

    def flush_begins(self) -> None:
        """Call before the flush's transaction takes its snapshot."""
        with self._lock:
            self._unsure = set(self._writing)

    @contextmanager
    def flush_settles(self, deleted: set[Minute]) -> Iterator[set[Minute]]:
        """Hold the writes back, and yield the deleted minutes that writes the flush may not
        have seen stored readings into: mark them again and commit inside the block."""
        with self._lock:
            again = deleted & (self._unsure or set())
            self._unsure = None
            try:
                yield again
            except BaseException:
                self._marked.clear()  # in doubt whether the flush committed
                raise
            self._marked -= deleted - again

    def flush_failed(self) -> None:
        with self._lock:
            self._marked.clear()  # in doubt: the next writes mark again what they store
            self._unsure = None


class Store:
    """One connection to PostgreSQL, used by one thread."""

    def __init__(self, url: str, *, quarantine_payload_bytes: int = 4096,
                 application_name: str = "fleetpulse-hub",
                 rollup_owner: str | None = None, marks: PendingMarks | None = None) -> None:
        """``rollup_owner``: None, every write brings the rollups up to date in its own
        transaction; a name (the hub's MQTT client id, unique among the hubs on this
        database), writes mark their minutes as that owner's and :meth:`flush_rollups`
        brings them up to date (see hub/rollup.py, "pending minutes"), on this connection
        or on a :meth:`sibling`'s, beside the writes."""
        self._url = url
        self._application_name = application_name
        self._quarantine_payload_bytes = quarantine_payload_bytes
        self._conn: psycopg.Connection[Any] | None = None
        self._partitions: set[date] = set()
        self._deferred = rollup_owner is not None
        # Marks of an immediate flush never outlive their transaction: no client id is "".
        self._owner = rollup_owner or ""
        self._marks = marks or PendingMarks()

    def sibling(self, application_name: str) -> Store:
        """A store on a connection of its own, for another thread, with this one's owner
        and marks: one flushes the rollups of the minutes the other writes."""
        return Store(self._url, quarantine_payload_bytes=self._quarantine_payload_bytes,
                     application_name=application_name,
                     rollup_owner=self._owner if self._deferred else None, marks=self._marks)

    @property
    def url(self) -> str:
        return self._url

    @property
    def defers_rollups(self) -> bool:
        """Whether writes leave the rollups to :meth:`flush_rollups`."""
        return self._deferred

    # --- connection -----------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()  # a broken one: release it before making a new one
                self._conn = None
            try:
                # prepare_threshold=None: no server-side prepared statements, so the same
                # code works through Supabase's transaction pooler (port 6543).
                self._conn = psycopg.connect(self._url, autocommit=False, prepare_threshold=None,
                                             application_name=self._application_name,
                                             connect_timeout=5)
                # By oid only: COPY's set_types() looks it up; lists in queries keep psycopg's.
                self._conn.adapters.register_dumper(None, _Float8ListDumper)
            except psycopg.Error as exc:
                raise classify(exc) from exc  # keep psycopg's error as the cause
            self._partitions = set()
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except psycopg.Error as exc:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            raise classify(exc) from exc  # keep psycopg's error as the cause
        except BaseException:
            # Our own refusal (a cold block that does not read back) or an interrupt: the
            # transaction must not stay open, or the next one on this connection would
            # commit its half-done work.
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            raise

    def check(self) -> None:
        """Run a trivial query; raise StoreError when the database cannot be used."""
        with self._transaction() as cur:
            cur.execute("select 1")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- schema ---------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; return their names. Safe to run twice.

        A migration is applied when its version is in ``schema_migrations``. Each migration
        records itself there, so the versions the Supabase CLI applied from
        ``supabase/migrations/`` (the same files) count as applied too.
        """
        applied_now = []
        with self._transaction() as cur:
            # One hub at a time: a second hub waits here, then finds nothing to do.
            # Transaction-scoped, so it also holds through Supabase's transaction pooler.
            cur.execute("select pg_advisory_xact_lock(hashtext('fleetpulse.migrate'))")
            # As in 0001_initial.sql, which creates it when the CLI applies the migrations.
            cur.execute("create table if not exists schema_migrations ("
                        "version integer primary key, name text not null, "
                        "applied_at timestamptz not null default now())")
            cur.execute("alter table schema_migrations enable row level security")
            cur.execute("select version from schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            for version, name, text in _load_migrations():
                if version in done:
                    continue
                cur.execute(text.encode())  # our own migration files
                # The file has recorded itself already; this covers one that would not.
                cur.execute("insert into schema_migrations (version, name) values (%s, %s) "
                            "on conflict (version) do nothing", (version, name))
                applied_now.append(name)
            # The cold table's array columns and its readers follow the schema of this
            # code (a column added by a later migration gets its array, see hub/cold.py).
            for statement in cold.ensure_sql(cold.layout()):
                cur.execute(statement.encode())  # our own SQL, derived from the schema
        return applied_now

    def pending_migrations(self) -> list[str]:
        """Return the names of the migrations not applied yet (every one on a database the
        hub never used); changes nothing."""
        with self._transaction() as cur:
            cur.execute("select to_regclass('schema_migrations') is not null")
            row = cur.fetchone()
            done: set[int] = set()
            if row is not None and row[0]:
                cur.execute("select version from schema_migrations")
                done = {r[0] for r in cur.fetchall()}
        return [name for version, name, _ in _load_migrations() if version not in done]

    def ensure_partitions(self, days: set[date], lock_timeout_s: float | None = None) -> None:
        """Create the daily partitions of ``metrics`` that ``days`` need (with RLS on).

        Args:
            lock_timeout_s: give up (StoreError) rather than wait longer for the parent's
                lock; housekeeping uses it so that it never queues the writer behind a
                long reader such as an export.
        """
        missing = days - self._partitions
        if not missing:
            return
        with self._transaction() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('fleetpulse.partitions'))")
            existing = set(self._partition_names(cur))  # the catalog: no lock on metrics
            known = {d for d in missing if _partition_name(d) in existing}
            self._partitions |= known
            missing -= known
            if not missing:
                return
            self._set_lock_timeout(cur, lock_timeout_s)
            # Take the parent's lock before creating the child: otherwise an INSERT that
            # holds the parent and then waits for the new child deadlocks with us.
            cur.execute("lock table metrics in access exclusive mode")
            for day in sorted(missing):
                name = sql.Identifier(_partition_name(day))
                cur.execute(sql.SQL(
                    "create table if not exists {} partition of metrics "
                    "for values from ({}) to ({})").format(
                        # UTC days whatever the session's TimeZone is.
                        name, sql.Literal(f"{day.isoformat()} 00:00:00+00"),
                        sql.Literal(f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00")))
                # Row level security on the parent does not cover its partitions.
                cur.execute(sql.SQL("alter table {} enable row level security").format(name))
        self._partitions |= missing

    def drop_partitions_before(self, day: date,
                               lock_timeout_s: float | None = None) -> list[str]:
        """Drop the daily partitions of ``metrics`` whose whole day is before ``day``."""
        dropped = []
        with self._transaction() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('fleetpulse.partitions'))")
            old = []
            for name in self._partition_names(cur):
                try:
                    partition_day = datetime.strptime(name, "metrics_%Y%m%d").date()
                except ValueError:
                    continue  # not one of ours
                if partition_day < day:
                    old.append((name, partition_day))
            if not old:
                return []
            self._set_lock_timeout(cur, lock_timeout_s)
            cur.execute("lock table metrics in access exclusive mode")  # as ensure_partitions
            for name, partition_day in old:
                cur.execute(sql.SQL("drop table {}").format(sql.Identifier(name)))
                dropped.append(name)
                self._partitions.discard(partition_day)
        return dropped

    @staticmethod
    def _set_lock_timeout(cur: psycopg.Cursor[Any], seconds: float | None) -> None:
        if seconds is not None:
            cur.execute(sql.SQL("set local lock_timeout = {}").format(
                sql.Literal(f"{max(1, int(seconds * 1000))}ms")))

    def delete_older(self, table: str, column: str, before: datetime) -> int:
        """Delete rows of one of our tables whose ``column`` is before ``before``."""
        with self._transaction() as cur:
            cur.execute(sql.SQL("delete from {} where {} < %s").format(
                sql.Identifier(table), sql.Identifier(column)), (before,))
            return cur.rowcount

    @staticmethod
    def _partition_names(cur: psycopg.Cursor[Any]) -> list[str]:
        cur.execute("select c.relname from pg_inherits i join pg_class c "
                    "on c.oid = i.inhrelid where i.inhparent = 'metrics'::regclass "
                    "order by 1")
        return [row[0] for row in cur.fetchall()]

    def partitions(self) -> list[str]:
        with self._transaction() as cur:
            return self._partition_names(cur)

    # --- writing --------------------------------------------------------------------------
    def write(self, rows: Sequence[tuple[Any, ...]], quarantine: Sequence[QuarantineRecord],
              devices: DeviceEvents) -> WriteResult:
        """Store one batch in one transaction; raise Transient/PermanentStoreError."""
        self.ensure_partitions({row[_TS].astimezone(UTC).date() for row in rows})
        inserted, safe, marked = 0, False, set[Minute]()
        minutes = {(row[_DEVICE], int(row[_TS].timestamp() // 60)) for row in rows}
        to_mark = self._marks.write_begins(minutes) if self._deferred else minutes
        try:
            with self._transaction() as cur:
                if rows:
                    width = len(COLUMNS)  # a reading's processes row rides at its end
                    readings = [row if len(row) == width else row[:width] for row in rows]
                    inserted, safe, marked = self._insert_readings(cur, readings, to_mark)
                    sections = [row[width] for row in rows if len(row) > width]
                    if sections:
                        self._insert_processes(cur, sections)
                if quarantine:
                    self._insert_quarantine(cur, quarantine)
                self._update_devices(cur, devices)
                if marked and not self._deferred:
                    self._flush_pending(cur)
        except BaseException:
            if self._deferred:
                self._marks.write_ends(None)
            raise
        if self._deferred:
            self._marks.write_ends(marked)
        return WriteResult(inserted=inserted, quarantined=len(quarantine), duplicate_safe=safe)

    def flush_rollups(self, age_s: float = 0.0, limit: int | None = None) -> int:
        """Bring the rollups of this owner's pending minutes marked at least ``age_s`` ago
        (at most ``limit`` of them, oldest first; and any abandoned ones) up to date, in one
        transaction; return how many minutes were recomputed.

        REPEATABLE READ: a rollup row changed since the flush's snapshot (by another hub's
        flush, or by a hub of the version before, which merges every batch without the
        lock) fails the flush with a serialization failure instead of being overwritten
        with a count that misses the change; it is run again at once, with a new snapshot.
        Writes on a :meth:`sibling` may go on meanwhile (see :class:`PendingMarks`).
        """
        for attempt in range(1, _FLUSH_ATTEMPTS + 1):
            self._marks.flush_begins()  # before the transaction's snapshot
            try:
                with self._transaction() as cur:
                    cur.execute("set transaction isolation level repeatable read")
                    recomputed, deleted = self._flush_pending(cur, age_s, limit)
                    with self._marks.flush_settles(deleted) as again:
                        if again:
                            self._mark(cur, again)
                        cur.connection.commit()
                return recomputed
            except BaseException as exc:
                self._marks.flush_failed()
                if not (isinstance(exc, TransientStoreError) and exc.sqlstate == "40001"
                        and attempt < _FLUSH_ATTEMPTS):
                    raise
        raise AssertionError("unreachable")

    def _flush_pending(self, cur: psycopg.Cursor[Any], age_s: float = 0.0,
                       limit: int | None = None) -> tuple[int, set[Minute]]:
        """Run the flush's statement; return the minutes recomputed and this owner's marks
        it deleted."""
        cur.execute("set local jit = off")  # compiling the statement costs more than it runs
        cur.execute(LOCK_SQL)
        cur.execute(_FLUSH_PENDING, {"owner": self._owner, "age_s": age_s, "limit": limit})
        found = cur.fetchone()
        assert found is not None
        recomputed, short = int(found[0]), int(found[1])
        deleted = {(device, int(bucket.timestamp() // 60))
                   for device, bucket in zip(found[2] or (), found[3] or (), strict=True)}
        if short:
            log.warning("%d minutes have fewer per-second readings than their rollup holds "
                        "(retention dropped them): their rollups were left as they were, "
                        "without the readings added to them since.", short)
        return recomputed, deleted

    def _mark(self, cur: psycopg.Cursor[Any], minutes: set[Minute]) -> None:
        """Mark ``minutes`` as pending (a mark already there is left as it is)."""
        keys = sorted(minutes)
        cur.execute(MARK_SQL.encode(), (  # constant SQL of ours
            self._owner, text_array([k[0] for k in keys]),
            timestamptz_array([datetime.fromtimestamp(k[1] * 60, UTC) for k in keys])))

    def _insert_readings(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]],
                         to_mark: set[Minute]) -> tuple[int, bool, set[Minute]]:
        """Insert the rows new to ``metrics``; return how many were new, whether the
        duplicate-safe path did it, and the pending minutes it marked (``to_mark``, the
        minutes of ``rows`` not known to be marked already).

        Redelivery is rare, so the batch is first COPied straight into ``metrics`` (its
        day's partition when it has one day) under a savepoint, and its minutes are marked
        pending: their rollups are recomputed from the stored rows (hub/rollup.py). If any
        row is already there (unique_violation, 23505), the savepoint is rolled back and the
        duplicate-safe path below runs instead. So does a batch with a reading older than
        the end of the newest cold hour, which may have been compacted already: the COPY
        could not see it.
        """
        cur.execute(_COLD_END)
        found = cur.fetchone()
        cold_end = found[0] if found else None
        if cold_end is None or min(row[_TS] for row in rows) >= cold_end:
            days = {row[_TS].astimezone(UTC).date() for row in rows}
            target = (sql.Identifier(_partition_name(days.pop())) if len(days) == 1
                      else sql.Identifier("metrics"))
            cur.execute("savepoint fast_copy")
            try:
                with cur.copy(sql.SQL("copy {} ({}) from stdin (format binary)").format(
                        target, _COLUMN_LIST)) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in rows:
                        copy.write_row(row)
            except psycopg.errors.UniqueViolation:
                cur.execute("rollback to savepoint fast_copy")  # a redelivery: slow path
            else:
                cur.execute("release savepoint fast_copy")
                if to_mark:
                    self._mark(cur, to_mark)
                return len(rows), False, to_mark
        # The duplicate-safe path: COPY into a temporary table, then insert and roll up in
        # one statement: only rows new to ``metrics`` (and to the cold tier) reach the
        # minute and hour rollups, so a redelivered message is counted once. Merged after
        # the rollups' lock, as a flush would replace them (hub/rollup.py).
        cur.execute(LOCK_SQL)
        cur.execute(sql.SQL("create temp table metrics_in (like metrics) on commit drop"))
        with cur.copy(sql.SQL("copy metrics_in ({}) from stdin (format binary)").format(
                _COLUMN_LIST)) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        cur.execute(_INSERT_WITH_ROLLUPS)
        counted = cur.fetchone()
        return (int(counted[0]) if counted else 0), True, set()

    @staticmethod
    def _insert_processes(cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        cur.execute(processes.STAGE_SQL.encode())  # constant SQL of ours
        with cur.copy(processes.COPY_SQL.encode()) as copy:
            copy.set_types(list(processes.COPY_TYPES))
            for row in rows:
                copy.write_row(row)
        cur.execute(processes.MOVE_SQL.encode())

    def _insert_quarantine(self, cur: psycopg.Cursor[Any],
                           records: Sequence[QuarantineRecord]) -> None:
        limit = self._quarantine_payload_bytes
        cur.executemany(
            "insert into quarantine (received_at, topic, device_id, reason, payload, "
            "payload_bytes, payload_sha256) values (%s, %s, %s, %s, %s, %s, %s) "
            "on conflict (topic, payload_sha256) do nothing",
            [(r.received_at, r.topic, r.device_id, r.reason, r.payload[:limit], len(r.payload),
              hashlib.sha256(r.payload).digest()) for r in records])

    @staticmethod
    def _update_devices(cur: psycopg.Cursor[Any], events: DeviceEvents) -> None:
        if events.seen:
            ids = sorted(events.seen)
            cur.execute(
                "insert into devices (device_id, first_seen, last_seen, last_received_at) "
                "select d, r, t, r from unnest(%s::text[], %s::timestamptz[], "
                "%s::timestamptz[]) as u(d, t, r) "
                "on conflict (device_id) do update set "
                "last_seen = greatest(devices.last_seen, excluded.last_seen), "
                "last_received_at = greatest(devices.last_received_at, excluded.last_received_at)",
                # Encoded by hand: psycopg's list dumper was a fifth of the writer's time.
                (text_array(ids), timestamptz_array([events.seen[d][0] for d in ids]),
                 timestamptz_array([events.seen[d][1] for d in ids])))
        if events.sessions:
            keys = sorted(events.sessions)
            spans = [events.sessions[k] for k in keys]
            cur.execute(
                "insert into device_sessions (device_id, session_id, first_ts, last_ts, "
                "first_received_at, last_received_at) select * from unnest(%s::text[], "
                "%s::text[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], "
                "%s::timestamptz[]) on conflict (device_id, session_id) do update set "
                "first_ts = least(device_sessions.first_ts, excluded.first_ts), "
                "last_ts = greatest(device_sessions.last_ts, excluded.last_ts), "
                "last_received_at = greatest(device_sessions.last_received_at, "
                "excluded.last_received_at)",
                (text_array([k[0] for k in keys]), text_array([k[1] for k in keys]),
                 timestamptz_array([s.first_ts for s in spans]),
                 timestamptz_array([s.last_ts for s in spans]),
                 timestamptz_array([s.first_received_at for s in spans]),
                 timestamptz_array([s.last_received_at for s in spans])))
        if events.session_hosts:
            keys = sorted(events.session_hosts)
            cur.execute(
                "insert into device_sessions (device_id, session_id, hostname, "
                "first_received_at, last_received_at) select d, s, h, now(), now() from "
                "unnest(%s::text[], %s::text[], %s::text[]) as u(d, s, h) "
                "on conflict (device_id, session_id) do update set hostname = excluded.hostname",
                ([k[0] for k in keys], [k[1] for k in keys],
                 [events.session_hosts[k] for k in keys]))
        if events.status:
            ids = sorted(events.status)
            cur.execute(
                "insert into devices (device_id, first_seen, last_received_at, status, "
                "status_since) select d, r, r, s, r from unnest(%s::text[], %s::text[], "
                "%s::timestamptz[]) as u(d, s, r) "
                "on conflict (device_id) do update set "
                "status_since = case when devices.status is distinct from excluded.status "
                "then excluded.status_since else devices.status_since end, "
                "status = excluded.status, "
                "last_received_at = greatest(devices.last_received_at, excluded.last_received_at)",
                (ids, [events.status[d][0] for d in ids], [events.status[d][1] for d in ids]))
        if events.meta:
            ids = sorted(events.meta)
            cur.execute(
                "insert into devices (device_id, first_seen, last_received_at, hostname, meta) "
                "select d, r, r, m->>'hostname', m from unnest(%s::text[], %s::jsonb[], "
                "%s::timestamptz[]) as u(d, m, r) "
                "on conflict (device_id) do update set meta = excluded.meta, "
                "hostname = excluded.hostname, "
                "last_received_at = greatest(devices.last_received_at, excluded.last_received_at)",
                (ids, [orjson.dumps(events.meta[d][0]).decode() for d in ids],
                 [events.meta[d][1] for d in ids]))

        if events.config:
            cleared = sorted(d for d, (c, _) in events.config.items() if c is None)
            kept = sorted(d for d, (c, _) in events.config.items() if c is not None)
            if cleared:
                cur.execute("delete from device_config where device_id = any(%s::text[])",
                            (cleared,))
            if kept:
                cur.execute(
                    "insert into device_config (device_id, config, received_at) "
                    "select * from unnest(%s::text[], %s::jsonb[], %s::timestamptz[]) "
                    "on conflict (device_id) do update set config = excluded.config, "
                    "received_at = excluded.received_at "
                    "where device_config.received_at <= excluded.received_at",
                    (kept, [orjson.dumps(events.config[d][0]).decode() for d in kept],
                     [events.config[d][1] for d in kept]))

    def clock_offset(self, device_id: str, session_id: str, offset_ms: int, reason: str,
                     decided_at: datetime) -> int:
        """Record a session's clock offset unless it has one; return the session's offset.

        The first hub to record it wins (another hub's insert waits for ours, then finds
        the row): every hub and every redelivery places the session's readings alike.
        """
        with self._transaction() as cur:
            cur.execute("insert into clock_offsets (device_id, session_id, offset_ms, reason, "
                        "decided_at) values (%s, %s, %s, %s, %s) on conflict do nothing",
                        (device_id, session_id, offset_ms, reason, decided_at))
            cur.execute("select offset_ms from clock_offsets where device_id = %s "
                        "and session_id = %s", (device_id, session_id))
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    # --- the cold tier --------------------------------------------------------------------
    def cold_candidates(self, before: datetime, limit: int) -> list[tuple[str, datetime, int]]:
        """Device-hours holding hot rows older than ``before``, oldest first."""
        with self._transaction() as cur:
            cur.execute(cold.candidates_sql().encode(), {"before": before, "limit": limit})
            return [(row[0], row[1], int(row[2])) for row in cur.fetchall()]

    def compact_hour(self, lay: cold.Layout, device_id: str, hour: datetime,
                     check: bool = True) -> Compacted:
        """Move one device-hour's hot rows into its cold block, in one transaction.

        A block already there (a late reading arrived after the hour was compacted) is
        read back, merged with the hot rows (a hot row whose key the block holds is a
        redelivery: the block's copy stays) and written again.

        ``check``: the block is read back through ``metrics_cold_rows`` and compared with
        what it must hold before the hot rows are deleted; any difference rolls everything
        back (PermanentStoreError). A merged block and an hour holding more than one agent
        session are always checked. Every block is checked for what the encoding cannot
        hold (numbers of more than 3 decimals go to numeric[]) and for its reading count.
        REPEATABLE READ: the delete removes exactly the rows the block was built from; a
        reading inserted meanwhile stays hot for the next round.
        """
        params = {"device": device_id, "hour": hour, "end": hour + cold.BLOCK}
        with self._transaction() as cur:
            cur.execute("set transaction isolation level repeatable read")
            # The block's one statement has ~200 aggregates: LLVM would spend ~40 s
            # compiling it (measured here), for a query that runs in milliseconds.
            cur.execute("set local jit = off")
            cur.execute("select pg_advisory_xact_lock(hashtext('fleetpulse.cold'), "
                        "hashtext(%(device)s || %(hour)s::text))", params)
            cur.execute(f"select readings from {cold.TABLE} where device_id = %(device)s "
                        "and hour = %(hour)s", params)
            existing = cur.fetchone()
            duplicates = 0
            if existing is None:
                source = f"({cold.hot_rows_sql(lay)}) h"
            else:
                cur.execute(f"create temp table cold_merge on commit drop as select * from "
                            f"{cold.ROWS_FUNCTION}(%(device)s, %(hour)s, %(end)s)".encode(),
                            params)
                # A hot row the block holds already was counted twice in the rollups (a
                # redelivery that raced the compaction of its hour): counted once again.
                duplicated = (f"(select h.* from ({cold.hot_rows_sql(lay)}) h where exists "
                              "(select 1 from cold_merge c where c.ts = h.ts and c.session_id "
                              "= h.session_id and c.seq = h.seq)) d")
                cur.execute(LOCK_SQL)  # as any change to the rollups (hub/rollup.py)
                cur.execute(subtract_rollups_sql(duplicated).encode(), params)
                cur.execute(("insert into cold_merge " + cold.hot_rows_sql(lay) +
                             " and not exists (select 1 from cold_merge c where c.ts = "
                             "metrics.ts and c.session_id = metrics.session_id and c.seq = "
                             "metrics.seq)").encode(), params)
                added = cur.rowcount
                cur.execute("select count(*) from metrics where device_id = %(device)s "
                            "and ts >= %(hour)s and ts < %(end)s", params)
                row = cur.fetchone()
                duplicates = (int(row[0]) if row else 0) - added
                cur.execute(f"delete from {cold.TABLE} where device_id = %(device)s "
                            "and hour = %(hour)s", params)
                source = "cold_merge"
            began = time.perf_counter()
            cur.execute(cold.slots_sql(lay, source).encode(), params)
            longest = cur.fetchone()
            assert longest is not None
            slots = dict(zip(cold.list_names(lay), (int(n) for n in longest), strict=True))
            # Records' decimal numbers as integers first; a block whose numbers do not fit
            # (more than 3 decimals, an integer overflow, or a check that refuses it) is
            # built with numeric[].
            differ = False
            for scaled in (True, False):
                cur.execute("savepoint block")
                try:
                    cur.execute(cold.insert_block_sql(lay, source, slots, scaled).encode(),
                                params)
                    built = cur.fetchone()
                    assert built is not None
                    readings, written, restarted = built
                    if written is None and readings and scaled:
                        cur.execute("rollback to savepoint block")
                        continue
                    encoded = time.perf_counter()
                    # A merged block, and an hour in which the agent restarted (perhaps as
                    # a newer version), are always read back in full; others when asked.
                    if check or restarted or existing is not None:
                        cur.execute(cold.verify_sql(lay, source).encode(), params)
                        checked = cur.fetchone()
                        assert checked is not None
                        differ = bool(checked[0])
                except psycopg.errors.NumericValueOutOfRange:
                    if not scaled:
                        raise
                    cur.execute("rollback to savepoint block")
                    continue
                if not (differ and scaled):
                    break
                cur.execute("rollback to savepoint block")
            log.debug("cold block %s %s: encoded in %.3f s, checked in %.3f s", device_id,
                      hour, encoded - began, time.perf_counter() - encoded)
            if differ:
                raise PermanentStoreError(
                    f"the cold block of {device_id} at {hour.isoformat()} does not read back "
                    "as the readings it was built from: not compacted")
            cur.execute("delete from metrics where device_id = %(device)s "
                        "and ts >= %(hour)s and ts < %(end)s", params)
            moved = cur.rowcount
            if existing is None and moved != (written or 0):
                raise PermanentStoreError(
                    f"the cold block of {device_id} at {hour.isoformat()} holds {written} "
                    f"readings for {moved} hot rows: not compacted")
        return Compacted(device_id, hour, moved, int(written or 0), duplicates)

    def tier_sizes(self) -> dict[str, int]:
        """Bytes on disk of each tier (hot, cold, rollups, quarantine, other, database)."""
        lay = cold.layout()
        with self._transaction() as cur:
            cur.execute(
                "select coalesce(sum(pg_total_relation_size(inhrelid)), 0) from pg_inherits "
                "where inhparent = 'metrics'::regclass")
            row = cur.fetchone()
            hot = int(row[0]) if row else 0
            sizes = {"hot": hot}
            for key, table in (("cold", cold.TABLE), ("minute", "metrics_1m"),
                               ("hour", "metrics_1h"), ("quarantine", "quarantine"),
                               ("processes", "processes")):
                cur.execute("select pg_total_relation_size(%s::regclass)", (table,))
                row = cur.fetchone()
                sizes[key] = int(row[0]) if row else 0
            cur.execute(cold.cold_bytes_sql(lay).encode())
            row = cur.fetchone()
            assert row is not None
            sizes["cold_blocks"], sizes["cold_readings"] = int(row[0]), int(row[1])
            sizes["cold_live"] = int(row[2])
            cur.execute("select pg_database_size(current_database())")
            row = cur.fetchone()
            sizes["database"] = int(row[0]) if row else 0
            cur.execute("select count(*) from metrics")
            row = cur.fetchone()
            sizes["hot_readings"] = int(row[0]) if row else 0
        return sizes

    def drop_oldest_cold(self, count: int) -> list[tuple[str, datetime, int]]:
        """Delete the ``count`` oldest cold blocks; return (device, hour, readings) of each."""
        with self._transaction() as cur:
            cur.execute(f"delete from {cold.TABLE} where (device_id, hour) in (select "
                        f"device_id, hour from {cold.TABLE} order by hour, device_id "
                        "limit %s) returning device_id, hour, readings", (count,))
            return [(row[0], row[1], int(row[2])) for row in cur.fetchall()]

    # --- reading --------------------------------------------------------------------------
    def query(self, text: str,
              params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query of ours and return rows as dicts."""
        with self._transaction() as cur:
            cur.execute(text.encode(), params)  # our own constant SQL
            if cur.description is None:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def execute(self, statements: Sequence[tuple[str, Sequence[Any] | dict[str, Any]]]) -> None:
        """Run statements of ours in one transaction."""
        with self._transaction() as cur:
            for text, params in statements:
                cur.execute(text.encode(), params)  # our own constant SQL

    def stream(self, text: str, params: Sequence[Any] | dict[str, Any] | None = None,
               chunk_rows: int = 5000) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """Yield (column names, rows) chunks of a query through a server-side cursor.

        Memory stays constant however many rows match: the server keeps the result and
        sends ``chunk_rows`` at a time. Abandoning the iterator ends the transaction.
        """
        conn = self._connection()
        finished = False
        try:
            with conn.cursor(name="fleetpulse_stream") as cur:
                cur.execute(text.encode(), params)  # our own constant SQL
                while True:
                    rows = cur.fetchmany(chunk_rows)
                    if not rows:
                        break
                    assert cur.description is not None
                    yield [d.name for d in cur.description], rows
            conn.commit()
            finished = True
        except psycopg.Error as exc:
            raise classify(exc) from exc  # keep psycopg's error as the cause
        finally:
            if not finished:
                try:
                    conn.rollback()
                except psycopg.Error:
                    pass

    def fleet_status(self) -> list[dict[str, Any]]:
        """Each device with its status and its newest reading (the API's query)."""
        return FleetReader(self).devices()


class StorePool:
    """A few :class:`Store` connections shared by the HTTP API's worker threads."""

    def __init__(self, url: str, size: int = 4) -> None:
        self._url = url
        self._idle: queue.LifoQueue[Store] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(Store(url, application_name="fleetpulse-hub-api"))
        self._all = list(self._idle.queue)

    @contextmanager
    def borrow(self, timeout_s: float = 10.0) -> Iterator[Store]:
        """Lend a Store to one thread; raise TransientStoreError when all stay busy."""
        try:
            store = self._idle.get(timeout=timeout_s)
        except queue.Empty:
            raise TransientStoreError("all database connections of the API are busy") from None
        try:
            yield store
        finally:
            self._idle.put(store)

    def query(self, text: str,
              params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.borrow() as store:
            return store.query(text, params)

    def execute(self, statements: Sequence[tuple[str, Sequence[Any] | dict[str, Any]]]) -> None:
        with self.borrow() as store:
            store.execute(statements)

    def stream(self, text: str, params: Sequence[Any] | dict[str, Any] | None = None,
               chunk_rows: int = 5000) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """Stream on a connection of its own, so a long export does not hold a pool slot."""
        store = Store(self._url, application_name="fleetpulse-hub-export")
        try:
            yield from store.stream(text, params, chunk_rows)
        finally:
            store.close()

    def close(self) -> None:
        for store in self._all:
            store.close()
