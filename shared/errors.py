"""Exceptions of fleetpulse. Third-party errors are translated into these once, at the edge.

    FleetpulseError
    ├── ConfigError            a setting is wrong; the message lists one line per problem
    └── StoreError             the database failed
        ├── TransientStoreError   worth retrying (connection lost, server starting, deadlock)
        └── PermanentStoreError   retrying will not help (bad data, missing privilege)

Two failures are not exceptions, on purpose. A message that fails validation is a value,
``hub.ingest.validate.Rejected`` with its reason, which goes to quarantine: raising per bad message
would cost the hot path and make quarantine a side exit. A broker that refuses us or cannot
be reached is retried by the MQTT client (``hub.ingest.session``, ``shared.mqtt`` for the
agent), which logs one line saying what to check: there is no caller to raise to, and the
broker may come back.
"""

from __future__ import annotations


class FleetpulseError(Exception):
    """Base of every error fleetpulse raises on purpose."""


class ConfigError(FleetpulseError):
    """A setting is wrong. ``problems`` has one human sentence per wrong setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid configuration: " + " ".join(problems))


class StoreError(FleetpulseError):
    """The database failed. ``sqlstate`` is PostgreSQL's error code when there is one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)

    @property
    def bad_data(self) -> bool:
        """True for data exceptions (22xxx) and constraint violations (23xxx): the rows'
        fault, so the batch can be split to find them; anything else needs an operator."""
        return (self.sqlstate or "")[:2] in ("22", "23")

    @property
    def refused(self) -> bool:
        """True when the server refused who we are or what we asked for: a wrong role or
        password, a pg_hba rule (28xxx), a database that does not exist (3D000), a missing
        privilege (42501). Retrying will not help; an operator must fix a setting."""
        state = self.sqlstate or ""
        return state[:2] in ("28", "3D") or state == "42501"


class TransientStoreError(StoreError):
    """A database failure worth retrying with backoff."""


class PermanentStoreError(StoreError):
    """A database failure that retrying will not fix."""
