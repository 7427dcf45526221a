"""Broker accounts: ``fleetpulse-hub add-device`` / ``revoke-device`` / ``add-admin``.

A device's MQTT user name is its device id, so the broker's ACL (``mosquitto/acl``:
``pattern write fleetpulse/%u/metrics`` …) lets it write under its own topics only. Its
password is random (256 bits) and stored in Mosquitto's password file as the hash that
``mosquitto_passwd`` 2.0 writes: ``user:$7$<iterations>$<base64 salt>$<base64 hash>``,
PBKDF2-HMAC-SHA512 with a 12-byte salt and a 64-byte key. The hub writes the line itself
rather than calling ``mosquitto_passwd``: the hub's container has no Mosquitto, and a
password on a command line is visible to every user in ``/proc``. Tests check the format
both ways against Mosquitto 2.0.11 (the broker accepts our hashes; we verify its own).

An admin account (``add-admin NAME``) is a password line like a device's plus a ``user
NAME`` block appended to the ACL below its admins line (:data:`ADMINS_MARKER`): it reads
everything under the topic prefix and writes the devices' ``set`` topics (README "Settings
changed remotely"). The ACL is the one next to the password file.

Pure: checks, hashing (salt given), edits of the files' text, the agent's TOML. I/O at the
end: reading and atomically replacing the files, signalling the broker to reload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.config import HubSettings, parse_broker_url
from shared.errors import ConfigError
from shared.topics import HA_DISCOVERY_PREFIX, ha_discovery_topic, is_valid_device_id, set_topic

HUB_USERNAME = "fleetpulse-hub"  # the hub's account in mosquitto/acl
DEFAULT_PASSWORD_FILE = Path("mosquitto/passwd")
AGENT_CA_FILE = "/etc/fleetpulse/ca.crt"  # where the agent config says the CA is
# mosquitto_passwd 2.0's defaults (src/password_mosq.c). The iteration count is low, but
# the passwords are 256 random bits, so guessing them costs the same at any count, while
# a high count would cost the broker CPU at every (re)connect of a whole fleet.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
KEY_BYTES = 64
PASSWORD_BYTES = 32
ACL_FILE_NAME = "acl"  # the broker's ACL, next to its password file
ADMINS_MARKER = "# --- admins (fleetpulse-hub add-admin) ---"  # the last line of the shipped acl


# --- pure ---------------------------------------------------------------------------------
def check_device_id(device_id: str) -> None:
    """Raise ConfigError unless ``device_id`` can be a device's broker user name."""
    if not is_valid_device_id(device_id):
        raise ConfigError([f"{device_id[:80]!r} is not a device id: use 1-64 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit."])
    if device_id == HUB_USERNAME:
        raise ConfigError([f"{device_id!r} is the hub's broker account, not a device; "
                           "choose another device id."])


def admin_block(name: str, prefix: str) -> str:
    """Return the ACL lines of an admin account (pure)."""
    return (f"user {name}\n"
            f"topic read {prefix}/#\n"
            f"topic write {set_topic(prefix, '+')}\n"
            f"topic write {set_topic(prefix, '+', '+')}\n"
            f"topic readwrite {HA_DISCOVERY_PREFIX}/#\n")


def acl_admins(text: str) -> list[str]:
    """Return the admin accounts of an ACL's text: the ``user`` lines below its admins line."""
    _, marker, admins = text.partition(ADMINS_MARKER)
    if not marker:
        return []
    return [line.split(None, 1)[1].strip() for line in admins.splitlines()
            if line.startswith("user ") and len(line.split(None, 1)) == 2]


def add_admin_to_acl(text: str, name: str, prefix: str) -> str:
    """Return the ACL ``text`` with an admin block for ``name`` (unchanged if it has one)."""
    if name in acl_admins(text):
        return text
    if ADMINS_MARKER not in text:
        raise ConfigError([f"the ACL has no line {ADMINS_MARKER!r} (an ACL from before admin "
                           "accounts): copy the shipped mosquitto/acl over it first."])
    return text.rstrip("\n") + "\n" + admin_block(name, prefix)


def keep_admins(shipped: str, current: str) -> str:
    """Return the ``shipped`` ACL with the admin blocks of the ``current`` one (init-deploy)."""
    _, marker, admins = current.partition(ADMINS_MARKER)
    if not marker or not admins.strip() or ADMINS_MARKER not in shipped:
        return shipped
    head = shipped.partition(ADMINS_MARKER)[0]
    return head + ADMINS_MARKER + "\n" + admins.lstrip("\n")


