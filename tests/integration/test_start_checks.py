"""What a newcomer gets wrong at start: each is one line and a non-zero exit, and leaves
nothing behind (no broker session, no traceback, no retry loop)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.processes import base_env
from tests.servers import MosquittoServer, PostgresServer, free_port, wait_for

REPO = Path(__file__).parents[2]


def run(module: str, *args: str, timeout_s: float = 60,
        **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], env=base_env(**settings),
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line or "Invalid" in line]


@pytest.mark.parametrize("module", ["agent.main", "hub.main"])
def test_an_unknown_log_level_is_a_setting_error_of_one_line(module: str, tmp_path: Path) -> None:
    result = run(module, "run", log_level="VERBOSE", state_dir=str(tmp_path),
                 data_dir=str(tmp_path), broker_url=f"mqtt://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Invalid configuration: FLEETPULSE_LOG_LEVEL: 'VERBOSE' is not a log level: use "
        "DEBUG, INFO, WARNING or ERROR."]
    assert not any(tmp_path.iterdir())  # stopped before touching anything


def test_a_db_that_is_not_a_url_is_shown_with_only_its_password_hidden() -> None:
    typo = run("hub.main", "status", "--db", "postgressql://fleet:s3cret@db.example/fleet")
    assert typo.returncode == 2
    assert typo.stderr.strip() == (
        "Invalid configuration: --db: 'postgressql://fleet:**********@db.example/fleet' is not "
        "a URL like postgresql://user:password@host:5432/dbname.")
    bare = run("hub.main", "status", db="foo")
    assert bare.returncode == 2 and "FLEETPULSE_DB: 'foo' is not a URL" in bare.stderr


@pytest.mark.parametrize(("user", "dbname", "why"), [
    ("nobody", "postgres", 'role "nobody" does not exist'),
    ("postgres", "no_such_db", 'database "no_such_db" does not exist'),
])
def test_a_refused_login_stops_the_hub_at_start_with_one_line(
        postgres: PostgresServer, broker: MosquittoServer, prefix: str, tmp_path: Path,
        user: str, dbname: str, why: str) -> None:
    result = run("hub.main", "run", db=postgres.url_for(dbname, user), broker_url=broker.url,
                 topic_prefix=prefix, client_id=f"{prefix}-hub", http_port="0",
                 data_dir=str(tmp_path), timeout_s=60)
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and why in errors[0] and "refused the login" in errors[0]
    assert "retrying" not in result.stderr and "Traceback" not in result.stderr
    assert not session_present(broker, f"{prefix}-hub")  # never subscribed


def test_status_with_a_refused_login_is_one_line(postgres: PostgresServer) -> None:
    result = run("hub.main", "status", db=postgres.url_for("postgres", "nobody"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'role "nobody" does not exist' in lines[0]


def session_present(broker: MosquittoServer, client_id: str) -> bool:
    """Connect as ``client_id`` asking to resume its session; tell whether the broker had one
    (the client then ends the session it found, so call this once per test)."""
    found: list[bool] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
    client.on_connect = lambda c, u, flags, rc, p: found.append(flags.session_present)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    client.loop_start()
    try:
        wait_for(lambda: found, 10, "the CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return found[0]


def test_the_session_check_sees_a_session_that_exists(broker: MosquittoServer,
                                                      prefix: str) -> None:
    # The check used below must be able to fail: a persistent session it has to find.
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-x",
                         protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", broker.port, clean_start=True, properties=props)
    client.loop_start()
    assert connected.wait(10)
    client.subscribe(f"{prefix}/#", qos=1)
    client.disconnect()
    client.loop_stop()
    assert session_present(broker, f"{prefix}-x")


def test_a_busy_http_port_stops_the_hub_before_it_has_a_broker_session(
        db_url: str, broker: MosquittoServer, prefix: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("hub.main", "run", db=db_url, broker_url=broker.url, topic_prefix=prefix,
                     client_id=f"{prefix}-hub", http_port=str(port), data_dir=str(tmp_path),
                     timeout_s=120)
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and f"cannot serve HTTP on 127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in result.stderr
    # Published while the hub is away: a session would hold it for the hub.
    publisher = paho.Client(CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish(f"{prefix}/dev-1/metrics", b"{}", qos=1).wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()
    assert not session_present(broker, f"{prefix}-hub")
