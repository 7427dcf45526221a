"""Check every message against the shared schema (pure: time and limits come in as arguments).

A message is either :class:`Accepted` (typed, ready to store) or :class:`Rejected` with a
reason a person can act on; nothing raises.

Metrics, the hot path, are decoded by msgspec into structs compiled from the same
``shared.schema`` declarations (same types, same bounds, unknown fields refused): about a
fifth of pydantic's cost per message. A message msgspec refuses goes through pydantic,
the reference, whose errors name every field that is wrong; a test checks on generated
messages that msgspec never accepts what pydantic refuses, and that both read the same
values. Meta and status messages are rare and go through pydantic only.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any, NotRequired, Union, get_args, get_origin, get_type_hints

import msgspec
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import TypeAdapter, ValidationError
from typing_extensions import is_typeddict

from hub.processes import SECTION, section_problem, split_section
from hub.remote import check_config
from shared.schema import SCHEMA_VERSION, STATUS_VALUES, Meta, MetricsV1
from shared.topics import is_valid_device_id, parse_topic

_METRICS = TypeAdapter(MetricsV1)
_META = TypeAdapter(Meta)


# The timestamps the fast path reads itself: RFC 3339 with a zone and at most microseconds
# (msgspec rounds further digits where pydantic truncates; such rare forms go to pydantic).
_TIMESTAMP = Annotated[str, msgspec.Meta(
    pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")]


_BOUND_FIELDS = {Ge: "ge", Le: "le", MinLen: "min_length", MaxLen: "max_length"}


def msgspec_type(tp: Any, structs: dict[Any, Any] | None = None) -> Any:
    """Translate a ``shared.schema`` annotation into msgspec's terms.

    TypedDicts become structs that refuse unknown fields (a msgspec TypedDict would drop
    them silently); annotated-types bounds become ``msgspec.Meta`` constraints; a datetime
    is read as a string of :data:`_TIMESTAMP`'s form (see :func:`decode_metrics`).
    """
    structs = {} if structs is None else structs
    if tp is datetime:
        return _TIMESTAMP
    origin = get_origin(tp)
    if origin is Annotated:
        base, *bounds = get_args(tp)
        constraints = {}
        for bound in bounds:
            # The bound's field is also msgspec.Meta's keyword; KeyError: one not handled.
            field = _BOUND_FIELDS[type(bound)]
            constraints[field] = getattr(bound, field)
        return Annotated[msgspec_type(base, structs), msgspec.Meta(**constraints)]
    if origin in (Union, types.UnionType):
        return Union[tuple(msgspec_type(a, structs) for a in get_args(tp))]  # noqa: UP007
    if origin is list:
        return list[msgspec_type(get_args(tp)[0], structs)]  # type: ignore[misc]
    if is_typeddict(tp):
        if tp not in structs:
            fields: list[Any] = []
            for name, hint in get_type_hints(tp, include_extras=True).items():
                if get_origin(hint) is NotRequired:
                    # Absent stays absent (UNSET is left out by to_builtins), as in pydantic.
                    fields.append((name, msgspec_type(get_args(hint)[0], structs),
                                   msgspec.UNSET))
                else:
                    fields.append((name, msgspec_type(hint, structs)))
            structs[tp] = msgspec.defstruct(tp.__name__, fields, forbid_unknown_fields=True)
        return structs[tp]
    return tp


# What the hub reads a metrics message into: a struct per section, as declared in the schema.
# Its ``ts`` is a datetime once decoded (decode_metrics); the hub reads the rest as it is,
# without turning it into dicts (hub/ingest/batch.py builds the row from the struct).
READING = msgspec_type(MetricsV1)
_FAST_METRICS = msgspec.json.Decoder(READING)
# A time stamp of the form READING's ts takes, in place of the datetime pydantic read.
_TS_STANDIN = "2000-01-01T00:00:00Z"


def decode_metrics_fast(payload: bytes) -> Any:
    """Decode and check with msgspec alone (a :data:`READING`); raise msgspec.DecodeError
    or ValueError."""
    message = _FAST_METRICS.decode(payload)
    message.ts = datetime.fromisoformat(message.ts)  # the schema's only datetime
    return message


def decode_metrics(payload: bytes) -> Any:
    """Return the message as a checked :data:`READING`; raise pydantic's ValidationError if
    it is bad."""
    try:
        return decode_metrics_fast(payload)
    except (msgspec.DecodeError, ValueError):  # ValidationError is a DecodeError
        # Refused (or a form only pydantic reads, such as a space in the timestamp): the
        # reference decides, and explains what is wrong.
        message = _validate_reference(_METRICS, payload)
    try:
        return as_reading(message)
    except msgspec.ValidationError as exc:
        raise _Refused(f"wrong fields: {exc}") from exc


def as_reading(message: MetricsV1) -> Any:
    """The :data:`READING` of a message pydantic checked (its values are msgspec's too)."""
    reading = msgspec.convert({**message, "ts": _TS_STANDIN}, READING)
    reading.ts = message["ts"]
    return reading


def as_message(reading: Any) -> MetricsV1:
    """The message of a :data:`READING`, as dicts (as pydantic reads it)."""
    message: MetricsV1 = msgspec.to_builtins(reading)
    message["ts"] = reading.ts
    return message


class _Refused(ValueError):
    """pydantic took what a check after it refuses: a version that is not the integer 1
    (see _validate_reference), or a value msgspec does not (see decode_metrics)."""


def _validate_reference(adapter: TypeAdapter[Any], payload: bytes) -> Any:
    """Validate with pydantic; raise _Refused where it took ``true`` or ``1.0`` for 1.

    Its ``Literal[1]`` compares by equality even in strict mode; msgspec, and the schema's
    other integers, refuse such values. Only messages off the fast path get here.
    """
    value = adapter.validate_json(payload)
    version = json.loads(payload)["v"]
    if type(version) is not int:
        raise _Refused(f"unknown schema version {version!r} (this hub reads "
                          f"{SCHEMA_VERSION})")
    return value


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 64 * 1024
    max_future_skew_s: float = 300.0
    # Readings older than this would land in a daily partition that retention drops at
    # once (the hub passes retention_days): quarantined instead, where they can be seen.
    max_age_days: int = 3650


def ts_problem(ts: datetime, received_at: datetime, limits: Limits) -> str | None:
    """Say why a reading's time stamp cannot be stored as it is; None if it can."""
    ahead = (ts - received_at).total_seconds()
    if ahead > limits.max_future_skew_s:
        return (f"ts {ts.isoformat()} is {ahead:.0f} s ahead of the hub's clock "
                f"(tolerance {limits.max_future_skew_s:g} s)")
    if ts.date() < received_at.date() - timedelta(days=limits.max_age_days):
        return (f"ts {ts.isoformat()} is older than the {limits.max_age_days} days of history "
                "the hub keeps (retention_days); the device's clock may be wrong")
    return None


@dataclass(frozen=True)
class Accepted:
    kind: str  # "metrics", "status", "meta" or "config"
    device_id: str
    value: Any  # READING (metrics) | Meta | str (status) | ConfigV1 | None (config cleared)
    # A part of the message that was left out and goes to quarantine with this reason (a
    # bad ``processes`` section); the rest is stored.
    problem: str | None = None
    # The agent's own ts of a reading the hub moved (hub/clock.py), else None.
    agent_ts: datetime | None = None


@dataclass(frozen=True)
class Rejected:
    reason: str
    device_id: str | None


Result = Accepted | Rejected


def _describe(error: ValidationError, limit: int = 3) -> str:
    """Summarise pydantic errors as 'cpu.percent: Input should be …; …'."""
    parts = []
    for item in error.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _why_invalid(payload: bytes, error: ValidationError) -> str:
    """Explain a failed validation: not UTF-8, not JSON, unknown version, or the fields."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"payload is not UTF-8 text (byte {exc.start})"
    try:
        # The standard library here, not orjson: it takes integers beyond 64 bits (so they
        # are reported as too large, not as bad JSON); NaN and Infinity are not JSON.
        data = json.loads(payload, parse_constant=_refuse_constant)
    except ValueError as exc:
        return f"payload is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return f"payload is JSON {type(data).__name__}, not an object"
    if "v" not in data:
        return "payload has no schema version 'v'"
    if data["v"] != SCHEMA_VERSION or isinstance(data["v"], bool):
        return f"unknown schema version {data['v']!r} (this hub reads {SCHEMA_VERSION})"
    return "wrong or missing fields: " + _describe(error)


def validate(topic: str, payload: bytes, received_at: datetime, prefix: str,
             limits: Limits = Limits()) -> Result:
    """Validate one MQTT message taken off ``topic`` at ``received_at`` (UTC)."""
    parsed = parse_topic(prefix, topic)
    if parsed is None:
        return Rejected(f"topic {topic!r} is not {prefix}/<device_id>/<kind>", None)
    device_id, kind = parsed
    if not is_valid_device_id(device_id):
        return Rejected(f"device id {device_id[:80]!r} in the topic is not a valid id", None)
    if len(payload) > limits.max_payload_bytes:
        return Rejected(f"payload of {len(payload)} bytes is over the limit of "
                        f"{limits.max_payload_bytes} bytes", device_id)

    if b"\\u0000" in payload:
        return Rejected("payload contains a NUL character (\\u0000), which PostgreSQL text "
                        "cannot store", device_id)

    if kind == "status":
        text = payload.decode("utf-8", "replace")
        if text not in STATUS_VALUES:
            return Rejected(f"status {text[:40]!r} is not one of {', '.join(STATUS_VALUES)}",
                            device_id)
        return Accepted("status", device_id, text)

    if kind == "config":  # the device's report of its remote settings (hub/remote.py)
        config = check_config(device_id, payload)
        if isinstance(config, str):
            return Rejected(config, device_id)
        return Accepted("config", device_id, config)  # None: cleared

    if kind == "meta":
        try:
            meta = _validate_reference(_META, payload)
        except ValidationError as exc:
            return Rejected(_why_invalid(payload, exc), device_id)
        except _Refused as exc:
            return Rejected(str(exc), device_id)
        if meta["device_id"] != device_id:
            return _other_device(meta["device_id"], device_id)
        return Accepted(kind, device_id, meta)

    if kind != "metrics":
        return Rejected(f"unknown topic kind {kind[:40]!r}", device_id)
    try:
        value = decode_metrics(payload)
    except ValidationError as exc:
        split = split_section(payload)
        if split is not None:
            # Only the optional section is wrong: keep the reading, quarantine the section.
            result = validate(topic, split[0], received_at, prefix, limits)
            if isinstance(result, Accepted):
                return replace(result, problem=_section_refused(split[1]))
        return Rejected(_why_invalid(payload, exc), device_id)
    except _Refused as exc:
        return Rejected(str(exc), device_id)

    if value.device_id != device_id:
        return _other_device(value.device_id, device_id)
    problem = None
    if value.processes is not msgspec.UNSET:
        problem = section_problem(msgspec.to_builtins(value.processes))
        if problem is not None:
            value.processes = msgspec.UNSET
            problem = _section_refused(problem)
    ts = value.ts
    if ts.tzinfo is None or ts.utcoffset() is None:
        return Rejected(f"ts {ts.isoformat()} has no time zone (send UTC, ending in Z)",
                        device_id)
    if value.clock_synced is False:
        # Stamped by a clock the agent knows is not synchronised: hub/clock.py places
        # it by the hub's clock and checks the result, whatever the stamp says.
        return Accepted(kind, device_id, value, problem)
    stamp = ts_problem(ts, received_at, limits)
    if stamp is not None:
        return Rejected(stamp, device_id)
    return Accepted(kind, device_id, value, problem)


def _other_device(named: str, device_id: str) -> Rejected:
    return Rejected(f"device id {named!r} in the payload does not match {device_id!r} in the "
                    "topic", device_id)


def _section_refused(why: str) -> str:
    return f"{SECTION} section left out (the reading is stored without it): {why}"
