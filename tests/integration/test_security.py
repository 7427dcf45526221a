"""The broker's accounts and ACL, as shipped in mosquitto/, against a real Mosquitto.

The broker runs the shipped ``mosquitto/mosquitto.conf`` and ``mosquitto/acl`` with only
paths and ports rewritten; accounts are made with ``hub.credentials`` and the
``fleetpulse-hub add-device`` / ``revoke-device`` commands, as an operator would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.credentials import HUB_USERNAME, add_device, hash_password, read_password_file, set_user
from tests import processes
from tests.processes import Process, base_env, query
from tests.servers import MosquittoServer, free_port, port_open, wait_for

REPO = Path(__file__).parents[2]
HUB_PASSWORD = "hub-test-password"
NOT_AUTHORIZED = 0x87  # MQTT 5.0 reason code 135


# --- helpers shared with test_tls.py and test_compose.py ---------------------------------
@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_certs(directory: Path, hosts: tuple[str, ...] = ("localhost",)) -> Certs:
    """Make a CA and a server certificate for ``hosts`` with the commands of docs/tls.md."""
    directory.mkdir(parents=True, exist_ok=True)
    san = ",".join(f"IP:{h}" if re.fullmatch(r"[\d.]+|[0-9a-fA-F:]+:[0-9a-fA-F:]*", h)
                   else f"DNS:{h}" for h in hosts)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-subj", "/CN=fleetpulse test CA", cwd=directory)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={hosts[0]}",
            cwd=directory)
    (directory / "server.ext").write_text(
        f"subjectAltName = {san}\nextendedKeyUsage = serverAuth\n"
        "keyUsage = digitalSignature, keyEncipherment\nbasicConstraints = CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "825", "-extfile", "server.ext",
            cwd=directory)
    return Certs(directory / "ca.crt", directory / "server.crt", directory / "server.key")


class ShippedBroker(MosquittoServer):
    """Mosquitto running mosquitto/mosquitto.conf with its paths and ports moved here."""

    def __init__(self, workdir: Path, *, certs: Certs | None = None) -> None:
        super().__init__(workdir, persistence=False)
        self.config_dir = workdir / "config"
        self.config_dir.mkdir(exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        self.password_file = self.config_dir / "passwd"
        self.acl_file = self.config_dir / "acl"
        shutil.copy(REPO / "mosquitto" / "acl", self.acl_file)
        self.tls_port = free_port()
        if certs is None:
            certs = make_certs(self.config_dir / "certs")
        else:
            shutil.copytree(certs.ca.parent, self.config_dir / "certs")
        self.conf.write_text(rewrite_shipped_conf(
            (REPO / "mosquitto" / "mosquitto.conf").read_text(), workdir, self.port,
            self.tls_port))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ShippedBroker:
        super().start()
        wait_for(lambda: port_open(self.tls_port), 10, "the TLS listener")
        return self

    def reload(self) -> None:
        """SIGHUP, and wait until the broker says it reloaded."""
        before = self.log().count("Reloading config")
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        # 30 s: under heavy disk load (a CI neighbour) the log line once took over 10 s.
        wait_for(lambda: self.log().count("Reloading config") > before, 30, "the reload")


def rewrite_shipped_conf(text: str, workdir: Path, port: int, tls_port: int,
                         config_dir: Path | None = None) -> str:
    """Point the shipped config at ``workdir`` (its files at ``config_dir``, default
    ``workdir/config``) and free loopback ports; fail if its shape changed so that a
    rewrite no longer applies."""
    rewrites = [
        ("/mosquitto/config/", f"{config_dir or workdir / 'config'}/"),
        ("/mosquitto/data/", f"{workdir}/data/"),
        ("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n"),
        ("\nlistener 8883\n", f"\nlistener {tls_port} 127.0.0.1\n"),
        ("\nlog_dest stdout\n", f"\nlog_dest file {workdir}/mosquitto.log\n"),
    ]
    for old, new in rewrites:
        assert old in text, f"mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "/mosquitto/" in line]
    if os.geteuid() == 0:
        text += "\nuser root\n"  # else it drops to 'mosquitto', which cannot read workdir
    return text


@dataclass
class Client:
    """A plain MQTT v5 client that records what the broker answers."""

    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    host: str = "127.0.0.1"
    session_expiry_s: int = 0
    connack: int | None = None
    connected: bool = False
    pubacks: dict[int, int] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    granted: list[int] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                protocol=paho.MQTTv5)
        if self.username is not None:
            self.paho.username_pw_set(self.username, self.password)
        if self.ca_file is not None:
            self.paho.tls_set(ca_certs=str(self.ca_file))
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe

    def _on_connect(self, c: object, u: object, f: object, reason: object, p: object) -> None:
        self.connack = reason.value  # type: ignore[attr-defined]
        self.connected = not reason.is_failure  # type: ignore[attr-defined]

    def _on_disconnect(self, c: object, u: object, f: object, r: object, p: object) -> None:
        self.connected = False
        self.disconnects.append(str(r))

    def _on_publish(self, c: object, u: object, mid: int, reason: object, p: object) -> None:
        with self.lock:
            self.pubacks[mid] = reason.value  # type: ignore[attr-defined]

    def _on_message(self, c: object, u: object, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def _on_subscribe(self, c: object, u: object, mid: int, codes: list[object],
                      p: object) -> None:
        self.granted = [code.value for code in codes]  # type: ignore[attr-defined]

    def connect(self, *, expect_success: bool = True) -> Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry_s:
            properties.SessionExpiryInterval = self.session_expiry_s
        self.paho.connect(self.host, self.port, clean_start=not self.session_expiry_s,
                          properties=properties)
        self.paho.loop_start()
        wait_for(lambda: self.connack is not None, 10, f"CONNACK for {self.client_id}")
        if expect_success:
            assert self.connected, f"{self.client_id} was refused: reason {self.connack}"
        return self

    def subscribe(self, *filters: str) -> Client:
        self.granted = []
        self.paho.subscribe([(f, 1) for f in filters])
        wait_for(lambda: len(self.granted) == len(filters), 10, "SUBACK")
        assert all(code == 1 for code in self.granted), self.granted
        return self

    def publish(self, topic: str, payload: bytes = b"x", *, qos: int = 1) -> int:
        """Publish and wait for the broker's PUBACK; return its reason code."""
        mid = self.paho.publish(topic, payload, qos=qos).mid
        wait_for(lambda: mid in self.pubacks, 10, f"PUBACK of {topic}")
        return self.pubacks[mid]

    def topics(self) -> list[str]:
        with self.lock:
            return [topic for topic, _ in self.messages]

    def stop(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secure(work_root: Path) -> Iterator[ShippedBroker]:
    broker = ShippedBroker(work_root / "secure-mqtt")
    broker.password_file.write_text(set_user("", HUB_USERNAME, hash_password(
        HUB_PASSWORD, os.urandom(12))))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def hub_client(secure: ShippedBroker) -> Iterator[Client]:
    client = Client(secure.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD).connect()
    client.subscribe("fleetpulse/+/metrics", "fleetpulse/+/status", "fleetpulse/+/alert/#")
    yield client
    client.stop()


def new_device(broker: ShippedBroker, device_id: str) -> str:
    password = add_device(broker.password_file, device_id)
    broker.reload()
    return password


def hub_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.main", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=30,
                          env=base_env(log_level="WARNING"))


