"""Export to CSV and Parquet: the CLI, the API, typed columns, constant memory."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from hub.api import HubHealth, create_app
from hub.export import FORMATS, Format, export_to_file
from hub.read import FleetReader
from hub.store import Store, StorePool
from hub.when import parse_when
from shared.schema import metrics_columns
from tests.processes import base_env
from tests.readings import partition, series, write_readings

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
NAMES = [c.name for c in metrics_columns()]
INTERFACE = {"name": "eth0", "bytes_sent": 10, "bytes_sent_per_s": 1.5, "bytes_recv": 20,
             "bytes_recv_per_s": None, "packets_sent": 1, "packets_sent_per_s": 0.0,
             "packets_recv": 2, "packets_recv_per_s": 0.0, "errors_in": 0,
             "errors_in_per_s": 0.0, "errors_out": 0, "errors_out_per_s": 0.0, "drops_in": 0,
             "drops_in_per_s": 0.0, "drops_out": 0, "drops_out_per_s": 0.0}


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    for device in ("pi-1", "pi-2"):
        write_readings(s, series(device, T0, 1200, cpu_percent=lambda i: float(i % 100),
                                 cpu_per_core_percent=lambda i: [1.0, 2.5],
                                 memory_total_bytes=4 * 2**30, sensors_battery_charging=True,
                                 disk_partitions=[partition("/", 50.0)],
                                 sensors_temperatures=[{"sensor": "cpu_thermal", "label": "",
                                                        "celsius": 51.5}],
                                 network_per_interface=[INTERFACE]))
    yield s
    s.close()


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.main", "export", *args],
                          env=base_env(db=db_url), capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])


def test_cli_exports_one_device_to_csv_with_every_column(store: Store, db_url: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "pi-1.csv"
    done = cli(db_url, "--device", "pi-1", "--start", T0.isoformat(), "--end",
               (T0 + timedelta(minutes=10)).isoformat(), "-o", str(out))
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == NAMES
    assert len(rows) == 1 + 600 and {r[0] for r in rows[1:]} == {"pi-1"}
    first = dict(zip(NAMES, rows[1], strict=True))
    assert first["ts"] == "2026-11-20T08:00:00+00:00" and first["cpu_percent"] == "0.0"
    assert first["cpu_per_core_percent"] == "[1.0,2.5]" and first["cpu_load_1"] == ""
    assert '"mountpoint":"/"' in first["disk_partitions"]  # jsonb as JSON text
    assert "100%" in done.stderr and "600/600 rows" in done.stderr  # the progress bar
    assert "Exported 600 readings (pi-1" in done.stderr
    assert not (tmp_path / "pi-1.csv.partial").exists()


def test_cli_exports_the_fleet_to_parquet_with_typed_columns(store: Store, db_url: str,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "fleet.parquet"
    done = cli(db_url, "--start", T0.isoformat(), "--end", "now", "-o", str(out))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    assert table.num_rows == 2400 and table.column_names == NAMES
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("seq").type == pa.int64()
    assert table.schema.field("cpu_per_core_percent").type == pa.list_(pa.float64())
    assert table.schema.field("sensors_battery_charging").type == pa.bool_()
    assert table.column("memory_total_bytes")[0].as_py() == 4 * 2**30
    assert table.column("cpu_per_core_percent")[5].as_py() == [1.0, 2.5]
    assert table.column("device_id").unique().to_pylist() == ["pi-1", "pi-2"]


def test_parquet_lists_of_records_are_typed_nested_columns(store: Store, db_url: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "nested.parquet"
    done = cli(db_url, "--device", "pi-1", "--start", T0.isoformat(), "--end", "now",
               "-o", str(out))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    partitions = table.schema.field("disk_partitions").type
    assert partitions == pa.list_(pa.struct([
        ("mountpoint", pa.string()), ("device", pa.string()), ("fstype", pa.string()),
        ("total_bytes", pa.int64()), ("used_bytes", pa.int64()), ("free_bytes", pa.int64()),
        ("percent", pa.float64())]))
    assert table.schema.field("sensors_temperatures").type == pa.list_(pa.struct([
        ("sensor", pa.string()), ("label", pa.string()), ("celsius", pa.float64())]))
    interfaces = table.schema.field("network_per_interface").type.value_type
    assert interfaces.field("name").type == pa.string()
    assert interfaces.field("bytes_sent").type == pa.int64()
    assert interfaces.field("bytes_sent_per_s").type == pa.float64()
    disks = table.schema.field("disk_per_disk").type.value_type
    assert disks.field("read_bytes_per_s").type == pa.float64()
    assert table.column("disk_partitions")[0].as_py() == [partition("/", 50.0)]
    assert table.column("sensors_temperatures")[3].as_py() == [
        {"sensor": "cpu_thermal", "label": "", "celsius": 51.5}]
    assert table.column("network_per_interface")[7].as_py() == [INTERFACE]
    assert table.column("disk_per_disk")[0].as_py() == []
    # Queryable as data, not text: the mean used share of "/" over the export.
    flat = pc.list_flatten(table.column("disk_partitions"))
    assert pc.mean(pc.struct_field(flat, "percent")).as_py() == 50.0


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "nope", "-o", "x.csv"], "Cannot export: device 'nope' is not known."),
    (["--start", "now", "--end", "1h", "-o", "x.csv"], "is not after --start"),
    (["--start", "last tuesday", "-o", "x.csv"], "'last tuesday' is not a time"),
    ([], "export needs --output FILE"),
])
def test_cli_refuses_bad_requests_with_one_clear_line(store: Store, db_url: str,
                                                      args: list[str], message: str) -> None:
    done = cli(db_url, *args)
    assert done.returncode in (1, 2) and message in done.stderr
    assert "Traceback" not in done.stderr


def test_export_memory_stays_flat_as_rows_grow(db_url: str) -> None:
    s = Store(db_url)
    s.migrate()
    big = series("pi-9", T0, 8_000, cpu_percent=50.0, cpu_per_core_percent=[50.0] * 8,
                 disk_partitions=[partition("/", 50.0)])
    write_readings(s, big)
    del big

    class Discard(io.RawIOBase):
        written = 0

        def write(self, b: bytes) -> int:  # type: ignore[override]
            self.written += len(b)
            return len(b)

    def peak(fmt: Format, rows: int) -> tuple[int, int]:
        """Return the peak of Python allocations while exporting, and the bytes written."""
        sink = Discard()
        tracemalloc.start()
        done = export_to_file(s, sink, fmt, T0, T0 + timedelta(seconds=rows), "pi-9",
                              chunk_rows=250)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert done == rows
        return top, sink.written

    for fmt in FORMATS:
        export_to_file(s, Discard(), fmt, T0, T0 + timedelta(seconds=600), "pi-9")  # warm up
        small, _ = peak(fmt, 2_000)
        large, _ = peak(fmt, 8_000)
        # Four times the rows, about the same memory: only a chunk is held at a time.
        assert large < small * 1.5, (fmt, small, large)
    s.close()


def test_api_streams_a_device_export_as_csv_and_parquet(store: Store, db_url: str) -> None:
    pool = StorePool(db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool,
                     health=lambda: HubHealth(True, None, 0),
                     now=lambda: T0 + timedelta(hours=1))
    client = TestClient(app)
    try:
        params = {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=5)).isoformat()}
        response = client.get("/api/devices/pi-2/export", params=params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert 'filename="pi-2_20261120T080000Z_20261120T080500Z.csv"' in \
            response.headers["content-disposition"]
        lines = response.text.splitlines()
        assert lines[0].split(",")[:4] == ["device_id", "session_id", "seq", "ts"]
        assert len(lines) == 301

        parquet = client.get("/api/devices/pi-2/export", params={**params,
                                                                  "format": "parquet"})
        table = pq.read_table(io.BytesIO(parquet.content))
        assert table.num_rows == 300 and table.column("seq").to_pylist()[:3] == [1, 2, 3]

        empty = client.get("/api/devices/pi-2/export", params={
            "start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"})
        assert empty.text.splitlines() == [",".join(NAMES)]
        assert client.get("/api/devices/pi-2/export?format=xlsx").status_code == 422
    finally:
        pool.close()


def test_times_are_iso_now_or_an_age() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_when("now", now) == now
    assert parse_when("90m", now) == now - timedelta(minutes=90)
    assert parse_when("7d", now) == now - timedelta(days=7)
    assert parse_when("2026-11-01T00:00:00", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_when("2026-11-01T02:00:00+02:00", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="is not a time"):
        parse_when("soon", now)
