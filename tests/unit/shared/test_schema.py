"""One schema: the JSON Schema files, the migration and the COPY columns follow the models."""

import re
from pathlib import Path

from shared import jsonschema
from shared.schema import metrics_columns

ROOT = Path(__file__).resolve().parents[3]


def test_committed_json_schemas_are_current():
    for name, model in jsonschema.SCHEMAS.items():
        committed = (ROOT / "shared" / name).read_text()
        assert committed == jsonschema.render(model), (
            f"shared/{name} is stale: run python -m shared.jsonschema")


def _migration_columns() -> dict[str, str]:
    sql = (ROOT / "hub/migrations/0001_initial.sql").read_text()
    body = sql.split("create table metrics (", 1)[1].split(") partition by", 1)[0]
    columns = {}
    for line in body.splitlines():
        match = re.match(r"\s+([a-z0-9_]+) (.+?)( not null)?,$", line)
        if match:
            columns[match.group(1)] = match.group(2)
    # Columns added by later migrations come last, in the order they were added.
    for path in sorted((ROOT / "hub/migrations").glob("*.sql")):
        for name, pg_type, _ in re.findall(r"alter table metrics add column ([a-z0-9_]+) "
                                        r"([^;]+?)( not null)?;", path.read_text()):
            columns[name] = pg_type
    return columns


def test_migration_columns_match_the_model_in_name_order_and_type():
    expected = [(c.name, c.pg_type) for c in metrics_columns()]
    assert list(_migration_columns().items()) == expected


def test_column_names_carry_units_or_are_counts_of_named_things():
    units = {"bytes", "percent", "celsius", "mhz", "s", "count", "packets", "errors", "drops"}
    unitless = {"device_id", "session_id", "seq", "ts", "received_at", "cpu_ctx_switches",
                "cpu_interrupts", "cpu_soft_interrupts", "cpu_syscalls", "cpu_load_1",
                "cpu_load_5", "cpu_load_15", "throttling_raw", "agent_ts",
                "anomaly_score"}
    for column in metrics_columns():
        if column.pg_type in ("boolean", "jsonb") or column.name in unitless:
            continue
        assert set(column.name.split("_")) & units, column.name
