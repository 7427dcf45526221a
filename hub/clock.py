"""Place readings stamped by an unsynchronised clock (pure decisions; the store is passed in).

A Raspberry Pi has no real-time clock: until NTP has synchronised, its clock shows the
last shutdown time (fake-hwclock) or 1970, and a reading stamped then would be filed under
a wrong day, or refused as ten years old. The agent says in each reading whether its
clock was synchronised (``clock_synced``, where the hub reads it) and, when it was not,
how long the reading waited in the agent before it was sent (the MQTT v5 user property
``age-ms``, measured on the agent's boot-time clock, which NTP does not step), to which the
broker's wait is added (the Message Expiry Interval the agent set, less what the broker
forwards: hub/ingest/receive.py).

For each agent session with unsynchronised readings the hub fixes one offset, from the
first such reading it stores, and keeps it in ``clock_offsets`` (so every hub, and a
restarted one, uses the same):

- with the reading's age: ``offset = (received_at - age) - ts``, the clock's error plus
  the network's delay; under :data:`TRUST_S` it is taken as 0 (a machine without NTP
  whose clock is right is not moved for a delay of milliseconds);
- without an age (a reading of an earlier session, replayed from the spool after a
  restart): ``offset = received_at - ts`` if the stamp cannot be stored as it is (ahead
  of the hub's clock, or older than the history kept), else 0. Such a reading is placed
  at most its wait in the spool late.

Every unsynchronised reading of the session then gets ``ts = agent ts + offset`` (the
same for a redelivered copy, so the key ``(device_id, ts, session_id, seq)`` still makes
it a no-op) and, when moved, the agent's stamp in ``agent_ts``. A placement that still
cannot be stored (the clock jumped within the session) is quarantined with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

import msgspec

from hub.ingest.validate import Accepted, Limits, Rejected, Result, ts_problem

log = logging.getLogger(__name__)

# Errors up to this are network delay, not a wrong clock (the broker counts its part of a
# reading's wait in whole seconds).
TRUST_S = 3.0


@dataclass(frozen=True)
class Offset:
    offset_ms: int
    reason: str


def decide_offset(agent_ts: datetime, received_at: datetime, age_s: float | None,
                  limits: Limits) -> Offset:
    """Return the offset for a session, from its first unsynchronised reading."""
    if age_s is not None:
        error_s = (received_at - timedelta(seconds=age_s) - agent_ts).total_seconds()
        if abs(error_s) <= TRUST_S:
            return Offset(0, f"clock within {TRUST_S:g} s of the hub's")
        return Offset(round(error_s * 1000),
                      f"clock off by {error_s:.3f} s (hub's receive time less the "
                      f"reading's age of {age_s:.3f} s)")
    problem = ts_problem(agent_ts, received_at, limits)
    if problem is None:
        return Offset(0, "stamp plausible and no age given: kept")
    error_s = (received_at - agent_ts).total_seconds()
    return Offset(round(error_s * 1000), f"placed at the hub's receive time: {problem}")


def place(result: Accepted, offset_ms: int) -> Accepted:
    """Return the reading with ``ts`` moved by the offset and the agent's stamp kept."""
    if offset_ms == 0:
        return result
    value = result.value
    moved = msgspec.structs.replace(value, ts=value.ts + timedelta(milliseconds=offset_ms))
    return replace(result, value=moved, agent_ts=value.ts)


class OffsetStore(Protocol):
    def clock_offset(self, device_id: str, session_id: str, offset_ms: int, reason: str,
                     decided_at: datetime) -> int:
        """Record the offset unless the session has one already; return the session's."""
        ...


class ClockPlacer:
    """Apply the session offsets to validated readings; one database round trip per session."""

    def __init__(self, store: OffsetStore, limits: Limits, cache_size: int = 10_000) -> None:
        self._store = store
        self._limits = limits
        self._offsets: dict[tuple[str, str], int] = {}
        self._cache_size = cache_size

    def apply(self, result: Result, received_at: datetime, age_s: float | None) -> Result:
        """Place an unsynchronised reading; anything else passes through unchanged.

        Raises the store's StoreError when the offset cannot be read or recorded.
        """
        if not (isinstance(result, Accepted) and result.kind == "metrics"
                and result.value.clock_synced is False):
            return result
        value = result.value
        key = (result.device_id, value.session_id)
        offset_ms = self._offsets.get(key)
        if offset_ms is None:
            proposed = decide_offset(value.ts, received_at, age_s, self._limits)
            offset_ms = self._store.clock_offset(key[0], key[1], proposed.offset_ms,
                                                 proposed.reason, received_at)
            if offset_ms:
                log.info("Device %s session %s: clock not synchronised; its readings are "
                         "moved by %+.3f s (%s).", key[0], key[1], offset_ms / 1000,
                         proposed.reason)
            if len(self._offsets) >= self._cache_size:
                self._offsets.clear()  # old sessions; a miss costs one query
            self._offsets[key] = offset_ms
        placed = place(result, offset_ms)
        problem = ts_problem(placed.value.ts, received_at, self._limits)
        if problem is not None:
            return Rejected(f"clock not synchronised and its reading cannot be placed: "
                            f"{problem}", result.device_id)
        return placed
