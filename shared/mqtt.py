"""MQTT connection for agent and hub: the only module that imports paho.

:class:`MqttConnection` wraps a paho-mqtt 2.x client with what both sides need and paho
gets subtly wrong by default (see the comments): MQTT v5, TLS from an ``mqtts://`` URL,
reconnect forever with capped backoff, one clear log line per outage instead of a
traceback per attempt, and plain Python callbacks so no other module sees paho's types.

Two ways to run the network side:

- a background thread (paho's ``loop_start``), for the hub, which must read messages
  the moment they arrive;
- driven by the caller (``network_thread=False``), for the agent: the collection loop
  calls :meth:`MqttConnection.service` each time it wakes, which reads what arrived
  (acknowledgements), writes what is queued and keeps the connection alive, without
  waiting. A publish is written to the socket at once. Only a connection attempt,
  which can block on DNS, TCP or TLS, runs in a short-lived thread. That saves the two
  wake-ups of paho's thread per published message: the agent used 11 % less CPU in a
  side-by-side run (bench/README.md).
"""

from __future__ import annotations

import logging
import select
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from shared.config import BrokerAddress, Secret

log = logging.getLogger(__name__)

# Another client connected with our client id. MQTT 5.0 has a reason code for it, 0x8E
# "Session taken over"; Mosquitto 2.0.11 sends none: it closes the socket ("Client <id>
# already connected, closing old connection" in its log), and paho 2.2 reports 0x80
# "Unspecified error" with no DISCONNECT packet (measured here). So a connection closed
# that way soon after it was made, followed by a reconnect that succeeds at once, counts
# as taken over too; a broker restart or a network outage does not reconnect at once.
SESSION_TAKEN_OVER = 0x8E
UNSPECIFIED_ERROR = 0x80
TAKEOVER_MAX_CONNECTED_S = 10.0
TAKEOVER_MAX_RECONNECT_S = 5.0
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
KEEPALIVE_S = 30
# Driven mode: how soon service() must run again while a connection is being set up, and
# at the latest while connected (paho pings the broker from service() when idle).
CONNECTING_SERVICE_S = 0.05
IDLE_SERVICE_S = KEEPALIVE_S / 3
MAX_READS_PER_SERVICE = 1000  # loop_read calls per service(): bounded, so it always returns


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    generation: int  # which connection delivered it: acks of an old one are not sent
    user_properties: tuple[tuple[str, str], ...] = ()  # MQTT v5 user properties
    expiry_s: int | None = None  # MQTT v5 Message Expiry Interval, as the broker forwarded it


def describe_broker(address: BrokerAddress) -> str:
    return f"{'mqtts' if address.tls else 'mqtt'}://{address.host}:{address.port}"


def log_connect_failure(logger: logging.Logger, address: BrokerAddress,
                        error: BaseException | None) -> None:
    """Log one line on why a connection attempt failed and what to check."""
    if isinstance(error, ssl.SSLCertVerificationError):
        # Retrying will not help until an operator fixes the CA or the host name.
        logger.error("Broker %s presented a TLS certificate this client does not trust "
                     "(%s). Check broker_ca_file and that the host name in the URL is "
                     "in the certificate; retrying every %d-%d s.",
                     describe_broker(address), error.verify_message,
                     RECONNECT_MIN_S, RECONNECT_MAX_S)
    else:
        detail = error.strerror if isinstance(error, OSError) else None
        reason = f" ({detail or str(error) or 'timed out'})" if error is not None else ""
        logger.warning("Broker %s is unreachable%s; retrying every %d-%d s.",
                       describe_broker(address), reason, RECONNECT_MIN_S, RECONNECT_MAX_S)


