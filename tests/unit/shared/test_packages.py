"""The packages' public surfaces: each module imports on its own, and ``__all__`` is right."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("hub.ingest", "hub.api", "agent.collect")


def test_modules_that_start_an_import_chain_import_in_a_fresh_interpreter() -> None:
    # A cycle (hub.store → hub.ingest.batch → hub.ingest → hub.ingest.loop → hub.store)
    # fails only when its module is imported first: one interpreter each, run side by side.
    modules = ["hub.store", "hub.clock", "hub.ingest.batch", "hub.api.deps",
               "agent.collect.procfs", "agent.collect.portable"]
    runs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for m in modules}
    failed = {m: p.communicate(timeout=120)[0] for m, p in runs.items()}
    assert {m: out for m, out in failed.items() if runs[m].returncode} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ and all(hasattr(module, name) for name in module.__all__)


def test_tests_take_the_batch_writer_from_the_ingest_package() -> None:
    import hub.main
    from hub.ingest import BatchWriter

    assert BatchWriter.__module__ == "hub.ingest.loop" and not hasattr(hub.main, "BatchWriter")
