import pytest

from shared.config import (
    AgentSettings,
    HubSettings,
    Secret,
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
