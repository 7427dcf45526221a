"""Every kind of bad message is rejected with a reason a person can act on."""

from datetime import timedelta

import msgspec
import orjson
import pytest

from hub.ingest.validate import Accepted, Limits, Rejected, validate
from tests.unit.hub.messages import NOW, meta_bytes, metrics, metrics_bytes

TOPIC = "fp/pi-1/metrics"


def check(payload: bytes, topic: str = TOPIC, limits: Limits = Limits()):
    return validate(topic, payload, NOW, "fp", limits)


def rejected(payload: bytes, topic: str = TOPIC, **kwargs) -> str:
    result = check(payload, topic, **kwargs)
    assert isinstance(result, Rejected), result
    return result.reason


def with_change(path: str, value) -> bytes:
    message = metrics()
    node = message
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return orjson.dumps(message)


def test_a_valid_reading_is_accepted_typed():
    result = check(metrics_bytes())
    assert isinstance(result, Accepted) and result.kind == "metrics"
    assert result.value.seq == 2 and result.value.ts.tzinfo is not None


def test_not_json():
    assert rejected(b"{not json").startswith("payload is not valid JSON")


def test_not_utf8():
    assert rejected(b'{"v": 1, "device_id": "\xff\xfe"}').startswith("payload is not UTF-8")


def test_json_that_is_not_an_object():
    assert rejected(b"[1, 2]") == "payload is JSON list, not an object"


def test_unknown_schema_version():
    assert rejected(with_change("v", 7)) == "unknown schema version 7 (this hub reads 1)"
    assert rejected(b'{"seq": 1}') == "payload has no schema version 'v'"


def test_wrong_type_names_the_field():
    reason = rejected(with_change("cpu.percent", "high"))
    assert reason.startswith("wrong or missing fields: cpu.percent: Input should be a valid number")


def test_numbers_given_as_strings_are_not_coerced():
    assert "memory.total_bytes" in rejected(with_change("memory.total_bytes", "100"))


def test_missing_field():
    message = metrics()
    del message["memory"]["free_bytes"]
    assert "memory.free_bytes: Field required" in rejected(orjson.dumps(message))


def test_unknown_field_is_not_silently_dropped():
    assert "cpu.bogus: Extra inputs are not permitted" in rejected(with_change("cpu.bogus", 1))


def test_negative_and_enormous_numbers():
    assert "greater than or equal to 0" in rejected(with_change("disk.read_bytes", -5))
    enormous = metrics_bytes().replace(b'"read_bytes":1000,', b'"read_bytes":%d,' % 2**70, 1)
    assert "disk.read_bytes: Input should be less than or equal to 9223372036854775807" in (
        rejected(enormous))
    assert "cpu.percent" in rejected(with_change("cpu.percent", 180.0))


def test_nan_and_infinity_are_rejected():
    payload = metrics_bytes().replace(b'"load_1":1.0', b'"load_1":NaN')
    assert "not valid JSON" in rejected(payload)
    big = metrics_bytes().replace(b'"load_1":1.0', b'"load_1":1e999')
    assert "load_1" in rejected(big) or "infinity" in rejected(big)


def test_device_id_in_payload_must_match_topic():
    reason = rejected(metrics_bytes(device_id="pi-2"))
    assert reason == "device id 'pi-2' in the payload does not match 'pi-1' in the topic"


def test_oversized_payload():
    reason = rejected(metrics_bytes(), limits=Limits(max_payload_bytes=100))
    assert reason.startswith("payload of ") and "over the limit of 100 bytes" in reason


def test_reading_from_the_future_is_quarantined_with_the_skew():
    future = (NOW + timedelta(hours=1)).timestamp()
    reason = rejected(metrics_bytes(epoch_s=future), limits=Limits(max_future_skew_s=30))
    assert "3600 s ahead of the hub's clock (tolerance 30 s)" in reason


def test_small_skew_within_tolerance_is_accepted():
    slightly_ahead = (NOW + timedelta(seconds=5)).timestamp()
    assert isinstance(check(metrics_bytes(epoch_s=slightly_ahead)), Accepted)


def test_timestamp_without_time_zone():
    message = metrics()
    message["ts"] = message["ts"].rstrip("Z")
    assert "has no time zone" in rejected(orjson.dumps(message))


def test_nul_characters_are_refused_before_the_database_sees_them():
    message = metrics()
    message["disk"]["partitions"][0]["mountpoint"] = "/\u0000evil"
    assert "NUL" in rejected(orjson.dumps(message))


@pytest.mark.parametrize("topic", ["other/pi-1/metrics", "fp/pi-1/metrics/x", "fp/+/metrics"])
def test_bad_topics(topic):
    assert rejected(metrics_bytes(), topic=topic)


def test_unknown_topic_kind():
    assert rejected(metrics_bytes(), topic="fp/pi-1/commands") == "unknown topic kind 'commands'"


def test_status_must_be_online_or_offline():
    assert check(b"online", "fp/pi-1/status") == Accepted("status", "pi-1", "online")
    assert rejected(b"sleeping", "fp/pi-1/status").startswith("status 'sleeping' is not one of")


def test_meta_is_validated_and_its_device_id_checked():
    assert isinstance(check(meta_bytes(), "fp/pi-1/meta"), Accepted)
    assert "does not match" in rejected(meta_bytes("pi-9"), "fp/pi-1/meta")


@pytest.mark.parametrize("version", [True, 1.0])
@pytest.mark.parametrize("kind", ["metrics", "meta"])
def test_a_version_equal_to_but_not_the_integer_1_is_refused(version: object, kind: str) -> None:
    message = orjson.loads(metrics_bytes() if kind == "metrics" else meta_bytes())
    message["v"] = version
    assert rejected(orjson.dumps(message), f"fp/pi-1/{kind}") == (
        f"unknown schema version {version!r} (this hub reads 1)")


# --- optional fields and clocks (README "Versions and upgrades") ---------------------------
def with_field(name: str, value, **kwargs) -> bytes:
    message = metrics(**kwargs)
    message[name] = value
    return orjson.dumps(message)


@pytest.mark.parametrize("value", [True, False, None])
def test_clock_synced_is_read_when_present(value):
    result = check(with_field("clock_synced", value))
    assert isinstance(result, Accepted) and result.value.clock_synced is value


def test_a_reading_without_optional_fields_is_read_as_before():
    result = check(metrics_bytes())
    assert isinstance(result, Accepted) and result.value.clock_synced is msgspec.UNSET


def test_clock_synced_of_another_type_is_refused():
    assert "clock_synced" in rejected(with_field("clock_synced", "yes"))


def test_a_field_no_version_has_is_still_refused():
    assert "from_the_future" in rejected(with_field("from_the_future", 1))


def test_a_reading_older_than_the_kept_history_is_quarantined_not_stored():
    old = (NOW - timedelta(days=40)).timestamp()
    reason = rejected(metrics_bytes(epoch_s=old), limits=Limits(max_age_days=30))
    assert "older than the 30 days of history" in reason


def test_an_unsynchronised_reading_from_1970_is_accepted_for_placing():
    payload = with_field("clock_synced", False, epoch_s=86400.0)
    result = check(payload)
    assert isinstance(result, Accepted)  # hub/clock.py places it
    assert "older" in rejected(with_field("clock_synced", True, epoch_s=86400.0))
