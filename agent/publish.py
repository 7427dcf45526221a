"""Get every reading to the broker: publish, track acknowledgements, spool, replay.

A reading leaves the agent's keeping only when the broker has acknowledged it (QoS 1
PUBACK). While connected, readings go straight to MQTT and nothing touches the disk.
While the broker is away (or stops acknowledging), readings wait in memory and are
written to the :class:`~agent.spool.Spool` once per ``flush_s``, together with any
reading that has waited that long for its acknowledgement. After a reconnect the spool
is replayed oldest first at ``replay_rate_per_s`` while live readings keep flowing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.clock import boot_clock_s
from agent.spool import EncodedReading, Spool
from shared.schema import AGE_EXPIRY_S, AGE_PROPERTY

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the outbox needs of an MQTT connection (a fake in tests)."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                user_properties: tuple[tuple[str, str], ...] = (),
                expiry_s: int | None = None) -> int: ...


@dataclass
class _InFlight:
    reading: EncodedReading
    sent_at: float  # monotonic
    spooled: bool


@dataclass
class OutboxStats:
    published: int = 0
    acked: int = 0
    refused: int = 0
    spooled: int = 0
    replayed: int = 0
    resent: int = 0
    dropped: int = 0


@dataclass
class Outbox:
    """Readings between collection and the broker's acknowledgement. Thread-safe."""

    transport: Transport
    spool: Spool
    topic: str
    window: int = 100  # readings awaiting PUBACK at once
    flush_s: float = 10.0
    replay_rate_per_s: float = 200.0
    ack_timeout_s: float = 5.0
    # This run's session and a clock NTP never steps: a reading of this session stamped
    # while the wall clock was unsynchronised is sent with its age (hub/clock.py).
    session_id: str = ""
    boot_clock: Callable[[], float] = boot_clock_s
    stats: OutboxStats = field(default_factory=OutboxStats)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _inflight: dict[int, _InFlight] = field(default_factory=dict, init=False)
    _waiting: list[EncodedReading] = field(default_factory=list, init=False)  # not yet on disk
    _acked_spooled: list[tuple[str, int]] = field(default_factory=list, init=False)
    _last_flush: float | None = field(default=None, init=False)
    _replay_tokens: float = field(default=0.0, init=False)
    _replay_after_id: int = field(default=0, init=False)
    _last_pump: float | None = field(default=None, init=False)
    _acks: deque[tuple[int, bool]] = field(default_factory=deque, init=False)

    # --- called by the collection loop ----------------------------------------------------
    def submit(self, reading: EncodedReading, now: float) -> None:
        """Hand over a fresh reading: publish it now if possible, else keep it for the spool."""
        with self._lock:
            self._apply_acks()
            if self.transport.connected and len(self._inflight) < self.window:
                self._send(reading, now, spooled=False)
            else:
                self._waiting.append(reading)

    def pump(self, now: float, now_epoch_s: float) -> None:
        """Do the periodic work: spool what waited too long, replay, forget acknowledged."""
        with self._lock:
            self._apply_acks()
            elapsed = 0.0 if self._last_pump is None else now - self._last_pump
            self._last_pump = now
            if self._acked_spooled:
                self.spool.remove(self._acked_spooled)
                self._acked_spooled = []
            if self._last_flush is None:
                self._last_flush = now
            if now - self._last_flush >= self.flush_s:
                self._last_flush = now
                self._flush(now, now_epoch_s)
            if self.transport.connected:
                self._resend_overdue(now)
                self._send_waiting(now)
                self._replay(elapsed)

    def pending(self) -> int:
        """Readings not yet acknowledged: in flight, waiting, or in the spool."""
        with self._lock:
            self._apply_acks()
            unspooled = sum(1 for f in self._inflight.values() if not f.spooled)
            return unspooled + len(self._waiting) + len(self.spool)

    def close(self, now_epoch_s: float) -> None:
        """Write everything unacknowledged to the spool (at a clean stop)."""
        with self._lock:
            self._apply_acks()
            self._flush(float("inf"), now_epoch_s)

    # --- called by the MQTT thread --------------------------------------------------------
    def on_published(self, mid: int, accepted: bool) -> None:
        """Note an acknowledgement; it is applied under the lock by the next call.

        Not taking the lock here avoids a deadlock: paho calls this while holding its
        message lock, and :meth:`submit` calls paho's publish while holding ours.
        """
        self._acks.append((mid, accepted))  # deque.append is atomic

    # --- inside the lock ------------------------------------------------------------------
    def _apply_acks(self) -> None:
        while self._acks:
            mid, accepted = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # a status or meta message
            if accepted:
                self.stats.acked += 1
            else:
                # The broker refused it (ACL): sending it again would be refused again.
                self.stats.refused += 1
                if self.stats.refused in (1, 10, 100) or self.stats.refused % 1000 == 0:
                    # Rate-limited: with a wrong ACL this would repeat every interval.
                    log.error("The broker refused reading seq %d (%d refused so far); check "
                              "this device's ACL.", entry.reading.seq, self.stats.refused)
            if entry.spooled:
                self._acked_spooled.append(entry.reading.key)

    def _send(self, reading: EncodedReading, now: float, *, spooled: bool) -> None:
        if reading.unsynced_boot_s is not None and reading.session_id == self.session_id:
            age_ms = max(0, round((self.boot_clock() - reading.unsynced_boot_s) * 1000))
            mid = self.transport.publish(self.topic, reading.payload, qos=1,
                                         user_properties=((AGE_PROPERTY, str(age_ms)),),
                                         expiry_s=AGE_EXPIRY_S)
        else:
            mid = self.transport.publish(self.topic, reading.payload, qos=1)
        self._inflight[mid] = _InFlight(reading, now, spooled)
        self.stats.published += 1

    def _flush(self, now: float, now_epoch_s: float) -> None:
        batch = list(self._waiting)
        self._waiting = []
        for entry in self._inflight.values():
            if not entry.spooled and now - entry.sent_at >= self.flush_s:
                entry.spooled = True
                batch.append(entry.reading)
        if batch:
            dropped = self.spool.add(batch, now_epoch_s)
            self.stats.spooled += len(batch)
            if dropped:
                self.stats.dropped += dropped
                log.error("Spool full: dropped the %d oldest readings (limits: %d bytes, "
                          "%g s).", dropped, self.spool.max_bytes, self.spool.max_age_s)

    def _send_waiting(self, now: float) -> None:
        # Readings taken while disconnected and not yet on disk: send them first, in order.
        free = self.window - len(self._inflight)
        if free > 0 and self._waiting:
            sending, self._waiting = self._waiting[:free], self._waiting[free:]
            for reading in sending:
                self._send(reading, now, spooled=False)

    def _resend_overdue(self, now: float) -> None:
        # Connected, yet no acknowledgement after ack_timeout_s: the message was lost on
        # the way (a broker restart, or the client library dropping it in a reconnect
        # race). Send it again; a late acknowledgement of the first copy is ignored, and
        # the hub stores a reading once however often it arrives.
        overdue = [mid for mid, entry in self._inflight.items()
                   if now - entry.sent_at >= self.ack_timeout_s]
        for mid in overdue:
            entry = self._inflight.pop(mid)
            self._send(entry.reading, now, spooled=entry.spooled)
        if overdue:
            self.stats.resent += len(overdue)
            log.warning("%d readings were not acknowledged within %g s; sent them again.",
                        len(overdue), self.ack_timeout_s)

    def _replay(self, elapsed: float) -> None:
        if not len(self.spool):
            self._replay_tokens = 0.0
            return
        # A token bucket: at most replay_rate_per_s, so a fleet coming back does not flood
        # the hub, and never more than the free part of the acknowledgement window.
        self._replay_tokens = min(self._replay_tokens + elapsed * self.replay_rate_per_s,
                                  self.replay_rate_per_s)
        budget = min(int(self._replay_tokens), self.window - len(self._inflight))
        if budget <= 0:
            return
        in_flight_keys = {f.reading.key for f in self._inflight.values()}
        candidates = self.spool.oldest(budget, self._replay_after_id)
        if not candidates and self._replay_after_id:
            # At the end: start over, for rows skipped while in flight and given up since.
            self._replay_after_id = 0
            candidates = self.spool.oldest(budget)
        for item in candidates:
            self._replay_after_id = item.row_id
            if item.reading.key in in_flight_keys:
                continue
            self._send(item.reading, self._last_pump or 0.0, spooled=True)
            self.stats.replayed += 1
            self._replay_tokens -= 1
