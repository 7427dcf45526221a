"""The pure parts of ``fleetpulse-hub init-deploy`` (hub/deploy.py); the files, openssl and
the containers' users are tested in tests/integration/test_compose.py."""

import pytest

from hub.deploy import FIXED_HOSTS, broker_hosts, check_override, format_welcome, subject_alt_name
from shared.errors import ConfigError


def test_broker_hosts_guess_name_mdns_name_and_address_then_the_fixed_ones():
    assert broker_hosts(None, "hubbox", "192.168.1.20") == [
        "hubbox", "hubbox.local", "192.168.1.20", *FIXED_HOSTS]
    assert broker_hosts("", "hub.example.lan", None) == ["hub.example.lan", *FIXED_HOSTS]


def test_configured_broker_hosts_replace_the_guess_and_come_first():
    assert broker_hosts(" broker.example.lan,192.0.2.10,, localhost", "hubbox", "10.0.0.2") \
        == ["broker.example.lan", "192.0.2.10", "localhost", "127.0.0.1", "mosquitto"]


def test_subject_alt_name_tells_addresses_from_names():
    assert subject_alt_name(["hubbox", "192.0.2.10", "::1", "fe80::1"]) == \
        "DNS:hubbox, IP:192.0.2.10, IP:::1, IP:fe80::1"


@pytest.mark.parametrize("value", ["change-me-db-password", "short"])
def test_placeholders_and_short_secrets_from_env_are_refused(value):
    with pytest.raises(ConfigError) as caught:
        check_override("POSTGRES_PASSWORD", value)
    [problem] = caught.value.problems
    assert problem.startswith("POSTGRES_PASSWORD in .env ") and "openssl rand" in problem
    check_override("POSTGRES_PASSWORD", "a-long-enough-secret")


def test_welcome_gives_one_command_each_with_the_first_broker_name():
    lines = format_welcome(["broker.example.lan", "localhost"], "/run/fleetpulse")
    text = "\n".join(lines)
    assert "docker compose exec -T hub cat /run/fleetpulse/api_token" in text
    assert "docker compose exec -T hub cat /run/fleetpulse/ca.crt > ca.crt" in text
    assert ("--broker-url mqtts://broker.example.lan:8883 > DEVICE_ID.toml && docker compose "
            "kill -s SIGHUP mosquitto") in text
    assert "valid for broker.example.lan, localhost" in text