# --- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("topic", ["fleetpulse/dev-b/metrics", "fleetpulse/dev-b/status",
                                   "fleetpulse/dev-a/alert/cpu", "fleetpulse/dev-a/other",
                                   "elsewhere/dev-a/metrics"])
def test_device_publishing_outside_its_own_topics_gets_not_authorized_and_nobody_receives_it(
        secure: ShippedBroker, hub_client: Client, topic: str) -> None:
    password = new_device(secure, "dev-a")
    device = Client(secure.port, "fleetpulse-agent-dev-a", "dev-a", password).connect()
    try:
        assert device.publish(topic) == NOT_AUTHORIZED
        # The broker keeps order: once the allowed message is in, the refused one is not.
        assert device.publish("fleetpulse/dev-a/metrics", b"mine") == 0
        wait_for(lambda: "fleetpulse/dev-a/metrics" in hub_client.topics(), 10,
                 "the device's own message")
    finally:
        device.stop()
    assert topic not in hub_client.topics()


def test_device_qos0_publish_to_another_devices_topic_is_dropped_silently(
        secure: ShippedBroker, hub_client: Client) -> None:
    password = new_device(secure, "dev-q")
    device = Client(secure.port, "dev-q", "dev-q", password).connect()
    try:
        device.paho.publish("fleetpulse/dev-b/status", b"offline", qos=0)
        assert device.publish("fleetpulse/dev-q/status", b"online") == 0
        wait_for(lambda: "fleetpulse/dev-q/status" in hub_client.topics(), 10, "own status")
        assert device.connected  # no disconnect either: the drop is silent
    finally:
        device.stop()
    assert "fleetpulse/dev-b/status" not in hub_client.topics()


