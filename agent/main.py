"""``fleetpulse-agent``: wire collect → encode → publish, load settings, run the loop.

    fleetpulse-agent once     print one reading as JSON and exit
    fleetpulse-agent run      publish a reading every interval until stopped
    fleetpulse-agent install-service / uninstall-service   run it under systemd
    fleetpulse-agent top      a live view of this machine in the terminal (extra "top")
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType

from agent.capabilities import load_hub_reads, save_hub_reads
from agent.clock import boot_clock_s, read_clock_synced
from agent.collect import Collector, Sample
from agent.discovery import BIRTH_DELAY_S, Shape, device_model, discovery_message, shape_of
from agent.encode import build_meta, build_metrics, encode
from agent.identity import default_device_id
from agent.notify import Notifier, StatusTracker
from agent.processes import ProcessSampler, ProcessWatcher
from agent.publish import Outbox
from agent.remote import (
    BOUNDS,
    Refused,
    Value,
    apply_change,
    config_message,
    effective,
    load_state,
    parse_set,
    refusal,
    save_state,
)
from agent.service import COMMANDS as SERVICE_COMMANDS
from agent.service import add_service_arguments, run_service_command
from agent.spool import EncodedReading, Spool
from shared import __version__
from shared.config import AgentSettings, add_setting_flags, parse_broker_url, settings_from_args
from shared.errors import ConfigError
from shared.mqtt import MqttConnection, Received, Will, describe_broker
from shared.schema import STATUS_OFFLINE, STATUS_ONLINE, MetricsV1, read_capabilities
from shared.topics import (
    HA_STATUS_TOPIC,
    alert_topic,
    config_topic,
    ha_discovery_topic,
    hub_schema_topic,
    meta_topic,
    metrics_topic,
    parse_set_topic,
    set_filters,
    status_topic,
)

log = logging.getLogger("fleetpulse.agent")
DEFAULT_CONFIG = Path("/etc/fleetpulse/agent.toml")
REPLAY_PUMP_S = 0.1  # how often to pump while the spool is being replayed
META_CHECK_S = 60.0
WINDOW = 100  # readings awaiting the broker's acknowledgement at once
PRIMING_S = 1.0  # at most this between the priming sample and the first reading
MAX_READING_BYTES = 512 * 1024  # under message_size_limit in mosquitto/mosquitto.conf
# Taken over this often within the window: another machine uses this device id.
TAKEOVERS_FOR_ERROR = 5
TAKEOVER_WINDOW_S = 600.0
HA_ANNOUNCED_FILE = "ha-announced"  # the discovery topic, while the device is announced


def next_tick(previous: float, interval_s: float, now: float) -> float:
    """Return the next tick of a fixed-rate schedule that does not drift.

    Ticks are previous + interval; if the loop fell behind by more than one interval
    (suspend, overload), it skips ahead instead of bursting to catch up.
    """
    tick = previous + interval_s
    if now - tick > interval_s:
        missed = int((now - tick) // interval_s)
        tick += missed * interval_s
    return tick


class Agent:
    """Collect on a fixed-rate loop and hand each reading to the outbox."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.device_id = settings.device_id or default_device_id(settings.state_dir)
        self.session_id = uuid.uuid4().hex
        self.collector = Collector()
        self.facts = self.collector.static_facts()
        self.stop_event = threading.Event()
        self._seq = 0
        self._prev: Sample | None = None
        prefix = settings.topic_prefix
        self._status_topic = status_topic(prefix, self.device_id)
        self._meta_topic = meta_topic(prefix, self.device_id)
        self._schema_topic = hub_schema_topic(prefix)
        self.hub_reads = load_hub_reads(settings.state_dir)  # optional fields the hub reads
        # Settings the hub or an admin may change (agent/remote.py): the local ones, the
        # remote overrides kept in the state directory, and what is in effect.
        self._config_topic = config_topic(prefix, self.device_id)
        self._set_filters = set_filters(prefix, self.device_id)
        self.local: dict[str, Value] = {name: getattr(settings, name) for name in BOUNDS}
        self.remote = load_state(settings.state_dir)
        self.current, _ = effective(self.local, self.remote.settings)
        self._interval_changed = False
        self._config_mids: set[int] = set()
        self._config_refused_logged = False
        # Home Assistant discovery (agent/discovery.py), when ha_discovery is on.
        self._ha_topic = ha_discovery_topic(self.device_id)
        self._ha_due: float | None = None  # monotonic time of the next announcement
        self._ha_shape: Shape | None = None
        self._last_message: MetricsV1 | None = None
        self._ha_mids: set[int] = set()
        self._ha_refused_logged = False
        self._clock_synced: bool | None = None
        self._takeovers: list[float] = []
        self._duplicate_logged = False
        self.spool = Spool(settings.state_dir / "spool.sqlite3",
                           max_bytes=settings.spool_max_bytes, max_age_s=settings.spool_max_age_s)
        self.mqtt = MqttConnection(
            f"fleetpulse-agent-{self.device_id}", parse_broker_url(settings.broker_url),
            username=settings.broker_username, password=settings.broker_password,
            ca_file=settings.broker_ca_file,
            # Room for the status and meta messages beside a full window of readings, so
            # paho never has to queue a reading itself.
            will=Will(self._status_topic, STATUS_OFFLINE.encode()), max_inflight=WINDOW + 16,
            network_thread=False)  # driven by run(): see shared/mqtt.py
        self.outbox = Outbox(self.mqtt, self.spool, metrics_topic(prefix, self.device_id),
                             window=WINDOW, flush_s=settings.spool_flush_s,
                             replay_rate_per_s=settings.replay_rate_per_s,
                             session_id=self.session_id)
        self.mqtt.on_connected = self._announce
        self.mqtt.on_published = self._on_published
        self.mqtt.on_message = self._on_message
        self.mqtt.on_taken_over = self._taken_over
        self._meta_dropped = -1
        self._spool_readings = len(self.spool)
        self._spool_dropped = self.spool.dropped
        # systemd's notify socket and watchdog (a no-op when not run by systemd).
        self.notifier = Notifier()
        self._health = StatusTracker(describe_broker(self.mqtt.address), time.time())
        self.processes: ProcessWatcher | None = None  # set by main() when process_period_s > 0

    def _meta_payload(self) -> bytes:
        # Called from on_connected too: use the counts the main loop noted, not the spool.
        self._meta_dropped = self._spool_dropped
        return encode(build_meta(self.facts, device_id=self.device_id,
                                 session_id=self.session_id,
                                 interval_s=self.interval_s,
                                 spool_readings=self._spool_readings,
                                 spool_dropped=self._meta_dropped))

    def _announce(self) -> None:
        # On every (re)connect: the retained "online" replaces the Last Will's "offline".
        self.mqtt.publish(self._status_topic, STATUS_ONLINE.encode(), qos=1, retain=True)
        self.mqtt.publish(self._meta_topic, self._meta_payload(), qos=1, retain=True)
        # Optional: an ACL from before the capability message refuses it; then the agent
        # sends plain version 1 readings.
        self.mqtt.subscribe([self._schema_topic], qos=1, optional=True)
        # Settings changed remotely. Optional: an ACL from before it refuses both. No
        # retained sets: a set is an order, not a state, and one retained by mistake would
        # otherwise be applied again at every reconnect, undoing any later change.
        self.mqtt.subscribe(self._set_filters, qos=1, optional=True, no_retained=True)
        self._publish_config()
        if self.settings.ha_discovery:
            # HA says "online" when it (re)starts and has forgotten what it was told.
            self.mqtt.subscribe([HA_STATUS_TOPIC], qos=1, optional=True, no_retained=True)
            self._ha_due = time.monotonic()  # once a reading shows what this machine has
        else:
            self._remove_ha_discovery()

    def _remove_ha_discovery(self) -> None:
        # Turned off after it was on: an empty retained message removes the device from HA.
        marker = self.settings.state_dir / HA_ANNOUNCED_FILE
        try:
            topic = marker.read_text().strip()
        except OSError:
            return
        if topic:
            self.mqtt.publish(topic, b"", qos=1, retain=True)
            log.info("Removed this device from Home Assistant (ha_discovery is off).")
        marker.unlink(missing_ok=True)

    def _announce_ha(self, message: MetricsV1) -> None:
        facts = self.facts
        manufacturer, model = device_model(facts.pi_model, facts.os, facts.architecture)
        self._ha_shape = shape_of(message)
        discovery = discovery_message(
            device_id=self.device_id, name=facts.hostname or self.device_id, model=model,
            manufacturer=manufacturer, sw_version=facts.os or None, agent_version=__version__,
            metrics_topic=self.outbox.topic, status_topic=self._status_topic,
            interval_s=self.interval_s, shape=self._ha_shape,
            anomaly_topic=alert_topic(self.settings.topic_prefix, self.device_id, "anomaly"))
        payload = json.dumps(discovery, separators=(",", ":")).encode()
        self._ha_mids.add(self.mqtt.publish(self._ha_topic, payload, qos=1, retain=True,
                                            reports_refusal=True))
        self._ha_due = None
        marker = self.settings.state_dir / HA_ANNOUNCED_FILE
        try:
            if not marker.exists():
                marker.write_text(self._ha_topic + "\n")
        except OSError as exc:
            log.warning("Cannot note the Home Assistant announcement in %s (%s).", marker,
                        exc.strerror)
        log.info("Announced this device to Home Assistant on %s (%d entities).",
                 self._ha_topic, len(discovery["cmps"]))

    @property
    def interval_s(self) -> float:
        return float(self.current["interval_s"])

    def _publish_config(self) -> None:
        payload = json.dumps(config_message(self.device_id, self.local, self.remote),
                             separators=(",", ":")).encode()
        self._config_mids.add(self.mqtt.publish(self._config_topic, payload, qos=1,
                                                retain=True, reports_refusal=True))

    def _on_published(self, mid: int, accepted: bool) -> None:
        if mid in self._config_mids:
            self._config_mids.discard(mid)
            if not accepted and not self._config_refused_logged:
                self._config_refused_logged = True
                log.info("The broker refused this device's settings report on %s (an ACL "
                         "from before remote settings); carrying on without it.",
                         self._config_topic)
        elif mid in self._ha_mids:
            self._ha_mids.discard(mid)
            if not accepted and not self._ha_refused_logged:
                self._ha_refused_logged = True
                hint = (f" A device id with '.' is written with '_' there, which the "
                        f"ACL's pattern does not match: add `user {self.device_id}` and "
                        f"`topic write {self._ha_topic}` to the broker's acl, above its "
                        "admins line."
                        if "." in self.device_id else " Check the broker's ACL (README "
                        "\"Home Assistant\").")
                log.warning("The broker refused this device's Home Assistant announcement "
                            "on %s.%s", self._ha_topic, hint)
        self.outbox.on_published(mid, accepted)

    def _on_message(self, message: Received) -> None:
        if message.topic == self._schema_topic:
            self._on_capabilities(message)
            return
        if message.topic == HA_STATUS_TOPIC:
            if message.payload == b"online" and self.settings.ha_discovery:
                self._ha_due = time.monotonic() + BIRTH_DELAY_S
            return
        target = parse_set_topic(self.settings.topic_prefix, self.device_id, message.topic)
        if target is not None:
            self._on_set(message, target.setting)

    def _on_set(self, message: Received, setting: str | None) -> None:
        if message.retain:  # a broker that ignored Retain Handling: see _announce
            log.debug("Ignored a retained set message on %s.", message.topic)
            return
        now = time.time()
        try:
            change = parse_set(setting, message.payload)
        except Refused as exc:
            log.warning("Refused the settings on %s: %s.", message.topic, exc.reason)
            self.remote.last_refusal = refusal(now, message.topic, message.payload, exc.reason)
            save_state(self.settings.state_dir, self.remote)
            self._publish_config()
            return
        if not change:
            return
        before = self.current
        self.remote.settings = apply_change(self.remote.settings, change)
        self.remote.changed_at = now
        self.current, sources = effective(self.local, self.remote.settings)
        save_state(self.settings.state_dir, self.remote)
        changed = [f"{name} {before[name]:g} -> {self.current[name]:g} ({sources[name]})"
                   for name in change]
        log.info("Settings changed on %s: %s.", message.topic, ", ".join(changed))
        if self.current["interval_s"] != before["interval_s"]:
            self._interval_changed = True  # the loop reschedules its next tick
            self.mqtt.publish(self._meta_topic, self._meta_payload(), qos=1, retain=True)
            if self.settings.ha_discovery:
                self._ha_due = time.monotonic()  # expire_after follows the interval
        if self.processes is not None:
            self.processes.configure(float(self.current["process_period_s"]),
                                     int(self.current["process_top_n"]))
        self._publish_config()

    def _on_capabilities(self, message: Received) -> None:
        reads = read_capabilities(message.payload)
        if reads != self.hub_reads:
            log.info("The hub reads the optional fields: %s.", ", ".join(sorted(reads))
                     or "none")
            self.hub_reads = reads
            save_hub_reads(self.settings.state_dir, reads)

    def _taken_over(self) -> None:
        now = time.monotonic()
        self._takeovers = [t for t in self._takeovers if now - t < TAKEOVER_WINDOW_S] + [now]
        if len(self._takeovers) >= TAKEOVERS_FOR_ERROR and not self._duplicate_logged:
            self._duplicate_logged = True
            log.error("Another machine is using device id %s: the broker has closed this "
                      "device's connection for another client with the same id %d times in "
                      "%.0f minutes. Give each machine its own device_id (in "
                      "/etc/fleetpulse/agent.toml or FLEETPULSE_DEVICE_ID), or remove "
                      "device_id there to use the machine's own. Readings of both are kept; "
                      "further reconnects are logged at DEBUG.", self.device_id,
                      len(self._takeovers), TAKEOVER_WINDOW_S / 60)
            self.mqtt.quiet_takeovers = True

    def read_once(self, epoch_s: float) -> bytes:
        """Take a sample stamped ``epoch_s`` and return the encoded reading."""
        sample = self.collector.sample()
        self._seq += 1
        self._clock_synced = read_clock_synced()
        message = build_metrics(self._prev, sample, device_id=self.device_id,
                                session_id=self.session_id, seq=self._seq,
                                epoch_s=epoch_s, interval_s=self.interval_s,
                                hub_reads=self.hub_reads, clock_synced=self._clock_synced,
                                processes=self.processes.take() if self.processes else None)
        self._prev = sample
        self._last_message = message
        return encode(message)

    def _report(self, now: float) -> None:
        # From the loop itself: if the loop hangs, the pings stop and systemd restarts us.
        # Nothing before READY (the first reading; the priming sample comes before it):
        # until then systemd's start timeout, not the watchdog, covers a hang.
        if self._seq == 0:
            return
        self.notifier.watchdog(now)
        if self.notifier.enabled:
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        return self._health.line(connected=self.mqtt.connected, spool_readings=len(self.spool),
                                 now_epoch_s=time.time())

    def run(self) -> None:
        interval = self.interval_s
        log.info("fleetpulse-agent %s: device %s, every %g s, to %s; %d readings spooled.",
                 __version__, self.device_id, interval, self.settings.broker_url.split("@")[-1],
                 len(self.spool))
        self.mqtt.start()
        # A priming sample, so that the first reading published has CPU percentages and
        # rates (from two samples a second apart), not an empty per-core list and nulls.
        self._prev = self.collector.sample()
        tick = time.monotonic() + min(interval, PRIMING_S)
        last_meta_check = tick
        while not self.stop_event.is_set():
            self.mqtt.service()  # acknowledgements, reconnects, set messages; never waits
            now = time.monotonic()
            if self._interval_changed:  # set remotely: the next tick counts from the last
                self._interval_changed = False
                tick += self.interval_s - interval
                interval = self.interval_s
            if now >= tick:
                epoch, boot = time.time(), boot_clock_s()
                payload = self.read_once(epoch)  # the spool ages it by the same time
                if len(payload) > MAX_READING_BYTES:
                    # Over the broker's message_size_limit, paho would resend it forever.
                    log.error("Reading seq %d is %d bytes, over %d: not sent.", self._seq,
                              len(payload), MAX_READING_BYTES)
                else:
                    unsynced_at = boot if self._clock_synced is False else None
                    self.outbox.submit(EncodedReading(self.session_id, self._seq, epoch,
                                                      payload, unsynced_at), now)
                tick = next_tick(tick, interval, time.monotonic())
                if self._seq == 1:
                    self.notifier.ready(self._status_line())  # the first reading is taken
            self.outbox.pump(time.monotonic(), time.time())
            if (self._ha_due is not None and time.monotonic() >= self._ha_due
                    and self._last_message is not None and self.mqtt.connected):
                self._announce_ha(self._last_message)
            if now - last_meta_check >= META_CHECK_S:
                last_meta_check = now
                if (self._ha_shape is not None and self._last_message is not None
                        and shape_of(self._last_message) != self._ha_shape):
                    self._ha_due = now  # a disk mounted, a sensor appeared
                self._spool_readings, self._spool_dropped = len(self.spool), self.spool.dropped
                if self._spool_dropped != self._meta_dropped and self.mqtt.connected:
                    self.mqtt.publish(self._meta_topic, self._meta_payload(), retain=True)
            wait = tick - time.monotonic()
            if self.mqtt.connected and len(self.spool):
                wait = min(wait, REPLAY_PUMP_S)
            self._report(time.monotonic())
            if self._ha_due is not None and self._last_message is not None \
                    and self.mqtt.connected:
                wait = min(wait, self._ha_due - time.monotonic())
            wait = min(wait, self.mqtt.service_due_in(),
                       self.notifier.watchdog_due_in(time.monotonic()))
            self.stop_event.wait(max(0.0, wait))
        self._shutdown()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.processes is not None:
            self.processes.wake()  # it sees the stop event now
        if self.mqtt.connected:
            self.mqtt.publish(self._status_topic, STATUS_OFFLINE.encode(), qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while self.outbox.pending() - len(self.spool) > 0 and time.monotonic() < deadline:
                # Give in-flight readings a moment to be acked. An Event, not time.sleep:
                # under libfaketime (tests/integration/test_clock.py) sleep fails (EINVAL).
                threading.Event().wait(0.05)
                self.mqtt.service()
        self.outbox.close(time.time())
        stats = self.outbox.stats
        log.info("Stopped after %d readings (session %s): %d acknowledged, %d refused, %d "
                 "dropped; %d kept in the spool for the next start.", self._seq,
                 self.session_id, stats.acked, stats.refused, self.spool.dropped,
                 len(self.spool))
        self.mqtt.stop()
        self.spool.close()
        self.notifier.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetpulse-agent",
                                     description="Publish this machine's metrics over MQTT.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("command", choices=["run", "once", "top", *SERVICE_COMMANDS],
                        help="run: publish every interval; once: print one reading as JSON; "
                        "top: live view here; install-service / uninstall-service: run under "
                        "systemd")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help="top: seconds between refreshes (default 1)")
    parser.add_argument("--config", help=f"TOML settings file (default {DEFAULT_CONFIG} if it "
                        "exists, or FLEETPULSE_CONFIG)")
    add_setting_flags(parser, AgentSettings)
    add_service_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in SERVICE_COMMANDS:
        return run_service_command(args)
    try:
        settings = settings_from_args(AgentSettings, args, DEFAULT_CONFIG)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"Invalid configuration: {problem}", file=sys.stderr)
        return 2
    if args.command == "top":  # before logging: the terminal belongs to the view
        from agent.live import run_top
        return run_top(args.refresh)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "once":
        collector = Collector()
        device_id = settings.device_id or default_device_id(settings.state_dir)
        first = collector.sample()
        time.sleep(min(settings.interval_s, 1.0))  # one interval, so rates are filled
        message = build_metrics(first, collector.sample(), device_id=device_id,
                                session_id=uuid.uuid4().hex, seq=1, epoch_s=time.time(),
                                interval_s=settings.interval_s)
        sys.stdout.write(encode(message).decode() + "\n")
        return 0
    try:
        agent = Agent(settings)
    except OSError as exc:
        print(f"Cannot open the agent's state directory {settings.state_dir}: {exc.strerror}. "
              "Set FLEETPULSE_STATE_DIR or --state-dir to a writable directory.", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Off the per-second loop: see agent/processes.py. Started even when the period is 0
    # (off), in which case it only waits, since a remote setting may turn it on.
    sampler = ProcessSampler(agent.collector.process_scanner(),
                             top_n=int(agent.current["process_top_n"]),
                             memory_total_bytes=agent.facts.memory_total_bytes)
    agent.processes = ProcessWatcher(sampler, float(agent.current["process_period_s"]))
    threading.Thread(target=agent.processes.run, args=(agent.stop_event,),
                     name="processes", daemon=True).start()
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
