"""Fixtures: a real PostgreSQL (one per session, a fresh database per test) and a real
Mosquitto (one per session, a unique topic prefix per test; fault tests start their own)."""

from __future__ import annotations

import itertools
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import MosquittoServer, PostgresServer

if TYPE_CHECKING:
    from hub.store import Store

_counter = itertools.count()

# Every test in these directories starts servers (or the hub and agent as processes): the
# `integration` marker goes on them by directory, so a new test file cannot forget it.
# (pytest hands every conftest's pytest_collection_modifyitems all of the session's items, so
# a conftest per directory would have to filter by path just the same: it is done once here.)
_HERE = Path(__file__).parent
INTEGRATION_DIRS = ("integration", "faults", "web")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.relative_to(_HERE).parts[0]
        except ValueError:
            continue  # not under tests/
        if top in INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def work_root() -> Iterator[Path]:
    # Under /tmp (not pytest's tmp_path under /root) so the postgres user can reach it.
    with tempfile.TemporaryDirectory(prefix="fleetpulse-tests-") as d:
        path = Path(d)
        path.chmod(0o755)
        yield path


@pytest.fixture
def private_dir(work_root: Path) -> Path:
    """A directory of this test's own that the postgres user can reach.

    Not pytest's tmp_path: every pytest run resets /tmp/pytest-of-<user> to mode 0700, which
    would lock the postgres user out of a cluster it is running from there.
    """
    path = work_root / f"t-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def postgres(work_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(work_root / "pg").init().start()
    yield server
    server.stop()


@pytest.fixture
def db_url(postgres: PostgresServer) -> str:
    """A new empty database on the session's PostgreSQL."""
    return postgres.create_database(f"t_{next(_counter)}")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated, empty database behind the hub's Store."""
    from hub.store import Store

    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture(scope="session")
def broker(work_root: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(work_root / "mqtt", persistence=False).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests on a shared broker never see each other."""
    return f"fptest-{uuid.uuid4().hex[:10]}"
