"""The cold tier: per-second readings older than the hot window, one row per device-hour.

Pure: the layout of a block, derived from :func:`shared.schema.metrics_columns`, and the
SQL that builds a block from hot rows, reads it back as rows and checks the two agree.
``hub/store.py`` runs it; ``hub/retention.py`` decides when.

A block (``metrics_cold``, key ``(device_id, hour)``) holds every reading of one device in
one UTC hour, column by column, as PostgreSQL arrays that TOAST compresses (pglz). Chosen
by measuring candidates on the real agent's readings (bench/storage.py, README):

* scalar columns become one array each, in reading order (``ts``, ``seq``, counters as
  ``bigint[]``, flags as ``boolean[]``, text as ``text[]``: a session id repeated 3,600
  times compresses to almost nothing);
* ``double precision`` columns become ``double precision[]``: exact by construction, and
  measured no larger than ``numeric[]`` of their shortest decimals (bench/storage.py
  --tiers, candidates), which cost a text conversion per value both ways;
* lists of numbers (per-core %) and the jsonb lists of records (partitions, disks,
  interfaces, temperatures) become one 2-D array per record field, ``[slot][reading]``
  (one interface's bytes over the hour sit side by side, null-padded past the reading's
  list), plus ``<column>__n``, the list's length in each reading. jsonb numbers go to
  ``numeric`` as they are, so ``0.0`` stays ``0.0``.

Not chosen (same bench, bench/README.md "Storage tiers"): lz4 (~16 % larger); Parquet with
zstd in a ``bytea`` (~12 % smaller, but plain PostgreSQL cannot give its rows back); counters
delta-encoded (~7 % smaller here, ~19 % with the lists' counters and the timestamps: the next
step, at the price of a running sum per column when reading back).

Schema evolution: each block lists the physical columns it holds (``parts``). A column
added to the schema later gets its array column (``ALTER TABLE … ADD COLUMN IF NOT
EXISTS``, :func:`ensure_sql`), old blocks have none and read back null — as the hot rows
written before the column existed do; a record field added later is left out of the
records rebuilt from blocks that lack it.

Lossless is checked, not assumed: the compaction's transaction rebuilds the block's rows
with the very function readers use and compares them with the hot rows (``EXCEPT ALL``
both ways, counts equal) before it deletes anything.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from typing_extensions import is_typeddict

from shared.schema import Column, MetricsV1, metrics_columns

TABLE = "metrics_cold"
BLOCK = timedelta(hours=1)
ROWS_FUNCTION = "metrics_cold_rows"  # (device, start, end) → setof metrics, cold only
HISTORY_FUNCTION = "metrics_history"  # (device, start, end) → setof metrics, both tiers
HISTORY_VIEW = "metrics_all"  # every reading of both tiers, for people's own SQL
KEY = ("device_id", "ts", "session_id", "seq")
_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"
_ARRAY_TYPES = {"text": "text[]", "bigint": "bigint[]", "boolean": "boolean[]",
                "timestamptz": "timestamptz[]", "double precision": "double precision[]"}
# Record fields come from jsonb, whose numbers are numeric: kept as numeric, so the JSON
# reads back as stored (0.0 stays 0.0, 5 stays 5).
_RECORD_ARRAY_TYPES = {**_ARRAY_TYPES, "double precision": "numeric[]"}


@dataclass(frozen=True)
class Part:
    """One array column of ``metrics_cold``."""

    name: str  # physical column name
    pg_type: str  # its SQL type
    source: str  # the metrics column it comes from
    field: str | None = None  # the record's key (jsonb lists), or None
    field_type: str | None = None  # the record field's scalar SQL type
    count: bool = False  # the ``__n`` lengths of a list column


@dataclass(frozen=True)
class Layout:
    """The cold table's array columns for the current schema, in a stable order."""

    columns: tuple[Column, ...]
    parts: tuple[Part, ...]

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def parts_of(self, source: str) -> list[Part]:
        return [p for p in self.parts if p.source == source]


