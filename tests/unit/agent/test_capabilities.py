"""The optional fields an agent sends: only what the hub says it reads, kept across starts."""

from __future__ import annotations

from dataclasses import replace

import orjson

from agent.capabilities import load_hub_reads, save_hub_reads
from agent.encode import build_metrics, encode
from shared.schema import hub_capabilities, read_capabilities
from tests.unit.hub.messages import BASE

V1_KEYS = {"v", "device_id", "session_id", "seq", "ts", "interval_s", "cpu", "memory", "disk",
           "network", "sensors", "throttling"}


def reading(**kwargs: object) -> dict[str, object]:
    cur = replace(BASE, monotonic_s=2.0)
    message = build_metrics(BASE, cur, device_id="pi-1", session_id="s", seq=1,
                            epoch_s=1_700_000_000.0, interval_s=1.0, **kwargs)  # type: ignore[arg-type]
    return orjson.loads(encode(message))


def test_without_a_capability_message_the_reading_is_exactly_version_1() -> None:
    assert set(reading(clock_synced=False)) == V1_KEYS


def test_a_field_the_hub_reads_is_sent_even_when_null() -> None:
    assert reading(hub_reads=frozenset({"clock_synced"}), clock_synced=False)[
        "clock_synced"] is False
    assert reading(hub_reads=frozenset({"clock_synced"}))["clock_synced"] is None


def test_the_hubs_capability_message_lists_clock_synced_and_processes() -> None:
    payload = orjson.dumps(hub_capabilities("9.9"))
    assert read_capabilities(payload) == frozenset({"clock_synced", "processes"})


def test_unreadable_or_foreign_capabilities_mean_version_1_only() -> None:
    for payload in (b"", b"not json", b"[1]", b'{"metrics_versions": [2], '
                    b'"metrics_optional_fields": ["clock_synced"]}',
                    b'{"metrics_versions": [1], "metrics_optional_fields": "clock_synced"}'):
        assert read_capabilities(payload) == frozenset(), payload


def test_fields_this_agent_does_not_know_are_ignored() -> None:
    # A newer hub lists fields of later agents: this agent sends only the ones it has.
    payload = (b'{"v": 1, "metrics_versions": [1, 2], '
               b'"metrics_optional_fields": ["clock_synced", "from_the_future"]}')
    assert read_capabilities(payload) == frozenset({"clock_synced"})


def test_the_last_capabilities_are_kept_for_the_next_start(tmp_path) -> None:
    assert load_hub_reads(tmp_path / "state") == frozenset()
    save_hub_reads(tmp_path / "state", frozenset({"clock_synced"}))
    assert load_hub_reads(tmp_path / "state") == frozenset({"clock_synced"})
    save_hub_reads(tmp_path / "state", frozenset())  # a hub that reads none (cleared)
    assert load_hub_reads(tmp_path / "state") == frozenset()
