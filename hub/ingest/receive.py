"""Take messages off the broker: a persistent MQTT v5 session, acknowledged after commit.

The broker keeps the hub's session (hub/ingest/session.py) so messages published while
the hub is down wait for it. Messages are acked only once the batch holding them is
committed; Receive Maximum bounds how many unacknowledged messages the broker sends at
once, which is also the hub's memory bound: when the database is away and that many are
waiting, the broker holds the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import mqtt5
import orjson

from hub.ingest.batch import Ack, Inbound
from hub.ingest.session import BrokerSession
from shared import __version__
from shared.config import HubSettings, parse_broker_url
from shared.schema import AGE_EXPIRY_S, AGE_PROPERTY, hub_capabilities
from shared.topics import hub_schema_topic, hub_subscriptions

log = logging.getLogger(__name__)

RECEIVE_MAXIMUM_LIMIT = 65535  # the field is two bytes (MQTT 5.0, 3.1.2.11.3)


def age_from_properties(properties: Sequence[tuple[str, str]],
                        expiry_s: int | None) -> float | None:
    """Return how long a reading waited since it was taken, in seconds; None if not told.

    The agent's ``age-ms`` user property (its wait), plus the broker's: the message expiry
    the agent set less what is left of it (shared.schema.AGE_EXPIRY_S).
    """
    for name, value in properties:
        if name == AGE_PROPERTY:
            try:
                age_ms = int(value)
            except ValueError:
                return None
            if not 0 <= age_ms < 10**12:
                return None
            broker_s = 0
            if expiry_s is not None and 0 <= expiry_s <= AGE_EXPIRY_S:
                broker_s = AGE_EXPIRY_S - expiry_s
            return age_ms / 1000 + broker_s
    return None


class Inbox:
    """Messages taken off the broker, handed to the ingest loop in bunches.

    The receiving thread only appends; the ingest loop takes all that has arrived each time
    it looks. A ``queue.Queue`` would wake the ingest thread for every single message, a
    thread switch per message that cost the hub about as much CPU as validating it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Inbound] = []

    def put(self, messages: list[Inbound]) -> None:
        with self._lock:
            self._items += messages

    def take_all(self) -> list[Inbound]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def __len__(self) -> int:
        return len(self._items)


class Receiver:
    """Subscribe to every device's metrics, status and meta; queue what arrives."""

    def __init__(self, settings: HubSettings, inbox: Inbox) -> None:
        self._inbox = inbox
        self._filters = hub_subscriptions(settings.topic_prefix, settings.share_group)
        self.mqtt = BrokerSession(
            settings.client_id, parse_broker_url(settings.broker_url),
            username=settings.broker_username, password=settings.broker_password,
            ca_file=settings.broker_ca_file, session_expiry_s=settings.session_expiry_s,
            receive_maximum=min(settings.max_pending, RECEIVE_MAXIMUM_LIMIT))
        self.mqtt.on_connected = self._subscribe
        self.mqtt.on_messages = self._take
        self.mqtt.on_published = self._published
        self._schema_topic = hub_schema_topic(settings.topic_prefix)
        self._schema_mid: int | None = None
        self._schema_refused_logged = False

    def start(self) -> None:
        self.mqtt.start()

    def stop(self) -> None:
        self.mqtt.stop()

    def _subscribe(self) -> None:
        self.mqtt.subscribe(self._filters, qos=1)
        # Tell agents what this hub reads (retained): they add optional fields only then.
        self._schema_mid = self.mqtt.publish(
            self._schema_topic, orjson.dumps(hub_capabilities(__version__)), qos=1, retain=True,
            reports_refusal=True)

    def _published(self, mid: int, accepted: bool) -> None:
        if mid == self._schema_mid and not accepted and not self._schema_refused_logged:
            # An ACL from before the capability message: agents then send version 1
            # messages without optional fields, which this hub reads too.
            log.warning("The broker refused the hub's capability message on %s: agents will "
                        "send no optional fields (such as clock_synced). Grant the hub "
                        "'topic write %s' in the broker's ACL (see mosquitto/acl).",
                        self._schema_topic, self._schema_topic)
            self._schema_refused_logged = True

    def _take(self, packets: list[mqtt5.PublishPacket], generation: int) -> None:
        # One read of the socket: its messages arrived together.
        now = datetime.now(UTC)
        self._inbox.put([
            Inbound(p.topic, p.payload, now, Ack(p.packet_id or 0, int(p.qos), generation),
                    age_from_properties(p.user_properties, p.message_expiry_interval))
            for p in packets])

    def is_stale(self, message: Inbound) -> bool:
        """Tell whether a message came over a connection that has since been replaced."""
        return message.ack.generation != self.mqtt.generation

    def ack(self, tokens: Iterable[Ack]) -> None:
        """Acknowledge stored messages, in the order they arrived (MQTT 5.0, 4.6)."""
        self.mqtt.ack(tokens)
