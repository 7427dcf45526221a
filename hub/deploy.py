"""``fleetpulse-hub init-deploy``: make what a docker-compose deployment needs, once.

docker-compose.yml runs this in a one-shot ``init`` service before the broker, the
database and the hub start. It fills three directories (named volumes there):

    <dir>/broker    the broker's /mosquitto/config: mosquitto.conf and acl (copies of the
                    shipped files, refreshed at every run), passwd (the hub's account, and
                    the devices' ones that add-device appends), certs/ (ca.crt,
                    server.crt, server.key)
    <dir>/secrets   the hub's and the database's /run/fleetpulse: db_password,
                    hub_broker_password, api_token, ca.crt, deploy.json (what the hub's
                    first log lines say)
    <dir>/ca        the CA's key, seen by this command only (to issue a new server
                    certificate: new host names, or less than 30 days left)

What exists is kept: a second run generates nothing. A value given in the environment
(``POSTGRES_PASSWORD``, ``FLEETPULSE_HUB_BROKER_PASSWORD``, ``FLEETPULSE_API_TOKEN``, from
.env) replaces the generated one; certificates the operator put in the shipped
``mosquitto/certs/`` replace the generated ones. As root, files go to the user that reads
them in its container (the images' fixed ids below), with no access for anyone else:
mosquitto 2.0 warns that it will refuse a password or ACL file that others can read or
that it does not own (``mosquitto__fopen``, src/misc_mosq.c).

Pure: choosing host names, the welcome text. I/O: files, and ``openssl`` (the commands of
docs/tls.md) for the certificates.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hub.credentials import (
    HUB_USERNAME,
    hash_password,
    keep_admins,
    read_password_file,
    set_user,
    verify_password,
)
from shared.errors import ConfigError

# User ids of the containers that read the files (fixed by their images).
BROKER_UID = 1883  # eclipse-mosquitto: user mosquitto
DB_UID = 999  # postgres (Debian variant): user postgres, which re-reads POSTGRES_PASSWORD_FILE
HUB_UID = 10001  # this repository's Dockerfile: user fleetpulse
SECRET_BYTES = 32
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity many TLS clients accept
RENEW_BEFORE_S = 30 * 86400
# Always in the broker's certificate: the hub and healthchecks inside the compose network
# and on the broker's machine.
FIXED_HOSTS = ("localhost", "127.0.0.1", "mosquitto")
# Where the containers see the directories (docker-compose.yml).
CONTAINER_SECRETS = "/run/fleetpulse"
OVERRIDES = {  # environment variable (from .env) -> file in <dir>/secrets
    "POSTGRES_PASSWORD": "db_password",
    "FLEETPULSE_HUB_BROKER_PASSWORD": "hub_broker_password",
    "FLEETPULSE_API_TOKEN": "api_token",
}
HOSTS_VARIABLE = "FLEETPULSE_BROKER_HOSTS"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def certs(self) -> Path:
        return self.root / "broker" / "certs"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def ca(self) -> Path:
        return self.root / "ca"


# --- pure ---------------------------------------------------------------------------------
def is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def broker_hosts(configured: str | None, hostname: str, address: str | None) -> list[str]:
    """Return the names for the broker's certificate, the first one for devices to use.

    Args:
        configured: FLEETPULSE_BROKER_HOSTS, comma-separated (wins over what is guessed).
        hostname: this machine's name; ``<name>.local`` is added for mDNS (Raspberry Pi OS
            resolves it with avahi).
        address: this machine's LAN address, if known.
    """
    given = [h.strip() for h in (configured or "").split(",") if h.strip()]
    guessed = [] if given else [hostname, *([f"{hostname}.local"] if "." not in hostname
                                            else []), *([address] if address else [])]
    hosts: list[str] = []
    for host in [*given, *guessed, *FIXED_HOSTS]:
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def subject_alt_name(hosts: list[str]) -> str:
    return ", ".join(f"IP:{h}" if is_ip(h) else f"DNS:{h}" for h in hosts)


def check_override(variable: str, value: str) -> None:
    """Refuse the placeholders of earlier .env.example files, and short secrets."""
    problem = ("is the placeholder of an old .env.example" if value.startswith("change-me")
               else "is shorter than 12 characters" if len(value) < 12 else None)
    if problem:
        raise ConfigError([f"{variable} in .env {problem}; remove the line to have a secret "
                           "generated, or set a long random one (openssl rand -hex 24)."])


def format_welcome(hosts: list[str], secrets_dir: str = CONTAINER_SECRETS) -> list[str]:
    """Return the lines the hub logs at start: one command each to read a secret or to add a
    device (docker compose; ``docker-compose`` 1.x takes the same arguments)."""
    host = hosts[0] if hosts else "HOST"
    return [
        "Deployment made by fleetpulse-hub init-deploy. One command each (in the directory "
        "of docker-compose.yml):",
        f"  API token (the dashboard, published at http://127.0.0.1:8080/, asks for it; the "
        f"API wants Authorization: Bearer …): docker compose exec -T hub cat "
        f"{secrets_dir}/api_token",
        f"  CA certificate, to copy to each device as /etc/fleetpulse/ca.crt: "
        f"docker compose exec -T hub cat {secrets_dir}/ca.crt > ca.crt",
        f"  Add a device: docker compose exec -T -u root hub fleetpulse-hub add-device "
        f"DEVICE_ID --broker-url mqtts://{host}:8883 > DEVICE_ID.toml && docker compose "
        "kill -s SIGHUP mosquitto",
        f"  The broker's certificate is valid for {', '.join(hosts) or '?'}; for other "
        f"names set {HOSTS_VARIABLE} in .env, then docker compose up -d && docker compose "
        "restart mosquitto (same CA: devices keep their ca.crt).",
    ]


# --- I/O ----------------------------------------------------------------------------------
def machine_address() -> str | None:
    """Return the address this machine would use to reach the LAN (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
            address: str = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


class Writer:
    """Create files with their owner and mode; remember what it did, for the log."""

    def __init__(self, chown: bool) -> None:
        self.chown = chown
        self.done: list[str] = []

    def own(self, path: Path, uid: int, gid: int, mode: int) -> None:
        if self.chown:
            os.chown(path, uid, gid)
        os.chmod(path, mode)

    def directory(self, path: Path, uid: int, gid: int, mode: int = 0o755) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.own(path, uid, gid, mode)

    def write(self, path: Path, text: str, uid: int, gid: int, mode: int, what: str) -> None:
        """Replace ``path`` atomically, owned and moded before it appears."""
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self.own(Path(tmp), uid, gid, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.done.append(what)


def _openssl(*args: str, cwd: Path) -> str:
    try:
        result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                                check=False)
    except FileNotFoundError as exc:
        raise ConfigError(["openssl is not installed; the TLS certificates need it."]) from exc
    if result.returncode != 0:
        raise ConfigError([f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}"])
    return result.stdout


def server_cert_covers(cert: Path, ca: Path, hosts: list[str]) -> bool:
    """Tell whether ``cert`` was signed by ``ca``, names every host, and has more than 30
    days left."""
    checks = [["verify", "-CAfile", str(ca), str(cert)],
              ["x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_BEFORE_S)]]
    if any(subprocess.run(["openssl", *args], capture_output=True, check=False).returncode
           for args in checks):
        return False
    try:
        names = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName",
                         cwd=cert.parent)
    except ConfigError:
        return False
    listed = {part.strip().split(":", 1)[-1] for part in names.replace("\n", ",").split(",")
              if ":" in part}
    # openssl prints IPv6 addresses expanded and upper-case: compare IPs as addresses.
    listed_ips = {_packed(a) for a in listed if is_ip(a)}
    return all(_packed(h) in listed_ips if is_ip(h) else h in listed for h in hosts)


def _packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def make_ca(layout: Layout, writer: Writer) -> None:
    """Make the CA (EC P-256, 10 years) in <dir>/ca, as docs/tls.md step 1."""
    writer.directory(layout.ca, 0, 0, 0o700)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key.new", "-out", "ca.crt.new", "-days", str(CA_DAYS),
             "-subj", f"/CN=fleetpulse CA {socket.gethostname()[:40]}", cwd=layout.ca)
    os.chmod(layout.ca / "ca.key.new", 0o600)
    os.replace(layout.ca / "ca.crt.new", layout.ca / "ca.crt")
    os.replace(layout.ca / "ca.key.new", layout.ca / "ca.key")  # last: marks the CA done
    writer.done.append("a CA")


def issue_server_cert(layout: Layout, hosts: list[str], writer: Writer) -> None:
    """Sign a server key and certificate for ``hosts`` with the CA, as docs/tls.md 2-3."""
    work = Path(tempfile.mkdtemp(prefix=".issue.", dir=layout.ca))
    try:
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={hosts[0]}",
                 cwd=work)
        (work / "server.ext").write_text(
            f"subjectAltName = {subject_alt_name(hosts)}\nextendedKeyUsage = serverAuth\n"
            "keyUsage = digitalSignature, keyEncipherment\nbasicConstraints = CA:FALSE\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", str(layout.ca / "ca.crt"),
                 "-CAkey", str(layout.ca / "ca.key"), "-CAcreateserial", "-CAserial",
                 str(layout.ca / "ca.srl"), "-out", "server.crt", "-days", str(SERVER_DAYS),
                 "-extfile", "server.ext", cwd=work)
        # The key first: a certificate without its key would be taken for a finished pair.
        writer.write(layout.certs / "server.key", (work / "server.key").read_text(),
                     BROKER_UID, BROKER_UID, 0o600, "the broker's TLS key")
        writer.write(layout.certs / "server.crt", (work / "server.crt").read_text(),
                     BROKER_UID, BROKER_UID, 0o644,
                     f"a TLS certificate for {', '.join(hosts)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_certs(layout: Layout, shipped: Path, hosts: list[str], writer: Writer) -> None:
    """Use the operator's certificates from ``shipped/certs``, else keep or issue ours."""
    own = [shipped / "certs" / name for name in ("ca.crt", "server.crt", "server.key")]
    writer.directory(layout.certs, BROKER_UID, BROKER_UID)
    if all(p.is_file() for p in own):
        for path, mode in zip(own, (0o644, 0o644, 0o600), strict=True):
            target = layout.certs / path.name
            text = path.read_text()
            if not target.is_file() or target.read_text() != text:
                writer.write(target, text, BROKER_UID, BROKER_UID, mode,
                             f"{path.name} from {shipped / 'certs'}")
        return
    if not (layout.ca / "ca.key").is_file():
        make_ca(layout, writer)
    ca_text = (layout.ca / "ca.crt").read_text()
    if not (layout.certs / "ca.crt").is_file() or (layout.certs / "ca.crt").read_text() \
            != ca_text:
        writer.write(layout.certs / "ca.crt", ca_text, BROKER_UID, BROKER_UID, 0o644,
                     "the broker's copy of the CA certificate")
    have = (layout.certs / "server.crt").is_file() and (layout.certs / "server.key").is_file()
    if not have or not server_cert_covers(layout.certs / "server.crt", layout.ca / "ca.crt",
                                          hosts):
        issue_server_cert(layout, hosts, writer)


def ensure_secret(layout: Layout, name: str, given: str | None, uid: int, gid: int, mode: int,
                  writer: Writer) -> str:
    """Return the secret in <dir>/secrets/``name``: ``given``, else kept, else generated."""
    path = layout.secrets / name
    current = path.read_text().strip() if path.is_file() else None
    value = given or current or secrets.token_urlsafe(SECRET_BYTES)
    if value != current:
        # From .env over a generated database password: a database made before keeps the
        # old one (the postgres image reads it only into an empty data volume).
        writer.write(path, value + "\n", uid, gid, mode,
                     f"{name} ({'from .env' if given else 'generated'})")
    else:
        writer.own(path, uid, gid, mode)
    return value


def copy_shipped(layout: Layout, shipped: Path, name: str, mode: int, writer: Writer) -> None:
    """Copy a shipped broker file into <dir>/broker when it differs (an edit, an upgrade)."""
    source = shipped / name
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read the shipped file ({exc.strerror})."]) \
            from exc
    target = layout.broker / name
    if name == "acl" and target.is_file():  # admin accounts live in the ACL too
        text = keep_admins(text, target.read_text())
    if not target.is_file() or target.read_text() != text:
        writer.write(target, text, BROKER_UID, BROKER_UID, mode, f"{name} from {source}")


def ensure_password_file(layout: Layout, shipped: Path, hub_password: str,
                         writer: Writer) -> None:
    """Keep the broker's password file, with a hub line that matches ``hub_password``.

    A password file in the shipped directory (the layout before init-deploy, where
    add-device wrote it) is taken over the first time, so its devices keep their accounts.
    """
    path = layout.broker / "passwd"
    text = read_password_file(path)
    if not path.is_file() and (shipped / "passwd").is_file():
        text = read_password_file(shipped / "passwd")
        writer.done.append(f"the device accounts of {shipped / 'passwd'}")
    line = next((entry for entry in text.splitlines()
                 if entry.split(":", 1)[0] == HUB_USERNAME), None)
    if line is not None and verify_password(hub_password, line.split(":", 1)[1]) \
            and path.is_file():
        writer.own(path, BROKER_UID, BROKER_UID, 0o600)
        return
    writer.write(path, set_user(text, HUB_USERNAME, hash_password(hub_password,
                                                                  os.urandom(12))),
                 BROKER_UID, BROKER_UID, 0o600, f"the broker account {HUB_USERNAME!r}")


def init_deploy(root: Path, shipped: Path, environ: Mapping[str, str], *,
                hostname: str, address: str | None, chown: bool) -> tuple[list[str], list[str]]:
    """Make what is missing under ``root``; return what was made and the broker's names.

    Args:
        shipped: the repository's mosquitto/ directory (mosquitto.conf, acl, and maybe the
            operator's own passwd and certs/).
        environ: where the .env values come from (see OVERRIDES, HOSTS_VARIABLE).
        chown: give files to the containers' users (needs root).
    """
    for variable in OVERRIDES:
        if environ.get(variable):
            check_override(variable, environ[variable])
    layout = Layout(root)
    writer = Writer(chown)
    writer.directory(layout.broker, BROKER_UID, BROKER_UID)
    writer.directory(layout.secrets, 0, 0)
    hosts = broker_hosts(environ.get(HOSTS_VARIABLE), hostname, address)

    def given(name: str) -> str | None:
        return next((environ.get(v) for v, n in OVERRIDES.items() if n == name), None) or None

    # The database password: the hub (owner) and the postgres image's entrypoint (group).
    ensure_secret(layout, "db_password", given("db_password"), HUB_UID, DB_UID, 0o440, writer)
    hub_password = ensure_secret(layout, "hub_broker_password", given("hub_broker_password"),
                                 HUB_UID, HUB_UID, 0o400, writer)
    ensure_secret(layout, "api_token", given("api_token"), HUB_UID, HUB_UID, 0o400, writer)
    copy_shipped(layout, shipped, "mosquitto.conf", 0o644, writer)
    copy_shipped(layout, shipped, "acl", 0o600, writer)
    ensure_password_file(layout, shipped, hub_password, writer)
    ensure_certs(layout, shipped, hosts, writer)
    ca_text = (layout.certs / "ca.crt").read_text()
    secrets_ca = layout.secrets / "ca.crt"
    if not secrets_ca.is_file() or secrets_ca.read_text() != ca_text:
        writer.write(secrets_ca, ca_text, 0, 0, 0o644, "the hub's copy of the CA certificate")
    info = {"broker_hosts": hosts}
    info_path = layout.secrets / "deploy.json"
    try:
        written = json.loads(info_path.read_text())
    except (OSError, ValueError):
        written = None
    if written != info:
        writer.write(info_path, json.dumps(info, indent=1) + "\n", 0, 0, 0o644,
                     "deploy.json")
    return writer.done, hosts


def read_welcome(deploy_dir: Path) -> list[str]:
    """Return the welcome lines for the deployment in ``deploy_dir`` (the hub's secrets)."""
    try:
        hosts = [str(h) for h in json.loads((deploy_dir / "deploy.json").read_text())
                 ["broker_hosts"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"deploy_dir {deploy_dir}: no readable deploy.json ({exc!r}); run "
                "fleetpulse-hub init-deploy."]
    return format_welcome(hosts, str(deploy_dir))


def run_init_deploy(root: Path, shipped: Path) -> int:
    """``fleetpulse-hub init-deploy``: report on stderr what was made or reused."""
    try:
        done, hosts = init_deploy(root, shipped, os.environ, hostname=socket.gethostname(),
                                 address=machine_address(), chown=os.geteuid() == 0)
    except ConfigError as exc:
        print("Cannot prepare the deployment: " + " ".join(exc.problems), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Cannot prepare the deployment in {root}: {exc.strerror} "
              f"({exc.filename}).", file=sys.stderr)
        return 1
    print(("Made " + "; ".join(done) if done else "Everything was there; nothing made")
          + f" (in {root}). The broker's certificate names: "
          + ", ".join(hosts) + ".", file=sys.stderr)
    return 0
