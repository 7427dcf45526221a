"""Settings of the agent and the hub: TOML file < environment (``FLEETPULSE_…``) < flags.

Deliberately stdlib only (dataclasses + tomllib): pydantic-settings would add ~12 MB of
RSS to the agent, which must stay small on a Pi Zero. Each setting is one dataclass field
whose metadata holds its help text and an optional check; every problem found becomes
one line of a :class:`~shared.errors.ConfigError`, so a wrong config stops the process
before any connection with a message that says what to fix.

A secret (password, token, database URL) may also come from a file named by
``FLEETPULSE_<NAME>_FILE``, the convention of container images (the postgres image's
``POSTGRES_PASSWORD_FILE``): docker-compose.yml hands the hub the secrets its init
service generated that way, so they never appear in ``docker inspect``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from shared.errors import ConfigError
from shared.topics import DEFAULT_PREFIX, is_valid_device_id, is_valid_prefix

ENV_PREFIX = "FLEETPULSE_"


class Secret(str):
    """A string that never shows itself in logs or reprs."""

    def __repr__(self) -> str:
        return "Secret('**********')"

    def reveal(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return "**********"


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: Secret | None


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…``; raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not a URL like mqtt://host:1883 or mqtts://host:8883")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ValueError(f"{url!r} has a port that is not a number from 1 to 65535") from None
    password = Secret(unquote(parts.password)) if parts.password is not None else None
    return BrokerAddress(parts.hostname, port, parts.scheme == "mqtts",
                         unquote(parts.username) if parts.username else None, password)


def _check_broker_url(value: str) -> None:
    parse_broker_url(value)


def _check_public_url(value: str | None) -> None:
    if value is not None:
        parse_broker_url(value)


def _check_prefix(value: str) -> None:
    if not is_valid_prefix(value):
        raise ValueError(f"{value!r} is not a usable topic prefix (no '+', '#', empty levels "
                         "or leading '$')")


def _check_device_id(value: str | None) -> None:
    if value is not None and not is_valid_device_id(value):
        raise ValueError(f"{value!r} is not a device id: use 1-64 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def _not_negative(value: float) -> None:
    if value < 0:
        raise ValueError("must be 0 (off) or more")


def _check_top_n(value: int) -> None:
    if not 1 <= value <= 1000:
        raise ValueError("must be from 1 to 1000")


def _check_db_url(value: Secret | None) -> None:
    if value is not None and not value.reveal().startswith(("postgresql://", "postgres://")):
        raise ValueError("is not a URL like postgresql://user:password@host:5432/dbname")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


DETECT_KINDS = ("novelty", "windowed_gaussian", "autoencoder")


def _check_detect_kind(value: str) -> None:
    if value not in DETECT_KINDS:
        raise ValueError(f"{value!r} is not a detector: use {' or '.join(DETECT_KINDS)}")


def _check_log_level(value: str) -> None:
    if value.upper() not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not a log level: use {', '.join(LOG_LEVELS[:-1])} or "
                         f"{LOG_LEVELS[-1]}")


def mask_password(url: str) -> str:
    """Return ``url`` with only the password of its ``user:password@`` part hidden."""
    # Greedy up to the last '@': a password with a stray '@' or '/' is hidden whole.
    return _USER_PASSWORD.sub(r"\1:**********@", url, count=1)


_USER_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):.*@")


_BROKER_URL_HELP = ("Broker URL: mqtt://host:1883 or mqtts://host:8883; user:password@ may be "
                    "included")


def setting(default: Any, help: str, check: Callable[[Any], None] | None = None) -> Any:
    """Declare one setting: its default, its help line and an optional check."""
    return field(default=default, metadata={"help": help, "check": check})


def default_state_dir(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """Return the state directory systemd made for a service ``name``, else
    ``/var/lib/<name>`` for root, else ``~/.local/state/<name>``.

    systemd's ``StateDirectory=<name>`` sets ``$STATE_DIRECTORY`` (a ``:``-separated list
    when a unit names several); the one that ends in ``name`` is ours.
    """
    environ = os.environ if environ is None else environ
    for path in environ.get("STATE_DIRECTORY", "").split(":"):
        if path and Path(path).name == name:
            return Path(path)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib") / name
    return Path.home() / ".local" / "state" / name


@dataclass(frozen=True)
class AgentSettings:
    broker_url: str = setting("mqtt://localhost:1883", _BROKER_URL_HELP, _check_broker_url)
    broker_username: str | None = setting(None, "Broker user name (overrides the URL's)")
    broker_password: Secret | None = setting(None, "Broker password (overrides the URL's)")
    broker_ca_file: Path | None = setting(None, "CA certificate to verify an mqtts:// broker "
                                          "(default: the system's CAs)")
    device_id: str | None = setting(None, "Device id (default: from /etc/machine-id and the "
                                    "board's serial or MAC, kept in state_dir)",
                                    _check_device_id)
    interval_s: float = setting(1.0, "Seconds between readings", _positive)
    topic_prefix: str = setting(DEFAULT_PREFIX, "First level of every topic", _check_prefix)
    state_dir: Path = setting(default_state_dir("fleetpulse-agent"),
                              "Directory for the spool and the generated device id")
    spool_max_bytes: int = setting(512 * 1024 * 1024, "Largest size of the on-disk spool",
                                   _positive)
    spool_max_age_s: float = setting(7 * 86400.0, "Oldest reading the spool keeps", _positive)
    spool_flush_s: float = setting(10.0, "Seconds between spool writes while the broker is "
                                   "away (one transaction each, to spare SD cards)", _positive)
    replay_rate_per_s: float = setting(200.0, "Spooled readings replayed per second after a "
                                       "reconnect", _positive)
    process_period_s: float = setting(10.0, "Seconds between scans of the top processes "
                                      "(0: off)", _not_negative)
    process_top_n: int = setting(10, "Processes kept in each top list (by CPU, by memory)",
                                 _check_top_n)
    ha_discovery: bool = setting(False, "Announce this device and its sensors to Home "
                                 "Assistant (MQTT discovery under homeassistant/)")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR", _check_log_level)


@dataclass(frozen=True)
class HubSettings:
    broker_url: str = setting("mqtt://localhost:1883", _BROKER_URL_HELP, _check_broker_url)
    broker_username: str | None = setting(None, "Broker user name (overrides the URL's)")
    broker_password: Secret | None = setting(None, "Broker password (overrides the URL's)")
    broker_ca_file: Path | None = setting(None, "CA certificate to verify an mqtts:// broker")
    public_broker_url: str | None = setting(None, "Broker URL the devices use (add-device "
                                            "prints it); default: broker_url with this "
                                            "machine's name for localhost", _check_public_url)
    db: Secret | None = setting(None, "PostgreSQL URL (a Supabase connection string works); "
                                "default: an embedded PostgreSQL under data_dir", _check_db_url)
    db_password: Secret | None = setting(None, "Database password (overrides the URL's)")
    data_dir: Path = setting(default_state_dir("fleetpulse-hub"),
                             "Directory of the embedded PostgreSQL")
    topic_prefix: str = setting(DEFAULT_PREFIX, "First level of every topic", _check_prefix)
    client_id: str = setting("fleetpulse-hub", "MQTT client id; stable, so the broker keeps "
                             "the session (and unacknowledged messages) across restarts")
    share_group: str | None = setting(None, "Share the load with other hubs through an "
                                      "MQTT v5 shared subscription of this group name")
    workers: int = setting(1, "Hub processes sharing the ingest on one MQTT v5 share group "
                           "(share_group, default 'fleetpulse'), started and restarted by "
                           "one supervisor; each uses client id <client_id>-<i>", _positive)
    session_expiry_s: int = setting(7 * 86400, "How long the broker keeps the hub's session "
                                    "while the hub is away", _positive)
    batch_max_rows: int = setting(5000, "Write a batch when it holds this many messages",
                                  _positive)
    batch_max_age_s: float = setting(0.5, "… or when its oldest message is this old", _positive)
    batch_early_rows: int = setting(1000, "… or, while the writer is idle, when it holds this "
                                    "many (a busy writer lets the batch grow)", _positive)
    rollup_flush_s: float = setting(10.0, "Seconds the minute and hour rollups may trail the "
                                    "per-second rows (0: updated with every batch)",
                                    _not_negative)
    max_pending: int = setting(50000, "Messages held in memory while the database is away; "
                               "beyond this the hub stops taking messages", _positive)
    max_payload_bytes: int = setting(64 * 1024, "Larger messages are quarantined", _positive)
    quarantine_payload_bytes: int = setting(4096, "Bytes of a bad payload kept in quarantine",
                                            _positive)
    max_future_skew_s: float = setting(300.0, "Readings stamped further ahead of the hub's "
                                       "clock are quarantined", _positive)
    http_host: str = setting("127.0.0.1", "Address of the HTTP API and dashboard")
    http_port: int = setting(8080, "Port of the HTTP API and dashboard (0: no HTTP)")
    api_token: Secret | None = setting(None, "Bearer token required to read the API")
    hot_window_h: float = setting(24.0, "Hours of per-second readings kept one row each; older "
                                  "ones are compacted into the cold tier (one row per "
                                  "device-hour)", _positive)
    retention_days: int = setting(30, "Days of per-second history kept (hot and cold tiers)",
                                  _positive)
    storage_budget_bytes: int = setting(0, "Bytes the database may use (0: no budget); over it "
                                        "the oldest cold hours are dropped, logged and counted",
                                        _not_negative)
    compact_duty_percent: float = setting(10.0, "Share of the time the hub's compaction may "
                                          "work while catching up (percent)", _positive)
    cold_check_every: int = setting(24, "Cold blocks read back in full: the first of each "
                                    "run and one in this many of the others, at random "
                                    "(1: every block)", _positive)
    rollup_minute_days: int = setting(90, "Days of per-minute rollups kept", _positive)
    rollup_hour_days: int = setting(730, "Days of per-hour rollups (and closed alerts) kept",
                                    _positive)
    quarantine_days: int = setting(30, "Days of quarantined messages kept", _positive)
    process_days: int = setting(7, "Days of top-process samples kept (table `processes`)",
                                _positive)
    alert_rules_file: Path | None = setting(None, "TOML file overriding the alert rules' "
                                            "thresholds, durations and enabled flags")
    alert_check_s: float = setting(5.0, "Seconds between evaluations of the alert rules",
                                   _positive)
    detect_kind: str = setting("novelty", "Anomaly detector trained per device: novelty, "
                               "windowed_gaussian or autoencoder (needs the train extra to "
                               "train)", _check_detect_kind)
    train_window_h: float = setting(24.0, "Hours of a device's newest history (both tiers) its "
                                    "detector is trained on", _positive)
    train_min_readings: int = setting(3600, "A device with fewer readings in that window gets "
                                      "no model: it says so instead of guessing", _positive)
    retrain_h: float = setting(24.0, "Retrain a device's detector inside the hub when its "
                               "model is this old (0: never)", _not_negative)
    train_duty_percent: float = setting(5.0, "Share of the time the hub's retraining may work "
                                        "(percent)", _positive)
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR", _check_log_level)
    deploy_dir: Path | None = setting(None, "Secrets made by `fleetpulse-hub init-deploy` "
                                      "(docker-compose.yml); the hub logs at start how to "
                                      "read them and add a device")


S = TypeVar("S", AgentSettings, HubSettings)
DEFAULT_HUB_CONFIG = Path("/etc/fleetpulse/hub.toml")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def is_secret(tp: Any) -> bool:
    """Tell whether a field's type is Secret or Secret | None."""
    return tp is Secret or Secret in typing.get_args(tp)


