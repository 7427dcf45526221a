"""The hub's MQTT session: an asyncio client in a thread of its own, packets by ``mqtt5``.

Why not paho, the agent's client (shared/mqtt.py): at the hub's rates paho's network loop
took a third of the hub's CPU, ~34 µs a message, against a few µs here
(``python3 -m bench.mqtt_receive``). ``mqtt5`` is a sans-I/O codec (Rust, by aiomqtt's
maintainer): it reads and writes packets and nothing else. What a client adds on top is
this module:

- a persistent MQTT v5 session: a fixed client id, ``clean_start`` off and a session
  expiry, so the broker keeps what arrives while the hub is away;
- Receive Maximum: how many unacknowledged messages the broker may send us at once, and
  held to by this side too: with that many delivered and not acknowledged, the session stops
  reading the socket (``pause_reading``) until acks bring it below, so the broker holds the
  rest. Mosquitto 2.0.11 holds what comes while a client's window is full, but at the
  client's next ack sends all it holds, whatever the Receive Maximum (seen in
  tests/integration/test_hub_session.py): without this, a hub whose database comes back
  after an outage would take everything queued meanwhile into memory at once. The bound is
  exceeded by at most one read of the socket (256 KiB);
- acknowledgements sent when the caller says (after its commit), in arrival order, and only
  on the connection that delivered the message (its *generation*): after a reconnect the
  broker sends the unacknowledged ones again under new packet ids;
- QoS 1 publishes kept until the broker acknowledges them, sent again (flagged duplicate)
  after a reconnect, never more in flight than the broker's own Receive Maximum;
- reconnect forever with capped backoff, one log line per outage; TLS from an
  ``mqtts://`` URL; keepalive pings.

Every socket operation runs in the session's thread. Other threads call :meth:`publish`
and :meth:`ack`, which hand their bytes over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import mqtt5

from shared.config import BrokerAddress, Secret
from shared.mqtt import (
    KEEPALIVE_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    describe_broker,
    log_connect_failure,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # TCP, TLS and CONNACK together
STOP_TIMEOUT_S = 10.0
SEND_QUOTA_DEFAULT = 20  # our QoS 1 publishes in flight, until the CONNACK says the broker's
PACKET_ID_LIMIT = 65535


class _Outgoing(NamedTuple):
    """A publish waiting to be sent or acknowledged (packet id 0 for QoS 0)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int

    def packet(self, duplicate: bool = False) -> bytes:
        return mqtt5.PublishPacket(self.topic, self.payload, qos=mqtt5.QoS(self.qos),
                                   retain=self.retain, packet_id=self.packet_id or None,
                                   duplicate=duplicate).write()


def reason_text(code: object) -> str:
    """``NOT_AUTHORIZED`` → ``Not authorized``, as paho words a reason code.

    (mqtt5's reason codes are Rust enums: ``int()`` gives the value, no ``<`` or ``>``.)
    """
    name = getattr(code, "name", None) or f"reason code {code}"
    return str(name).replace("_", " ").capitalize()


def read_packets(buffer: bytearray) -> tuple[list[mqtt5.Packet], int]:
    """Parse the whole packets at the start of ``buffer``: (packets, bytes used).

    Raises ValueError on a malformed packet; an incomplete one at the end waits for more.
    """
    packets = []
    used = 0
    with memoryview(buffer) as view:
        while used < len(buffer):
            try:
                packet, size = mqtt5.read(view[used:])
            except IndexError:  # mqtt5's "Not enough bytes": the rest is still on its way
                break
            packets.append(packet)
            used += size
    return packets, used


_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8  # TCP states (Linux's include/net/tcp_states.h)


