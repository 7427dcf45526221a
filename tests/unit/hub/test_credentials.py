"""Device broker accounts: hashes in Mosquitto's format, file edits, the agent's TOML."""

from __future__ import annotations

import base64
import stat
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hub import credentials
from hub.credentials import (
    AGENT_CA_FILE,
    add_device,
    agent_broker_url,
    agent_config,
    check_device_id,
    device_broker_url,
    format_agent_toml,
    hash_password,
    is_loopback,
    new_password,
    read_password_file,
    remove_user,
    revoke_device,
    run_add_device,
    run_revoke_device,
    set_user,
    users,
    verify_password,
)
from hub.main import main as hub_main
from shared.config import AgentSettings, HubSettings, load_settings
from shared.errors import ConfigError

# Made by `mosquitto_passwd -c -b passwd alice secret1` (mosquitto 2.0.11).
MOSQUITTO_LINE = ("alice:$7$101$rQvg2xUt7jYAJRsT$EXQ+KbgLiCw1kocNaV4YEZWD8DfyThEUgtZbay08JFoI53"
                  "PtbUUueDHLtjalENrbWG24VPwB5N9eSWf8ME5PmA==")


def test_verify_accepts_a_hash_made_by_mosquitto_passwd() -> None:
    hashed = MOSQUITTO_LINE.split(":", 1)[1]
    assert verify_password("secret1", hashed)
    assert not verify_password("secret2", hashed)


def test_hash_password_reproduces_mosquitto_passwd_given_its_salt() -> None:
    hashed = MOSQUITTO_LINE.split(":", 1)[1]
    salt = base64.b64decode(hashed.split("$")[3])
    assert hash_password("secret1", salt) == hashed


def test_hash_password_has_mosquitto_2_layout() -> None:
    hashed = hash_password("pw", b"\x01" * 12)
    empty, kind, iterations, salt, key = hashed.split("$")
    assert (empty, kind, iterations) == ("", "7", "101")
    assert len(base64.b64decode(salt)) == 12
    assert len(base64.b64decode(key)) == 64
    assert verify_password("pw", hashed)


def test_verify_rejects_malformed_hashes() -> None:
    assert not verify_password("pw", "plain")
    assert not verify_password("pw", "$7$x$AAAA$AAAA")
    assert not verify_password("pw", "$7$101$!!!$AAAA")


def test_new_passwords_are_long_random_and_url_safe() -> None:
    first, second = new_password(), new_password()
    assert first != second
    assert len(first) >= 43  # 256 bits in base64
    assert set(first) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("device_id", ["", "a/b", "pi+1", "pi#", "-pi", "x" * 65, "a:b",
                                       "fleetpulse-hub"])
def test_check_device_id_refuses_unusable_names_and_the_hub_account(device_id: str) -> None:
    with pytest.raises(ConfigError):
        check_device_id(device_id)


def test_check_device_id_accepts_a_normal_id() -> None:
    check_device_id("pi-kitchen.01")


def test_set_user_replaces_only_that_users_line_and_keeps_comments() -> None:
    text = "# accounts\nfleetpulse-hub:$7$hub\npi-01:$7$old\npi-02:$7$two\n"
    updated = set_user(text, "pi-01", "$7$new")
    assert updated == "# accounts\nfleetpulse-hub:$7$hub\npi-01:$7$new\npi-02:$7$two\n"


def test_set_user_appends_a_new_user_and_does_not_match_a_prefix() -> None:
    assert set_user("pi-01x:$7$a", "pi-01", "$7$b") == "pi-01x:$7$a\npi-01:$7$b\n"
    assert set_user("", "pi-01", "$7$b") == "pi-01:$7$b\n"


def test_remove_user_removes_the_line_and_reports_whether_it_existed() -> None:
    text, removed = remove_user("a:$7$1\npi-01:$7$2\nb:$7$3\n", "pi-01")
    assert (text, removed) == ("a:$7$1\nb:$7$3\n", True)
    assert remove_user(text, "pi-01") == (text, False)
    assert users(text) == ["a", "b"]


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtts://fleetpulse-hub:s3cret@broker.lan:8883", "mqtts://broker.lan:8883"),
    ("mqtt://broker.lan", "mqtt://broker.lan"),
    ("mqtt://u@[fd00::1]:1883", "mqtt://[fd00::1]:1883"),
])
def test_agent_broker_url_never_carries_the_hubs_credentials(url: str, expected: str) -> None:
    assert agent_broker_url(url) == expected


def test_agent_toml_loads_as_agent_settings_with_ca_for_mqtts(tmp_path: Path) -> None:
    config = agent_config("pi-01", 'p"w\\x', "mqtts://hub:pw@broker.lan:8883")
    text = format_agent_toml(config)
    assert "hub:pw" not in text
    table = tomllib.loads(text)
    assert table["broker_password"] == 'p"w\\x'
    (tmp_path / "agent.toml").write_text(text)
    settings = load_settings(AgentSettings, file=tmp_path / "agent.toml", environ={})
    assert settings.device_id == "pi-01"
    assert settings.broker_username == "pi-01"
    assert settings.broker_password is not None
    assert settings.broker_password.reveal() == 'p"w\\x'
    assert settings.broker_url == "mqtts://broker.lan:8883"
    assert str(settings.broker_ca_file) == AGENT_CA_FILE


