"""docker-compose.yml and what its containers run, tested without a Docker engine.

``docker-compose config`` validates the file; the commands the containers run (Mosquitto
with mosquitto/mosquitto.conf, ``fleetpulse-hub run`` with the compose environment) run
here as processes, with host names and ports moved to loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.credentials import HUB_USERNAME, add_device, hash_password, set_user
from tests import processes
from tests.integration.test_security import NOT_AUTHORIZED, REPO, Client, ShippedBroker
from tests.processes import Process, query
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.integration


def example_env() -> dict[str, str]:
    """The variables of .env.example, as an operator's .env would give them."""
    pairs = re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", (REPO / ".env.example").read_text(), re.M)
    return dict(pairs)


def compose(*args: str, env_file: Path = REPO / ".env.example") -> subprocess.CompletedProcess[str]:
    """Run docker-compose on docker-compose.yml with ``env_file`` as its .env."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (apt-get install docker-compose)"
    clean = {k: v for k, v in os.environ.items() if k not in example_env()}
    # --env-file: never the developer's own .env, only what the test gives.
    return subprocess.run([binary, "--env-file", str(env_file), "-f", "docker-compose.yml",
                           *args], cwd=REPO, env=clean, text=True, capture_output=True,
                          timeout=60)


def compose_config() -> dict[str, Any]:
    """The resolved compose file as data, parsed by docker-compose's own Python (which
    has PyYAML: Debian's docker-compose depends on it)."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    shebang = Path(shutil.which("docker-compose") or "").read_text().splitlines()[0]
    python = shebang.removeprefix("#!").strip().split()[0]
    converted = subprocess.run(
        [python, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), "
         "sys.stdout)"], input=result.stdout, text=True, capture_output=True, check=True)
    data: dict[str, Any] = json.loads(converted.stdout)
    return data


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    (tmp_path / "empty.env").write_text("")
    result = compose("config", "-q", env_file=tmp_path / "empty.env")
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_compose_services_are_wired_as_documented() -> None:
    services = compose_config()["services"]
    assert set(services) == {"mosquitto", "db", "hub"}
    mosquitto, db, hub = services["mosquitto"], services["db"], services["hub"]
    assert mosquitto["image"].startswith("eclipse-mosquitto:2")
    # docker-compose 1.29 prints volumes and ports in the short syntax.
    assert f"{REPO / 'mosquitto'}:/mosquitto/config:rw" in mosquitto["volumes"]
    assert "mosquitto-data:/mosquitto/data:rw" in mosquitto["volumes"]
    assert {p["target"] for p in mosquitto["ports"]} == {1883, 8883}
    assert db["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert hub["command"] == ["fleetpulse-hub", "run"]
    assert hub["depends_on"]["db"]["condition"] == "service_healthy"
    assert hub["ports"] == ["127.0.0.1:8080:8080/tcp"]  # the API: this machine only
    env = hub["environment"]
    assert env["FLEETPULSE_HTTP_HOST"] == "0.0.0.0"
    assert env["FLEETPULSE_BROKER_USERNAME"] == HUB_USERNAME
    assert env["FLEETPULSE_BROKER_PASSWORD"] == example_env()["FLEETPULSE_HUB_BROKER_PASSWORD"]
    assert env["FLEETPULSE_DB"].endswith("@db:5432/fleetpulse")


def test_dockerfile_copies_only_what_exists_and_installs_the_hub() -> None:
    text = (REPO / "Dockerfile").read_text()
    sources = [src for line in re.findall(r"^COPY (.+)$", text, re.M)
               for src in line.split()[:-1]]
    assert sources and all((REPO / src).exists() for src in sources), sources
    assert 'pip install --no-cache-dir ".[hub]"' in text
    assert re.search(r"^USER (?!root)\S+", text, re.M)


def test_shipped_mosquitto_conf_serves_tls_persists_and_enforces_the_acl(
        work_root: Path) -> None:
    broker = ShippedBroker(work_root / "shipped-conf")
    broker.password_file.write_text(set_user("", HUB_USERNAME, hash_password("hubpw",
                                                                            os.urandom(12))))
    password = add_device(broker.password_file, "pi-tls")
    broker.start()
    ca = broker.config_dir / "certs" / "ca.crt"
    hub = Client(broker.tls_port, HUB_USERNAME, HUB_USERNAME, "hubpw", host="localhost",
                 ca_file=ca, session_expiry_s=3600).connect()
    device = Client(broker.tls_port, "pi-tls", "pi-tls", password, host="localhost",
                    ca_file=ca).connect()
    anonymous = Client(broker.tls_port, "anon", host="localhost", ca_file=ca)
    try:
        hub.subscribe("fleetpulse/+/metrics")
        hub.stop()  # away: the broker queues for the hub's session
        assert device.publish("fleetpulse/pi-tls/metrics", b"queued") == 0
        assert device.publish("fleetpulse/pi-other/metrics", b"forged") == NOT_AUTHORIZED
        anonymous.connect(expect_success=False)
        assert anonymous.connack == NOT_AUTHORIZED
    finally:
        device.stop()
        anonymous.stop()
        broker.stop()  # a clean stop writes the persistence file
    assert (work_root / "shipped-conf" / "data" / "mosquitto.db").exists()
    broker.start()  # the queued message survives the restart
    back = Client(broker.tls_port, HUB_USERNAME, HUB_USERNAME, "hubpw", host="localhost",
                  ca_file=ca, session_expiry_s=3600)
    try:
        back.connect()
        wait_for(lambda: back.messages == [("fleetpulse/pi-tls/metrics", b"queued")], 10,
                 "the queued message after a restart")
    finally:
        back.stop()
        broker.stop()
    # (OpenSSL lines come from the readiness probe's bare TCP connect to the TLS port.)
    assert [line for line in broker.log().splitlines()
            if "Error" in line and "OpenSSL" not in line] == []


def test_hub_runs_with_the_compose_environment_against_the_shipped_broker(
        work_root: Path, tmp_path: Path, db_url: str) -> None:
    hub_env = compose_config()["services"]["hub"]["environment"]
    broker = ShippedBroker(work_root / "compose-hub")
    broker.password_file.write_text(set_user("", HUB_USERNAME, hash_password(
        hub_env["FLEETPULSE_BROKER_PASSWORD"], os.urandom(12))))
    password = add_device(broker.password_file, "pi-compose")
    broker.start()
    http_port = free_port()
    env = processes.base_env()
    env.update(hub_env)
    # The same settings, with the compose host names moved to this machine's test servers.
    env["FLEETPULSE_BROKER_URL"] = hub_env["FLEETPULSE_BROKER_URL"].replace(
        "mosquitto:1883", f"127.0.0.1:{broker.port}")
    env["FLEETPULSE_DB"] = db_url
    env["FLEETPULSE_HTTP_HOST"] = "127.0.0.1"
    env["FLEETPULSE_HTTP_PORT"] = str(http_port)
    env["FLEETPULSE_DATA_DIR"] = str(tmp_path / "hub")
    hub = Process(["-m", "hub.main", "run"], env, tmp_path / "hub.log").start()
    device = Client(broker.port, "pi-compose", "pi-compose", password)
    reading = subprocess.run([shutil.which("python3") or "python3", "-m", "agent.main", "once",
                              "--device-id", "pi-compose", "--interval-s", "0.1",
                              "--state-dir", str(tmp_path)], cwd=REPO, capture_output=True,
                             check=True, timeout=30).stdout.strip()
    try:
        processes.wait_hub_subscribed(hub)
        device.connect()
        assert device.publish("fleetpulse/pi-compose/metrics", reading) == 0
        wait_for(lambda: query(db_url, "select count(*) from metrics")[0][0] == 1, 30,
                 "the reading stored by the hub")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/health",
                                    timeout=5) as response:
            assert response.status == 200
    finally:
        device.stop()
        hub.stop()
        broker.stop()
    assert "Traceback" not in hub.log()
    assert "refused the connection" not in hub.log()
