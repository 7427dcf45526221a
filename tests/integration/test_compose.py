"""docker-compose.yml and what its containers run, tested without a Docker engine.

``docker-compose config`` validates the file on a fresh copy of the repository with no
.env; the commands the containers run (``fleetpulse-hub init-deploy``, Mosquitto with the
configuration init made, PostgreSQL initialised as the postgres image does it,
``fleetpulse-hub run`` with the compose environment) run here as processes, with host
names, ports and volume paths moved to this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hub.credentials import HUB_USERNAME, add_device, hash_password, set_user, verify_password
from hub.deploy import BROKER_UID, DB_UID, HUB_UID
from tests import processes
from tests.integration.test_security import (
    NOT_AUTHORIZED,
    REPO,
    Client,
    ShippedBroker,
    rewrite_shipped_conf,
)
from tests.processes import Process, query
from tests.servers import MosquittoServer, PostgresServer, free_port, port_open, wait_for

# What .env may set (docker-compose.yml interpolates these and nothing else).
ENV_VARIABLES = ("POSTGRES_PASSWORD", "FLEETPULSE_HUB_BROKER_PASSWORD", "FLEETPULSE_API_TOKEN",
                 "FLEETPULSE_BROKER_HOSTS")
SECRETS_IN_CONTAINERS = "/run/fleetpulse"


def clean_env() -> dict[str, str]:
    """This process's environment without anything a .env could set."""
    return {k: v for k, v in os.environ.items()
            if k not in ENV_VARIABLES and not k.startswith("FLEETPULSE_")}


def fresh_checkout(target: Path) -> Path:
    """Copy what a clone of this branch would hold (tracked and new, not ignored, files)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True, check=True)
    for name in listed.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    assert not (target / ".env").exists()
    return target


def compose(project: Path, *args: str, env_file: Path | None = None) \
        -> subprocess.CompletedProcess[str]:
    """Run docker-compose in ``project`` (its .env, if any, or ``env_file``)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (apt-get install docker-compose)"
    extra = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run([binary, *extra, "-f", "docker-compose.yml", *args], cwd=project,
                          env=clean_env(), text=True, capture_output=True, timeout=60)


def compose_config(project: Path, env_file: Path | None = None) -> dict[str, Any]:
    """The resolved compose file as data, parsed by docker-compose's own Python (which
    has PyYAML: Debian's docker-compose depends on it)."""
    result = compose(project, "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    shebang = Path(shutil.which("docker-compose") or "").read_text().splitlines()[0]
    python = shebang.removeprefix("#!").strip().split()[0]
    converted = subprocess.run(
        [python, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), "
         "sys.stdout)"], input=result.stdout, text=True, capture_output=True, check=True)
    data: dict[str, Any] = json.loads(converted.stdout)
    return data


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def services(checkout: Path) -> dict[str, Any]:
    data: dict[str, Any] = compose_config(checkout)["services"]
    return data