def test_message_over_the_hubs_limit_reaches_it_and_over_the_brokers_limit_is_dropped(
        secure: ShippedBroker, hub_client: Client) -> None:
    password = new_device(secure, "dev-big")
    device = Client(secure.port, "dev-big", "dev-big", password).connect()
    try:
        # Over the hub's 64 KiB (it quarantines those, visibly) but under the broker's 1 MiB.
        assert device.publish("fleetpulse/dev-big/metrics", b"x" * 100_000) == 0
        wait_for(lambda: "fleetpulse/dev-big/metrics" in hub_client.topics(), 10,
                 "the 100 kB message")
        # Over 1 MiB at QoS 0: dropped, connection kept.
        device.paho.publish("fleetpulse/dev-big/meta", b"x" * 1_100_000, qos=0)
        assert device.publish("fleetpulse/dev-big/status", b"online") == 0  # in order
        wait_for(lambda: "fleetpulse/dev-big/status" in hub_client.topics(), 10, "status")
        assert device.connected and device.disconnects == []
        # At QoS 1 mosquitto 2.0.11 acks with 0x95, which paho treats as a protocol error:
        # it drops the connection (and resends after reconnecting, again and again).
        device.paho.publish("fleetpulse/dev-big/meta", b"x" * 1_100_000, qos=1)
        wait_for(lambda: len(device.disconnects) >= 2, 10, "paho to drop the connection twice")
        assert set(device.disconnects) == {"Protocol error"}
    finally:
        device.stop()
    assert "fleetpulse/dev-big/meta" not in hub_client.topics()


def test_hub_account_may_write_alerts_and_read_through_a_shared_subscription(
        secure: ShippedBroker) -> None:
    password = new_device(secure, "dev-s")
    shared = Client(secure.port, "shared-hub", HUB_USERNAME, HUB_PASSWORD)
    device = Client(secure.port, "dev-s", "dev-s", password)
    try:
        shared.connect().subscribe("$share/hubs/fleetpulse/+/metrics")
        device.connect()
        assert device.publish("fleetpulse/dev-s/metrics", b"1") == 0
        wait_for(lambda: "fleetpulse/dev-s/metrics" in shared.topics(), 10,
                 "the message through $share")
        # 16: "no matching subscribers", a success reason code (MQTT 5.0, 3.4.2.1).
        assert shared.publish("fleetpulse/dev-s/alert/cpu_hot", b"{}") in (0, 16)
        assert shared.publish("fleetpulse/dev-s/metrics", b"forged") == NOT_AUTHORIZED
    finally:
        device.stop()
        shared.stop()