def _scalar(tp: Any) -> Any:
    """Strip Annotated and ``| None`` from a schema annotation."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _scalar(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _scalar(inner)
    return tp


def _record_fields(column: Column) -> list[tuple[str, str]]:
    """The (key, SQL type) of each field of the records a jsonb list column holds."""
    section_type = get_type_hints(MetricsV1, include_extras=True)[column.path[0]]
    list_type = _scalar(get_type_hints(section_type, include_extras=True)[column.path[1]])
    (item,) = get_args(list_type)
    item = _scalar(item)
    if not is_typeddict(item):
        raise TypeError(f"{column.name}: jsonb column of non-records")
    fields = []
    for key, tp in get_type_hints(item, include_extras=True).items():
        inner = _scalar(tp)
        fields.append((key, {bool: "boolean", int: "bigint", float: "double precision",
                             str: "text"}[inner]))
    return fields


def layout(columns: list[Column] | None = None) -> Layout:
    """Derive the cold table's array columns from the ``metrics`` columns."""
    columns = metrics_columns() if columns is None else columns
    parts: list[Part] = []
    for column in columns:
        if column.name == "device_id":
            continue
        if column.pg_type == "jsonb":
            parts.append(Part(f"{column.name}__n", "integer[]", column.name, count=True))
            for key, tp in _record_fields(column):
                parts.append(Part(f"{column.name}__{key}", _RECORD_ARRAY_TYPES[tp], column.name,
                                  field=key, field_type=tp))
        elif column.pg_type.endswith("[]"):
            element = column.pg_type[:-2]
            parts.append(Part(f"{column.name}__n", "integer[]", column.name, count=True))
            parts.append(Part(column.name, _ARRAY_TYPES[element], column.name,
                              field_type=element))
        else:
            parts.append(Part(column.name, _ARRAY_TYPES[column.pg_type], column.name))
    return Layout(tuple(columns), tuple(parts))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def hour_of(ts: datetime) -> datetime:
    """The start of the UTC hour holding ``ts`` (a block's key)."""
    ts = ts.astimezone(UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


# --- DDL --------------------------------------------------------------------------------------

def ensure_sql(lay: Layout) -> list[str]:
    """Statements that give ``metrics_cold`` an array column per part and (re)create the
    functions and view that read it; idempotent, run by the hub at start after migrating."""
    statements = [f"alter table {TABLE} add column if not exists {_q(p.name)} {p.pg_type}"
                  for p in lay.parts]
    statements.append(rows_function_sql(lay))
    statements.append(history_function_sql(lay))
    names = ", ".join(_q(c.name) for c in lay.columns)
    statements.append(
        f"create or replace view {HISTORY_VIEW} with (security_invoker = true) as "
        f"select {names} from metrics union all "
        f"select {names} from {ROWS_FUNCTION}(null, '-infinity', 'infinity')")
    return statements


def _list_columns(lay: Layout) -> list[Column]:
    """Columns stored as 2-D ``[slot][reading]`` arrays: jsonb lists and number lists."""
    return [c for c in lay.columns if c.pg_type == "jsonb" or c.pg_type.endswith("[]")]


def _unnested(lay: Layout) -> list[Part]:
    """Parts unnested side by side, one element per reading: scalars and list lengths."""
    return [p for p in lay.parts if p.count or (
        p.field is None and not lay_type(lay, p.source).endswith("[]"))]


def _lists_sql(lay: Layout, column: Column) -> str:
    """A subquery giving (i, v): the list ``column`` of each reading ``i`` of block ``b``.

    Each 2-D part is unnested once (a subscript would decompress the whole array again
    for every element); element o of a [slot][reading] array is slot (o-1)/N + 1 of
    reading (o-1)%N + 1.
    """
    parts = [p for p in lay.parts_of(column.name) if not p.count]
    names = [f"f{j}" for j in range(len(parts))]
    rows_from = ", ".join(f"unnest(b.{_q(p.name)})" for p in parts)
    if column.pg_type == "jsonb":
        # The reading's list is written as JSON text and parsed once: ~5x faster than
        # jsonb_build_object per record (measured), and numeric's text keeps its scale.
        fields = []
        for p, n in zip(parts, names, strict=True):
            text = f"to_json(x.{n})::text" if p.field_type == "text" else f"x.{n}::text"
            fields.append(f"'\"{p.field}\":' || coalesce({text}, 'null')")
        record = "'{' || " + " || ',' || ".join(fields) + " || '}'"
        absent = f"a.{_q('absent__' + column.name)}"
        listed = f"('[' || string_agg({record}, ',' order by x.o) || ']')::jsonb"
        # Keys a block lacks (a field added later) are taken out of each record.
        value = (f"case when cardinality({absent}) = 0 then {listed} else (select "
                 f"jsonb_agg(e - {absent} order by k) from jsonb_array_elements({listed}) "
                 "with ordinality as j(e, k)) end")
    else:
        value = "array_agg(x.f0 order by x.o)"
    # Padding is a slot with every field null: a real record always has its name (and a
    # per-core value is never null), and compaction checks the block reads back exactly.
    return (f"(select mod(x.o - 1, b.readings) + 1 as i, {value} as v "
            f"from rows from ({rows_from}) with ordinality as x({', '.join(names)}, o) "
            f"where num_nonnulls({', '.join('x.' + n for n in names)}) > 0 group by 1)")


def _decode(lay: Layout, column: Column) -> str:
    """The SQL expression giving ``column`` of reading ``u.i`` of block ``b``."""
    if column.name == "device_id":
        return "b.device_id"
    if column in _list_columns(lay):
        empty = "'[]'::jsonb" if column.pg_type == "jsonb" else f"'{{}}'::{column.pg_type}"
        # A block older than the column has no lengths for it: null, as in the hot rows.
        return (f"case when b.{_q(column.name + '__n')} is null then null "
                f"else coalesce(r.{_q('l__' + column.name)}, {empty}) end")
    return f"r.{_q(column.name)}"


def cold_select_sql(lay: Layout, columns: list[str], device: str, start: str, end: str) -> str:
    """A SELECT of ``columns`` of the cold readings of ``device`` (null: all) in [start, end).

    Only the arrays those columns need are opened: a series of three columns reads three
    arrays (and ``ts``) of each block, not a hundred.
    """
    wanted = [c for c in lay.columns if c.name in columns]
    lists = [c for c in _list_columns(lay) if c in wanted]
    unnested = [p for p in _unnested(lay) if p.source == "ts" or (p.source in columns
                and p.source != "device_id")]
    names = [p.name for p in unnested]
    rows_from = ", ".join(f"unnest(b.{_q(n)})" for n in names)
    aliases = ", ".join(_q(n) for n in names)
    selects = ", ".join(f"{_decode(lay, c)} as {_q(c.name)}" for c in wanted)
    joins = "".join(f" left join {_lists_sql(lay, c)} {_q('l__' + c.name)} "
                    f"on {_q('l__' + c.name)}.i = u.i" for c in lists)
    list_values = "".join(f", {_q('l__' + c.name)}.v as {_q('l__' + c.name)}" for c in lists)
    # Record keys a block lacks (a field added to the schema after it was written): once
    # per block, then removed from every record rebuilt from it.
    absent = []
    for column in lists:
        if column.pg_type != "jsonb":
            continue
        fields = [p.field for p in lay.parts_of(column.name) if not p.count]
        listed = ", ".join(f"'{f}'" for f in fields)
        absent.append(f"array(select f from unnest(array[{listed}]::text[]) f where "
                      f"'{column.name}__' || f <> all(b.parts)) as {_q('absent__' + column.name)}")
    return (
        f"select {selects} "
        f"from {TABLE} b cross join lateral (select {', '.join(absent) or '1 as none'}) a "
        f"cross join lateral (select u.*{list_values} from rows from ({rows_from}) with "
        f"ordinality as u({aliases}, i){joins} "
        f"where u.ts >= {start} and u.ts < {end}) r "
        f"where ({device} is null or b.device_id = {device}) "
        f"and b.hour > {start} - interval '1 hour' and b.hour < {end}")


def rows_function_sql(lay: Layout) -> str:
    """``metrics_cold_rows(device, start, end)``: the cold readings as ``metrics`` rows.

    ``device`` null means every device. Only blocks overlapping [start, end) are opened.
    Scalars and list lengths are unnested side by side (ROWS FROM zips them; a column
    missing from an old block gives nulls); lists are regrouped per reading and joined.
    """
    body = cold_select_sql(lay, [c.name for c in lay.columns], "p_device", "p_start", "p_end")
    return (
        f"create or replace function {ROWS_FUNCTION}(p_device text, p_start timestamptz, "
        # No SET clause: it would stop the planner inlining the function, and inlined, a
        # query reading a few columns skips rebuilding the lists it does not use.
        f"p_end timestamptz) returns setof metrics language sql stable as $fn$\n{body}\n$fn$")


def history_function_sql(lay: Layout) -> str:
    """``metrics_history(device, start, end)``: both tiers as ``metrics`` rows."""
    names = ", ".join(_q(c.name) for c in lay.columns)
    return (
        f"create or replace function {HISTORY_FUNCTION}(p_device text, p_start timestamptz, "
        "p_end timestamptz) returns setof metrics language sql stable as $fn$\n"
        f"select {names} from metrics where (p_device is null or device_id = p_device) "
        "and ts >= p_start and ts < p_end\n"
        f"union all select {names} from {ROWS_FUNCTION}(p_device, p_start, p_end)\n$fn$")


def history_source(columns: list[str]) -> str:
    """A FROM item: ``columns`` of one device's readings of both tiers in [start, end).

    Parameters ``%(device)s``, ``%(start)s``, ``%(end)s``. Reads only the arrays the
    columns need (``metrics_history()`` would unnest every array of each block).
    """
    lay = layout()
    # In the table's order, as cold_select_sql gives them: UNION ALL pairs columns by position.
    wanted = {"ts", *columns}
    names = [c.name for c in lay.columns if c.name in wanted]
    listed = ", ".join(_q(n) for n in names)
    params = ("%(device)s::text", "%(start)s::timestamptz", "%(end)s::timestamptz")
    return (f"(select {listed} from metrics where device_id = {params[0]} and ts >= "
            f"{params[1]} and ts < {params[2]} union all "
            f"{cold_select_sql(lay, names, *params)}) m")


# --- compaction -------------------------------------------------------------------------------

def lay_type(lay: Layout, column: str) -> str:
    return next(c.pg_type for c in lay.columns if c.name == column)


def _scalar_encode(lay: Layout, p: Part) -> str:
    """The aggregate building scalar or length part ``p`` from the rows ``r``."""
    column = f"r.{_q(p.source)}"
    if p.count:
        length = (f"jsonb_array_length({column})" if lay_type(lay, p.source) == "jsonb"
                  else f"coalesce(cardinality({column}), 0)")
        return f"array_agg({length})"
    # No ORDER BY per aggregate (one sort each): they all read ``r`` in one pass, sorted.
    return f"array_agg({column})"


def _list_ctes(lay: Layout, column: Column) -> tuple[list[str], list[str]]:
    """CTEs turning the list ``column`` of every reading into one 2-D array per field.

    Each reading's list is parsed once (``jsonb_to_recordset``: jsonb numbers go to
    ``numeric`` unchanged), then every slot gets a value for every reading (null past the
    reading's list) so the [slot][reading] arrays are rectangular, as PostgreSQL needs.
    Returns (CTEs, the expression of each of the column's data parts, in part order).
    """
    parts = [p for p in lay.parts_of(column.name) if not p.count]
    tag = column.name
    items, slots = _q("e__" + tag), _q("s__" + tag)
    if column.pg_type == "jsonb":
        # jsonb → numeric/bigint/boolean directly (no text round trip; a JSON null is
        # made SQL null first, as the casts refuse it): ~3x faster than jsonb_to_recordset.
        def value(p: Part) -> str:
            key = f"x.e -> '{p.field}'"
            if p.field_type == "text":
                return f"x.e ->> '{p.field}'"
            target = "numeric" if p.field_type == "double precision" else p.field_type
            return f"nullif({key}, 'null')::{target}"
        fields = [_q(p.field or "") for p in parts]
        picks = ", ".join(f"{value(p)} as {f}" for p, f in zip(parts, fields, strict=True))
        expand = (f"{items} as (select r.o__i, x.o__k, {picks} from r cross join lateral "
                  f"jsonb_array_elements(r.{_q(column.name)}) with ordinality as x(e, o__k))")
    else:
        fields = ["v"]
        expand = (f"{items} as (select r.o__i, x.v, x.o__k from r cross join "
                  f"lateral unnest(r.{_q(column.name)}) with ordinality as x(v, o__k))")
    aggs = ", ".join(f"array_agg(e.{f} order by r.o__i) as a{j}" for j, f in enumerate(fields))
    grid = (f"{slots} as (select k.o__k, {aggs} from r cross join generate_series(1, "
            f"(select coalesce(max(o__k), 0) from {items})) as k(o__k) left join {items} e "
            "on e.o__i = r.o__i and e.o__k = k.o__k group by k.o__k)")
    exprs = [f"(select coalesce(array_agg(a{j} order by o__k), '{{}}') from {slots})"
             for j in range(len(fields))]
    return [expand, grid], exprs


def insert_block_sql(lay: Layout, source: str) -> str:
    """Insert one block built from ``source`` (metrics rows of one device-hour).

    Parameters: ``%(device)s``, ``%(hour)s``. Inserts nothing when ``source`` is empty.
    """
    names = ", ".join(_q(c.name) for c in lay.columns)
    ctes = [f"r as materialized (select {names}, row_number() over (order by ts, session_id, "
            f"seq) as o__i from {source})"]
    expr: dict[str, str] = {}
    for column in _list_columns(lay):
        more, exprs = _list_ctes(lay, column)
        ctes += more
        data = [p for p in lay.parts_of(column.name) if not p.count]
        expr.update({p.name: e for p, e in zip(data, exprs, strict=True)})
    aggs = ", ".join(expr.get(p.name) or _scalar_encode(lay, p) for p in lay.parts)
    parts = "array[" + ", ".join(f"'{p.name}'" for p in lay.parts) + "]::text[]"
    targets = ", ".join(_q(p.name) for p in lay.parts)
    return (f"with {', '.join(ctes)} "
            f"insert into {TABLE} (device_id, hour, readings, parts, {targets}) "
            f"select %(device)s, %(hour)s, count(*), {parts}, {aggs} "
            "from (select * from r order by o__i) r "
            "having count(*) > 0")


def hot_rows_sql(lay: Layout) -> str:
    """The hot rows of one device-hour (parameters device, hour, end)."""
    names = ", ".join(_q(c.name) for c in lay.columns)
    return (f"select {names} from metrics where device_id = %(device)s "
            "and ts >= %(hour)s and ts < %(end)s")


def verify_sql(lay: Layout, expected: str) -> str:
    """Count rows that differ between ``expected`` and the block read back (0 = lossless)."""
    names = ", ".join(_q(c.name) for c in lay.columns)
    # Each side once (materialized): the read-back is most of compaction's cost.
    return (f"with d as materialized (select {names} from {ROWS_FUNCTION}(%(device)s, "
            f"%(hour)s, %(end)s)), w as materialized (select {names} from {expected}) "
            "select (select count(*) from (select * from w except all select * from d) a) + "
            "(select count(*) from (select * from d except all select * from w) b) as differ, "
            "(select count(*) from d) as decoded")


def candidates_sql() -> str:
    """Device-hours with hot rows older than ``%(before)s``, oldest first (``%(limit)s``)."""
    return (f"select device_id, date_bin('1 hour', ts, {_ORIGIN}) as hour, count(*) as n "
            "from metrics where ts < %(before)s group by 1, 2 order by 2, 1 limit %(limit)s")


def cold_bytes_sql(lay: Layout) -> str:
    """Bytes the cold tier's blocks take as stored (compressed), and block/reading counts."""
    sizes = " + ".join(f"coalesce(pg_column_size({_q(p.name)}), 0)" for p in lay.parts)
    return (f"select count(*) as blocks, coalesce(sum(readings), 0) as readings, "
            f"coalesce(sum({sizes} + 64), 0) as bytes from {TABLE}")