def new_password() -> str:
    """Return a random password: 256 bits, URL-safe (fits TOML, URLs and shells)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Return Mosquitto 2.0's PBKDF2-SHA512 hash of ``password`` (the part after ``user:``)."""
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, KEY_BYTES)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(key).decode()}")


def verify_password(password: str, hashed: str) -> bool:
    """Tell whether ``password`` matches a Mosquitto hash ($7$ PBKDF2 or $6$ SHA512)."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]),
                                      len(want))
        elif len(parts) == 4 and parts[1] == "6":  # mosquitto 1.x: sha512(password + salt)
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except ValueError:  # bad base64 or iteration count
        return False
    return hmac.compare_digest(got, want)


def _username(line: str) -> str | None:
    if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
        return None
    return line.split(":", 1)[0]


def set_user(text: str, username: str, hashed: str) -> str:
    """Return the password file ``text`` with ``username``'s line set to ``hashed``.

    Other lines are kept as they are; a new user is appended.
    """
    lines = text.splitlines()
    entry = f"{username}:{hashed}"
    for i, line in enumerate(lines):
        if _username(line) == username:
            lines[i] = entry
            break
    else:
        lines.append(entry)
    return "\n".join(lines) + "\n"


def remove_user(text: str, username: str) -> tuple[str, bool]:
    """Return ``text`` without ``username``'s line, and whether there was one."""
    lines = text.splitlines()
    kept = [line for line in lines if _username(line) != username]
    return ("\n".join(kept) + "\n" if kept else ""), len(kept) != len(lines)


def users(text: str) -> list[str]:
    """Return the user names in a password file's text, in file order."""
    return [name for line in text.splitlines() if (name := _username(line)) is not None]