class MqttConnection:
    """One MQTT v5 client: paho's network loop in a background thread, or driven by
    the caller through :meth:`service` (``network_thread=False``)."""

    def __init__(self, client_id: str, address: BrokerAddress, *,
                 username: str | None = None, password: Secret | None = None,
                 ca_file: Path | None = None, will: Will | None = None,
                 persistent_session_s: int | None = None, receive_maximum: int | None = None,
                 manual_ack: bool = False, max_inflight: int = 20,
                 network_thread: bool = True) -> None:
        self.address = address
        self._network_thread = network_thread
        self._attempt: threading.Thread | None = None  # driven mode: a connect in progress
        self._next_attempt_at = 0.0  # monotonic
        self._retry_delay_s = float(RECONNECT_MIN_S)
        self.on_connected: Callable[[], None] = lambda: None
        self.on_disconnected: Callable[[], None] = lambda: None
        # The broker closed the connection because another client took our client id.
        self.on_taken_over: Callable[[], None] = lambda: None
        # Set once the caller has said so: a taken-over connection is then logged at DEBUG.
        self.quiet_takeovers = False
        self._connected_at: float | None = None  # monotonic
        self._takeover: tuple[float, bool] | None = None  # (when, certain) of the last drop
        self.on_message: Callable[[Received], None] = lambda message: None
        # (mid, accepted): accepted is False when the broker refused it (e.g. the ACL).
        self.on_published: Callable[[int, bool], None] = lambda mid, accepted: None
        self._generation = 0
        self._connected = threading.Event()
        self._outage_logged = False
        self._optional_subscriptions: dict[int, str] = {}
        self._refusals_reported: set[int] = set()
        self._persistent_session_s = persistent_session_s
        self._receive_maximum = receive_maximum

        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=paho.MQTTv5, manual_ack=manual_ack)
        user = username or address.username
        secret = password or address.password
        if user:
            self._client.username_pw_set(user, secret.reveal() if secret else None)
        if address.tls:
            self._client.tls_set(ca_certs=str(ca_file) if ca_file else None,
                                 cert_reqs=ssl.CERT_REQUIRED)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)  # we bound what we hand paho ourselves
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background and keep reconnecting until :meth:`stop`."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent_session_s:
            # Without a session expiry an MQTT v5 session ends at disconnect, and the broker
            # would forget the messages queued for us while we are away.
            properties.SessionExpiryInterval = self._persistent_session_s
        if self._receive_maximum:
            # How many unacknowledged QoS 1 messages the broker may send us at once.
            properties.ReceiveMaximum = self._receive_maximum
        # paho's default, MQTT_CLEAN_START_FIRST_ONLY, wipes the session on the first connect.
        clean_start = not self._persistent_session_s
        self._client.connect_async(self.address.host, self.address.port, keepalive=KEEPALIVE_S,
                                   clean_start=clean_start, properties=properties)
        if self._network_thread:
            self._client.loop_start()
        else:
            self._start_attempt()

    def stop(self) -> None:
        if self._network_thread:
            self._client.disconnect()
            self._client.loop_stop()
        elif not self._connecting() and self._client.socket() is not None:
            self._client.disconnect()  # written at once; paho then closes the socket

    # --- driven mode ----------------------------------------------------------------------
    def service(self) -> None:
        """Driven mode: do the network work that is due, without waiting.

        Reads what the broker sent (acknowledgements run ``on_published``, a CONNACK
        runs ``on_connected``), writes what paho could not write at once, pings when the
        link is idle, and starts a connection attempt when one is due.
        """
        client = self._client
        if self._connecting():
            return  # the attempt's thread owns the client until it is done
        if client.socket() is not None:
            self._read_all()  # on an error paho closes the socket and calls on_disconnect
            if client.socket() is not None and client.want_write():
                client.loop_write()
            if client.socket() is not None:
                client.loop_misc()
            return
        if time.monotonic() >= self._next_attempt_at:
            self._start_attempt()

    def _read_all(self) -> None:
        # paho 2.2's loop_read reads at most as many packets as it has messages in flight
        # (at least one). Between two idle wake-ups the socket can hold more (the SUBACKs
        # and PUBACKs of a connect, settings sent to the agent): read until it is empty,
        # or a reading's PUBACK waits a whole idle period behind them and the Outbox sends
        # the reading again (seen with a 600 s interval: resent 10 s after each reading).
        client = self._client
        for _ in range(MAX_READS_PER_SERVICE):
            client.loop_read()
            sock = client.socket()
            if sock is None:
                return
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            if not pending and not select.select([sock], [], [], 0)[0]:
                return

    def service_due_in(self) -> float:
        """Driven mode: seconds until :meth:`service` should run again at the latest."""
        if self._connecting() or (self._client.socket() is not None and not self.connected):
            return CONNECTING_SERVICE_S  # the CONNACK is on its way
        if self._client.socket() is None:
            return max(0.0, self._next_attempt_at - time.monotonic())
        return IDLE_SERVICE_S

    def _connecting(self) -> bool:
        return self._attempt is not None and self._attempt.is_alive()

    def _start_attempt(self) -> None:
        # Capped exponential backoff between attempts, reset by a successful CONNACK.
        self._next_attempt_at = time.monotonic() + self._retry_delay_s
        self._retry_delay_s = min(self._retry_delay_s * 2, RECONNECT_MAX_S)
        self._attempt = threading.Thread(target=self._attempt_connect, daemon=True,
                                         name="fleetpulse-mqtt-connect")
        self._attempt.start()

    def _attempt_connect(self) -> None:
        # Opens the socket (DNS, TCP, TLS handshake) and sends CONNECT; service() reads
        # the CONNACK.
        try:
            self._client.reconnect()
        except (OSError, ValueError) as error:  # ValueError: e.g. a host name IDNA refuses
            self._log_connect_failure(error)

    @property
    def generation(self) -> int:
        """Which connection this is: 1 for the first, +1 at every reconnect."""
        return self._generation

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # --- actions (thread-safe in paho; in driven mode, call them from the driving thread) --
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                user_properties: tuple[tuple[str, str], ...] = (),
                expiry_s: int | None = None, reports_refusal: bool = False) -> int:
        """Hand a message to paho and return its mid.

        A QoS 1 message stays in paho's memory until the broker acknowledges it, and paho
        sends it again after a reconnect (also when handed over while disconnected).

        Args:
            reports_refusal: the caller logs a refusal itself (through ``on_published``).
        """
        properties = None
        if user_properties or expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if user_properties:
                properties.UserProperty = list(user_properties)
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
        mid = int(self._client.publish(topic, payload, qos=qos, retain=retain,
                                       properties=properties).mid)
        if reports_refusal:
            self._refusals_reported.add(mid)
        return mid

    def subscribe(self, filters: list[str], qos: int = 1, *, optional: bool = False,
                  no_retained: bool = False) -> None:
        """Subscribe; an ``optional`` subscription the broker refuses is logged at INFO.

        Args:
            no_retained: MQTT v5 Retain Handling 2: the broker sends no retained message
                at subscribe time, only messages published from then on (flagged not
                retained, as Retain As Published is off).
        """
        if no_retained:
            options = SubscribeOptions(qos=qos,
                                       retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            _, mid = self._client.subscribe([(f, options) for f in filters])
        else:
            _, mid = self._client.subscribe([(f, qos) for f in filters])
        if optional and mid is not None:
            self._optional_subscriptions[int(mid)] = ", ".join(filters)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Acknowledge a message, unless it came over an earlier connection.

        After a reconnect the broker redelivers what was not acknowledged, under new
        packet ids; acking an old id would acknowledge some other message.
        """
        if generation == self._generation and qos > 0:
            self._client.ack(mid, qos)

    # --- paho callbacks -------------------------------------------------------------------
    def _handle_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                        properties: Any) -> None:
        if reason.is_failure:
            # Refused (bad credentials, not authorised...): say it once, keep trying.
            if not self._outage_logged:
                log.error("Broker %s refused the connection: %s. Check the broker user "
                          "name, password and ACL.", describe_broker(self.address), reason)
                self._outage_logged = True
            return
        self._generation += 1
        self._retry_delay_s = float(RECONNECT_MIN_S)
        now = time.monotonic()
        self._connected_at = now
        takeover, self._takeover = self._takeover, None
        if takeover is not None and (takeover[1] or now - takeover[0] <= TAKEOVER_MAX_RECONNECT_S):
            self.on_taken_over()
            if self.quiet_takeovers:
                log.debug("Connected to broker %s again.", describe_broker(self.address))
                self._connected.set()
                self.on_connected()
                return
        if self._outage_logged:
            log.warning("Connected to broker %s again.", describe_broker(self.address))
        else:
            log.info("Connected to broker %s.", describe_broker(self.address))
        self._outage_logged = False
        self._connected.set()
        self.on_connected()

    def _handle_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the cause is at hand.
        self._log_connect_failure(sys.exc_info()[1])

    def _log_connect_failure(self, error: BaseException | None) -> None:
        if not self._outage_logged:
            log_connect_failure(log, self.address, error)
            self._outage_logged = True

    def _handle_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                           properties: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        now = time.monotonic()
        code = getattr(reason, "value", None)
        short = self._connected_at is not None and \
            now - self._connected_at < TAKEOVER_MAX_CONNECTED_S
        if was_connected and (code == SESSION_TAKEN_OVER or (code == UNSPECIFIED_ERROR
                                                             and short)):
            # Taken over, or maybe: on_connected tells once the reconnect shows which.
            self._takeover = (now, code == SESSION_TAKEN_OVER)
            if self.quiet_takeovers:
                log.debug("Broker %s closed the connection (%s); reconnecting.",
                          describe_broker(self.address), reason)
                self.on_disconnected()
                return
        if was_connected:
            if reason.is_failure and not self._outage_logged:
                log.warning("Lost the broker %s (%s); reconnecting.",
                            describe_broker(self.address), reason)
                self._outage_logged = True
            self.on_disconnected()

    def _handle_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                          properties: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        optional = self._optional_subscriptions.pop(mid, None)
        if optional is not None:
            if refused:
                log.info("Broker %s refused the subscription to %s (%s); carrying on "
                         "without it.", describe_broker(self.address), optional,
                         ", ".join(refused))
        elif refused:
            log.error("Broker %s refused a subscription: %s. Check the ACL.",
                      describe_broker(self.address), ", ".join(refused))
        else:
            log.info("Subscribed at broker %s.", describe_broker(self.address))

    def _handle_message(self, client: Any, userdata: Any, message: Any) -> None:
        properties = getattr(message, "properties", None)
        user = tuple(getattr(properties, "UserProperty", ()) or ())
        expiry = getattr(properties, "MessageExpiryInterval", None)
        self.on_message(Received(message.topic, message.payload, message.mid, message.qos,
                                 bool(message.retain), self._generation, user, expiry))

    def _handle_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                        properties: Any) -> None:
        reported = mid in self._refusals_reported
        self._refusals_reported.discard(mid)
        if reason.is_failure and not reported:
            log.warning("Broker refused message %d: %s", mid, reason)
        self.on_published(mid, not reason.is_failure)
