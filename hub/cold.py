"""The cold tier: per-second readings older than the hot window, one row per device-hour.

Pure: the layout of a block, derived from :func:`shared.schema.metrics_columns`, and the
SQL that builds a block from hot rows, reads it back as rows and checks the two agree.
``hub/store.py`` runs it; ``hub/retention.py`` decides when.

A block (``metrics_cold``, key ``(device_id, hour)``) holds every reading of one device in
one UTC hour, column by column, as PostgreSQL arrays that TOAST compresses (pglz). Chosen
by measuring candidates on the real agent's readings (bench/storage.py --tiers, README):

* scalar columns become one array each, in reading order (``seq``, counters as
  ``bigint[]``, flags as ``boolean[]``, text as ``text[]``: a session id repeated 3,600
  times compresses to almost nothing); ``double precision`` columns ``double precision[]``,
  exact by construction and no larger than ``numeric[]`` of their shortest decimals;
* ``bigint`` parts (counters, ``seq``, the records' counters) are stored as differences
  from the element before when the part holds no null in the block (``delta`` lists them);
  readers add them up again (``metrics_cold_sum``, a bigint running sum). A counter going
  up by a few thousand a second needs 2-3 bytes where its value needs 5-6: ~35 % smaller;
* ``ts`` and ``received_at`` become microseconds since the block's hour (``ts__us``,
  ``received_at__us``), delta-coded too: 1 s apart, ~6x smaller than ``timestamptz[]``;
* lists of numbers (per-core %) and the jsonb lists of records (partitions, disks,
  interfaces, temperatures) become one array per record field, slot after slot (one
  interface's bytes over the hour side by side, null-padded past the reading's list;
  blocks of schema 4 hold a 2-D ``[slot][reading]`` array, which reads the same), plus
  ``<column>__n``, the list's length in each reading. jsonb numbers are ``numeric`` (``0.0``
  stays ``0.0``), kept as integers where they fit (see ``_SCALE``).

Not chosen (same bench, bench/README.md "Storage tiers"): lz4 (~25 % larger; pglz costs more
CPU, but the bytes target needs it); Parquet with zstd in a ``bytea`` (plain PostgreSQL
cannot give its rows back); numeric[] for the doubles (larger).

Schema evolution: each block lists the fields it holds (``parts``). A column added to the
schema later gets its array column (``ALTER TABLE … ADD COLUMN IF NOT EXISTS``,
:func:`ensure_sql`), old blocks have none and read back null — as the hot rows written
before the column existed do; a record field added later is left out of the records
rebuilt from blocks that lack it. Blocks of schema 4 (no ``delta``, timestamptz[] times,
numeric[] record numbers) read back through the same functions; a late reading merged into
one rewrites it in the current form.

Lossless is checked, not assumed. Every block's transaction checks its reading count against
the hot rows it deletes, and the build itself refuses the integer form for numbers of more
than 3 decimals. On a sample of blocks (``Store.compact_hour``'s ``check``: the first of a
run, one in ``cold_check_every``, every merged block and every hour with an agent restart)
it also reads the block back with the readers' own SQL and compares it with the hot rows
before it deletes anything (a 64-bit hash of every whole row, summed, on each side; the
jsonb lists as the text jsonb prints: :func:`verify_sql`): that read-back costs about 70 %
of the build. A block that differs is rolled back and its readings stay hot.
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
SUM = "metrics_cold_sum"  # bigint running sum (migration 0005): decodes delta-coded arrays
# Timestamps kept as microseconds since the block's hour, delta-coded: 1 s apart, they
# compress ~6x better than timestamptz[] (bench.storage --tiers).
_MICROS = ("ts", "received_at")
# A record's decimal number (jsonb numeric: the agent sends rates with up to 3 decimals) is
# kept as the integer 4·(v·1000) + (3 − its scale) in a bigint[] ``<part>__k``, not as
# numeric[] (which takes 8-12 bytes an element before compression): ~22 % smaller
# (bench.storage --tiers). A block whose numbers do not fit (more decimals, or beyond
# ±2^61/1000) keeps numeric[]: the compaction tries this first and falls back.
_SCALE = 1000
_MAX_NUMBERS = 600  # scaled fields × slots a block builds as columns (PostgreSQL allows 1,664)
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
    delta: bool = False  # bigint data: stored as differences when the block has no nulls in it
    micros: bool = False  # a timestamptz column kept as bigint microseconds since the hour
    legacy: bool = False  # read from blocks written before (schema 4), never written now
    scaled: bool = False  # a record's decimal number as an integer, see _SCALED


@dataclass(frozen=True)
class Layout:
    """The cold table's array columns for the current schema, in a stable order."""

    columns: tuple[Column, ...]
    parts: tuple[Part, ...]

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def parts_of(self, source: str) -> list[Part]:
        return [p for p in self.parts if p.source == source]

    @property
    def written(self) -> list[Part]:
        """The parts a block written now may hold (legacy ones are only read)."""
        return [p for p in self.parts if not p.legacy]

    def twin(self, p: Part) -> Part | None:
        """The other part holding the same record field (numeric[] and scaled), if any."""
        return next((o for o in self.parts_of(p.source) if o.field == p.field
                     and o.field is not None and o.scaled != p.scaled and not o.count), None)


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
                                  field=key, field_type=tp, delta=tp == "bigint"))
                if tp == "double precision":
                    parts.append(Part(f"{column.name}__{key}__k", "bigint[]", column.name,
                                      field=key, field_type=tp, scaled=True))
        elif column.pg_type.endswith("[]"):
            element = column.pg_type[:-2]
            parts.append(Part(f"{column.name}__n", "integer[]", column.name, count=True))
            parts.append(Part(column.name, _ARRAY_TYPES[element], column.name,
                              field_type=element, delta=element == "bigint"))
        elif column.name in _MICROS:
            parts.append(Part(column.name, _ARRAY_TYPES[column.pg_type], column.name,
                              legacy=True))
            parts.append(Part(f"{column.name}__us", "bigint[]", column.name, delta=True,
                              micros=True))
        else:
            parts.append(Part(column.name, _ARRAY_TYPES[column.pg_type], column.name,
                              delta=column.pg_type == "bigint"))
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
    statements.append(f"alter table {TABLE} add column if not exists delta text[]")
    # As in migration 0005 (a database migrated by the Supabase CLI has it already).
    statements.append(f"create or replace aggregate {SUM}(bigint) (sfunc = int8pl, "
                      "stype = bigint)")
    statements.append(rows_function_sql(lay))
    statements.append(history_function_sql(lay))
    names = ", ".join(_q(c.name) for c in lay.columns)
    statements.append(
        f"create or replace view {HISTORY_VIEW} with (security_invoker = true) as "
        f"select {names} from metrics union all "
        f"select {names} from {ROWS_FUNCTION}(null, '-infinity', 'infinity')")
    # The seed format's view (migration 0001) over both tiers, its columns unchanged.
    statements.append(SEED_VIEW_SQL)
    return statements


