"""The fast metrics decoder (msgspec) never lets in what the reference (pydantic) refuses.

Both read the same ``shared.schema`` declarations; these tests mutate a valid message at
random (any field set to any JSON value, fields removed or added, odd timestamps) and
compare the two verdicts. The fast path may refuse more (the reference then decides), but
whatever it accepts the reference must accept, with the same values.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.ingest.validate import _METRICS, as_message, decode_metrics, decode_metrics_fast
from tests.unit.hub.messages import metrics


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field and list item of a message, as a path of keys and indexes."""
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


def _parent(message: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        message = message[key]
    return message


def _valid() -> dict[str, Any]:
    return metrics()


PATHS = _paths(_valid())
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(),
              st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False),
              st.sampled_from([0, 1, -1, 0.0, -0.0, 100, 100.0000001, 2**63 - 1, 2**63, 1e300]),
              st.text(max_size=300), st.sampled_from(["", "\x00", "é" * 257, "1", "true"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                   max_size=3),
    max_leaves=6)
TIMESTAMPS = st.sampled_from([
    "2026-11-23T10:00:00Z", "2026-11-23T10:00:00.123Z", "2026-11-23T10:00:00.123456789Z",
    "2026-11-23T10:00:00+02:00", "2026-11-23T10:00:00", "2026-11-23 10:00:00Z",
    "2026-11-23T10:00Z", "2026-11-23", "2026-11-23T23:59:60Z", "2026-13-01T00:00:00Z",
    "20261123T100000Z", "2026-11-23T10:00:00z", "2026-11-23T10:00:00+24:00", "now", 1700000000,
])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    message = _valid()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        try:
            parent = _parent(message, path)
            key = path[-1]
            parent[key]  # the path may have gone with an earlier change
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(["replace", "replace", "remove", "add", "ts"]))
        if action == "replace":
            parent[key] = draw(JSON_VALUES)
        elif action == "remove" and isinstance(parent, dict):
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
        else:
            message["ts"] = draw(TIMESTAMPS)
    # The standard library: it writes integers beyond 64 bits, which orjson refuses.
    return json.dumps(message, ensure_ascii=draw(st.booleans())).encode()


def _fast(payload: bytes) -> Any:
    """The fast path alone: what it accepts, or None where it hands over to pydantic."""
    try:
        return as_message(decode_metrics_fast(payload))
    except (msgspec.DecodeError, ValueError):
        return None


def _reference(payload: bytes) -> Any:
    try:
        return _METRICS.validate_json(payload)
    except ValidationError:
        return None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fast_decoder_accepts_nothing_the_reference_refuses(payload: bytes) -> None:
    fast = _fast(payload)
    if fast is not None:
        reference = _reference(payload)
        assert reference is not None, f"msgspec accepted, pydantic refused: {payload[:300]!r}"
        assert fast == reference


def test_valid_message_reads_the_same_both_ways() -> None:
    payload = json.dumps(_valid()).encode()
    assert _fast(payload) is not None
    assert _fast(payload) == _reference(payload) == as_message(decode_metrics(payload))


@pytest.mark.parametrize(("path", "value"), [
    (("cpu", "bogus"), 1),                       # unknown field
    (("memory", "total_bytes"), -1),             # below the bound
    (("memory", "total_bytes"), 2**63),          # beyond bigint
    (("memory", "total_bytes"), True),           # a bool is not a number
    (("memory", "total_bytes"), 1.5),            # a float is not an integer
    (("cpu", "percent"), "12"),                  # no strings for numbers
    (("cpu", "percent"), 100.5),
    (("v",), 2),
    (("sensors", "battery_charging"), 1),        # no numbers for bools
    (("disk", "partitions", 0, "mountpoint"), ""),
])
def test_fast_decoder_refuses_what_the_schema_forbids(path: tuple[Any, ...], value: Any) -> None:
    message = _valid()
    _parent(message, path)[path[-1]] = value
    payload = json.dumps(message).encode()
    assert _fast(payload) is None
    assert _reference(payload) is None
    with pytest.raises(ValidationError):
        decode_metrics(payload)


def test_a_missing_field_is_refused() -> None:
    message = _valid()
    del message["memory"]["free_bytes"]
    assert _fast(json.dumps(message).encode()) is None
