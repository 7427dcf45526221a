"""The agent as a user runs it: `once`, a broker that is not there, a wrong setting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import TypeAdapter

from shared.schema import MetricsV1
from tests import processes
from tests.processes import base_env
from tests.servers import MosquittoServer, free_port, wait_for


def test_once_prints_one_valid_reading(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.main", "once", "--device-id", "cli-1",
                             "--state-dir", str(tmp_path)], env=base_env(), capture_output=True,
                            timeout=60, check=True)
    message = TypeAdapter(MetricsV1).validate_json(result.stdout)
    assert message["device_id"] == "cli-1" and message["seq"] == 1
    assert message["cpu"]["percent"] is not None  # two samples one interval apart


def test_a_broker_that_is_down_at_start_is_a_wait_with_one_clear_line(tmp_path: Path) -> None:
    agent = processes.agent(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}",
                            prefix="fp", device_id="lonely", interval_s="0.2").start()
    try:
        wait_for(lambda: "is unreachable" in agent.log(), 30, "the unreachable line")
        wait_for(lambda: (tmp_path / "agent-lonely" / "spool.sqlite3").exists(), 30, "spool")
        assert agent.running()
    finally:
        agent.stop()
    log = agent.log()
    assert log.count("is unreachable") == 1  # not one line per retry
    assert "Traceback" not in log
    assert "kept in the spool for the next start" in log


def test_a_wrong_setting_stops_the_agent_before_connecting(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('broker_url = "http://broker"\ninterval_s = -1\n')
    result = subprocess.run([sys.executable, "-m", "agent.main", "run", "--config", str(config)],
                            env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"Invalid configuration: {config}: broker_url: 'http://broker' is not a URL like "
        "mqtt://host:1883 or mqtts://host:8883.",
        f"Invalid configuration: {config}: interval_s: -1 must be greater than 0."]


def test_the_first_published_reading_has_cpu_percentages_and_rates(
        tmp_path: Path, broker: MosquittoServer, prefix: str) -> None:
    first: list[bytes] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: first.append(m.payload)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.subscribe(f"{prefix}/first-1/metrics", qos=1)
    client.loop_start()
    agent = processes.agent(tmp_path, broker_url=broker.url, prefix=prefix,
                            device_id="first-1", interval_s="1")
    try:
        wait_for(subscribed.is_set, 10, "the subscription")
        agent.start()
        wait_for(lambda: first, 30, "the first reading")
    finally:
        agent.stop()
        client.loop_stop()
        client.disconnect()
    message = TypeAdapter(MetricsV1).validate_json(first[0])
    assert message["seq"] == 1
    cpu = message["cpu"]
    assert cpu["percent"] is not None
    assert len(cpu["per_core_percent"]) == (os.cpu_count() or 0)
    assert message["disk"]["read_bytes_per_s"] is not None
    assert message["network"]["bytes_recv_per_s"] is not None
