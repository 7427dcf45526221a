"""Parquet export: the readings' columns as Arrow types, written a chunk at a time.

Apart from hub/export.py so that pyarrow (~30 MB of a running hub's memory) is imported only
when a Parquet export runs.
"""

from __future__ import annotations

import io
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import pyarrow as pa  # no type stubs: see the mypy override in pyproject.toml
import pyarrow.parquet as pq
from typing_extensions import is_typeddict

from hub.export import COLUMNS, Chunks
from shared.schema import Column, MetricsV1

_ARROW_TYPES = {"text": pa.string(), "bigint": pa.int64(), "double precision": pa.float64(),
                "boolean": pa.bool_(), "timestamptz": pa.timestamp("us", tz="UTC"),
                "double precision[]": pa.list_(pa.float64())}


def arrow_type(tp: Any) -> pa.DataType:
    """Map a schema annotation to an Arrow type: a list of records (partitions, disks,
    interfaces, temperatures) becomes ``list<struct<…>>`` with the records' field types."""
    origin = get_origin(tp)
    if origin is Annotated:
        return arrow_type(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return arrow_type(inner)
    if origin is list:
        (item,) = get_args(tp)
        return pa.list_(arrow_type(item))
    if is_typeddict(tp):
        # Every field nullable: a record stored by an older agent may lack a newer field.
        return pa.struct([pa.field(name, arrow_type(field_type))
                          for name, field_type in get_type_hints(tp, include_extras=True).items()])
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string(),
            datetime: pa.timestamp("us", tz="UTC")}[tp]


def _column_arrow_type(column: Column) -> pa.DataType:
    if column.pg_type != "jsonb":
        return _ARROW_TYPES[column.pg_type]
    section, field = column.path
    section_type = get_type_hints(MetricsV1, include_extras=True)[section]
    return arrow_type(get_type_hints(section_type, include_extras=True)[field])


def arrow_schema() -> pa.Schema:
    return pa.schema([pa.field(c.name, _column_arrow_type(c),
                               nullable=c.name not in ("device_id", "session_id", "seq", "ts"))
                      for c in COLUMNS])


def write_parquet(chunks: Chunks, sink: io.RawIOBase, expected: Sequence[str],
                  on_rows: Callable[[int], None]) -> Iterator[None]:
    """Write the chunks to ``sink`` as one Parquet file; yield after each chunk."""
    schema = arrow_schema()
    with pq.ParquetWriter(sink, schema, compression="zstd") as parquet:
        for names, rows in chunks:
            assert names == list(expected), "export query and schema disagree"
            columns = list(zip(*rows, strict=True))
            arrays = [pa.array(columns[i], type=schema.field(i).type)
                      for i in range(len(COLUMNS))]
            parquet.write_table(pa.Table.from_arrays(arrays, schema=schema))
            on_rows(len(rows))
            yield
