"""install-service's pure parts: the unit it writes and the executable it points at; and
what it refuses before touching anything."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from agent.main import _parser
from agent.service import (
    CONFIG_FILE,
    Target,
    find_agent_executable,
    install_config,
    install_service,
    render_unit,
    run_service_command,
    uninstall_service,
    unit_template,
)


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_shipped_unit_has_the_watchdog_notify_user_and_state_directory() -> None:
    unit = _directives(unit_template())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"] and unit["Restart"] == ["always"]
    assert unit["Wants"] == ["network-online.target"]
    assert unit["After"] == ["network-online.target"]
    assert unit["User"] == ["fleetpulse"] and unit["SupplementaryGroups"] == ["video"]
    assert unit["StateDirectory"] == ["fleetpulse-agent"]
    assert unit["LoadCredential"] == ["agent.toml:/etc/fleetpulse/agent.toml"]
    assert unit["ExecStart"][0].endswith(" run --config %d/agent.toml")


def test_the_unit_hides_no_metric_source() -> None:
    unit = _directives(unit_template())
    # psutil reads /proc/stat, /proc/meminfo, /proc/diskstats; vcgencmd opens /dev/vchiq;
    # the clock's sync state is read with adjtimex(2); a /home partition's usage is read.
    for hiding in ("ProcSubset", "ProtectProc", "PrivateDevices", "ProtectClock",
                   "PrivateUsers", "DevicePolicy", "TemporaryFileSystem"):
        assert hiding not in unit, hiding
    assert unit["ProtectHome"] == ["read-only"]
    assert "AF_NETLINK" in unit["RestrictAddressFamilies"][0]
    assert unit["SystemCallFilter"] == ["@system-service adjtimex clock_adjtime"]


def test_render_unit_points_exec_start_at_the_executable() -> None:
    unit = render_unit(unit_template(), Path("/opt/fleetpulse/venv/bin/fleetpulse-agent"))
    assert _directives(unit)["ExecStart"] == [
        "/opt/fleetpulse/venv/bin/fleetpulse-agent run --config %d/agent.toml"]
    spaced = render_unit(unit_template(), Path("/opt/my venv/bin/fleetpulse-agent"))
    assert _directives(spaced)["ExecStart"] == [
        '"/opt/my venv/bin/fleetpulse-agent" run --config %d/agent.toml']


@pytest.mark.parametrize("path", ["bin/fleetpulse-agent", "/opt/100%/fleetpulse-agent",
                                  "/opt/$HOME/fleetpulse-agent"])
def test_render_unit_refuses_paths_systemd_would_misread(path: str) -> None:
    with pytest.raises(ValueError):
        render_unit(unit_template(), Path(path))


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_executable_is_the_one_started_then_the_venvs_then_path(tmp_path: Path) -> None:
    venv = _executable(tmp_path / "venv" / "bin" / "fleetpulse-agent")
    other = _executable(tmp_path / "other" / "fleetpulse-agent")
    python = str(tmp_path / "venv" / "bin" / "python3")
    assert find_agent_executable(str(other), python, lambda name: None) == other
    assert find_agent_executable("/x/agent/main.py", python, lambda name: None) == venv
    assert find_agent_executable("-m", "/usr/bin/python3", lambda name: str(other)) == other
    assert find_agent_executable("-m", "/usr/bin/python3", lambda name: None) is None


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


def test_an_invalid_config_is_refused_and_nothing_is_installed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('broker_url = "http://hub"\n')
    root = tmp_path / "root"
    code = run_service_command(_args("install-service", "--root", str(root),
                                     "--config-from", str(bad)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "not a valid agent config" in err[0] and "http://hub" in err[0]
    assert not (root / CONFIG_FILE).exists()
    assert not (root / "etc/systemd/system/fleetpulse-agent.service").exists()


def test_installing_on_this_machine_needs_root(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for command in ("install-service", "uninstall-service"):
        assert run_service_command(_args(command)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{command} must run as root" in err[0]


def test_the_config_is_written_private_and_an_existing_one_is_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.toml"
    source.write_text('device_id = "pi-1"\nbroker_password = "s3cret"\n')
    target = Target(tmp_path / "root")
    install_config(target, str(source))
    config = target.path(CONFIG_FILE)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.read_text() == source.read_text()
    source.write_text('device_id = "pi-2"\n')
    config.chmod(0o644)
    install_config(target, str(source))
    assert 'pi-1' in config.read_text()  # kept
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # but made private again
    assert "kept it" in capsys.readouterr().out


def test_on_a_running_systemd_install_reloads_enables_and_restarts_and_uninstall_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A systemctl that records its arguments, as systemd as PID 1 cannot run here.
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    source = tmp_path / "in.toml"
    source.write_text('device_id = "pi-1"\n')
    target = Target(tmp_path / "root", booted=True)
    install_service(target, Path("/opt/fleetpulse/venv/bin/fleetpulse-agent"), str(source),
                    None, start=True)
    # (With --root=<the test's root> first, as the target is not "/".)
    assert [line.split()[1:] for line in calls.read_text().splitlines()] == [
        ["daemon-reload"], ["enable", "fleetpulse-agent.service"],
        ["restart", "fleetpulse-agent.service"]]  # restart: an upgrade runs the new code
    out = capsys.readouterr().out
    assert "systemctl status fleetpulse-agent" in out and "journalctl -u fleetpulse-agent" in out
    calls.unlink()
    uninstall_service(target, purge=False)
    assert [line.split()[1:] for line in calls.read_text().splitlines()] == [
        ["disable", "--now", "fleetpulse-agent.service"], ["daemon-reload"]]
    assert target.path(CONFIG_FILE).exists()


def test_a_first_install_chooses_the_board_aware_id_before_systemd_makes_the_state_dir(
        tmp_path: Path) -> None:
    from agent.identity import default_device_id, device_id_from_machine_id
    from agent.service import choose_device_id
    from tests.unit.agent.test_identity import MACHINE_ID, pi_root

    board_a = pi_root(tmp_path / "a", "10000000a1b2c3d4")
    board_b = pi_root(tmp_path / "b", "10000000e5f60718")
    state_a, state_b = tmp_path / "state-a", tmp_path / "state-b"
    chosen_a = choose_device_id(state_a, root=board_a)
    chosen_b = choose_device_id(state_b, root=board_b)
    # Two cards cloned from one image (one machine id) get different ids...
    assert chosen_a and chosen_b and chosen_a != chosen_b
    assert chosen_a != device_id_from_machine_id(MACHINE_ID)
    # ...and the agent, started later in the now existing directory, keeps the chosen one.
    assert default_device_id(state_a, root=board_a) == chosen_a


def test_an_upgrade_keeps_the_state_dir_and_so_the_earlier_id(tmp_path: Path) -> None:
    from agent.service import choose_device_id

    state = tmp_path / "state"
    state.mkdir()  # an earlier agent ran here
    assert choose_device_id(state, root=tmp_path) is None
    assert list(state.iterdir()) == []
