"""Bring devices' settings to what the hub was asked for: the edge around :mod:`hub.remote`.

:class:`SettingsDesk` is what the API uses: it records requests (``device_settings``) and
reads a device's requests beside its report (``device_config``, written by the ingest
writer with the rest of a batch). :class:`SettingsSync` is the hub's ``settings`` thread:
each round (every :data:`SYNC_CHECK_S`, or at once when the API records a request) it
judges every pending request against the device's latest report, records ``applied`` or
``refused``, and sends what is due on ``<prefix>/<id>/set/<setting>`` (QoS 1, not
retained: a set is an order, not a state) through the receiver's MQTT connection. The same
round removes the Home Assistant discovery of devices revoked since (``device_revocations``,
recorded by ``fleetpulse-hub revoke-device``): an empty retained message on the device's
discovery topic, which HA takes as "delete this device".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from hub.remote import Request, judge, payload_of, should_send
from shared.errors import StoreError
from shared.remote import ConfigV1
from shared.topics import ha_discovery_topic, set_topic

log = logging.getLogger(__name__)

SYNC_CHECK_S = 1.0

_PENDING = (
    "select s.device_id, s.setting, s.value, s.state, s.sent_at, s.send_count, s.requested_at, "
    "s.refusal_seen, d.status, d.status_since, c.config from device_settings s "
    "left join devices d on d.device_id = s.device_id "
    "left join device_config c on c.device_id = s.device_id "
    "where s.state = 'pending' order by s.device_id, s.setting")
_APPLIED = ("update device_settings set state = 'applied', applied_at = %(now)s, reason = null "
            "where device_id = %(device_id)s and setting = %(setting)s and state = 'pending' "
            "and requested_at = %(requested_at)s")
_REFUSED = ("update device_settings set state = 'refused', refused_at = %(now)s, "
            "reason = %(reason)s where device_id = %(device_id)s and setting = %(setting)s "
            "and state = 'pending' and requested_at = %(requested_at)s")
_SENT = ("update device_settings set sent_at = %(now)s, send_count = %(count)s, "
         "refusal_seen = %(seen)s where device_id = %(device_id)s and setting = %(setting)s "
         "and requested_at = %(requested_at)s")
_REVOKED = "select device_id from device_revocations where cleared_at is null order by device_id"
_CLEARED = ("update device_revocations set cleared_at = %(now)s where device_id = %(device_id)s "
            "and cleared_at is null")
_REQUEST = (
    "insert into device_settings (device_id, setting, value, requested_at, requested_by, "
    "state) select d, %(setting)s, %(value)s, %(now)s, %(by)s, 'pending' "
    "from unnest(%(ids)s::text[]) as u(d) on conflict (device_id, setting) do update set "
    "value = excluded.value, requested_at = excluded.requested_at, "
    "requested_by = excluded.requested_by, state = 'pending', sent_at = null, "
    "send_count = 0, refusal_seen = null, applied_at = null, refused_at = null, reason = null")


class Querier(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...
    def execute(self, statements: Sequence[tuple[str, Any]]) -> None: ...


Publish = Callable[[str, bytes], object]  # topic, payload (QoS 1; retained or not: the caller)


def _request(row: dict[str, Any]) -> Request:
    return Request(row["device_id"], row["setting"], row["value"], row["state"],
                   row["sent_at"], row["send_count"], row["refusal_seen"])


class SettingsDesk:
    """Record requests and read them back for the API (any thread; the pool lends
    connections)."""

    def __init__(self, store: Querier, wake: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._wake = wake

    def reported(self, device_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each listed device's last report and when it came (devices with none are left
        out), with its status."""
        rows = self._store.query(
            "select d.device_id, d.status, c.config, c.received_at from devices d "
            "left join device_config c on c.device_id = d.device_id "
            "where d.device_id = any(%s::text[])", (list(device_ids),))
        return {r["device_id"]: r for r in rows}

    def requests(self, device_id: str) -> list[dict[str, Any]]:
        return self._store.query(
            "select * from device_settings where device_id = %s order by setting",
            (device_id,))

    def request(self, device_ids: Sequence[str], change: dict[str, float | None], by: str,
                now: datetime) -> None:
        """Record the change for every listed device (replacing earlier requests), then
        wake the settings thread."""
        ids = sorted(set(device_ids))
        self._store.execute([(_REQUEST, {"ids": ids, "setting": name, "value": value,
                                         "now": now, "by": by})
                             for name, value in sorted(change.items())])
        self._wake()


class SettingsSync:
    """One round at a time (:meth:`check`); :meth:`run` is the hub's ``settings`` thread."""

    def __init__(self, store: Querier, publish: Publish, prefix: str,
                 clock: Callable[[], datetime],
                 publish_retained: Publish | None = None) -> None:
        self._store = store
        self._publish = publish
        self._publish_retained = publish_retained
        self._prefix = prefix
        self._clock = clock
        self.wake = threading.Event()

    def check(self) -> int:
        """Judge and send what is pending; return how many sets were sent."""
        now = self._clock()
        self.clear_revoked(now)
        rows = self._store.query(_PENDING)
        sent = 0
        for row in rows:
            request = _request(row)
            config: ConfigV1 | None = row["config"]
            # Only the request as it was read: one made meanwhile stays pending.
            key = {"device_id": request.device_id, "setting": request.setting, "now": now,
                   "requested_at": row["requested_at"]}
            state, reason = judge(request, config, self._prefix)
            if state == "applied":
                self._record(_APPLIED, key)
                log.info("%s: %s %s.", request.device_id, request.setting,
                         "is back to the device's own value" if request.value is None
                         else f"{request.value:g} is in effect")
            elif state == "refused":
                self._record(_REFUSED, {**key, "reason": reason})
                log.warning("%s refused the setting %s: %s", request.device_id,
                            request.setting, reason)
            elif should_send(request, config, row["status"], row["status_since"], now):
                restart = (request.sent_at is None or (row["status_since"] is not None
                                                       and row["status_since"] > request.sent_at))
                refusal = config["last_refusal"] if config else None
                self._publish(set_topic(self._prefix, request.device_id, request.setting),
                              payload_of(request.setting, request.value))
                self._record(_SENT, {**key, "count": 1 if restart else request.send_count + 1,
                                     "seen": refusal["at"] if refusal else None})
                sent += 1
        return sent

    def clear_revoked(self, now: datetime) -> int:
        """Remove the HA discovery of each device revoked since; return how many."""
        if self._publish_retained is None:
            return 0
        rows = self._store.query(_REVOKED)
        for row in rows:
            device_id = row["device_id"]
            self._publish_retained(ha_discovery_topic(device_id), b"")
            self._record(_CLEARED, {"device_id": device_id, "now": now})
            log.info("%s was revoked: removed what it announced to Home Assistant.", device_id)
        return len(rows)

    def _record(self, statement: str, params: dict[str, Any]) -> None:
        self._store.execute([(statement, params)])

    def run(self, stop: threading.Event) -> None:
        """Check every :data:`SYNC_CHECK_S`, or at once when woken, until ``stop``."""
        failing = False
        while not stop.is_set():
            self.wake.clear()
            try:
                self.check()
                if failing:
                    log.warning("Settings can be sent again.")
                failing = False
            except StoreError as exc:
                if not failing:
                    log.error("Cannot check the devices' settings: %s. Retrying every %g s.",
                              exc, SYNC_CHECK_S)
                failing = True
            self.wake.wait(SYNC_CHECK_S)
