"""The processes section: checked, kept apart from its reading when bad, stored compactly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from hub.ingest.batch import Ack, Batch, Inbound, row_as_json
from hub.ingest.validate import Accepted, Rejected, validate
from hub.processes import COLUMNS as PROCESS_COLUMNS
from hub.processes import process_row, section_from_row, section_problem
from shared.schema import ProcessesV1, ProcessInfo, metrics_columns
from tests.unit.hub.messages import NOW, metrics

TOPIC = "fp/pi-1/metrics"


def info(pid: int, cpu: float | None = 1.5, rss: int = 1000, name: str = "p") -> ProcessInfo:
    return {"pid": pid, "name": name, "user": "pi", "cpu_percent": cpu, "rss_bytes": rss,
            "memory_percent": 0.25, "threads": 3, "status": "sleeping",
            "io_read_bytes": None, "io_write_bytes": 4096}


def section(**changes: Any) -> ProcessesV1:
    value: ProcessesV1 = {
        "period_s": 10.002, "count": 5, "running": 1, "sleeping": 3, "zombie": 1, "other": 0,
        "top_cpu": [info(10, 97.3, name="stress-ng"), info(11, 12.3), info(1, 0.0)],
        "top_memory": [info(20, None, rss=10**9, name="postgres"), info(11, 12.3),
                       info(10, 97.3, name="stress-ng")]}
    value.update(changes)  # type: ignore[typeddict-item]
    return value


def with_section(value: Any) -> bytes:
    message = metrics()
    message["processes"] = value
    return orjson.dumps(message)


def as_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(PROCESS_COLUMNS, row, strict=True))


def test_a_row_stores_each_process_once_and_gives_the_section_back_exactly():
    row = as_dict(process_row("pi-1", NOW, "s1", 7, NOW, section()))
    # stress-ng and pid 11 are in both lists: 4 distinct processes, not 6.
    assert row["pid"] == [10, 11, 1, 20]
    assert row["top_cpu_n"] == 3 and row["top_memory"] == [4, 2, 1]
    assert row["io_read_bytes"] == [None] * 4 and row["cpu_percent"][3] is None
    assert section_from_row(row) == section()


def test_an_empty_section_gives_empty_arrays():
    empty = section(count=0, running=0, sleeping=0, zombie=0, top_cpu=[], top_memory=[])
    row = as_dict(process_row("pi-1", NOW, "s1", 7, NOW, empty))
    assert row["pid"] == [] and row["top_memory"] == []
    assert section_from_row(row) == empty


def test_counts_that_do_not_add_up_are_a_problem():
    assert section_problem(section()) is None
    assert "running + sleeping + zombie + other is 5" in section_problem(section(count=6))
    assert "more than the 2 counted" in section_problem(
        section(count=2, running=1, sleeping=1, zombie=0))


def test_a_valid_section_is_kept_with_its_reading():
    result = validate(TOPIC, with_section(section()), NOW, "fp")
    assert isinstance(result, Accepted) and result.problem is None
    assert msgspec.to_builtins(result.value.processes) == section()


def test_a_section_of_wrong_types_is_left_out_and_the_reading_kept():
    bad = section()
    bad["top_cpu"][0]["rss_bytes"] = -1
    result = validate(TOPIC, with_section(bad), NOW, "fp")
    assert isinstance(result, Accepted) and result.value.processes is msgspec.UNSET
    assert result.problem is not None
    assert result.problem.startswith("processes section left out")
    assert "processes.top_cpu.0.rss_bytes" in result.problem


def test_a_section_with_unknown_fields_or_wrong_counts_is_left_out():
    for bad, why in ((section(extra=1), "processes.extra"),
                     (section(count=9), "processes.count is 9")):
        result = validate(TOPIC, with_section(bad), NOW, "fp")
        assert isinstance(result, Accepted) and result.value.processes is msgspec.UNSET
        assert why in (result.problem or ""), result.problem


def test_a_bad_reading_with_a_good_section_is_still_rejected():
    message = metrics()
    message["processes"] = section()
    message["cpu"]["percent"] = 250.0
    result = validate(TOPIC, orjson.dumps(message), NOW, "fp")
    assert isinstance(result, Rejected) and "cpu.percent" in result.reason


def test_the_batch_carries_the_processes_row_after_the_reading_and_the_problem_to_quarantine():
    inbound = Inbound(TOPIC, with_section(section()), datetime.now(UTC), Ack(1, 1, 0))
    batch = Batch(opened_at=0.0)
    batch.add(inbound, validate(TOPIC, inbound.payload, NOW, "fp"))
    (row,) = batch.rows
    width = len(metrics_columns())
    assert len(row) == width + 1 and as_dict(row[width])["seq"] == 2
    assert not batch.quarantine
    # Were the database to refuse it, the row is quarantined as JSON, processes included.
    refused = orjson.loads(row_as_json(row))
    assert refused["seq"] == 2 and refused["processes"]["name"][0] == "stress-ng"

    bad = Inbound(TOPIC, with_section(section(count=9)), datetime.now(UTC), Ack(2, 1, 0))
    batch.add(bad, validate(TOPIC, bad.payload, NOW, "fp"))
    assert len(batch.rows[1]) == width  # stored without a section
    (record,) = batch.quarantine
    assert record.device_id == "pi-1" and "processes.count is 9" in record.reason