def test_anonymous_and_wrong_password_connections_are_refused(secure: ShippedBroker) -> None:
    anonymous = Client(secure.port, "anon").connect(expect_success=False)
    wrong = Client(secure.port, "wrong", HUB_USERNAME, "not-the-password").connect(
        expect_success=False)
    unknown = Client(secure.port, "ghost", "ghost", "x").connect(expect_success=False)
    for client in (anonymous, wrong, unknown):
        client.stop()
    assert (anonymous.connack, wrong.connack, unknown.connack) == (NOT_AUTHORIZED,) * 3


def test_device_cannot_take_over_the_hubs_session_by_its_client_id(
        secure: ShippedBroker) -> None:
    password = new_device(secure, "dev-t")
    hub = Client(secure.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD,
                 session_expiry_s=3600).connect().subscribe("fleetpulse/+/metrics")
    hub.stop()  # away; the broker queues for its session
    device = Client(secure.port, "fleetpulse-agent-dev-t", "dev-t", password).connect()
    intruder = Client(secure.port, HUB_USERNAME, "dev-t", password, session_expiry_s=3600)
    try:
        assert device.publish("fleetpulse/dev-t/metrics", b"queued for the hub") == 0
        intruder.connect()  # same client id as the hub, the device's credentials
        intruder.stop()
        back = Client(secure.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD,
                      session_expiry_s=3600).connect()
        try:
            wait_for(lambda: ("fleetpulse/dev-t/metrics", b"queued for the hub")
                     in back.messages, 10, "the hub's queued message")
        finally:
            back.stop()
    finally:
        device.stop()


def test_add_device_command_gives_an_agent_config_that_publishes(
        secure: ShippedBroker, hub_client: Client, tmp_path: Path) -> None:
    result = hub_cli("add-device", "dev-cli", "--password-file", str(secure.password_file),
                     "--reload-pid", str(secure.pid), "--broker-url",
                     f"mqtt://{HUB_USERNAME}:{HUB_PASSWORD}@127.0.0.1:{secure.port}")
    assert result.returncode == 0, result.stderr
    config = tomllib.loads(result.stdout)
    assert HUB_PASSWORD not in result.stdout
    assert config["broker_username"] == config["device_id"] == "dev-cli"
    (tmp_path / "agent.toml").write_text(result.stdout)
    agent = Process(["-m", "agent.main", "run"],
                    base_env(config=str(tmp_path / "agent.toml"), state_dir=str(tmp_path / "st"),
                             interval_s="0.2"), tmp_path / "agent.log")
    try:
        # The reload is asynchronous: the agent may be refused once before it lands.
        agent.start()
        wait_for(lambda: hub_client.topics().count("fleetpulse/dev-cli/metrics") >= 2, 30,
                 "readings of the new device")
        assert "fleetpulse/dev-cli/status" in hub_client.topics()
    finally:
        agent.stop()
    assert "Traceback" not in agent.log()


def test_revoked_device_is_disconnected_and_refused_after_reload(
        secure: ShippedBroker, hub_client: Client) -> None:
    password = new_device(secure, "dev-r")
    open_connection = Client(secure.port, "dev-r", "dev-r", password).connect()
    reloads = secure.log().count("Reloading config")
    try:
        result = hub_cli("revoke-device", "dev-r", "--password-file", str(secure.password_file),
                         "--reload-pid", str(secure.pid))
        assert result.returncode == 0, result.stderr
        assert "disconnects the device" in result.stderr
        assert "dev-r" not in read_password_file(secure.password_file)
        wait_for(lambda: secure.log().count("Reloading config") > reloads, 10, "the reload")
        # mosquitto.conf(5) says a reload leaves connected clients alone; 2.0.11 re-checks
        # them and drops the revoked one. Its client (paho) reconnects and is refused.
        wait_for(lambda: open_connection.connack == NOT_AUTHORIZED, 20,
                 "the revoked device to be dropped and refused")
        assert not open_connection.connected
        again = Client(secure.port, "dev-r-again", "dev-r", password)
        again.connect(expect_success=False)
        again.stop()
        assert again.connack == NOT_AUTHORIZED
    finally:
        open_connection.stop()


