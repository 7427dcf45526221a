"""The hub's side of settings changed remotely (hub/remote.py): the report's check, the
judgement of a request, when to send, and config messages through validate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.remote import RemoteState, config_message, refusal
from hub.ingest.validate import Accepted, Rejected, validate
from hub.remote import (
    MAX_SENDS,
    RESEND_AFTER_S,
    Request,
    check_change,
    check_config,
    judge,
    outside_reported,
    payload_of,
    should_send,
)
from shared.remote import Refused

LOCAL = {"interval_s": 1.0, "process_period_s": 10.0, "process_top_n": 10}
NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def report(settings: dict[str, Any] | None = None, **state: Any) -> dict[str, Any]:
    """A config message as the agent builds it."""
    return config_message("pi-1", LOCAL, RemoteState(settings or {}, **state))


def checked(message: dict[str, Any]) -> Any:
    result = check_config("pi-1", json.dumps(message).encode())
    assert isinstance(result, dict), result
    return result


def test_the_agents_report_passes_and_an_empty_one_clears() -> None:
    config = checked(report({"interval_s": 5.0}))
    assert config["settings"]["interval_s"] == 5.0 and config["source"]["interval_s"] == "remote"
    assert check_config("pi-1", b"") is None


@pytest.mark.parametrize(("payload", "words"), [
    (b"{", "Invalid JSON"),
    (b'{"v": 2}', "v"),
    (json.dumps({**report(), "device_id": "pi-2"}).encode(), "does not match"),
    (json.dumps({**report(), "settings": {"interval_s": "5"}}).encode(), "settings.interval_s"),
    (json.dumps({**report(), "source": {"interval_s": "hub"}}).encode(), "source.interval_s"),
])
def test_a_malformed_report_is_refused_with_a_reason(payload: bytes, words: str) -> None:
    reason = check_config("pi-1", payload)
    assert isinstance(reason, str) and words in reason


def test_a_newer_agents_extra_field_is_ignored() -> None:
    assert "colour" not in checked({**report(), "colour": "blue"})


def test_validate_quarantines_a_bad_config_and_accepts_a_good_one() -> None:
    good = validate("fleetpulse/pi-1/config", json.dumps(report()).encode(), NOW, "fleetpulse")
    assert isinstance(good, Accepted) and good.kind == "config"
    bad = validate("fleetpulse/pi-1/config", b"[1]", NOW, "fleetpulse")
    assert isinstance(bad, Rejected) and bad.device_id == "pi-1" and "config" in bad.reason


def request(value: float | None = 5.0, setting: str = "interval_s", **kw: Any) -> Request:
    return Request("pi-1", setting, value, "pending", **kw)


def test_applied_once_reported_in_effect_from_a_remote_source() -> None:
    assert judge(request(), checked(report()), "fleetpulse")[0] == "pending"
    assert judge(request(), checked(report({"interval_s": 5.0})), "fleetpulse")[0] == "applied"
    # The same value set locally is not the hub's: it must be sent to be kept remotely.
    assert judge(request(1.0), checked(report()), "fleetpulse")[0] == "pending"
    assert judge(request(None), checked(report()), "fleetpulse")[0] == "applied"
    assert judge(request(None), checked(report({"interval_s": 5.0})), "fleetpulse")[0] == \
        "pending"


def test_refused_by_a_new_refusal_of_the_hubs_own_set() -> None:
    sent = NOW - timedelta(seconds=2)
    said = refusal(100.0, "fleetpulse/pi-1/set/process_top_n", b"40", "process_top_n: 40 "
                   "is out of bounds (from 1 to 30)")
    config = checked(report(last_refusal=said))
    mine = request(40, "process_top_n", sent_at=sent, refusal_seen=None)
    assert judge(mine, config, "fleetpulse") == ("refused", said.reason)
    # Seen before the hub sent it: an old refusal, not an answer to this set.
    assert judge(request(40, "process_top_n", sent_at=sent, refusal_seen=100.0), config,
                 "fleetpulse")[0] == "pending"
    # Another payload (an admin's): not the hub's set.
    assert judge(request(20, "process_top_n", sent_at=sent), config, "fleetpulse")[0] == \
        "pending"


def test_refused_when_the_agent_does_not_take_the_setting() -> None:
    config = checked(report())
    del config["bounds"]["process_top_n"]
    state, reason = judge(request(5, "process_top_n"), config, "fleetpulse")
    assert state == "refused" and reason is not None and "does not take" in reason


def test_sent_when_online_again_after_coming_back_and_never_in_a_loop() -> None:
    config = checked(report())
    since = NOW - timedelta(hours=1)
    assert should_send(request(), config, "online", since, NOW)
    assert not should_send(request(), config, "offline", since, NOW)
    assert not should_send(request(), None, "online", since, NOW)  # no report: old agent
    just = request(sent_at=NOW - timedelta(seconds=1), send_count=1)
    assert not should_send(just, config, "online", since, NOW)
    later = NOW + timedelta(seconds=RESEND_AFTER_S)
    assert should_send(just, config, "online", since, later)
    tired = request(sent_at=NOW - timedelta(seconds=1), send_count=MAX_SENDS)
    assert not should_send(tired, config, "online", since, later + timedelta(days=1))
    # It came back online after the last send: the send may have been lost.
    assert should_send(tired, config, "online", NOW, NOW)


def test_payload_and_change_follow_the_agents_rules() -> None:
    assert payload_of("process_top_n", 7.0) == b"7"
    assert payload_of("interval_s", 2) == b"2.0"
    assert payload_of("interval_s", None) == b"null"
    assert check_change({"interval_s": 2, "process_top_n": None}) == \
        {"interval_s": 2.0, "process_top_n": None}
    for bad in ({"interval_s": 0.01}, {"interval_s": True}, {"process_top_n": 1.5},
                {"colour": 1}):
        with pytest.raises(Refused):
            check_change(bad)


def test_the_api_view_says_why_a_request_waits_and_when_a_device_cannot_be_set() -> None:
    from hub.api.settings import settings_out

    never = settings_out("pi-old", {"status": "online", "config": None, "received_at": None},
                         [])
    assert never.supported is False and never.note and "upgrade its agent" in never.note
    assert [s.setting for s in never.settings] == ["interval_s", "process_period_s",
                                                   "process_top_n"]
    row = {"setting": "interval_s", "value": 5.0, "state": "pending", "reason": None,
           "requested_at": NOW, "requested_by": "api", "sent_at": None, "send_count": 0,
           "applied_at": None, "refused_at": None}
    away = settings_out("pi-1", {"status": "offline", "config": checked(report()),
                                 "received_at": NOW}, [row])
    interval = away.settings[0]
    assert away.supported and interval.state == "pending" and interval.desired == 5.0
    assert interval.reason is not None and "offline" in interval.reason
    assert interval.reported == 1.0 and interval.source == "local"
    assert outside_reported({"process_top_n": 20}, checked(report())) is None
    narrow = checked(report())
    narrow["bounds"]["process_top_n"]["max"] = 16
    problem = outside_reported({"process_top_n": 20}, narrow)
    assert problem is not None and "from 1 to 16" in problem