SEED_VIEW_SQL = f"""create or replace view metrics_seed with (security_invoker = true) as
select device_id, ts,
       cpu_percent as cpu_load,
       sensors_cpu_celsius as cpu_temp,
       memory_percent as ram_usage_percent,
       disk_read_bytes / 1048576.0::float8 as disk_read_mb,
       disk_write_bytes / 1048576.0::float8 as disk_write_mb,
       network_bytes_sent / 1048576.0::float8 as net_sent_mb,
       network_bytes_recv / 1048576.0::float8 as net_recv_mb,
       (throttling_throttled_now or throttling_freq_capped_now or throttling_soft_temp_limit_now)
           as is_throttling,
       (not sensors_battery_charging) as on_battery
from {HISTORY_VIEW}"""


def _list_columns(lay: Layout) -> list[Column]:
    """Columns stored per record field, slot after slot: jsonb lists and number lists."""
    return [c for c in lay.columns if c.pg_type == "jsonb" or c.pg_type.endswith("[]")]


def list_names(lay: Layout) -> list[str]:
    """The list columns, in the order :func:`slots_sql` gives their longest lists."""
    return [c.name for c in _list_columns(lay)]


def _unnested(lay: Layout) -> list[Part]:
    """Parts unnested side by side, one element per reading: scalars and list lengths."""
    return [p for p in lay.parts if p.count or (
        p.field is None and not lay_type(lay, p.source).endswith("[]"))]


