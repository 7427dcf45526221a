"""The README stays true: every setting documented, and CI runs its test command."""

import dataclasses
import re
from pathlib import Path

from shared.config import AgentSettings, HubSettings, env_name

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    block = README.split("<!-- settings:begin", 1)[1].split("<!-- settings:end", 1)[0]
    return block.split(f"#### {title}", 1)[1].split("####", 1)[0]


def test_every_setting_is_in_the_readme_with_its_environment_variable():
    for cls, title in ((AgentSettings, "Agent"), (HubSettings, "Hub")):
        table = _section(title)
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` | `{env_name(f.name)}` |" in table, (title, f.name)


def test_ci_runs_the_readme_test_command():
    block = README.split("## Running the tests", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    test_command = re.search(r"(python3 -m pytest[^\n&]*)", block).group(1).strip()
    ci = (ROOT / ".ci/run").read_text()
    assert test_command in ci
