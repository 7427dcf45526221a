"""Alert rules from the hub's settings: defaults, a TOML file of overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.alerts import DEFAULT_RULES
from hub.main import load_rules
from shared.config import HubSettings
from shared.errors import ConfigError


def test_without_a_rules_file_the_defaults_apply() -> None:
    assert load_rules(HubSettings()) == list(DEFAULT_RULES)


def test_rules_file_overrides_thresholds_and_disables_rules(tmp_path: Path) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text("[cpu_temperature_high]\nthreshold = 70\nclear = 65\n"
                    "[swap_thrashing]\nenabled = false\n")
    rules = {r.name: r for r in load_rules(HubSettings(alert_rules_file=path))}
    assert rules["cpu_temperature_high"].threshold == 70.0
    assert rules["cpu_temperature_high"].clear_at == 65.0
    assert rules["swap_thrashing"].enabled is False


@pytest.mark.parametrize(("text", "message"), [
    ("[cpu_hot]\nthreshold = 1\n", "unknown alert rule 'cpu_hot'"),
    ("[no_data\n", "Expected ']'"),
])
def test_a_wrong_rules_file_is_one_clear_config_error(tmp_path: Path, text: str,
                                                      message: str) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_rules(HubSettings(alert_rules_file=path))
    (problem,) = caught.value.problems
    assert problem.startswith(f"alert_rules_file {path}: ") and message in problem


def test_a_missing_rules_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_rules(HubSettings(alert_rules_file=tmp_path / "none.toml"))
