"""Run the real ``fleetpulse-agent`` and ``fleetpulse-hub`` as processes, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.servers import wait_for


class Process:
    """A fleetpulse process with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_file: Path) -> None:
        self.args = args
        self.env = env
        self.log_file = log_file
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen([sys.executable, *self.args], env=self.env,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          cwd=Path(__file__).parents[1])
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        code = self.popen.returncode
        self.popen = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def base_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"FLEETPULSE_{k.upper()}": v for k, v in settings.items()})
    return env


def hub(workdir: Path, *, broker_url: str, db_url: str, prefix: str, name: str = "hub",
        **settings: str) -> Process:
    settings = {"client_id": f"{prefix}-{name}", "http_port": "0",
                "data_dir": str(workdir / name), **settings}
    env = base_env(broker_url=broker_url, db=db_url, topic_prefix=prefix, **settings)
    return Process(["-m", "hub.main", "run"], env, workdir / f"{name}.log")


def agent(workdir: Path, *, broker_url: str, prefix: str, device_id: str,
          **settings: str) -> Process:
    env = base_env(broker_url=broker_url, topic_prefix=prefix, device_id=device_id,
                   state_dir=str(workdir / f"agent-{device_id}"), **settings)
    return Process(["-m", "agent.main", "run"], env, workdir / f"agent-{device_id}.log")


def query(db_url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def wait_hub_subscribed(hub_process: Process, timeout_s: float = 30) -> None:
    """Wait until the broker has confirmed the hub's subscriptions (its log says so)."""
    wait_for(lambda: "Subscribed at broker" in hub_process.log(), timeout_s,
             "the hub to subscribe")


def wait_rows(db_url: str, count: int, timeout_s: float = 30, where: str = "true") -> None:
    wait_for(lambda: query(db_url, f"select count(*) from metrics where {where}")[0][0] >= count,
             timeout_s, f"{count} rows in metrics")