def init_deploy(root: Path, environ: dict[str, str] | None = None,
                shipped: Path = REPO / "mosquitto") -> subprocess.CompletedProcess[str]:
    """Run the init service's command (as root here, as in its container)."""
    env = clean_env()
    env.update(environ or {})
    return subprocess.run([sys.executable, "-m", "hub.main", "init-deploy", "--dir", str(root),
                           "--shipped", str(shipped)], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=60)


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int, int, int]]:
    """Every file under ``root``: content, modification time, mode, owner, group."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns,
                                       stat.S_IMODE(p.stat().st_mode), p.stat().st_uid,
                                       p.stat().st_gid)
            for p in sorted(root.rglob("*")) if p.is_file()}


def readable_by(path: Path, uid: int) -> bool:
    """Can a process of ``uid`` (and the same gid) read ``path``?"""
    return subprocess.run(["cat", str(path)], user=uid, group=uid, extra_groups=[],
                          capture_output=True, check=False).returncode == 0


# --- the compose file ---------------------------------------------------------------------
def test_compose_config_passes_on_a_fresh_checkout_without_env(checkout: Path) -> None:
    result = compose(checkout, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no "variable is not set" warning either


def test_compose_file_holds_no_secret_value(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN", key) and not key.endswith("_FILE"):
                assert name == "init" and value == "", (name, key, value)
        assert "POSTGRES_PASSWORD" not in (service.get("environment") or {}) or name == "init"
    assert services["hub"]["environment"]["FLEETPULSE_DB"] == \
        "postgresql://fleetpulse@db:5432/fleetpulse"  # no password in the URL


def test_env_example_sets_nothing_and_a_dot_env_reaches_only_init(
        checkout: Path, tmp_path: Path) -> None:
    text = (REPO / ".env.example").read_text()
    assert re.findall(r"^\s*[A-Z_]+\s*=", text, re.M) == []  # every line commented out
    documented = set(re.findall(r"^#([A-Z_]+)=", text, re.M))
    assert documented == set(ENV_VARIABLES)
    # Copied unedited, it sets nothing: init generates everything.
    unedited = compose_config(checkout, env_file=REPO / ".env.example")["services"]
    assert all(unedited["init"]["environment"][v] == "" for v in ENV_VARIABLES)
    own = tmp_path / "own.env"
    own.write_text("POSTGRES_PASSWORD=my-own-database-password\n"
                   "FLEETPULSE_BROKER_HOSTS=broker.example.lan\n")
    given = compose_config(checkout, env_file=own)["services"]
    assert given["init"]["environment"]["POSTGRES_PASSWORD"] == "my-own-database-password"
    assert given["init"]["environment"]["FLEETPULSE_BROKER_HOSTS"] == "broker.example.lan"
    for name in ("mosquitto", "db", "hub"):
        assert "my-own-database-password" not in json.dumps(given[name])


def test_compose_services_are_wired_as_documented(services: dict[str, Any],
                                                  checkout: Path) -> None:
    assert set(services) == {"init", "mosquitto", "db", "hub"}
    init, mosquitto, db, hub = (services[n] for n in ("init", "mosquitto", "db", "hub"))
    # init: the hub's image, as root, once, before everything else.
    assert init["image"] == hub["image"] and init["build"] == hub["build"]
    assert init["command"][:2] == ["fleetpulse-hub", "init-deploy"]
    assert init["user"] == "root" and init["restart"] == "no"
    assert init["network_mode"] == "host"
    assert f"{checkout / 'mosquitto'}:/shipped:ro" in init["volumes"]
    for name in ("mosquitto", "db", "hub"):
        assert services[name]["depends_on"]["init"]["condition"] == \
            "service_completed_successfully"
        assert services[name]["healthcheck"]["test"], name
    assert hub["depends_on"]["db"]["condition"] == "service_healthy"
    assert hub["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    # Named volumes only for the broker: nothing from the checkout changes owner.
    assert mosquitto["image"].startswith("eclipse-mosquitto:2")
    assert sorted(mosquitto["volumes"]) == ["mosquitto-config:/mosquitto/config:rw",
                                            "mosquitto-data:/mosquitto/data:rw"]
    assert {p["target"] for p in mosquitto["ports"]} == {1883, 8883}
    assert db["image"].startswith("postgres:16")
    assert "db-data:/var/lib/postgresql/data:rw" in db["volumes"]
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_IN_CONTAINERS}/db_password"
    assert hub["command"] == ["fleetpulse-hub", "run"]
    assert hub["ports"] == ["127.0.0.1:8080:8080/tcp"]  # the API: this machine only
    assert hub["environment"]["FLEETPULSE_HTTP_HOST"] == "0.0.0.0"
    assert hub["environment"]["FLEETPULSE_BROKER_USERNAME"] == HUB_USERNAME
    # What init makes is what the others mount.
    assert f"secrets:{SECRETS_IN_CONTAINERS}:ro" in hub["volumes"]
    assert f"secrets:{SECRETS_IN_CONTAINERS}:ro" in db["volumes"]
    assert "mosquitto-config:/fleetpulse/mosquitto:rw" in hub["volumes"]
    assert set(compose_config(checkout)["volumes"]) == {"mosquitto-config", "mosquitto-data",
                                                         "db-data", "secrets", "ca"}


def test_dockerfile_copies_only_what_exists_and_installs_the_hub() -> None:
    text = (REPO / "Dockerfile").read_text()
    sources = [src for line in re.findall(r"^COPY (.+)$", text, re.M)
               for src in line.split()[:-1]]
    assert sources and all((REPO / src).exists() for src in sources), sources
    assert 'pip install --no-cache-dir ".[hub]"' in text
    assert "openssl" in text  # init-deploy makes the certificates with it
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert f"--uid {HUB_UID}" in text  # the owner init-deploy gives the hub's secrets


# --- the init service ----------------------------------------------------------------------
def test_init_generates_once_and_the_second_run_reuses_everything(private_dir: Path) -> None:
    root = private_dir / "deploy"
    first = init_deploy(root)
    assert first.returncode == 0, first.stderr
    made = snapshot(root)
    assert {"broker/mosquitto.conf", "broker/acl", "broker/passwd", "broker/certs/ca.crt",
            "broker/certs/server.crt", "broker/certs/server.key", "secrets/db_password",
            "secrets/hub_broker_password", "secrets/api_token", "secrets/ca.crt",
            "secrets/deploy.json", "ca/ca.key", "ca/ca.crt"} <= set(made)
    secrets = {n: (root / "secrets" / n).read_text().strip()
               for n in ("db_password", "hub_broker_password", "api_token")}
    assert len(set(secrets.values())) == 3 and all(len(v) >= 40 for v in secrets.values())
    hub_line = (root / "broker" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in hub_line] == [HUB_USERNAME]
    assert verify_password(secrets["hub_broker_password"], hub_line[0].split(":", 1)[1])
    assert (root / "broker" / "acl").read_text() == (REPO / "mosquitto" / "acl").read_text()

    second = init_deploy(root)
    assert second.returncode == 0, second.stderr
    assert "nothing made" in second.stderr
    assert snapshot(root) == made  # same bytes, same times, same owners


def test_init_gives_each_file_to_the_container_user_that_reads_it(private_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("run as root: init runs as root in its container")
    root = private_dir / "deploy"
    assert init_deploy(root).returncode == 0
    files = snapshot(root)
    expected = {  # path: (mode, uid, gid)
        "broker/passwd": (0o600, BROKER_UID, BROKER_UID),
        "broker/acl": (0o600, BROKER_UID, BROKER_UID),
        "broker/certs/server.key": (0o600, BROKER_UID, BROKER_UID),
        "secrets/db_password": (0o440, HUB_UID, DB_UID),
        "secrets/hub_broker_password": (0o400, HUB_UID, HUB_UID),
        "secrets/api_token": (0o400, HUB_UID, HUB_UID),
        "ca/ca.key": (0o600, 0, 0),
    }
    for path, owner in expected.items():
        assert files[path][2:] == owner, path
    # As the containers' users would (mosquitto 1883, postgres 999, the hub 10001):
    assert readable_by(root / "broker" / "passwd", BROKER_UID)
    assert readable_by(root / "broker" / "certs" / "server.key", BROKER_UID)
    assert readable_by(root / "secrets" / "db_password", DB_UID)
    assert readable_by(root / "secrets" / "db_password", HUB_UID)
    assert readable_by(root / "secrets" / "api_token", HUB_UID)
    assert readable_by(root / "secrets" / "ca.crt", HUB_UID)
    assert not readable_by(root / "secrets" / "hub_broker_password", DB_UID)
    assert not readable_by(root / "broker" / "passwd", HUB_UID)
    assert not readable_by(root / "ca" / "ca.key", BROKER_UID)


def test_init_takes_dot_env_values_and_keeps_device_accounts(private_dir: Path) -> None:
    root = private_dir / "deploy"
    assert init_deploy(root).returncode == 0
    generated_api_token = (root / "secrets" / "api_token").read_text()
    password = add_device(root / "broker" / "passwd", "pi-kept")
    given = init_deploy(root, {"POSTGRES_PASSWORD": "own-db-password-1",
                               "FLEETPULSE_HUB_BROKER_PASSWORD": "own-hub-password-1",
                               "FLEETPULSE_API_TOKEN": ""})
    assert given.returncode == 0, given.stderr
    assert (root / "secrets" / "db_password").read_text() == "own-db-password-1\n"
    assert (root / "secrets" / "api_token").read_text() == generated_api_token
    lines = dict(line.split(":", 1) for line in
                 (root / "broker" / "passwd").read_text().splitlines())
    assert verify_password("own-hub-password-1", lines[HUB_USERNAME])
    assert verify_password(password, lines["pi-kept"])  # add-device's account survives

    refused = init_deploy(root, {"FLEETPULSE_HUB_BROKER_PASSWORD": "change-me-hub-broker"})
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "placeholder" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_init_adds_new_host_names_with_the_same_ca(private_dir: Path) -> None:
    root = private_dir / "deploy"
    assert init_deploy(root).returncode == 0
    ca = (root / "secrets" / "ca.crt").read_text()
    key = (root / "broker" / "certs" / "server.crt").read_text()
    again = init_deploy(root, {"FLEETPULSE_BROKER_HOSTS": "broker.example.lan, 192.0.2.10"})
    assert again.returncode == 0, again.stderr
    assert (root / "secrets" / "ca.crt").read_text() == ca  # devices keep their ca.crt
    assert (root / "broker" / "certs" / "server.crt").read_text() != key
    names = subprocess.run(["openssl", "x509", "-in", str(root / "broker/certs/server.crt"),
                            "-noout", "-ext", "subjectAltName"], capture_output=True,
                           text=True, check=True).stdout
    assert "DNS:broker.example.lan" in names and "IP Address:192.0.2.10" in names
    assert json.loads((root / "secrets" / "deploy.json").read_text())["broker_hosts"][0] == \
        "broker.example.lan"


def test_init_takes_over_an_earlier_manual_setup(private_dir: Path) -> None:
    shipped = private_dir / "mosquitto"
    shutil.copytree(REPO / "mosquitto", shipped)
    (shipped / "passwd").write_text(set_user("", "pi-old", hash_password("old-password-1",
                                                                         os.urandom(12))))
    from tests.integration.test_security import make_certs
    # Made for every name init wants, so only the CA tells them apart from init's own.
    names = {"FLEETPULSE_BROKER_HOSTS": "localhost"}
    certs = make_certs(shipped / "certs", ("localhost", "127.0.0.1", "mosquitto"))
    root = private_dir / "deploy"
    result = init_deploy(root, names, shipped=shipped)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in
                 (root / "broker" / "passwd").read_text().splitlines())
    assert set(lines) == {"pi-old", HUB_USERNAME}
    assert (root / "broker" / "certs" / "server.crt").read_text() == certs.cert.read_text()
    assert (root / "secrets" / "ca.crt").read_text() == certs.ca.read_text()
    assert not (root / "ca" / "ca.key").exists()  # no CA of ours: the operator has one
    # Own certificates taken away: init's CA signs a new server certificate, and the CA the
    # hub hands out verifies it.
    own_ca = certs.ca.read_text()
    shutil.rmtree(shipped / "certs")
    assert init_deploy(root, names, shipped=shipped).returncode == 0
    assert (root / "secrets" / "ca.crt").read_text() != own_ca
    subprocess.run(["openssl", "verify", "-CAfile", str(root / "secrets" / "ca.crt"),
                    str(root / "broker" / "certs" / "server.crt")], check=True,
                   capture_output=True)


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


class DeployedBroker(MosquittoServer):
    """Mosquitto as the compose file runs it: the configuration init made, in its volume,
    read by a process of the image's mosquitto user (uid 1883) when the tests run as root."""

    def __init__(self, workdir: Path, broker_dir: Path) -> None:
        super().__init__(workdir, persistence=False)
        (workdir / "data").mkdir(exist_ok=True)
        self.tls_port = free_port()
        self.conf.write_text(rewrite_shipped_conf((broker_dir / "mosquitto.conf").read_text(),
                                                  workdir, self.port, self.tls_port,
                                                  config_dir=broker_dir))

    def start(self) -> DeployedBroker:
        as_broker: dict[str, Any] = {}
        if os.geteuid() == 0:
            for path in (self.workdir, self.workdir / "data"):
                os.chown(path, BROKER_UID, BROKER_UID)
            as_broker = {"user": BROKER_UID, "group": BROKER_UID, "extra_groups": []}
        with open(self.workdir / "mosquitto.stderr", "ab") as err:
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                            stdout=subprocess.DEVNULL, stderr=err, **as_broker)
        wait_for(lambda: self._alive() and port_open(self.port) and port_open(self.tls_port),
                 10, "mosquitto to listen")
        return self

    def reload(self) -> None:
        before = self.log().count("Reloading config")
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)  #, as `docker compose kill -s SIGHUP mosquitto`
        wait_for(lambda: self.log().count("Reloading config") > before, 10, "the reload")