def agent_broker_url(url: str) -> str:
    """Return ``url`` without ``user:password@``: the hub's own credentials stay here."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                            "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES or host.endswith(".localhost")


@dataclass(frozen=True)
class DeviceBrokerUrl:
    url: str  # without credentials
    source: str  # for the operator: where the URL came from
    warning: str | None  # set when the device probably cannot reach it


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    shown = f"[{host}]" if ":" in host else host
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def device_broker_url(hub_url: str, *, public_url: str | None, explicit: bool,
                      host_names: list[str]) -> DeviceBrokerUrl:
    """Choose the broker URL a new device is told to use.

    ``--broker-url`` given on the command line (``explicit``) wins, then the hub's
    ``public_broker_url``; otherwise the hub's own broker URL, whose host, if it is this
    machine's loopback, becomes the first of ``host_names`` (FQDN, host name) that is not.
    Scheme and port stay the hub's.
    """
    def warning(what: str, host: str) -> str:
        return (f"WARNING: {what} names {host}, which a device reads as itself: set "
                "public_broker_url (FLEETPULSE_PUBLIC_BROKER_URL) to an address the devices "
                "can reach, or pass --broker-url.")

    if explicit or public_url is None:
        url = agent_broker_url(hub_url)
        source = "--broker-url" if explicit else "the hub's broker_url"
    else:
        url, source = agent_broker_url(public_url), "public_broker_url"
    host = urlsplit(url).hostname or ""
    if not is_loopback(host):
        return DeviceBrokerUrl(url, source, None)
    if explicit or public_url is not None:
        return DeviceBrokerUrl(url, source, warning(source, host))
    for name in host_names:
        if name and not is_loopback(name):
            return DeviceBrokerUrl(_with_host(url, name), "this machine's name with the hub's "
                                   "broker scheme and port", None)
    return DeviceBrokerUrl(url, source, warning("the hub's broker_url (and this machine has "
                                                "no other name)", host))


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes: \" \\ \n \uXXXX …).
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    password: str
    broker_url: str
    ca_file: str | None  # path on the device, for mqtts://


def agent_config(device_id: str, password: str, broker_url: str,
                 ca_file: str | None = AGENT_CA_FILE) -> AgentConfig:
    """Describe the agent settings of a new device (``ca_file`` is used for mqtts:// only)."""
    url = agent_broker_url(broker_url)
    return AgentConfig(device_id, password, url,
                       ca_file if parse_broker_url(url).tls else None)


def format_agent_toml(config: AgentConfig) -> str:
    """Return the lines for the device's /etc/fleetpulse/agent.toml."""
    lines = [f"# /etc/fleetpulse/agent.toml of device {config.device_id} "
             "(fleetpulse-hub add-device); keep it readable by root only",
             f"broker_url = {_toml_string(config.broker_url)}",
             f"broker_username = {_toml_string(config.device_id)}",
             f"broker_password = {_toml_string(config.password)}",
             f"device_id = {_toml_string(config.device_id)}"]
    if config.ca_file is not None:
        lines.append(f"broker_ca_file = {_toml_string(config.ca_file)}")
    return "\n".join(lines) + "\n"


# --- I/O ----------------------------------------------------------------------------------
def read_password_file(path: Path) -> str:
    """Return the file's text, or "" when it does not exist yet."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the password file ({exc.strerror})."]) from None


def write_password_file(path: Path, text: str, what: str = "the password file") -> None:
    """Replace the file atomically, keeping its owner, group and mode (new file: 0600).

    Atomic, so a broker reloading at the same moment reads the old or the new file, never
    half of one; the owner is kept because Mosquitto reads the file after dropping root
    (as user ``mosquitto``) and must still be able to.
    """
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot write {what} ({exc.strerror})."]) \
            from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
            if hasattr(os, "chown") and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                os.chown(tmp, old.st_uid, old.st_gid)
        else:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError([f"{path}: cannot write {what} ({exc.strerror})."]) \
            from None


def read_acl(password_file: Path) -> tuple[Path, str]:
    """Return the ACL next to ``password_file`` and its text ("" when there is none)."""
    path = password_file.parent / ACL_FILE_NAME
    try:
        return path, path.read_text()
    except FileNotFoundError:
        return path, ""
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the ACL ({exc.strerror})."]) from None


def add_device(path: Path, device_id: str) -> str:
    """Give ``device_id`` a new random password in the password file; return the password.

    Run again for an existing device, it replaces the password (the old one stops working
    at the broker's next reload).
    """
    check_device_id(device_id)
    acl_path, acl = read_acl(path)
    if device_id in acl_admins(acl):
        raise ConfigError([f"{device_id!r} is an admin account in {acl_path}, not a device; "
                           "choose another device id."])
    password = new_password()
    text = read_password_file(path)
    write_password_file(path, set_user(text, device_id,
                                       hash_password(password, os.urandom(SALT_BYTES))))
    return password


def add_admin(path: Path, name: str, prefix: str) -> str:
    """Give admin ``name`` a new random password and its ACL block; return the password.

    Refused for a device's account (its user name is in the password file but it is no
    admin): it would gain the right to change every device's settings.
    """
    if not is_valid_device_id(name) or name == HUB_USERNAME:
        raise ConfigError([f"{name[:80]!r} cannot be an admin's user name: use 1-64 letters, "
                           "digits, '.', '_' or '-', starting with a letter or digit, and not "
                           f"{HUB_USERNAME!r}."])
    text = read_password_file(path)
    acl_path, acl = read_acl(path)
    if name in users(text) and name not in acl_admins(acl):
        raise ConfigError([f"{name!r} is already a device's account in {path}; choose "
                           "another admin name."])
    if not acl:
        raise ConfigError([f"{acl_path}: no ACL next to the password file; the broker's "
                           "acl_file must be there (copy the shipped mosquitto/acl)."])
    updated = add_admin_to_acl(acl, name, prefix)
    if updated != acl:  # the ACL first: a block without an account grants nothing
        write_password_file(acl_path, updated, "the ACL")
    password = new_password()
    write_password_file(path, set_user(text, name,
                                       hash_password(password, os.urandom(SALT_BYTES))))
    return password


def revoke_device(path: Path, device_id: str) -> bool:
    """Remove ``device_id`` from the password file; return False if it had no account."""
    check_device_id(device_id)
    text, removed = remove_user(read_password_file(path), device_id)
    if removed:
        write_password_file(path, text)
    return removed


def reload_broker(pid: int) -> None:
    """Ask Mosquitto to re-read its password and ACL files (SIGHUP)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ConfigError([f"--reload-pid: no process {pid}; reload the broker yourself "
                           "(kill -HUP <pid of mosquitto>)."]) from None
    except PermissionError:
        raise ConfigError([f"--reload-pid: not allowed to signal process {pid}; run as its "
                           "user or root."]) from None


_RELOAD_HINT = ("Reload the broker so it reads the file: systemctl reload mosquitto, "
                "kill -HUP <pid of mosquitto>, or docker-compose kill -s SIGHUP mosquitto.")


def host_names() -> list[str]:
    """Return this machine's fully qualified name and its host name."""
    return [socket.getfqdn(), socket.gethostname()]


def run_add_device(device_id: str, path: Path, settings: HubSettings,
                   reload_pid: int | None, *, explicit_url: bool = False) -> int:
    """``fleetpulse-hub add-device``: agent TOML to stdout, what to do next to stderr.

    Args:
        explicit_url: ``--broker-url`` was given on the command line: use it as it is.
    """
    try:
        password = add_device(path, device_id)
        if reload_pid is not None:
            reload_broker(reload_pid)
    except ConfigError as exc:
        print("Cannot add the device: " + " ".join(exc.problems), file=sys.stderr)
        return 1
    chosen = device_broker_url(settings.broker_url, public_url=settings.public_broker_url,
                               explicit=explicit_url, host_names=host_names())
    config = agent_config(device_id, password, chosen.url)  # URLs checked at load
    sys.stdout.write(format_agent_toml(config))
    notes = [f"Added broker account {device_id!r} to {path}.",
             f"The device will connect to {chosen.url} ({chosen.source})."]
    if chosen.warning:
        notes.append(chosen.warning)
    notes.append(f"The hub and admin accounts (fleetpulse-hub add-admin NAME) may change its "
                 f"settings on {set_topic(settings.topic_prefix, device_id)}[/<setting>]; "
                 f"it reports them on {settings.topic_prefix}/{device_id}/config.")
    notes.append(f"Sent SIGHUP to the broker (pid {reload_pid}): the account works now."
                 if reload_pid is not None else _RELOAD_HINT)
    if config.ca_file is not None:
        ca = settings.broker_ca_file or "the CA certificate that signed the broker's"
        notes.append(f"Copy the broker's CA certificate ({ca}) to {config.ca_file} on the "
                     "device, or give it to: fleetpulse-agent install-service --ca-file FILE.")
    else:
        notes.append("The password crosses the network in clear text over mqtt://; use "
                     "mqtts:// (port 8883) beyond a trusted LAN.")
    print("\n".join(notes), file=sys.stderr)
    return 0


def run_revoke_device(device_id: str, path: Path, reload_pid: int | None) -> int:
    """``fleetpulse-hub revoke-device``: remove the account; say what the broker still does."""
    try:
        removed = revoke_device(path, device_id)
        if removed and reload_pid is not None:
            reload_broker(reload_pid)
    except ConfigError as exc:
        print("Cannot revoke the device: " + " ".join(exc.problems), file=sys.stderr)
        return 1
    if not removed:
        print(f"{device_id!r} has no broker account in {path}; nothing changed.",
              file=sys.stderr)
        return 1
    # At a reload mosquitto 2.0 re-checks every connected client against the new password
    # file and disconnects those no longer in it (mosquitto_security_apply_default; seen
    # in tests/integration/test_security.py), although mosquitto.conf(5) says connected
    # clients are not affected.
    print(f"If it announced itself to Home Assistant (ha_discovery), remove it there with "
          f"an admin account: mosquitto_pub -u <admin> -P <password> -r -n -t "
          f"{ha_discovery_topic(device_id)}", file=sys.stderr)
    print(f"Removed broker account {device_id!r} from {path}. "
          + (f"Sent SIGHUP to the broker (pid {reload_pid}): it disconnects the device and "
             "refuses it from now on." if reload_pid is not None else
             _RELOAD_HINT + " The broker then disconnects the device and refuses it."),
          file=sys.stderr)
    return 0


def run_add_admin(name: str, path: Path, settings: HubSettings, reload_pid: int | None) -> int:
    """``fleetpulse-hub add-admin``: the account's credentials to stdout, how to use them to
    stderr."""
    if not name:
        print("fleetpulse-hub add-admin needs a name (the admin's broker user name).",
              file=sys.stderr)
        return 2
    try:
        password = add_admin(path, name, settings.topic_prefix)
        if reload_pid is not None:
            reload_broker(reload_pid)
    except ConfigError as exc:
        print("Cannot add the admin: " + " ".join(exc.problems), file=sys.stderr)
        return 1
    sys.stdout.write(f"# broker account of admin {name} (fleetpulse-hub add-admin); keep it "
                     "secret\n"
                     f"username = {_toml_string(name)}\npassword = {_toml_string(password)}\n")
    example = set_topic(settings.topic_prefix, "<device_id>", "interval_s")
    print("\n".join([
        f"Added admin account {name!r} to {path} and {path.parent / ACL_FILE_NAME}: it reads "
        f"everything under {settings.topic_prefix}/ and may change any device's settings.",
        f"Sent SIGHUP to the broker (pid {reload_pid}): the account works now."
        if reload_pid is not None else _RELOAD_HINT,
        f"Example (MQTT Explorer, or mosquitto_pub -u {name} ...): publish 5 on {example}; "
        f"the device reports the result, retained, on "
        f"{settings.topic_prefix}/<device_id>/config."]), file=sys.stderr)
    return 0
