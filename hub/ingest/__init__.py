"""Ingest: receive → validate → batch → write, run by :func:`run_ingest_loop`.

The stages are modules of their own (``receive`` subscribes through paho, ``validate`` and
``batch`` are pure, ``write`` maps the database's errors); the hub's ``main`` needs only
what this package exports.
"""

from hub.ingest.loop import BatchWriter, IngestStats, run_ingest_loop
from hub.ingest.receive import Inbox, Receiver
from hub.ingest.write import backoff_s

__all__ = ["BatchWriter", "Inbox", "IngestStats", "Receiver", "backoff_s", "run_ingest_loop"]