def _decoded(p: Part, ref: str, window: str) -> str:
    """The value of element ``ref`` of part ``p``: a running sum when the block lists the
    part as delta-coded (``b.delta``, null in blocks of schema 4; see :func:`_delta_flags`)."""
    if not p.delta:
        return ref
    flag = f"a.{_q('delta__' + p.name)}"
    # The window is computed whatever the CASE picks: it sums nothing for raw values
    # (a sum of raw counters could leave bigint's range).
    return (f"case when {flag} then {SUM}(case when {flag} then {ref} end) over ({window}) "
            f"else {ref} end")


def _delta_flags(parts: list[Part]) -> list[str]:
    """Per block, whether each delta-capable part is delta-coded: looked up once (``b.delta``
    is compressed in the row; read per element it cost ~0.5 s a block)."""
    return [f"coalesce('{p.name}' = any(b.delta), false) as {_q('delta__' + p.name)}"
            for p in parts if p.delta]


def _json_key_order(parts: list[Part]) -> list[Part]:
    """Fields in the order jsonb prints an object's keys: shorter first, then bytewise."""
    return sorted(parts, key=lambda p: (len((p.field or "").encode()), (p.field or "").encode()))


def _lists_sql(lay: Layout, column: Column, canonical: bool = False) -> str:
    """A subquery giving (i, v): the list ``column`` of each reading ``i`` of block ``b``.

    Each part is unnested once (a subscript would decompress the whole array again for
    every element); element o holds slot (o-1)/N + 1 of reading (o-1)%N + 1, whether the
    block stored it as a [slot][reading] array (schema 4) or flat, slot after slot.

    ``canonical``: jsonb lists as the text jsonb itself prints (keys in jsonb's order,
    ``", "`` and ``": "``), not parsed: compaction compares it with the hot rows' text.
    """
    parts = [p for p in lay.parts_of(column.name) if not p.count]
    names = [f"f{j}" for j in range(len(parts))]
    rows_from = ", ".join(f"unnest(b.{_q(p.name)})" for p in parts)
    # A delta-coded list runs on from one slot to the next: one running sum over it all.
    window = "order by x.o"
    values = ", ".join(f"{_decoded(p, 'x.' + n, window)} as {n}"
                       for p, n in zip(parts, names, strict=True))
    if column.pg_type == "jsonb":
        # The reading's list is written as JSON text and parsed once: ~5x faster than
        # jsonb_build_object per record (measured), and numeric's text keeps its scale.
        named = dict(zip([p.name for p in parts], names, strict=True))
        fields = []
        plain = [p for p in parts if not p.scaled]
        for p in (_json_key_order(plain) if canonical else plain):
            n = named[p.name]
            text = f"to_json(x.{n})::text" if p.field_type == "text" else f"x.{n}::text"
            twin = lay.twin(p)
            if twin is not None:  # whichever of the two the block holds
                k = f"x.{named[twin.name]}"
                text = (f"coalesce({text}, round(({k} >> 2) * {1 / _SCALE}, "
                        f"3 - ({k} & 3)::integer)::text)")
            fields.append(f"'\"{p.field}\":{' ' if canonical else ''}' || "
                          f"coalesce({text}, 'null')")
        sep = "', '" if canonical else "','"
        record = "'{' || " + f" || {sep} || ".join(fields) + " || '}'"
        listed = f"'[' || string_agg({record}, {sep} order by x.o) || ']'"
        if canonical:
            value = listed
        else:
            listed = f"({listed})::jsonb"
            absent = f"a.{_q('absent__' + column.name)}"
            # Keys a block lacks (a field added later) are taken out of each record.
            value = (f"case when cardinality({absent}) = 0 then {listed} else (select "
                     f"jsonb_agg(e - {absent} order by k) from jsonb_array_elements({listed}) "
                     "with ordinality as j(e, k)) end")
    else:
        value = "array_agg(x.f0 order by x.o)"
    # Padding is a slot with every field null: a real record always has its name (and a
    # per-core value is never null), and compaction checks the block reads back exactly.
    return (f"(select x.i, {value} as v from (select mod(x.o - 1, b.readings) + 1 as i, x.o, "
            f"{values} from rows from ({rows_from}) with ordinality as "
            f"x({', '.join(names)}, o)) x "
            f"where num_nonnulls({', '.join('x.' + n for n in names)}) > 0 group by 1)")