def with_password(url: str, password: str | None) -> str:
    """Return a postgresql:// ``url`` with ``password`` in place of the URL's own (pure)."""
    if password is None:
        return url
    parts = urlsplit(url)
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _read_secret_file(path: str) -> str:
    """Return the secret in ``path`` without its final line break; raise ValueError."""
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror})") from exc
    if not value:
        raise ValueError(f"{path} is empty")
    return value


def _convert(raw: Any, tp: Any) -> Any:
    """Convert a TOML value or a string from the environment/flags to the field's type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(args) < len(typing.get_args(tp)):  # Optional[...]
        if raw is None or raw == "":
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not true or false")
    if tp is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{raw!r} is not a whole number")
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if tp is Path:
        return Path(str(raw)).expanduser()
    if tp is Secret:
        return Secret(str(raw))
    return str(raw)


def load_settings(cls: type[S], *, file: Path | None = None,
                  environ: Mapping[str, str] | None = None,
                  flags: Mapping[str, Any] | None = None) -> S:
    """Build settings from a TOML file, then the environment, then flags; check each value.

    Args:
        file: TOML file with ``name = value`` lines (names as the dataclass fields).
        environ: usually ``os.environ``; only ``FLEETPULSE_<NAME>`` keys are read.
        flags: values given on the command line (None means not given).
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    raw: dict[str, tuple[str, Any]] = {}  # name -> (where it came from, value)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)

    if file is not None:
        try:
            table = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError([f"{file}: cannot read the config file ({exc.strerror})."]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{file}: not valid TOML ({exc})."]) from None
        for key, value in table.items():
            if key not in fields:
                problems.append(f"{file}: unknown setting {key!r} (known: "
                                f"{', '.join(sorted(fields))}).")
            else:
                raw[key] = (f"{file}: {key}", value)
    for name in fields:
        file_variable = env_name(name) + "_FILE"
        if environ.get(env_name(name)):  # a value given directly wins over a _FILE
            raw[name] = (env_name(name), environ[env_name(name)])
        elif is_secret(hints[name]) and environ.get(file_variable):
            try:
                raw[name] = (file_variable, _read_secret_file(environ[file_variable]))
            except ValueError as exc:
                problems.append(f"{file_variable}: {exc}.")
        elif env_name(name) in environ:
            raw[name] = (env_name(name), environ[env_name(name)])
    for name, value in (flags or {}).items():
        if value is not None and name in fields:
            raw[name] = ("--" + name.replace("_", "-"), value)

    values: dict[str, Any] = {}
    for name, (where, value) in raw.items():
        try:
            converted = _convert(value, hints[name])
            check = fields[name].metadata.get("check")
            if check is not None:
                check(converted)
            values[name] = converted
        except ValueError as exc:
            if name == "db":  # a URL: show it (typos included) with only its password hidden
                shown = repr(mask_password(value.reveal() if isinstance(value, Secret)
                                           else str(value)))
            elif "password" in name or name == "api_token":
                shown = "'**********'"
            else:
                shown = repr(value)
            message = str(exc)
            if not message.startswith(repr(value)) and not message.startswith(repr(str(value))):
                message = f"{shown} {message}"
            problems.append(f"{where}: {message}.")
    if problems:
        raise ConfigError(problems)
    return cls(**values)


def add_setting_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one ``--name`` flag per setting (default None: 'not given')."""
    for f in dataclasses.fields(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            metavar=f.name.upper(),
                            help=f"{f.metadata['help']} [env {env_name(f.name)}]")


def venv_config(file_name: str) -> Path | None:
    """Return ``<venv>/etc/fleetpulse/<file_name>`` when running from a virtual environment.

    ``./quickstart.sh`` writes its settings there, so the commands of its venv read the
    data it started (as pip reads a ``pip.conf`` in its venv).
    """
    if sys.prefix == sys.base_prefix:
        return None
    return Path(sys.prefix) / "etc" / "fleetpulse" / file_name


def default_config(default_file: Path) -> Path | None:
    """The settings file used when none is named: the venv's, else ``default_file``."""
    for candidate in (venv_config(default_file.name), default_file):
        if candidate is not None and candidate.exists():
            return candidate
    return None


def settings_from_args(cls: type[S], args: argparse.Namespace, default_file: Path) -> S:
    """Load settings for a CLI from ``--config``, FLEETPULSE_CONFIG, the venv's
    ``etc/fleetpulse/`` (see :func:`venv_config`) or ``default_file``."""
    config = getattr(args, "config", None) or os.environ.get(ENV_PREFIX + "CONFIG")
    file = Path(config) if config else default_config(default_file)
    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return load_settings(cls, file=file, flags=flags)