def peer_closed(transport: asyncio.BaseTransport) -> bool:
    """Tell whether the other end has closed the connection, without reading from it.

    A connection whose reading is paused cannot see the end of the stream (it comes after
    the data the kernel holds); its TCP state says it. Linux only (``TCP_INFO``): elsewhere
    False, and a dead broker is found when a write fails.
    """
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, option, 1)[0]
    except OSError:
        return False
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker; the session does the thinking."""

    def __init__(self, session: BrokerSession, closed: asyncio.Future[None]) -> None:
        self._session = session
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.accepted = False  # the broker sent a successful CONNACK
        self.unacked = 0  # QoS 1 messages delivered on this connection, not acknowledged
        self.paused = False  # reading stopped: ``unacked`` reached the Receive Maximum
        self.read_at = self.written_at = time.monotonic()
        self.disconnect_reason: str | None = None  # from a DISCONNECT the broker sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.written_at = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.read_at = time.monotonic()
        self.buffer += data
        try:
            packets, used = read_packets(self.buffer)
        except ValueError as error:
            log.warning("Broker %s sent a malformed packet (%s); reconnecting.",
                        describe_broker(self._session.address), error)
            assert self.transport is not None
            self.transport.abort()
            return
        del self.buffer[:used]
        self._session.received(self, packets)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        self._session.lost(self, exc)


class BrokerSession:
    """The hub's connection to the broker; see the module's docstring."""

    def __init__(self, client_id: str, address: BrokerAddress, *,
                 username: str | None = None, password: Secret | None = None,
                 ca_file: Path | None = None, session_expiry_s: int = 0,
                 receive_maximum: int = PACKET_ID_LIMIT, keepalive_s: int = KEEPALIVE_S) -> None:
        self.address = address
        user = username or address.username
        secret = password or address.password
        self._connect_packet = mqtt5.ConnectPacket(
            client_id, username=user or None,
            password=secret.reveal().encode() if user and secret else None,
            # Without a session expiry an MQTT v5 session ends at disconnect, and the
            # broker would forget the messages queued for us while we are away.
            clean_start=not session_expiry_s, session_expiry_interval=session_expiry_s,
            keep_alive=keepalive_s, receive_max=receive_maximum).write()
        self._ssl: ssl.SSLContext | None = None
        if address.tls:  # verifies the certificate and that it names the host
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.on_connected: Callable[[], None] = lambda: None
        # The PUBLISH packets of one read, and the generation of the connection they came by.
        self.on_messages: Callable[[list[mqtt5.PublishPacket], int], None] = \
            lambda messages, generation: None
        # (packet id, accepted): accepted is False when the broker refused it (the ACL).
        self.on_published: Callable[[int, bool], None] = lambda packet_id, accepted: None

        self._generation = 0
        self._connected = threading.Event()
        self._outage_logged = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None  # ends a wait between connection attempts
        self._conn: _Connection | None = None  # the session's thread only
        self._keepalive_s = self._asked_keepalive_s = keepalive_s
        self._receive_maximum = receive_maximum
        # Packet ids and publishes: shared with the threads that publish.
        self._lock = threading.Lock()
        self._last_id = 0
        self._ids_in_use: set[int] = set()
        self._queued: deque[_Outgoing] = deque()  # not sent on this connection yet
        self._in_flight: dict[int, _Outgoing] = {}  # sent, not acknowledged; in send order
        self._send_quota = SEND_QUOTA_DEFAULT
        self._refusals_reported: set[int] = set()
        self._subscribing: dict[int, str] = {}

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background and keep reconnecting until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        """Say goodbye to the broker (the session stays there) and end the thread.

        Acknowledgements handed over before this call are written first.
        """
        self._stopping = True
        self._call(self._close)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)

    def _run(self) -> None:
        try:
            asyncio.run(self._keep_connected())
        except asyncio.CancelledError:
            pass  # stopped while connecting

    async def _keep_connected(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._wake = asyncio.Event()
        self._ready.set()
        delay = float(RECONNECT_MIN_S)
        while not self._stopping:
            try:
                if await self._connect_once():
                    delay = float(RECONNECT_MIN_S)
            except (OSError, TimeoutError, ValueError) as error:
                self._log_connect_failure(error)  # ValueError: e.g. a name IDNA refuses
            if self._stopping:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _connect_once(self) -> bool:
        """Open a connection and serve it until it closes; True if the broker accepted it."""
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        host, port = self.address.host, self.address.port
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self, closed), host, port,
                                   ssl=self._ssl, server_hostname=host if self._ssl else None),
            CONNECT_TIMEOUT_S)
        self._conn = conn
        conn.write(self._connect_packet)
        self._check_alive(conn, time.monotonic())
        try:
            await closed
        finally:
            self._conn = None
        if not conn.accepted and conn.disconnect_reason is None and not self._stopping:
            raise ConnectionError("closed before the broker answered")
        return conn.accepted

    def _check_alive(self, conn: _Connection, opened_at: float) -> None:
        """Timer, every quarter keepalive: no CONNACK within CONNECT_TIMEOUT_S, or the
        broker silent for 1.5 keepalives (a network gone without a reset), or, while reading
        is paused, the broker's end closed: drop the connection; nothing written for half a
        keepalive: ping."""
        if conn.transport is None:
            return  # closed
        now = time.monotonic()
        if not conn.accepted:
            if now - opened_at >= CONNECT_TIMEOUT_S:
                conn.transport.abort()
                return
        elif conn.paused:  # nothing is read, the broker's answers and its goodbye included
            if peer_closed(conn.transport):
                conn.transport.abort()
                return
        elif now - conn.read_at > 1.5 * self._keepalive_s:
            log.warning("Broker %s has been silent for %.0f s; reconnecting.",
                        describe_broker(self.address), now - conn.read_at)
            self._outage_logged = True  # the one line of this outage
            conn.transport.abort()
            return
        if conn.accepted and now - conn.written_at >= self._keepalive_s / 2:
            conn.write(mqtt5.PingReqPacket().write())
        assert self._loop is not None
        self._loop.call_later(self._keepalive_s / 4, self._check_alive, conn, opened_at)

    def _close(self) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None:
            # DISCONNECT without a session expiry: the broker keeps ours (MQTT 5.0, 3.14.2.2.2).
            conn.write(mqtt5.DisconnectPacket().write())
            conn.transport.close()  # after what is buffered has been written
        elif self._task is not None:
            self._task.cancel()  # connecting or waiting to: nothing to say goodbye to

    def _call(self, function: Callable[..., None], *args: object) -> None:
        """Run ``function`` in the session's thread; dropped once the session has ended."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: stopped
            pass

    @property
    def generation(self) -> int:
        """Which connection this is: 1 for the first, +1 at every reconnect."""
        return self._generation

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # --- what other threads call --------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                reports_refusal: bool = False) -> int:
        """Queue a message and return its packet id (0 for QoS 0); thread-safe.

        A QoS 1 message is kept until the broker acknowledges it and sent again after a
        reconnect, also when published while disconnected.

        Args:
            reports_refusal: the caller logs a refusal itself (through ``on_published``).
        """
        with self._lock:
            packet_id = self._new_packet_id() if qos else 0
            self._queued.append(_Outgoing(topic, payload, qos, retain, packet_id))
            if reports_refusal:
                self._refusals_reported.add(packet_id)
        self._call(self._send_queued)
        return packet_id

    def ack(self, tokens: Iterable[tuple[int, int, int]]) -> None:
        """Acknowledge messages by (packet id, qos, generation), in the order they came.

        Those of an earlier connection are left: the broker sends them again under new
        packet ids, and acking an old id would acknowledge some other message.
        """
        generation = self._generation
        acks = [mqtt5.PubAckPacket(packet_id).write()
                for packet_id, qos, delivered_by in tokens if qos and delivered_by == generation]
        if acks:
            self._call(self._write_acks, generation, b"".join(acks), len(acks))

    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe (from ``on_connected``, which runs in the session's thread)."""
        with self._lock:
            packet_id = self._new_packet_id()
        self._subscribing[packet_id] = ", ".join(filters)
        topic_filters = [mqtt5.TopicFilter(f, max_qos=mqtt5.QoS(qos)) for f in filters]
        if self._conn is not None:
            self._conn.write(mqtt5.SubscribePacket(packet_id, topic_filters).write())

    def _new_packet_id(self) -> int:  # holding self._lock
        for _ in range(PACKET_ID_LIMIT):
            self._last_id = self._last_id % PACKET_ID_LIMIT + 1
            if self._last_id not in self._ids_in_use:
                self._ids_in_use.add(self._last_id)
                return self._last_id
        raise RuntimeError("all 65,535 MQTT packet ids are in use")

    # --- the session's thread -----------------------------------------------------------
    def _write_acks(self, generation: int, data: bytes, count: int) -> None:
        conn = self._conn
        if generation == self._generation and conn is not None and conn.accepted:
            conn.write(data)
            conn.unacked -= count
            if conn.paused and conn.unacked < self._receive_maximum \
                    and conn.transport is not None:
                conn.paused = False
                conn.read_at = time.monotonic()  # silent while paused: not the broker's fault
                conn.transport.resume_reading()

    def _send_queued(self) -> None:
        conn = self._conn
        if conn is None or not conn.accepted:
            return  # sent once connected
        with self._lock:
            while self._queued and (self._queued[0].qos == 0
                                    or len(self._in_flight) < self._send_quota):
                message = self._queued.popleft()
                if message.qos:
                    self._in_flight[message.packet_id] = message
                conn.write(message.packet())

    def received(self, conn: _Connection, packets: list[mqtt5.Packet]) -> None:
        messages: list[mqtt5.PublishPacket] = []
        for packet in packets:
            if isinstance(packet, mqtt5.PublishPacket):
                messages.append(packet)
            elif isinstance(packet, mqtt5.PubAckPacket):
                self._published(packet)
            elif isinstance(packet, mqtt5.ConnAckPacket):
                self._connack(conn, packet)
            elif isinstance(packet, mqtt5.SubAckPacket):
                self._subscribed(packet)
            elif isinstance(packet, mqtt5.DisconnectPacket):
                conn.disconnect_reason = reason_text(packet.reason_code)
            # PINGRESP: its arrival (read_at) is what counts. No other packet comes to a
            # client that publishes and subscribes at QoS 1 at most.
        if messages:
            conn.unacked += sum(1 for m in messages if int(m.qos))
            if conn.unacked >= self._receive_maximum and not conn.paused \
                    and conn.transport is not None:
                conn.paused = True  # the broker holds the rest until acks bring us below
                conn.transport.pause_reading()
            self.on_messages(messages, self._generation)

    def _connack(self, conn: _Connection, packet: mqtt5.ConnAckPacket) -> None:
        if int(packet.reason_code) != 0:  # not SUCCESS
            # Refused (bad credentials, not authorised...): say it once, keep trying.
            if not self._outage_logged:
                log.error("Broker %s refused the connection: %s. Check the broker user "
                          "name, password and ACL.", describe_broker(self.address),
                          reason_text(packet.reason_code))
                self._outage_logged = True
            conn.disconnect_reason = reason_text(packet.reason_code)
            return  # the broker closes the connection
        conn.accepted = True
        self._generation += 1
        self._keepalive_s = packet.server_keep_alive or self._asked_keepalive_s
        with self._lock:
            self._send_quota = packet.receive_max
            # Unacknowledged publishes go again first, flagged duplicate (MQTT 5.0, 4.4).
            again = list(self._in_flight.values())
            self._in_flight.clear()
            for message in again:
                self._in_flight[message.packet_id] = message
                conn.write(message.packet(duplicate=True))
        if self._outage_logged:
            log.warning("Connected to broker %s again.", describe_broker(self.address))
        else:
            log.info("Connected to broker %s.", describe_broker(self.address))
        self._outage_logged = False
        self._connected.set()
        self.on_connected()
        self._send_queued()

    def _published(self, packet: mqtt5.PubAckPacket) -> None:
        packet_id = packet.packet_id
        with self._lock:
            if self._in_flight.pop(packet_id, None) is None:
                return  # not ours (a duplicate ack)
            self._ids_in_use.discard(packet_id)
            reported = packet_id in self._refusals_reported
            self._refusals_reported.discard(packet_id)
        accepted = int(packet.reason_code) < 0x80  # 0x10 "no matching subscribers" is a success
        if not accepted and not reported:
            log.warning("Broker refused message %d: %s", packet_id,
                        reason_text(packet.reason_code))
        self.on_published(packet_id, accepted)
        self._send_queued()

    def _subscribed(self, packet: mqtt5.SubAckPacket) -> None:
        with self._lock:
            self._ids_in_use.discard(packet.packet_id)
        filters = self._subscribing.pop(packet.packet_id, "?")
        refused = [reason_text(code) for code in packet.reason_codes if int(code) >= 0x80]
        if refused:
            log.error("Broker %s refused a subscription to %s: %s. Check the ACL.",
                      describe_broker(self.address), filters, ", ".join(refused))
        else:
            log.info("Subscribed at broker %s.", describe_broker(self.address))

    def lost(self, conn: _Connection, error: Exception | None) -> None:
        if not conn.accepted:
            return  # _connect_once reports it
        self._connected.clear()  # what is queued or in flight waits for the next connection
        if self._stopping or self._outage_logged:
            return
        reason = conn.disconnect_reason or (str(error) if error else "connection closed")
        log.warning("Lost the broker %s (%s); reconnecting.", describe_broker(self.address),
                    reason)
        self._outage_logged = True

    def _log_connect_failure(self, error: BaseException) -> None:
        if not self._outage_logged:
            log_connect_failure(log, self.address, error)
            self._outage_logged = True
