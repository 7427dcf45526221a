"""Real Mosquitto and PostgreSQL servers for tests, on free loopback ports, stopped by PID.

Debian's binaries: ``mosquitto`` and ``/usr/lib/postgresql/<v>/bin``. PostgreSQL refuses
to run as root, so as root it runs as the ``postgres`` user (via ``runuser``). A missing
binary raises: in CI a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition",
             interval_s: float = 0.05) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the thing is up
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class MosquittoServer:
    """A private Mosquitto with a config of ours; can be killed and started again."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra_conf: str = "",
                 persistence: bool = True) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_file = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 f"log_dest file {self.log_file}", "log_type error", "log_type warning",
                 "log_type notice", "log_type information",
                 "max_queued_messages 0", "max_inflight_messages 0"]
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/",
                      "autosave_interval 1"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto' and cannot write workdir
        self.conf.write_text("\n".join(lines) + "\n" + extra_conf + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> MosquittoServer:
        with open(self.workdir / "mosquitto.stderr", "ab") as err:
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                            stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: self._alive() and port_open(self.port), 10, "mosquitto to listen")
        return self

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            err = (self.workdir / "mosquitto.stderr").read_text(errors="replace")
            raise RuntimeError(f"mosquitto exited: {err[-2000:]} {self.log()[-2000:]}")
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def _pg_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "postgres").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries are not installed (apt-get install postgresql)")


class PostgresServer:
    """A private PostgreSQL cluster in ``workdir``, run as an unprivileged user."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.bindir = _pg_bindir()
        self.workdir = workdir
        self.port = port or free_port()
        self.data = workdir / "data"
        self.log_file = workdir / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    def _as_user(self) -> dict[str, object]:
        # Popen(user=...) switches user in the child itself, so the PID we hold is the
        # postmaster's own and SIGKILL reaches it (runuser would not pass SIGKILL on).
        return {"user": PG_USER, "group": PG_USER, "extra_groups": []} if self._as_root else {}

    def init(self, *initdb_args: str) -> PostgresServer:
        """Make the cluster; ``initdb_args`` come last, so they override the defaults."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.workdir, PG_USER, PG_USER)
            self.workdir.chmod(0o755)
            # Every parent must be searchable by the postgres user.
            for parent in self.workdir.parents:
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
        subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync", *initdb_args], cwd=self.workdir,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       **self._as_user())  # type: ignore[call-overload]
        return self

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a new empty database with a unique name; return its URL."""
        import psycopg  # the tests' own driver; servers.py otherwise needs none

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'create database "{name}"'.encode())
        return self.url_for(name)

    def start(self) -> PostgresServer:
        with open(self.log_file, "ab") as log:
            if self._as_root:
                shutil.chown(self.log_file, PG_USER, PG_USER)
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.workdir}",
                 "-c", "fsync=off", "-c", "max_connections=200"],
                stdout=log, stderr=log, cwd=self.workdir,
                **self._as_user())  # type: ignore[call-overload]
        wait_for(self.ready, 30, "PostgreSQL to accept connections")
        return self

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("postgres exited: " + self.log_file.read_text()[-2000:])
        # An open port is not readiness ("the database system is starting up").
        return subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                               str(self.port), "-q"], check=False).returncode == 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        self.kill(signal.SIGINT)  # "fast" shutdown


class PgBouncer:
    """PgBouncer in front of a PostgresServer, pooling by transaction as Supabase's transaction
    pooler (port 6543) does: a client's transactions may run on different server connections,
    and one server connection serves several clients in turn (``pool_size``), so nothing a
    session leaves behind (prepared statements, temp tables, session locks, LISTEN) survives
    its transaction. PgBouncer 1.18 (Debian 12) forwards no prepared statement either.
    """

    def __init__(self, workdir: Path, server: PostgresServer, *, pool_size: int = 1) -> None:
        self.binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(self.binary).exists():
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_file = workdir / "pgbouncer.log"
        (workdir / "users.txt").write_text(f'"{PG_USER}" ""\n')
        self.conf = workdir / "pgbouncer.ini"
        self.conf.write_text("\n".join([
            "[databases]", f"* = host=127.0.0.1 port={server.port}", "",
            "[pgbouncer]", "listen_addr = 127.0.0.1", f"listen_port = {self.port}",
            "unix_socket_dir =", "auth_type = trust", f"auth_file = {workdir}/users.txt",
            "pool_mode = transaction", f"default_pool_size = {pool_size}",
            "max_client_conn = 100", f"logfile = {self.log_file}",
            # psycopg sends no startup parameter PgBouncer does not know.
        ]) + "\n")
        self._as_root = os.geteuid() == 0
        if self._as_root:  # PgBouncer refuses to run as root
            for path in (workdir, workdir / "users.txt", self.conf):
                shutil.chown(path, PG_USER, PG_USER)
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, server_url: str) -> str:
        """The URL of the same database, through the pooler."""
        rest = server_url.split("@", 1)[1].split("/", 1)[1]
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{rest}"

    def start(self) -> PgBouncer:
        as_user = ({"user": PG_USER, "group": PG_USER, "extra_groups": []}
                   if self._as_root else {})
        with open(self.workdir / "pgbouncer.stderr", "ab") as err:
            self.process = subprocess.Popen(
                [self.binary, str(self.conf)], stdout=subprocess.DEVNULL, stderr=err,
                cwd=self.workdir, **as_user)  # type: ignore[call-overload]
        wait_for(lambda: self._alive() and port_open(self.port), 10, "pgbouncer to listen")
        return self

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            err = (self.workdir / "pgbouncer.stderr").read_text(errors="replace")
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise RuntimeError(f"pgbouncer exited: {err[-2000:]} {log[-2000:]}")
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None