def _scalar_value(lay: Layout, column: Column, alias: str) -> str:
    """A scalar column from the decoded parts in ``alias``: timestamps kept as
    microseconds since the hour are turned back (a block of schema 4 has them as is)."""
    if any(p.micros for p in lay.parts_of(column.name)):
        return (f"coalesce({alias}.{_q(column.name)}, b.hour + "
                f"{alias}.{_q(column.name + '__us')}::float8 * interval '1 microsecond')")
    return f"{alias}.{_q(column.name)}"


def _decode(lay: Layout, column: Column) -> str:
    """The SQL expression giving ``column`` of reading ``r.i`` of block ``b``."""
    if column.name == "device_id":
        return "b.device_id"
    if column in _list_columns(lay):
        empty = ("'[]'" if column.pg_type == "jsonb"
                 else f"'{{}}'::{column.pg_type}")
        # A block older than the column has no lengths for it: null, as in the hot rows.
        return (f"case when b.{_q(column.name + '__n')} is null then null "
                f"else coalesce(r.{_q('l__' + column.name)}, {empty}) end")
    return _scalar_value(lay, column, "r")


def cold_select_sql(lay: Layout, columns: list[str], device: str, start: str, end: str,
                    canonical: bool = False) -> str:
    """A SELECT of ``columns`` of the cold readings of ``device`` (null: all) in [start, end).

    Only the arrays those columns need are opened: a series of three columns reads three
    arrays (and ``ts``) of each block, not a hundred. ``canonical``: jsonb lists as the
    text jsonb prints (see :func:`_lists_sql`), for compaction's check.
    """
    wanted = [c for c in lay.columns if c.name in columns]
    lists = [c for c in _list_columns(lay) if c in wanted]
    unnested = [p for p in _unnested(lay) if p.source == "ts" or (p.source in columns
                and p.source != "device_id")]
    names = [p.name for p in unnested]
    rows_from = ", ".join(f"unnest(b.{_q(n)})" for n in names)
    aliases = ", ".join(_q(n) for n in names)
    decoded = ", ".join(f"{_decoded(p, 'u.' + _q(p.name), 'order by u.i')} as {_q(p.name)}"
                        for p in unnested)
    selects = ", ".join(
        f"{_decode(lay, c)}{'::jsonb' if c.pg_type == 'jsonb' and not canonical else ''} "
        f"as {_q(c.name)}" for c in wanted)
    joins = "".join(f" left join {_lists_sql(lay, c, canonical)} {_q('l__' + c.name)} "
                    f"on {_q('l__' + c.name)}.i = d.i" for c in lists)
    list_values = "".join(f", {_q('l__' + c.name)}.v as {_q('l__' + c.name)}" for c in lists)
    # Record keys a block lacks (a field added to the schema after it was written): once
    # per block, then removed from every record rebuilt from it.
    absent = []
    for column in lists:
        if column.pg_type != "jsonb" or canonical:
            continue
        fields = dict.fromkeys(p.field for p in lay.parts_of(column.name) if not p.count)
        listed = ", ".join(f"'{f}'" for f in fields)
        absent.append(f"array(select f from unnest(array[{listed}]::text[]) f where "
                      f"'{column.name}__' || f <> all(b.parts)) as {_q('absent__' + column.name)}")
    listed_parts = [p for c in lists for p in lay.parts_of(c.name) if not p.count]
    absent += _delta_flags(unnested + listed_parts)
    ts = _scalar_value(lay, next(c for c in lay.columns if c.name == "ts"), "d")
    return (
        f"select {selects} "
        f"from {TABLE} b cross join lateral (select {', '.join(absent) or '1 as none'} "
        # OFFSET 0: computed once per block, not pulled up into every element's expression.
        "offset 0) a "
        f"cross join lateral (select d.*{list_values} from (select {decoded}, u.i from "
        f"rows from ({rows_from}) with ordinality as u({aliases}, i)) d{joins} "
        f"where {ts} >= {start} and {ts} < {end}) r "
        f"where ({device} is null or b.device_id = {device}) "
        f"and b.hour > {start} - interval '1 hour' and b.hour < {end}")