def image_postgres(workdir: Path, password_file: Path) -> PostgresServer:
    """PostgreSQL initialised as the postgres image does with POSTGRES_USER=fleetpulse,
    POSTGRES_DB=fleetpulse and POSTGRES_PASSWORD_FILE: a password over TCP."""
    server = PostgresServer(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pwfile = workdir / "pwfile"  # a copy the postgres user may read, as the entrypoint's
    pwfile.write_text(password_file.read_text())
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    server.init("-U", "fleetpulse", f"--pwfile={pwfile}", "--auth-host=scram-sha-256")
    pwfile.unlink()
    server.start()
    password = password_file.read_text().strip()
    with psycopg.connect(f"postgresql://fleetpulse:{password}@127.0.0.1:{server.port}/postgres",
                         autocommit=True) as conn:
        conn.execute("create database fleetpulse")
    return server


def in_compose(value: str, root: Path, ports: dict[str, int]) -> str:
    """Map a compose value to this machine: volume paths to ``root``, hosts to loopback."""
    value = value.replace(SECRETS_IN_CONTAINERS, str(root / "secrets"))
    for host, port in ports.items():
        value = value.replace(host, f"127.0.0.1:{port}")
    return value


def test_compose_deployment_stores_readings_from_an_mqtts_agent_with_its_own_account(
        private_dir: Path, services: dict[str, Any]) -> None:
    root = private_dir / "deploy"
    made = init_deploy(root)
    assert made.returncode == 0, made.stderr
    broker = DeployedBroker(private_dir / "broker", root / "broker").start()
    assert broker.process is not None
    assert Path(f"/proc/{broker.process.pid}").stat().st_uid == (BROKER_UID if os.geteuid() == 0
                                                                 else os.geteuid())
    database = image_postgres(private_dir / "pg", root / "secrets" / "db_password")
    http_port = free_port()
    ports = {"mosquitto:1883": broker.port, "db:5432": database.port}
    env = processes.base_env()
    env.update({k: in_compose(v, root, ports) for k, v in services["hub"]["environment"]
                .items()})
    assert env["FLEETPULSE_HTTP_PORT"] == "8080"
    env["FLEETPULSE_HTTP_HOST"], env["FLEETPULSE_HTTP_PORT"] = "127.0.0.1", str(http_port)
    hub = Process(["-m", "hub.main", "run"], env, private_dir / "hub.log")
    agent: Process | None = None
    db_url = (f"postgresql://fleetpulse:{(root / 'secrets' / 'db_password').read_text().strip()}"
              f"@127.0.0.1:{database.port}/fleetpulse")
    try:
        # The healthchecks, as compose runs them, with the ports moved here.
        probe = services["mosquitto"]["healthcheck"]["test"][1] \
            .replace(":075B", f":{broker.port:04X}").replace(":22B3", f":{broker.tls_port:04X}")
        assert subprocess.run(["sh", "-c", probe], check=False).returncode == 0
        hub.start()
        processes.wait_hub_subscribed(hub)
        health = [sys.executable if a == "python" else a.replace("8080", str(http_port))
                  for a in services["hub"]["healthcheck"]["test"][1:]]
        wait_for(lambda: subprocess.run(health, capture_output=True, check=False)
                 .returncode == 0, 30, "the hub's healthcheck to pass")

        # add-device as `docker compose exec -u root hub …` runs it (the hub's environment,
        # the broker's passwd at mosquitto/passwd of working_dir: here, init's volume).
        added = subprocess.run(
            [sys.executable, "-m", "hub.main", "add-device", "pi-compose", "--broker-url",
             f"mqtts://localhost:{broker.tls_port}", "--password-file",
             str(root / "broker" / "passwd")], env=env, cwd=REPO, capture_output=True,
            text=True, check=False, timeout=60)
        assert added.returncode == 0, added.stderr
        assert f"({root / 'secrets' / 'ca.crt'})" in added.stderr  # the CA to copy
        broker.reload()  # docker compose kill -s SIGHUP mosquitto
        config = tomllib.loads(added.stdout)
        config["broker_ca_file"] = str(root / "secrets" / "ca.crt")  # copied to the device
        toml = private_dir / "agent.toml"
        toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        agent = Process(["-m", "agent.main", "run", "--config", str(toml)],
                        processes.base_env(state_dir=str(private_dir / "agent"),
                                           interval_s="0.2"), private_dir / "agent.log").start()
        wait_for(lambda: query(db_url, "select count(*) from metrics where device_id = "
                               "'pi-compose'")[0][0] >= 3, 60, "readings stored by the hub")

        # The API wants the generated token.
        token = (root / "secrets" / "api_token").read_text().strip()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/devices", timeout=5)
        assert refused.value.code == 401
        refused.value.close()
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/devices",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "pi-compose" in response.read().decode()
        # A forged topic from the device's account is refused by the ACL init copied (the
        # agent stops first: the broker takes the user name for the client id).
        agent.stop()
        device_password = config["broker_password"]
        forger = Client(broker.tls_port, "pi-compose-forger", "pi-compose", device_password,
                        host="localhost", ca_file=root / "secrets" / "ca.crt").connect()
        try:
            assert forger.publish("fleetpulse/pi-other/metrics", b"{}") == NOT_AUTHORIZED
        finally:
            forger.stop()
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
        broker.stop()
        database.stop()
    log = hub.log()
    assert "Traceback" not in log
    # The first lines: one command each to read the secrets and add a device.
    secrets_dir = root / "secrets"
    assert f"docker compose exec -T hub cat {secrets_dir}/api_token" in log
    assert f"docker compose exec -T hub cat {secrets_dir}/ca.crt > ca.crt" in log
    hosts = json.loads((secrets_dir / "deploy.json").read_text())["broker_hosts"]
    assert (f"docker compose exec -T -u root hub fleetpulse-hub add-device DEVICE_ID "
            f"--broker-url mqtts://{hosts[0]}:8883 > DEVICE_ID.toml && docker compose kill "
            "-s SIGHUP mosquitto") in log
    assert token not in log and device_password not in log
    assert "Unable to" not in broker.log()  # every file init made loaded