def test_agent_with_a_wrong_password_logs_one_line_and_retries_until_fixed(
        secure: ShippedBroker, hub_client: Client, tmp_path: Path) -> None:
    new_device(secure, "dev-w")
    refusals = secure.log().count("disconnected, not authorised")
    agent = processes.agent(tmp_path, broker_url=f"mqtt://127.0.0.1:{secure.port}",
                            prefix="fleetpulse", device_id="dev-w", broker_username="dev-w",
                            broker_password="wrong-password", interval_s="0.2")
    try:
        agent.start()
        wait_for(lambda: secure.log().count("disconnected, not authorised") >= refusals + 2, 20,
                 "two refused attempts")
        assert "fleetpulse/dev-w/metrics" not in hub_client.topics()
        # The operator gives the account the password the device has; it keeps retrying.
        secure.password_file.write_text(set_user(read_password_file(secure.password_file),
                                                 "dev-w", hash_password("wrong-password",
                                                                        os.urandom(12))))
        secure.reload()
        wait_for(lambda: "fleetpulse/dev-w/metrics" in hub_client.topics(), 40,
                 "the agent's readings once the password is right")
    finally:
        agent.stop()
    log = agent.log()
    assert "Traceback" not in log
    refused_lines = [line for line in log.splitlines() if "refused the connection" in line]
    assert len(refused_lines) == 1, log
    assert "Not authorized" in refused_lines[0] and "password" in refused_lines[0]
    assert "wrong-password" not in log


def test_agent_whose_user_name_is_not_its_device_id_is_refused(
        secure: ShippedBroker, hub_client: Client, tmp_path: Path) -> None:
    password = new_device(secure, "dev-x")
    agent = processes.agent(tmp_path, broker_url=f"mqtt://127.0.0.1:{secure.port}",
                            prefix="fleetpulse", device_id="dev-y", broker_username="dev-x",
                            broker_password=password, interval_s="0.2")
    try:
        agent.start()
        wait_for(lambda: agent.log().count("The broker refused reading") >= 2, 20,
                 "readings refused by the ACL")
        assert agent.running()
    finally:
        agent.stop()
    assert "Connected to broker" in agent.log()
    assert not [t for t in hub_client.topics() if "/dev-y/" in t or "/dev-x/" in t]
    assert "Traceback" not in agent.log()


def test_hub_quarantines_a_payload_whose_device_id_does_not_match_its_topic(
        tmp_path: Path, broker: MosquittoServer, db_url: str, prefix: str) -> None:
    # On a permissive broker (the ACL would refuse this publish): the hub is the second line.
    reading = subprocess.run([sys.executable, "-m", "agent.main", "once", "--device-id",
                              "dev-b", "--interval-s", "0.1", "--state-dir", str(tmp_path)],
                             cwd=REPO, capture_output=True, check=True, timeout=30).stdout
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.1").start()
    publisher = Client(broker.port, f"{prefix}-pub")
    try:
        processes.wait_hub_subscribed(hub)
        publisher.connect()
        assert publisher.publish(f"{prefix}/dev-a/metrics", reading.strip()) == 0
        wait_for(lambda: query(db_url, "select count(*) from quarantine")[0][0] == 1, 30,
                 "the quarantined reading")
    finally:
        publisher.stop()
        hub.stop()
    assert query(db_url, "select count(*) from metrics") == [(0,)]
    (device_id, reason), = query(db_url, "select device_id, reason from quarantine")
    assert device_id == "dev-a"
    assert "'dev-b' in the payload does not match 'dev-a'" in str(reason)
    assert "Traceback" not in hub.log()