def rows_function_sql(lay: Layout) -> str:
    """``metrics_cold_rows(device, start, end)``: the cold readings as ``metrics`` rows.

    ``device`` null means every device. Only blocks overlapping [start, end) are opened.
    Scalars and list lengths are unnested side by side (ROWS FROM zips them; a column
    missing from an old block gives nulls), delta-coded ones summed back; lists are
    regrouped per reading and joined.
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


def cold_keys_sql(staging: str) -> str:
    """The keys (device_id, ts, session_id, seq) held by the cold blocks of the device-hours
    of ``staging``'s rows older than the newest cold hour: each block decoded once, then
    probed by every incoming row (a redelivery of a reading already compacted)."""
    lay = layout()
    hours = (f"select distinct s.device_id, date_bin('1 hour', s.ts, {_ORIGIN}) as hour "
             f"from {staging} s where s.ts < coalesce((select max(hour) + interval '1 hour' "
             f"from {TABLE}), '-infinity')")
    keys = cold_select_sql(lay, list(KEY), "t.device_id", "t.hour",
                           "t.hour + interval '1 hour'")
    return f"select c.* from ({hours}) t cross join lateral ({keys}) c"


# --- compaction -------------------------------------------------------------------------------

def lay_type(lay: Layout, column: str) -> str:
    return next(c.pg_type for c in lay.columns if c.name == column)


def slots_sql(lay: Layout, source: str) -> str:
    """The longest list of each list column in ``source`` (the slots a block gives it)."""
    longest = ", ".join(
        f"coalesce(max(jsonb_array_length({_q(c.name)})), 0)" if c.pg_type == "jsonb"
        else f"coalesce(max(cardinality({_q(c.name)})), 0)" for c in _list_columns(lay))
    return f"select {longest} from {source}"


def _items(column: Column) -> str:
    return _q("x__" + column.name)


def _elements(lay: Layout, p: Part, slots: dict[str, int]) -> list[str]:
    """Part ``p``'s value in row ``r``: one expression per slot of a list (slot after
    slot), else one. A reading with fewer records gives nulls past its list (padding), as
    does a key its record lacks."""
    column = next(c for c in lay.columns if c.name == p.source)
    value = f"r.{_q(p.source)}"
    if p.count:
        return [f"jsonb_array_length({value})" if column.pg_type == "jsonb"
                else f"coalesce(cardinality({value}), 0)"]
    if p.micros:
        return [f"r.{_q('us__' + p.source)}"]
    if column not in _list_columns(lay):
        return [value]
    elements = []
    for k in range(1, slots[column.name] + 1):
        if column.pg_type != "jsonb":
            elements.append(f"{value}[{k}]")
        elif p.field_type == "text":
            elements.append(f"r.{_items(column)}[{k}] ->> '{p.field}'")
        else:
            # jsonb → numeric/bigint/boolean directly (no text round trip; a JSON null is
            # made SQL null first, as the casts refuse it).
            target = "numeric" if p.field_type == "double precision" else p.field_type
            value = f"nullif(r.{_items(column)}[{k}] -> '{p.field}', 'null')::{target}"
            if p.scaled:  # more decimals round here: the check refuses, numeric[] is used
                number = f"r.{_number(p, k)}"  # the numeric, extracted once in ``r``
                value = f"({number} * {_SCALE})::bigint * 4 + (3 - scale({number}))"
            elements.append(value)
    return elements


def _number(p: Part, slot: int) -> str:
    return _q(f"n__{p.name}__{slot}")


def _numbers(lay: Layout, slots: dict[str, int]) -> dict[str, str]:
    """Columns of ``r`` (name → expression): each scaled record field of each slot as
    numeric (used twice)."""
    out = {}
    for p in lay.written:
        if p.scaled:
            column = next(c for c in lay.columns if c.name == p.source)
            for k in range(1, slots[p.source] + 1):
                out[_number(p, k)] = (f"nullif({_items(column)}[{k}] -> '{p.field}', "
                                      "'null')::numeric")
    return out


def _concat(aggregates: list[str], pg_type: str) -> str:
    return " || ".join(aggregates) if aggregates else f"'{{}}'::{pg_type}"


def _no_nulls(p: Part) -> str:
    return f"array_position(a.{_q(p.name)}, null) is null"


def _differences(parts: list[Part]) -> str:
    """A subquery over the aggregates ``a``: each of ``parts`` as differences from the
    element before (the first from 0), all in one pass (each array zipped with itself one
    place later; one scan for every part is cheaper than one each, and than ``lag()``)."""
    if not parts:
        return "(select) d"
    rows_from = ", ".join(f"unnest(a.{_q(p.name)}), unnest(array_prepend(0::bigint, "
                          f"a.{_q(p.name)}))" for p in parts)
    names = ", ".join(f"v{j}, w{j}" for j in range(len(parts)))
    aggs = ", ".join(f"coalesce(array_agg(x.v{j} - x.w{j}) filter (where x.v{j} is not null), "
                     f"'{{}}') as {_q(p.name)}" for j, p in enumerate(parts))
    return f"(select {aggs} from rows from ({rows_from}) as x({names})) d"


def insert_block_sql(lay: Layout, source: str, slots: dict[str, int],
                     scaled: bool = True) -> str:
    """Insert one block built from ``source`` (metrics rows of one device-hour).

    ``slots``: the longest list of each list column (:func:`slots_sql`). Parameters:
    ``%(device)s``, ``%(hour)s``. Inserts nothing when ``source`` is empty.

    One pass over the rows in reading order: each reading's jsonb lists are split into
    their records once (a jsonb[]), then every part is one ``array_agg`` per slot, the
    slots concatenated. A delta-capable part holding no null is then kept as differences
    (the reader's running sum gives the values back; a list's slots run on as one
    sequence). Timestamps become microseconds since the hour first. ``scaled``: records'
    decimal numbers as integers (see ``_SCALE``), else as numeric[].

    Returns one row: (readings in ``source``, readings the block holds or null when it
    was not written, whether the readings span more than one agent session). A scaled
    block is not written when a number has more than 3 decimals.
    """
    names = ", ".join(_q(c.name) for c in lay.columns)
    items = "".join(f", array(select jsonb_array_elements({_q(c.name)})) as {_items(c)}"
                    for c in _list_columns(lay) if c.pg_type == "jsonb")
    micros = "".join(
        f", (extract(epoch from {_q(p.source)} - %(hour)s::timestamptz) * 1000000)::bigint "
        f"as {_q('us__' + p.source)}" for p in lay.written if p.micros)
    numbers = _numbers(lay, slots) if scaled else {}
    if len(numbers) > _MAX_NUMBERS:  # hundreds of interfaces: numeric[], no extra columns
        scaled, numbers = False, {}
    written = [p for p in lay.written if p.scaled == scaled or lay.twin(p) is None]
    aggs = ", ".join(
        _concat([f"array_agg({e})" for e in _elements(lay, p, slots)], p.pg_type)
        + f" as {_q(p.name)}" for p in written)
    # A part holding a null is kept as it is (a running sum cannot skip one).
    finals = ", ".join(f"case when {_no_nulls(p)} then d.{_q(p.name)} else a.{_q(p.name)} end"
                       if p.delta else f"a.{_q(p.name)}" for p in written)
    delta = ", ".join(f"case when {_no_nulls(p)} then '{p.name}' end"
                      for p in written if p.delta)
    # A scaled field is listed by its plain name too: the readers look for it there.
    listed = [p.name for p in written] + [t.name for p in written if p.scaled
                                          for t in [lay.twin(p)] if t is not None]
    parts = "array[" + ", ".join(f"'{n}'" for n in listed) + "]::text[]"
    targets = ", ".join(_q(p.name) for p in written)
    # The CTE is filled in reading order and its scan reads it back in that order: every
    # aggregate sees the readings sorted without a sort of its own (and the check after
    # it would refuse the block if not).
    extracted = "".join(f", {e} as {n}" for n, e in numbers.items())
    # The most decimals any scaled number has: over 3 the integers cannot hold it exactly,
    # and the block is not written (the caller builds it again with numeric[]).
    decimals = (f"max(greatest({', '.join(f'scale({n})' for n in numbers)}))"
                if numbers else "0")
    return (f"with r0 as materialized (select {names}{items}{micros} from {source} "
            "order by ts, session_id, seq), "
            # OFFSET 0: each number extracted once per row, not once per use.
            f"r as (select r0.*{extracted} from r0 offset 0), "
            f"a as (select count(*) as n, {decimals} as decimals, "
            f"min(session_id) is distinct from max(session_id) as restarted, {aggs} from r), "
            f"w as (insert into {TABLE} (device_id, hour, readings, parts, delta, {targets}) "
            f"select %(device)s, %(hour)s, a.n, {parts}, "
            f"array_remove(array[{delta}]::text[], null), {finals} from a cross join lateral "
            f"{_differences([p for p in written if p.delta])} where a.n > 0 and "
            f"coalesce(a.decimals, 0) <= 3 returning readings) "
            "select a.n, (select readings from w), a.restarted from a")


def hot_rows_sql(lay: Layout) -> str:
    """The hot rows of one device-hour (parameters device, hour, end)."""
    names = ", ".join(_q(c.name) for c in lay.columns)
    return (f"select {names} from metrics where device_id = %(device)s "
            "and ts >= %(hour)s and ts < %(end)s")


def verify_sql(lay: Layout, expected: str) -> str:
    """Compare the block read back with the rows it was built from: (differ, readings).

    Each side is one pass giving its row count and the sum of a 64-bit hash of every
    whole row (``hash_record_extended``: each column by its type's own hash, so a wrong
    value, a null for a value or a value moved to another reading changes it). The jsonb
    lists are compared as the text jsonb prints them: the block's side is the very text
    the reader parses, so equal text means the reader gives back the same jsonb (and
    ``0.0`` stays ``0.0``). Replaces ``EXCEPT ALL`` of whole rows both ways, which sorted
    both sides and cost more than building the block.
    """
    columns = [c.name for c in lay.columns]
    hot = ", ".join(f"{_q(c.name)}::text" if c.pg_type == "jsonb" else _q(c.name)
                    for c in lay.columns)
    block = cold_select_sql(lay, columns, "%(device)s::text", "%(hour)s::timestamptz",
                            "%(end)s::timestamptz", canonical=True)
    return (f"select (w.n, w.h) is distinct from (d.n, d.h) as differ, d.n as decoded from "
            f"(select count(*) as n, sum(hash_record_extended(w.*, 0)::numeric) as h from "
            f"(select {hot} from {expected}) w) w, "
            f"(select count(*) as n, sum(hash_record_extended(d.*, 0)::numeric) as h from "
            f"({block}) d) d")


def candidates_sql() -> str:
    """Device-hours with hot rows older than ``%(before)s``, oldest first (``%(limit)s``)."""
    return (f"select device_id, date_bin('1 hour', ts, {_ORIGIN}) as hour, count(*) as n "
            "from metrics where ts < %(before)s group by 1, 2 order by 2, 1 limit %(limit)s")


def cold_bytes_sql(lay: Layout) -> str:
    """Bytes the cold tier's blocks take as stored (compressed), and block/reading counts."""
    sizes = " + ".join(f"coalesce(pg_column_size({_q(p.name)}), 0)" for p in lay.parts)
    return (f"select count(*) as blocks, coalesce(sum(readings), 0) as readings, "
            f"coalesce(sum({sizes} + 64), 0) as bytes from {TABLE}")
