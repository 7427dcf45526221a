"""The wire format of fleetpulse: one definition for agent, hub, database and API.

The message is declared as ``TypedDict`` classes with ``annotated_types`` constraints so
that the agent can build it as plain dicts without importing pydantic (pydantic and
pydantic-settings would add ~12 MB of RSS to an agent meant for a Pi Zero), while the hub
validates the very same declarations with a pydantic ``TypeAdapter`` (see
``hub/ingest/validate.py``).
mypy checks that the agent's dicts match these classes; a test checks that the SQL
migration's columns match :func:`metrics_columns`.

Rules: names carry units (``_bytes``, ``_percent``, ``_celsius``, ``_mhz``, ``_s``,
``_per_s``); a value the platform cannot give is ``null``, never missing and never 0;
a field's type never changes — a breaking change bumps ``SCHEMA_VERSION``.

Versions (README "Versions and upgrades"): a field added to a version is ``NotRequired``,
so a hub reads agents that predate it; an agent sends it only when the hub says it reads
it, in the retained :class:`HubCapabilities` message on ``<prefix>/_hub/schema``
(:func:`shared.topics.hub_schema_topic`). With no such message (an older hub, or an ACL
that refuses the subscription) an agent sends exactly the fields of the first release.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints

from annotated_types import Ge, Le, MaxLen, MinLen
from typing_extensions import TypedDict, is_typeddict

SCHEMA_VERSION: Literal[1] = 1

# Bounds: anything outside is a corrupt or hostile reading, not a measurement.
MAX_COUNTER = 2**63 - 1  # PostgreSQL bigint
Counter = Annotated[int, Ge(0), Le(MAX_COUNTER)]
Rate = Annotated[float, Ge(0), Le(1e18)]
Percent = Annotated[float, Ge(0), Le(100)]
Celsius = Annotated[float, Ge(-100), Le(300)]
Mhz = Annotated[float, Ge(0), Le(1e6)]
Seconds = Annotated[float, Ge(0), Le(1e9)]
CorePercent = Annotated[float, Ge(0), Le(100 * 65536)]  # % of one core, summed over cores
Name = Annotated[str, MinLen(1), MaxLen(256)]
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DeviceId = Annotated[str, MinLen(1), MaxLen(64)]


class Cpu(TypedDict):
    percent: Percent | None
    per_core_percent: Annotated[list[Percent], MaxLen(1024)]
    freq_current_mhz: Mhz | None
    freq_min_mhz: Mhz | None
    freq_max_mhz: Mhz | None
    ctx_switches: Counter | None
    ctx_switches_per_s: Rate | None
    interrupts: Counter | None
    interrupts_per_s: Rate | None
    soft_interrupts: Counter | None
    soft_interrupts_per_s: Rate | None
    syscalls: Counter | None
    syscalls_per_s: Rate | None
    load_1: Annotated[float, Ge(0), Le(1e6)] | None
    load_5: Annotated[float, Ge(0), Le(1e6)] | None
    load_15: Annotated[float, Ge(0), Le(1e6)] | None


class Memory(TypedDict):
    total_bytes: Counter | None
    available_bytes: Counter | None
    used_bytes: Counter | None
    free_bytes: Counter | None
    percent: Percent | None
    swap_total_bytes: Counter | None
    swap_used_bytes: Counter | None
    swap_free_bytes: Counter | None
    swap_percent: Percent | None
    swap_in_bytes: Counter | None
    swap_in_bytes_per_s: Rate | None
    swap_out_bytes: Counter | None
    swap_out_bytes_per_s: Rate | None


class Partition(TypedDict):
    mountpoint: Name
    device: Name
    fstype: Annotated[str, MaxLen(64)]
    total_bytes: Counter
    used_bytes: Counter
    free_bytes: Counter
    percent: Percent


class DiskCounters(TypedDict):
    read_count: Counter | None
    read_count_per_s: Rate | None
    write_count: Counter | None
    write_count_per_s: Rate | None
    read_bytes: Counter | None
    read_bytes_per_s: Rate | None
    write_bytes: Counter | None
    write_bytes_per_s: Rate | None


class DiskIo(DiskCounters):
    name: Name


class Disk(DiskCounters):
    """Totals over all physical disks, then the detail per partition and per disk."""

    partitions: Annotated[list[Partition], MaxLen(256)]
    per_disk: Annotated[list[DiskIo], MaxLen(256)]


class NetCounters(TypedDict):
    bytes_sent: Counter | None
    bytes_sent_per_s: Rate | None
    bytes_recv: Counter | None
    bytes_recv_per_s: Rate | None
    packets_sent: Counter | None
    packets_sent_per_s: Rate | None
    packets_recv: Counter | None
    packets_recv_per_s: Rate | None
    errors_in: Counter | None
    errors_in_per_s: Rate | None
    errors_out: Counter | None
    errors_out_per_s: Rate | None
    drops_in: Counter | None
    drops_in_per_s: Rate | None
    drops_out: Counter | None
    drops_out_per_s: Rate | None


class NetIo(NetCounters):
    name: Name


class Network(NetCounters):
    """Totals over all interfaces except loopback, then the detail per interface."""

    per_interface: Annotated[list[NetIo], MaxLen(256)]


class Temperature(TypedDict):
    sensor: Name
    label: Annotated[str, MaxLen(256)]
    celsius: Celsius


class Sensors(TypedDict):
    cpu_celsius: Celsius | None
    gpu_celsius: Celsius | None
    temperatures: Annotated[list[Temperature], MaxLen(256)]
    battery_percent: Percent | None
    battery_charging: bool | None
    battery_s_left: Seconds | None


class Throttling(TypedDict):
    """Raspberry Pi firmware ``get_throttled`` flags; all null where there is no such firmware."""

    raw: Annotated[int, Ge(0), Le(2**32 - 1)] | None
    under_voltage_now: bool | None
    freq_capped_now: bool | None
    throttled_now: bool | None
    soft_temp_limit_now: bool | None
    under_voltage_occurred: bool | None
    freq_capped_occurred: bool | None
    throttled_occurred: bool | None
    soft_temp_limit_occurred: bool | None


class ProcessInfo(TypedDict):
    """One process of a top-N list (see :class:`ProcessesV1`)."""

    pid: Annotated[int, Ge(0), Le(2**32 - 1)]
    name: Annotated[str, MaxLen(256)]
    user: Annotated[str, MaxLen(256)] | None  # None: the uid has no name here
    # Of ONE core, as top, htop and psutil count: a process busy on 4 cores shows 400.
    cpu_percent: CorePercent | None  # None in the first period: no earlier reading yet
    rss_bytes: Counter
    memory_percent: Percent | None
    threads: Annotated[int, Ge(0), Le(2**32 - 1)] | None
    status: Annotated[str, MaxLen(32)]  # psutil's names: running, sleeping, disk-sleep…
    # Bytes the process made the storage layer read / write since it started (Linux
    # /proc/<pid>/io read_bytes / write_bytes); None where the platform or permissions
    # do not give them (another user's process, for an agent not run as root).
    io_read_bytes: Counter | None
    io_write_bytes: Counter | None


class ProcessesV1(TypedDict):
    """The busiest processes and a count by state, taken every ``process_period_s``.

    Sent as the optional section ``processes`` of the reading that follows a scan (one
    reading in ``process_period_s / interval_s``), only to a hub that lists it.
    """

    period_s: Seconds  # seconds the CPU percentages were measured over
    count: Annotated[int, Ge(0), Le(2**32 - 1)]
    running: Annotated[int, Ge(0), Le(2**32 - 1)]
    sleeping: Annotated[int, Ge(0), Le(2**32 - 1)]  # S, D (disk sleep) and I (idle), as top
    zombie: Annotated[int, Ge(0), Le(2**32 - 1)]
    other: Annotated[int, Ge(0), Le(2**32 - 1)]  # stopped, tracing, dead, …
    top_cpu: Annotated[list[ProcessInfo], MaxLen(1024)]
    top_memory: Annotated[list[ProcessInfo], MaxLen(1024)]


class MetricsV1(TypedDict):
    """One reading of one device: published on ``<prefix>/<device_id>/metrics``."""

    v: Literal[1]
    device_id: DeviceId
    session_id: Annotated[str, MinLen(1), MaxLen(64)]
    seq: Annotated[int, Ge(1), Le(MAX_COUNTER)]
    ts: datetime
    interval_s: Annotated[float, Ge(0.05), Le(86400)]
    cpu: Cpu
    memory: Memory
    disk: Disk
    network: Network
    sensors: Sensors
    throttling: Throttling
    # Added after the first release: sent only to hubs that list it (HubCapabilities).
    # Whether the agent's clock was synchronised (NTP) when it stamped ``ts``; null where
    # the platform cannot tell. The hub places unsynchronised readings (hub/clock.py).
    clock_synced: NotRequired[bool | None]
    # The top processes, in the first reading after each process scan (agent/processes.py);
    # absent from the others. The hub stores it apart (table ``processes``, migration 0006).
    processes: NotRequired[ProcessesV1]


# The optional fields of MetricsV1, in declaration order: what a hub may say it reads.
# (Read from the hints: with postponed annotations, __optional_keys__ does not see them.)
METRICS_OPTIONAL_FIELDS: tuple[str, ...] = tuple(
    name for name, hint in get_type_hints(MetricsV1, include_extras=True).items()
    if get_origin(hint) is NotRequired)


# MQTT v5 user property on a metrics message: milliseconds the agent held the reading
# before this send, on its boot-time clock; set when the reading's clock was unsynchronised.
AGE_PROPERTY = "age-ms"
# The Message Expiry Interval the agent sets on such a reading: the broker lowers it by the
# time the message waited there (MQTT 5.0, 3.3.2.3.3; Mosquitto counts whole seconds), so
# the hub adds the broker's wait to the agent's. Ten years: never reached.
AGE_EXPIRY_S = 315_360_000


class HubCapabilities(TypedDict):
    """What the hub reads: retained on ``<prefix>/_hub/schema`` by every hub."""

    v: Literal[1]
    hub_version: Annotated[str, MaxLen(64)]
    metrics_versions: list[int]  # the values of ``v`` it accepts
    metrics_optional_fields: list[str]  # optional fields of those versions it stores


def hub_capabilities(hub_version: str) -> HubCapabilities:
    """Return the capability message of a hub of this code."""
    return {"v": 1, "hub_version": hub_version, "metrics_versions": [SCHEMA_VERSION],
            "metrics_optional_fields": list(METRICS_OPTIONAL_FIELDS)}


def read_capabilities(payload: bytes) -> frozenset[str]:
    """Return the optional metrics fields a capability message lists (pure, never raises).

    Anything unreadable (empty: cleared; not JSON; another shape; a hub that no longer
    reads version 1) gives the empty set: the agent then sends plain version 1 messages.
    """
    import json

    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return frozenset()
    if not isinstance(data, dict) or SCHEMA_VERSION not in (data.get("metrics_versions") or []):
        return frozenset()
    fields = data.get("metrics_optional_fields")
    if not isinstance(fields, list):
        return frozenset()
    return frozenset(f for f in fields if f in METRICS_OPTIONAL_FIELDS)


class Meta(TypedDict):
    """Static facts about a device: retained on ``<prefix>/<device_id>/meta``."""

    v: Literal[1]
    device_id: DeviceId
    hostname: Annotated[str, MaxLen(256)]
    os: Annotated[str, MaxLen(256)]
    kernel: Annotated[str, MaxLen(256)]
    architecture: Annotated[str, MaxLen(64)]
    pi_model: Annotated[str, MaxLen(256)] | None
    cpu_count_logical: Annotated[int, Ge(1), Le(65536)] | None
    cpu_count_physical: Annotated[int, Ge(1), Le(65536)] | None
    memory_total_bytes: Counter | None
    agent_version: Annotated[str, MaxLen(64)]
    schema_version: int
    interval_s: Annotated[float, Ge(0.05), Le(86400)]
    session_id: Annotated[str, MinLen(1), MaxLen(64)]
    spool_readings: Counter
    spool_dropped: Counter


STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_VALUES = (STATUS_ONLINE, STATUS_OFFLINE)

_STRICT = {"extra": "forbid", "strict": True, "allow_inf_nan": False}
for _model in (Cpu, Memory, Partition, DiskIo, Disk, NetIo, Network, Temperature, Sensors,
               Throttling, MetricsV1, Meta, HubCapabilities, ProcessInfo, ProcessesV1):
    # pydantic reads its config from this attribute (set here, not in the class body, so
    # that the module needs no pydantic import).
    setattr(_model, "__pydantic_config__", _STRICT)  # noqa: B010


# --- columns of the ``metrics`` table, derived from MetricsV1 -------------------------------

@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    path: tuple[str, ...]  # where the value sits in the message


# The envelope columns that are not scalar message fields (or are renamed for SQL).
_ENVELOPE = [
    Column("device_id", "text", ("device_id",)),
    Column("session_id", "text", ("session_id",)),
    Column("seq", "bigint", ("seq",)),
    Column("ts", "timestamptz", ("ts",)),
    Column("interval_s", "double precision", ("interval_s",)),
]
# Written by the hub, not the agent: when the hub took the message off the broker.
RECEIVED_AT = Column("received_at", "timestamptz", ())
# Added by migration 0003, so last in the table: the agent's clock_synced (null when not
# sent), and the agent's own ts where the hub moved the reading (hub/clock.py), else null.
_ADDED = [
    Column("clock_synced", "boolean", ("clock_synced",)),
    Column("agent_ts", "timestamptz", ("agent_ts",)),
]
OPTIONAL_PATHS = {c.path for c in _ADDED}  # read with .get(): absent from older messages
# Added by migration 0007, written by the hub: the reading's anomaly score in [0, 1), from the
# device's detector as the reading was ingested (hub/detect/live.py); null when the device
# had no model yet, and for readings stored before.
ANOMALY_SCORE = Column("anomaly_score", "double precision", ())
_HUB_ADDED = [ANOMALY_SCORE]


def _pg_type(tp: Any) -> str:
    """Map a schema annotation to its PostgreSQL column type."""
    origin = get_origin(tp)
    if origin is Annotated or origin is NotRequired:
        return _pg_type(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _pg_type(inner)
    if origin is list:
        (item,) = get_args(tp)
        item_type = _pg_type(item)
        return "jsonb" if item_type == "jsonb" else item_type + "[]"
    if is_typeddict(tp):
        return "jsonb"
    return {bool: "boolean", int: "bigint", float: "double precision", str: "text",
            datetime: "timestamptz"}[tp]


def metrics_columns() -> list[Column]:
    """Return the ``metrics`` table's columns in COPY order: envelope, then each section flat.

    A section's scalars become ``<section>_<field>``; lists of records (partitions,
    interfaces, zones) become one ``jsonb`` column each; lists of numbers become arrays.
    """
    columns = [*_ENVELOPE, RECEIVED_AT]
    hints = get_type_hints(MetricsV1, include_extras=True)
    for section, section_type in hints.items():
        if not is_typeddict(section_type):
            continue
        for field, field_type in get_type_hints(section_type, include_extras=True).items():
            columns.append(Column(f"{section}_{field}", _pg_type(field_type), (section, field)))
    return columns + _ADDED + _HUB_ADDED


def metrics_row(message: MetricsV1, received_at: datetime) -> tuple[Any, ...]:
    """Flatten a validated message into a tuple in :func:`metrics_columns` order."""
    row: tuple[Any, ...] = _row_getter(message, received_at)
    return row


def compile_row_getter(read: Callable[[Column], str], names: dict[str, Any] | None = None
                       ) -> Callable[..., tuple[Any, ...]]:
    """Build ``getter(m, received_at, agent_ts=None)``: a message's row as one tuple display.

    ``read(column)`` is the expression of a column of the message ``m`` (in terms of
    ``names``). Built once from the column list, so the per-message cost is one tuple
    display, not a walk over the schema (this runs for every message the hub stores).
    """
    parts = []
    for column in metrics_columns():
        if column is RECEIVED_AT:
            parts.append("received_at")
        elif column is ANOMALY_SCORE:
            parts.append("None")  # set by the live scorer, once the batch is scored
        else:
            parts.append(read(column))
    source = (f"def getter(m, received_at, agent_ts=None):\n"
              f"    return ({', '.join(parts)},)\n")
    namespace: dict[str, Any] = dict(names or {})
    exec(compile(source, "<metrics_row>", "exec"), namespace)  # noqa: S102 - generated above
    return namespace["getter"]  # type: ignore[no-any-return]


def _read_dict(column: Column) -> str:
    if column.path in OPTIONAL_PATHS:
        return f"m.get({column.path[0]!r})"
    return "m" + "".join(f"[{key!r}]" for key in column.path)


_row_getter = compile_row_getter(_read_dict)
