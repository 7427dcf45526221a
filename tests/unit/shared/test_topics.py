import pytest

from shared.topics import (
    hub_subscriptions,
    is_valid_device_id,
    is_valid_prefix,
    meta_topic,
    metrics_topic,
    parse_topic,
    status_topic,
)


def test_topics_round_trip_through_parse():
    for make, kind in ((metrics_topic, "metrics"), (status_topic, "status"), (meta_topic, "meta")):
        assert parse_topic("fleetpulse", make("fleetpulse", "pi-7")) == ("pi-7", kind)


def test_parse_rejects_other_shapes():
    assert parse_topic("fleetpulse", "other/pi/metrics") is None
    assert parse_topic("fleetpulse", "fleetpulse/pi/metrics/extra") is None
    assert parse_topic("a/b", "a/b/pi/meta") == ("pi", "meta")


@pytest.mark.parametrize("device_id", ["+", "#", "a/b", "", "-lead", "x" * 65, "a b", "ü"])
def test_invalid_device_ids(device_id):
    assert not is_valid_device_id(device_id)


def test_valid_device_ids():
    assert all(is_valid_device_id(d) for d in ("pi-1", "fp-0a1b2c3d4e5f", "Kitchen.Pi_2"))


def test_prefixes_without_wildcards():
    assert is_valid_prefix("fleetpulse") and is_valid_prefix("site/a")
    assert not any(is_valid_prefix(p) for p in ("", "a/+", "#", "$SYS", "a//b"))


def test_hub_subscribes_to_every_kind_and_can_share():
    assert hub_subscriptions("fp") == ["fp/+/metrics", "fp/+/status", "fp/+/meta",
                                       "fp/+/config"]
    assert hub_subscriptions("fp", "hubs")[0] == "$share/hubs/fp/+/metrics"


def test_set_and_config_topics_follow_the_prefix() -> None:
    from shared.topics import config_topic, parse_set_topic, set_filters, set_topic

    assert set_topic("a/b", "pi-1") == "a/b/pi-1/set"
    assert set_topic("a/b", "pi-1", "interval_s") == "a/b/pi-1/set/interval_s"
    assert set_filters("fp", "pi-1") == ["fp/pi-1/set", "fp/pi-1/set/+"]
    assert config_topic("fp", "pi-1") == "fp/pi-1/config"
    assert parse_set_topic("fp", "pi-1", "fp/pi-1/set") == (None,)
    assert parse_set_topic("fp", "pi-1", "fp/pi-1/set/interval_s") == ("interval_s",)
    for other in ("fp/pi-1/set/a/b", "fp/pi-2/set", "fp/pi-1/setx", "fp/pi-1/config",
                  "gp/pi-1/set"):
        assert parse_set_topic("fp", "pi-1", other) is None
