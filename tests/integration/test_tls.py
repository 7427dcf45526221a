"""MQTT over TLS: certificates made with openssl as docs/tls.md says, a real Mosquitto
with a TLS listener, the real agent process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import processes
from tests.integration.test_security import Certs, Client, make_certs
from tests.servers import MosquittoServer, free_port, port_open, wait_for


class TlsBroker(MosquittoServer):
    """The test broker with a second listener speaking TLS with a certificate for localhost."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        self.tls_port = free_port()
        super().__init__(workdir, persistence=False, extra_conf=(
            f"listener {self.tls_port} 127.0.0.1\n"
            f"cafile {certs.ca}\ncertfile {certs.cert}\nkeyfile {certs.key}\n"
            "tls_version tlsv1.2\n"))
        self.certs = certs

    def start(self) -> TlsBroker:
        super().start()
        wait_for(lambda: port_open(self.tls_port), 10, "the TLS listener")
        return self

    def refused_handshakes(self) -> int:
        """TLS handshakes a client aborted with an alert (it did not accept our certificate).

        The first is logged as "OpenSSL Error[0]: …", later ones as "Client connection
        from … failed: …"; both name the client's TLS alert.
        """
        return len(re.findall(r"SSL routines::\S+ alert ", self.log()))


@pytest.fixture(scope="module")
def tls_broker(work_root: Path) -> Iterator[TlsBroker]:
    certs = make_certs(work_root / "tls-certs", hosts=("localhost",))
    broker = TlsBroker(work_root / "tls-mqtt", certs).start()
    yield broker
    broker.stop()


def test_agent_publishes_over_tls_to_a_subscriber_that_trusts_the_ca(
        tls_broker: TlsBroker, tmp_path: Path, prefix: str) -> None:
    subscriber = Client(tls_broker.tls_port, f"{prefix}-sub", host="localhost",
                        ca_file=tls_broker.certs.ca).connect()
    subscriber.subscribe(f"{prefix}/tls-1/metrics")
    agent = processes.agent(tmp_path, broker_url=f"mqtts://localhost:{tls_broker.tls_port}",
                            prefix=prefix, device_id="tls-1", interval_s="0.2",
                            broker_ca_file=str(tls_broker.certs.ca))
    try:
        agent.start()
        wait_for(lambda: len(subscriber.messages) >= 3, 30, "readings over TLS")
    finally:
        agent.stop()
        subscriber.stop()
    assert b'"device_id":"tls-1"' in subscriber.messages[0][1]
    assert f"Connected to broker mqtts://localhost:{tls_broker.tls_port}" in agent.log()
    assert "Traceback" not in agent.log()


@pytest.mark.parametrize(("host", "use_ca"), [
    ("localhost", False),  # the system's CAs do not include ours
    ("127.0.0.1", True),  # our CA, but the certificate names only localhost
], ids=["untrusted-ca", "host-not-in-certificate"])
def test_agent_that_cannot_verify_the_broker_logs_one_line_and_never_connects(
        tls_broker: TlsBroker, tmp_path: Path, prefix: str, host: str, use_ca: bool) -> None:
    extra = {"broker_ca_file": str(tls_broker.certs.ca)} if use_ca else {}
    subscriber = Client(tls_broker.port, f"{prefix}-sub").connect()
    subscriber.subscribe(f"{prefix}/#")
    agent = processes.agent(tmp_path, broker_url=f"mqtts://{host}:{tls_broker.tls_port}",
                            prefix=prefix, device_id="tls-2", interval_s="0.2", **extra)
    before = tls_broker.refused_handshakes()
    try:
        agent.start()
        wait_for(lambda: tls_broker.refused_handshakes() >= before + 2, 20,
                 "two refused TLS handshakes")
        assert agent.running()
    finally:
        agent.stop()
        subscriber.stop()
    log = agent.log()
    assert "Traceback" not in log
    assert "Connected to broker" not in log
    assert subscriber.messages == []
    broker_lines = [line for line in log.splitlines() if " shared.mqtt: " in line]
    assert len(broker_lines) == 1, log
    assert f"mqtts://{host}:{tls_broker.tls_port}" in broker_lines[0]
