"""The hub's command line: each command runs its own function; an unknown one is one line."""

from __future__ import annotations

import pytest

import hub.main
from hub.main import COMMANDS, main


@pytest.mark.parametrize("command", ["run", "status", "migrate", "export", "compact"])
def test_each_command_runs_its_function_and_no_other(command: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    functions = {"run": "run", "status": "status", "migrate": "run_migrate",
                 "export": "run_export", "compact": "compact"}
    for name in functions.values():
        monkeypatch.setattr(hub.main, name,
                            lambda *args, _name=name: called.append(_name) or 7)
    assert main([command]) == 7
    assert called == [functions[command]]  # e.g. not migrate for a command it did not match


def test_an_unknown_command_is_one_line_and_runs_nothing(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.main, "run_migrate", lambda *args: pytest.fail("migrate ran"))
    with pytest.raises(SystemExit) as exited:
        main(["migrat"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'migrat'" in err, err


def test_the_parser_offers_exactly_the_commands_of_the_table(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert "{" + ",".join([*COMMANDS, "init-deploy"]) + "}" in usage
