"""What the hub reads: the optional fields the agent may send, kept across restarts.

The hub publishes a retained capability message (shared.schema.HubCapabilities); the
agent sends an optional field only when it is listed there, so a hub that predates the
field never sees it. The last list is kept in ``<state_dir>/hub-reads`` (written only when
it changes): readings taken at the next start, before the broker is reachable (a Pi
booting with its clock at 1970), already carry the fields this hub reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shared.schema import METRICS_OPTIONAL_FIELDS

log = logging.getLogger(__name__)

FILE_NAME = "hub-reads"


def load_hub_reads(state_dir: Path) -> frozenset[str]:
    """Return the optional fields the hub read at the last run (empty if unknown)."""
    try:
        words = (state_dir / FILE_NAME).read_text().split()
    except OSError:
        return frozenset()
    return frozenset(w for w in words if w in METRICS_OPTIONAL_FIELDS)


def save_hub_reads(state_dir: Path, fields: frozenset[str]) -> None:
    """Keep the list for the next start; a failure only costs the fields until connected."""
    path = state_dir / FILE_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(FILE_NAME + ".partial")
        partial.write_text("".join(f"{f}\n" for f in sorted(fields)))
        os.replace(partial, path)
    except OSError as exc:
        log.warning("Cannot keep the hub's capabilities in %s (%s).", path, exc.strerror)
