"""Anomaly detection end to end: the real agent feeds a real hub; a model trained on a quiet
period (``fleetpulse-hub train``) is picked up by the running hub; a CPU spin opens an
``anomaly`` alert that reaches the API, the retained MQTT topic and the dashboard (Chromium);
and the model survives a hub restart. Judged on the alert, not on timing."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from selenium.webdriver.common.by import By

from shared.topics import alert_topic
from tests import processes
from tests.servers import MosquittoServer, PostgresServer, free_port, wait_for
from tests.web.test_dashboard import _chromium, cell, screenshot

DEVICE = "spin-1"
INTERVAL_S = "0.25"
QUIET_READINGS = 200  # 50 s at 0.25 s
# The agent sees the whole machine. On this shared 2-core VM other people's work often keeps
# both cores at 100 % for minutes, where one spinning core changes nothing an agent can see
# (measured: CPU % and per-core spread flat, the score at its quiet level); sixteen spinning
# workers also show in the load average and the interrupt and context-switch rates. On a
# loaded machine what holds the score up is mostly the load average drifting far from its
# quiet level, which takes minutes to climb towards 16 (a CI run once saw the score touch
# 0.52 within 90 s but not hold it): the spin may last five minutes, ended by the alert.
SPIN = ["stress-ng", "--cpu", "16", "--timeout", "300s", "--quiet"]
ALERT_WAIT_S = 270


def _retained(broker: MosquittoServer, topic: str, timeout_s: float = 15) -> bytes:
    """Subscribe afresh and return what the broker holds retained on ``topic``."""
    received: dict[str, bytes] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: received.__setitem__(m.topic, m.payload)
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        wait_for(lambda: topic in received, timeout_s, f"the retained message on {topic}")
    finally:
        client.loop_stop()
        client.disconnect()
    return received[topic]


def _open_anomaly(api: str) -> list[dict[str, object]]:
    alerts = httpx.get(f"{api}/api/alerts", params={"open": "true", "device": DEVICE},
                       timeout=10).json()
    return [a for a in alerts if a["rule"] == "anomaly"]


def test_cpu_spin_opens_an_anomaly_alert_seen_by_api_mqtt_and_dashboard(
        postgres: PostgresServer, broker: MosquittoServer) -> None:
    db_url = postgres.create_database("anomaly")
    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-anomaly-"))
    prefix = f"fpanom-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # The anomaly rule's default 10 s is ten readings at one a second: the same ten readings
    # at this test's interval.
    rules = workdir / "rules.toml"
    rules.write_text("[anomaly]\nduration_s = 2.5\n")
    settings = {"http_port": str(port), "batch_max_age_s": "0.2", "alert_check_s": "1",
                "alert_rules_file": str(rules),
                "train_min_readings": str(QUIET_READINGS), "train_window_h": "1",
                "retrain_h": "0"}  # trained by the command below, never by the hub itself
    hub = processes.hub(workdir, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        **settings)
    agent = processes.agent(workdir, broker_url=broker.url, prefix=prefix, device_id=DEVICE,
                            interval_s=INTERVAL_S)
    api = f"http://127.0.0.1:{port}"
    spin: subprocess.Popen[bytes] | None = None
    browser = None
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        agent.start()
        # Too little history yet: the command says so, and trains nothing.
        processes.wait_rows(db_url, 1, where=f"device_id = '{DEVICE}'")
        train = [sys.executable, "-m", "hub.main", "train", "--device", DEVICE]
        env = processes.base_env(db=db_url, train_min_readings=str(QUIET_READINGS),
                                 train_window_h="1")
        early = subprocess.run(train, env=env, capture_output=True, text=True, timeout=60,
                               cwd=Path(__file__).parents[2], check=False)
        assert early.returncode == 1
        assert "too little history" in early.stderr and "Traceback" not in early.stderr
        processes.wait_rows(db_url, QUIET_READINGS + 4, timeout_s=60,
                            where=f"device_id = '{DEVICE}'")
        trained = subprocess.run(train, env=env, capture_output=True, text=True, timeout=60,
                                 cwd=Path(__file__).parents[2], check=False)
        assert trained.returncode == 0, trained.stderr
        assert f"{DEVICE}: trained v1" in trained.stderr
        # The running hub picks the model up and scores new readings with it.
        wait_for(lambda: processes.query(
            db_url, "select count(*) from metrics where device_id = %s and anomaly_score "
            "is not null", (DEVICE,))[0][0] >= 8, 30, "scored readings")
        assert not _open_anomaly(api), "an anomaly alert before the spin"
        spin_started = datetime.now(UTC)
        spin = subprocess.Popen(SPIN)
        try:
            wait_for(lambda: _open_anomaly(api), ALERT_WAIT_S,
                     "an open anomaly alert in the API")
        except AssertionError as exc:
            scores = processes.query(
                db_url, "select max(anomaly_score), count(*) filter (where anomaly_score > "
                "0.5), count(*) from metrics where device_id = %s and ts >= %s",
                (DEVICE, spin_started))
            raise AssertionError(f"{exc}; scores since the spin (max, above 0.5, readings): "
                                 f"{scores[0]}") from None
        alert = _open_anomaly(api)[0]
        assert datetime.fromisoformat(str(alert["started_at"])) >= spin_started
        assert "Unusual behaviour" in str(alert["message"])
        retained = orjson.loads(_retained(broker, alert_topic(prefix, DEVICE, "anomaly")))
        assert retained["rule"] == "anomaly" and retained["device_id"] == DEVICE
        assert retained["peak_value"] >= 0.5
        detection = httpx.get(f"{api}/api/health", timeout=10).json()["detection"]
        assert detection["models"] == 1 and detection["scored"] > 0
        assert detection["cpu_us_per_reading"] > 0  # measured inside the hub
        browser = _chromium()
        browser.get(api + "/#/")
        wait_for(lambda: "Unusual behaviour" in browser.find_element(By.ID,
                                                                      "open-alerts").text,
                 20, "the anomaly alert on the fleet page")
        wait_for(lambda: cell(browser, DEVICE, "anomaly").endswith("%"), 20,
                 "the device's anomaly rate in the fleet table")
        assert screenshot(browser, "anomaly-fleet").stat().st_size > 10_000
        browser.get(api + f"/#/device/{DEVICE}")
        wait_for(lambda: browser.find_element(By.ID, "detector-model").text.startswith(
            "v1 (novelty)"), 20, "the model on the device page")
        wait_for(lambda: browser.execute_script(
            "return (window.fleetpulse.band || {rate: []}).rate.some((r) => r > 0)"), 20,
            "anomalous buckets in the device page's band")
        assert screenshot(browser, "anomaly-device").stat().st_size > 10_000
        browser.quit()  # before the restart: its event stream would hold the old hub
        browser = None
        spin.kill()
        spin.wait(5)
        spin = None
        # A restarted hub scores at once with the stored model (retraining is off).
        hub.stop()
        restarted = datetime.now(UTC)
        hub.start()
        processes.wait_hub_subscribed(hub)
        wait_for(lambda: processes.query(
            db_url, "select count(*) from metrics where device_id = %s and received_at > %s "
            "and anomaly_score is not null", (DEVICE, restarted))[0][0] >= 4, 30,
            "readings scored after the restart")
        unscored = processes.query(
            db_url, "select count(*) from metrics where device_id = %s and received_at > %s "
            "and anomaly_score is null", (DEVICE, restarted))[0][0]
        assert unscored == 0
    finally:
        if spin is not None:
            spin.kill()
            spin.wait(5)
        if browser is not None:
            browser.quit()
        agent.stop()
        hub.stop()
    assert "Traceback" not in hub.log(), hub.log()[-3000:]
