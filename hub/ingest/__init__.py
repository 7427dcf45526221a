"""Ingest: receive → validate → batch → write, run by :func:`run_ingest_loop`.

The stages are modules of their own (``receive`` subscribes through ``session``, ``validate`` and
``batch`` are pure, ``write`` maps the database's errors); the hub's ``main`` needs only
what this package exports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.ingest.loop import BatchWriter, IngestStats, run_ingest_loop
    from hub.ingest.receive import Inbox, Receiver
    from hub.ingest.write import backoff_s

__all__ = ["BatchWriter", "Inbox", "IngestStats", "Receiver", "backoff_s", "run_ingest_loop"]

# Each exported name's module, imported at the name's first use rather than with the
# package: hub.store and hub.clock import this package's batch and validate modules, and
# the loop imports them, so an eager import here would make a cycle of whichever is first.
_HOMES = {"BatchWriter": "loop", "IngestStats": "loop", "run_ingest_loop": "loop",
          "Inbox": "receive", "Receiver": "receive", "backoff_s": "write"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hub.ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hub.ingest.{home}"), name)
