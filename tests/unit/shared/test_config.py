from pathlib import Path

import pytest

from shared.config import (
    AgentSettings,
    HubSettings,
    Secret,
    default_state_dir,
    load_settings,
    mask_password,
    parse_broker_url,
)
from shared.errors import ConfigError


def test_file_then_environment_then_flags(tmp_path):
    file = tmp_path / "agent.toml"
    file.write_text('broker_url = "mqtt://from-file:1883"\ninterval_s = 5\n'
                    'topic_prefix = "fromfile"\n')
    settings = load_settings(AgentSettings, file=file,
                             environ={"FLEETPULSE_INTERVAL_S": "2.5",
                                      "FLEETPULSE_TOPIC_PREFIX": "fromenv"},
                             flags={"topic_prefix": "fromflag", "device_id": None})
    assert settings.broker_url == "mqtt://from-file:1883"
    assert settings.interval_s == 2.5
    assert settings.topic_prefix == "fromflag"
    assert settings.device_id is None


def test_every_problem_is_one_line_naming_the_setting_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(AgentSettings, environ={"FLEETPULSE_BROKER_URL": "mqtt//x",
                                              "FLEETPULSE_INTERVAL_S": "soon",
                                              "FLEETPULSE_DEVICE_ID": "a/b"})
    problems = info.value.problems
    assert len(problems) == 3
    assert any(p.startswith("FLEETPULSE_BROKER_URL: 'mqtt//x' is not a URL like mqtt://host:1883")
               for p in problems)
    assert any("FLEETPULSE_INTERVAL_S: 'soon' is not a number" in p for p in problems)
    assert any("FLEETPULSE_DEVICE_ID" in p and "letters, digits" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_unknown_keys_in_the_file_are_reported(tmp_path):
    file = tmp_path / "hub.toml"
    file.write_text('broker_ulr = "mqtt://x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'broker_ulr'"):
        load_settings(HubSettings, file=file, environ={})


def test_a_broken_toml_file_is_one_clear_problem(tmp_path):
    file = tmp_path / "hub.toml"
    file.write_text("broker_url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(HubSettings, file=file, environ={})


def test_secrets_are_never_shown():
    settings = load_settings(HubSettings, environ={"FLEETPULSE_BROKER_PASSWORD": "hunter2",
                                                   "FLEETPULSE_DB": "postgresql://u:pw@h/db"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.broker_password)
    assert settings.broker_password is not None
    assert settings.broker_password.reveal() == "hunter2"
    with pytest.raises(ConfigError) as info:
        load_settings(HubSettings, environ={"FLEETPULSE_DB": "mysql://u:secret@h/db"})
    assert "secret" not in str(info.value)


def test_non_positive_numbers_are_refused():
    with pytest.raises(ConfigError, match="must be greater than 0"):
        load_settings(HubSettings, environ={"FLEETPULSE_BATCH_MAX_ROWS": "0"})


def test_broker_urls_with_tls_credentials_and_default_ports():
    plain = parse_broker_url("mqtt://broker.lan")
    assert (plain.host, plain.port, plain.tls) == ("broker.lan", 1883, False)
    tls = parse_broker_url("mqtts://dev%40x:p%3Ass@broker.lan")
    assert (tls.port, tls.tls, tls.username) == (8883, True, "dev@x")
    assert isinstance(tls.password, Secret) and tls.password.reveal() == "p:ss"
    with pytest.raises(ValueError, match="port"):
        parse_broker_url("mqtt://host:99999")


def test_a_secret_comes_from_a_file_named_by_its_file_variable(tmp_path):
    (tmp_path / "password").write_text("s3cret-from-file\n")
    (tmp_path / "token").write_text("tok\r\n")
    settings = load_settings(HubSettings, environ={
        "FLEETPULSE_BROKER_PASSWORD_FILE": str(tmp_path / "password"),
        "FLEETPULSE_API_TOKEN_FILE": str(tmp_path / "token"),
        "FLEETPULSE_DB_PASSWORD_FILE": str(tmp_path / "password")})
    assert settings.broker_password.reveal() == "s3cret-from-file"
    assert settings.api_token.reveal() == "tok"
    assert settings.db_password.reveal() == "s3cret-from-file"
    agent = load_settings(AgentSettings, environ={
        "FLEETPULSE_BROKER_PASSWORD_FILE": str(tmp_path / "password")})
    assert agent.broker_password.reveal() == "s3cret-from-file"


def test_a_value_given_directly_wins_over_the_file_and_an_empty_one_does_not(tmp_path):
    (tmp_path / "password").write_text("from-file")
    env = {"FLEETPULSE_BROKER_PASSWORD_FILE": str(tmp_path / "password")}
    given = load_settings(HubSettings, environ={**env, "FLEETPULSE_BROKER_PASSWORD": "direct"})
    assert given.broker_password.reveal() == "direct"
    empty = load_settings(HubSettings, environ={**env, "FLEETPULSE_BROKER_PASSWORD": ""})
    assert empty.broker_password.reveal() == "from-file"


def test_a_missing_or_empty_secret_file_is_one_line_and_no_file_variable_for_others(
        tmp_path):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(HubSettings, environ={
            "FLEETPULSE_BROKER_PASSWORD_FILE": str(tmp_path / "missing"),
            "FLEETPULSE_API_TOKEN_FILE": str(tmp_path / "empty")})
    assert caught.value.problems == [
        f"FLEETPULSE_BROKER_PASSWORD_FILE: cannot read {tmp_path / 'missing'} (No such file "
        "or directory).",
        f"FLEETPULSE_API_TOKEN_FILE: {tmp_path / 'empty'} is empty."]
    # Only secrets: a _FILE of an ordinary setting is not read.
    (tmp_path / "url").write_text("mqtt://elsewhere:1883")
    plain = load_settings(HubSettings, environ={"FLEETPULSE_BROKER_URL_FILE":
                                                str(tmp_path / "url")})
    assert plain.broker_url == "mqtt://localhost:1883"


def test_with_password_replaces_the_urls_password_and_quotes_it():
    from shared.config import with_password

    assert with_password("postgresql://fleetpulse@db:5432/fleetpulse", "a/b@c:d") == \
        "postgresql://fleetpulse:a%2Fb%40c%3Ad@db:5432/fleetpulse"
    assert with_password("postgresql://u:old@h/d?sslmode=require", "new") == \
        "postgresql://u:new@h/d?sslmode=require"
    assert with_password("postgresql://u:old@h/d", None) == "postgresql://u:old@h/d"


def test_the_state_directory_systemd_made_for_the_service_is_the_default() -> None:
    made = {"STATE_DIRECTORY": "/var/lib/other:/var/lib/fleetpulse-agent"}
    assert default_state_dir("fleetpulse-agent", made) == Path("/var/lib/fleetpulse-agent")
    # Another unit's state directory is not ours.
    assert default_state_dir("fleetpulse-agent", {"STATE_DIRECTORY": "/var/lib/other"}) \
        != Path("/var/lib/other")


def test_log_level_is_checked_as_a_setting_in_any_case():
    assert load_settings(AgentSettings, environ={"FLEETPULSE_LOG_LEVEL": "debug"}).log_level \
        == "debug"
    for cls in (AgentSettings, HubSettings):
        with pytest.raises(ConfigError) as info:
            load_settings(cls, environ={"FLEETPULSE_LOG_LEVEL": "VERBOSE"})
        assert info.value.problems == ["FLEETPULSE_LOG_LEVEL: 'VERBOSE' is not a log level: "
                                       "use DEBUG, INFO, WARNING or ERROR."]


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://fleet:s3cret@db:5432/fleet", "postgresql://fleet:**********@db:5432/fleet"),
    ("postgresql://fleet:p@ss/w@db/fleet", "postgresql://fleet:**********@db/fleet"),
    ("postgresql://nobody@db/fleet", "postgresql://nobody@db/fleet"),
    ("postgresql://db:5432/fleet", "postgresql://db:5432/fleet"),
    ("foo", "foo"),
])
def test_mask_password_hides_the_password_alone(url, shown):
    assert mask_password(url) == shown


def test_a_wrong_db_url_is_shown_with_only_its_password_masked():
    with pytest.raises(ConfigError) as info:
        load_settings(HubSettings, environ={"FLEETPULSE_DB": "postgress://u:secret@h/db"})
    (problem,) = info.value.problems
    assert "secret" not in problem
    assert problem.startswith("FLEETPULSE_DB: 'postgress://u:**********@h/db' is not a URL")