def test_agent_toml_for_plain_mqtt_has_no_ca_file() -> None:
    table = tomllib.loads(format_agent_toml(agent_config("pi-01", "pw", "mqtt://broker.lan")))
    assert "broker_ca_file" not in table


def test_add_device_creates_a_private_file_whose_hash_matches_the_password(
        tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    password = add_device(path, "pi-01")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (line,) = read_password_file(path).splitlines()
    name, hashed = line.split(":", 1)
    assert name == "pi-01"
    assert verify_password(password, hashed)


def test_add_device_again_replaces_the_password_and_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("fleetpulse-hub:" + hash_password("hub", b"s" * 12) + "\n")
    path.chmod(0o640)
    first = add_device(path, "pi-01")
    second = add_device(path, "pi-01")
    text = read_password_file(path)
    assert users(text) == ["fleetpulse-hub", "pi-01"]
    hashed = dict(line.split(":", 1) for line in text.splitlines())["pi-01"]
    assert verify_password(second, hashed) and not verify_password(first, hashed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]  # no temporary file left


def test_revoke_device_removes_only_that_device(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    add_device(path, "pi-01")
    add_device(path, "pi-02")
    assert revoke_device(path, "pi-01")
    assert users(read_password_file(path)) == ["pi-02"]
    assert not revoke_device(path, "pi-01")


def test_add_device_into_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write the password file"):
        add_device(tmp_path / "missing" / "passwd", "pi-01")


def test_add_device_command_prints_the_agent_toml_and_what_to_do_next(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = HubSettings(broker_url="mqtts://fleetpulse-hub:hubpw@broker.lan:8883")
    assert run_add_device("pi-01", tmp_path / "passwd", settings, None) == 0
    out, err = capsys.readouterr()
    table = tomllib.loads(out)
    assert table["broker_url"] == "mqtts://broker.lan:8883"
    assert "hubpw" not in out + err
    hashed = read_password_file(tmp_path / "passwd").split(":", 1)[1].strip()
    assert verify_password(table["broker_password"], hashed)
    assert "SIGHUP" in err and "/etc/fleetpulse/ca.crt" in err


def test_revoke_device_command_fails_for_an_unknown_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_revoke_device("pi-09", tmp_path / "passwd", None) == 1
    assert "has no broker account" in capsys.readouterr().err


def test_hub_cli_needs_a_device_id_for_add_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_main(["add-device"]) == 2
    assert "needs a device id" in capsys.readouterr().err


# --- the broker URL a new device is given ------------------------------------------------
def test_a_localhost_broker_url_becomes_this_machines_name_with_the_hubs_scheme_and_port(
) -> None:
    chosen = device_broker_url("mqtts://fleetpulse-hub:pw@localhost:8884", public_url=None,
                               explicit=False, host_names=["localhost", "hub.lan"])
    assert chosen.url == "mqtts://hub.lan:8884" and chosen.warning is None
    chosen = device_broker_url("mqtt://127.0.0.1", public_url=None, explicit=False,
                               host_names=["ip6-localhost", "pi-hub"])
    assert chosen.url == "mqtt://pi-hub" and chosen.warning is None


def test_the_public_broker_url_wins_over_the_hubs_own() -> None:
    chosen = device_broker_url("mqtt://localhost:1883", public_url="mqtts://fleet.example:8883",
                               explicit=False, host_names=["hub.lan"])
    assert (chosen.url, chosen.source, chosen.warning) == (
        "mqtts://fleet.example:8883", "public_broker_url", None)


def test_an_explicit_broker_url_is_used_as_given() -> None:
    chosen = device_broker_url("mqtt://10.0.0.5:1883", public_url="mqtts://fleet.example:8883",
                               explicit=True, host_names=["hub.lan"])
    assert chosen.url == "mqtt://10.0.0.5:1883" and chosen.warning is None


@pytest.mark.parametrize(("hub_url", "public_url", "explicit", "names"), [
    ("mqtt://localhost:1883", None, False, ["localhost", "localhost.localdomain"]),
    ("mqtt://[::1]:1883", None, False, ["", "localhost"]),
    ("mqtt://127.0.0.1:1883", None, True, ["hub.lan"]),  # given by hand: kept, but warned
    ("mqtt://hub.lan:1883", "mqtt://127.0.1.1:1883", False, ["hub.lan"]),
])
def test_a_url_only_this_machine_can_use_comes_with_a_warning(
        hub_url: str, public_url: str | None, explicit: bool, names: list[str]) -> None:
    chosen = device_broker_url(hub_url, public_url=public_url, explicit=explicit,
                               host_names=names)
    assert is_loopback(urlsplit(chosen.url).hostname or "")
    assert chosen.warning is not None and chosen.warning.startswith("WARNING: ")
    assert "public_broker_url" in chosen.warning


def test_add_device_with_only_localhost_known_warns_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "host_names", lambda: ["localhost", "localhost"])
    assert run_add_device("pi-01", tmp_path / "passwd", HubSettings(), None) == 0
    out, err = capsys.readouterr()
    assert tomllib.loads(out)["broker_url"] == "mqtt://localhost:1883"
    assert [line for line in err.splitlines() if line.startswith("WARNING: ")]


def test_add_device_prints_the_ca_path_to_copy_for_mqtts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = HubSettings(broker_url="mqtt://localhost:1883",
                           public_broker_url="mqtts://fleet.example:8883",
                           broker_ca_file=Path("/srv/fleetpulse/ca.crt"))
    assert run_add_device("pi-01", tmp_path / "passwd", settings, None) == 0
    out, err = capsys.readouterr()
    table = tomllib.loads(out)
    assert table["broker_url"] == "mqtts://fleet.example:8883"
    assert table["broker_ca_file"] == "/etc/fleetpulse/ca.crt"
    assert "/srv/fleetpulse/ca.crt" in err and "--ca-file" in err
    assert "WARNING" not in err


# --- admin accounts -------------------------------------------------------------------------
SHIPPED_ACL = (Path(__file__).parents[3] / "mosquitto" / "acl").read_text()


def test_the_shipped_acl_ends_with_the_admins_line_and_has_no_admin() -> None:
    assert SHIPPED_ACL.rstrip("\n").endswith(credentials.ADMINS_MARKER)
    assert credentials.acl_admins(SHIPPED_ACL) == []


def test_add_admin_to_acl_appends_one_block_per_admin_with_the_prefix() -> None:
    text = credentials.add_admin_to_acl(SHIPPED_ACL, "ops", "fleet/a")
    assert text.startswith(SHIPPED_ACL.rstrip("\n"))
    assert text.endswith(credentials.ADMINS_MARKER + "\nuser ops\ntopic read fleet/a/#\n"
                         "topic write fleet/a/+/set\ntopic write fleet/a/+/set/+\n"
                         "topic readwrite homeassistant/#\n")
    assert credentials.add_admin_to_acl(text, "ops", "fleet/a") == text
    both = credentials.add_admin_to_acl(text, "ops2", "fleet/a")
    assert credentials.acl_admins(both) == ["ops", "ops2"]
    # The hub's own `user fleetpulse-hub` line is above the admins line: not an admin.
    assert credentials.HUB_USERNAME not in credentials.acl_admins(both)


def test_add_admin_to_an_acl_from_before_admins_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="copy the shipped mosquitto/acl"):
        credentials.add_admin_to_acl("user fleetpulse-hub\n", "ops", "fleetpulse")


def test_keep_admins_carries_the_admin_blocks_into_a_new_shipped_acl() -> None:
    current = credentials.add_admin_to_acl(SHIPPED_ACL, "ops", "fleetpulse")
    newer = SHIPPED_ACL.replace("# fleetpulse topic access", "# fleetpulse topic access v2")
    kept = credentials.keep_admins(newer, current)
    assert kept.startswith("# fleetpulse topic access v2")
    assert credentials.acl_admins(kept) == ["ops"]
    assert credentials.keep_admins(newer, SHIPPED_ACL) == newer
    assert credentials.keep_admins(newer, "user old\n") == newer


def test_add_admin_writes_the_acl_then_the_account_and_refuses_devices(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    (tmp_path / "acl").write_text(SHIPPED_ACL)
    credentials.add_device(passwd, "pi-1")
    password = credentials.add_admin(passwd, "ops", "fleetpulse")
    line = next(x for x in passwd.read_text().splitlines() if x.startswith("ops:"))
    assert credentials.verify_password(password, line.split(":", 1)[1])
    assert credentials.acl_admins((tmp_path / "acl").read_text()) == ["ops"]
    again = credentials.add_admin(passwd, "ops", "fleetpulse")  # a new password, one block
    assert again != password and credentials.acl_admins((tmp_path / "acl").read_text()) == ["ops"]
    with pytest.raises(ConfigError, match="already a device's account"):
        credentials.add_admin(passwd, "pi-1", "fleetpulse")
    with pytest.raises(ConfigError, match="is an admin account"):
        credentials.add_device(passwd, "ops")
    with pytest.raises(ConfigError, match="cannot be an admin's user name"):
        credentials.add_admin(passwd, credentials.HUB_USERNAME, "fleetpulse")
    (tmp_path / "acl").unlink()
    with pytest.raises(ConfigError, match="no ACL next to the password file"):
        credentials.add_admin(passwd, "ops3", "fleetpulse")
