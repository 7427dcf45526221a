"""The write path's own binary array encoders give the bytes psycopg's dumpers give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import adapt, postgres

from hub.store import _Float8ListDumper, float8_array, text_array, timestamptz_array


def psycopg_bytes(type_name: str, values: list[Any]) -> bytes:
    oid = postgres.types[type_name].array_oid
    dumper = psycopg.adapters.get_dumper_by_oid(oid, psycopg.pq.Format.BINARY)
    return bytes(dumper(list, adapt.Transformer()).dump(values))


@pytest.mark.parametrize("values", [[1.0], [0.0, -2.5, 1e300, 3.25], [None, 4.0], [7.0, None]])
def test_float8_arrays(values: list[float | None]) -> None:
    assert float8_array(values) == psycopg_bytes("float8", values)
    dumper = _Float8ListDumper(list, adapt.Transformer())
    assert dumper.dump(values) == psycopg_bytes("float8", values)


def test_an_empty_per_core_list_is_an_empty_array() -> None:
    assert _Float8ListDumper(list, adapt.Transformer()).dump([]) == psycopg_bytes("float8", [])


def test_text_arrays() -> None:
    values = ["pi-1", "dev-ä", "x" * 300]
    assert text_array(values) == psycopg_bytes("text", values)


def test_timestamptz_arrays_in_any_zone() -> None:
    values = [datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC),
              datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=5, minutes=30)))]
    assert timestamptz_array(values) == psycopg_bytes("timestamptz", values)
