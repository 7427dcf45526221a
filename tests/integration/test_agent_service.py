"""The agent as a systemd service, without systemd as PID 1: its notify messages on a real
AF_UNIX datagram socket (as systemd binds one), against a real Mosquitto; the watchdog
going quiet when the collection loop hangs; the unit checked by ``systemd-analyze
verify``; and the install path run end to end from a wheel built here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from agent.collect import Collector, Sample
from agent.main import Agent
from agent.service import unit_template
from shared.config import AgentSettings
from tests.integration.test_security import Client
from tests.processes import agent as agent_process
from tests.processes import base_env
from tests.servers import MosquittoServer, wait_for

REPO = Path(__file__).parents[2]
UNIT = "fleetpulse-agent.service"


class NotifySocket:
    """A datagram socket bound where systemd would bind its notify socket; records what
    arrives with the monotonic time it arrived."""

    def __init__(self) -> None:
        # The abstract namespace ('@' in NOTIFY_SOCKET), as systemd itself uses for some
        # services; a path would have to fit in 108 bytes.
        self.name = f"@fleetpulse-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if key in m]

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.with_key("STATUS")]

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, _ in self.with_key("WATCHDOG") if t >= since]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def own_broker(work_root: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(work_root / f"svc-{uuid.uuid4().hex[:6]}", persistence=False)
    yield server.start()
    server.stop()


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(times)]


def test_agent_process_sends_ready_then_watchdog_pings_and_a_status_that_follows_the_broker(
        own_broker: MosquittoServer, notify: NotifySocket, private_dir: Path,
        prefix: str) -> None:
    watcher = Client(own_broker.port, f"watch-{prefix}").connect().subscribe(f"{prefix}/#")
    # A reading every 4 s, the watchdog at 1 s: the loop must wake for the pings in between.
    agent = agent_process(private_dir, broker_url=own_broker.url, prefix=prefix,
                          device_id="svc-1", interval_s="4", spool_flush_s="1")
    agent.env.update(NOTIFY_SOCKET=notify.name, WATCHDOG_USEC="1000000")
    broker = f"mqtt://127.0.0.1:{own_broker.port}"
    agent.start()
    try:
        wait_for(lambda: notify.with_key("READY"), 30, "READY=1")
        first_time, first = notify.messages[0]
        assert first["READY"] == "1" and first["STATUS"].endswith("spool 0 readings")
        # The first reading reaches the broker (READY is sent once it is taken).
        wait_for(lambda: f"{prefix}/svc-1/metrics" in watcher.topics(), 30, "the 1st reading")
        wait_for(lambda: len(notify.pings(first_time)) >= 7, 30, "7 watchdog pings")
        gaps = _gaps(notify.pings(first_time))
        # Half of WATCHDOG_USEC (0.5 s), never late enough for systemd to kill the agent.
        assert min(gaps) >= 0.45, gaps
        assert max(gaps) < 1.0, gaps
        wait_for(lambda: f"connected to {broker}; spool 0 readings" in notify.statuses(), 30,
                 "STATUS connected")

        own_broker.stop()
        wait_for(lambda: any(s.startswith(f"broker {broker} unreachable since ")
                             and not s.endswith("spool 0 readings")
                             for s in notify.statuses()), 30, "STATUS unreachable, spooled")
        outage_pings = len(notify.pings())
        wait_for(lambda: len(notify.pings()) >= outage_pings + 3, 30, "pings while away")
        own_broker.start()
        wait_for(lambda: notify.statuses()[-1] == f"connected to {broker}; spool 0 readings",
                 60, "STATUS connected again with the spool replayed")
    finally:
        code = agent.stop()
        watcher.stop()
    assert code == 0
    assert notify.with_key("STOPPING")
    assert len(notify.with_key("READY")) == 1
    statuses = notify.statuses()
    assert all(a != b for a, b in pairwise(statuses))  # changes only


class StallingCollector:
    """The real collector, made to block inside sample() while ``stall`` is set, as a read
    of a hung /proc or /sys file or a stuck sensor would block the agent's loop."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner
        self.stall = threading.Event()
        self.release = threading.Event()
        self.stalled = threading.Event()

    def sample(self) -> Sample:
        if self.stall.is_set():
            self.stalled.set()
            self.release.wait(60)
        return self.inner.sample()

    def static_facts(self) -> object:
        return self.inner.static_facts()


def test_watchdog_pings_stop_while_the_collection_loop_is_stuck_and_resume_after(
        broker: MosquittoServer, notify: NotifySocket, tmp_path: Path, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify.name)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    agent = Agent(AgentSettings(broker_url=broker.url, topic_prefix=prefix, device_id="stuck",
                                interval_s=0.5, state_dir=tmp_path))
    collector = StallingCollector(agent.collector)
    agent.collector = collector  # type: ignore[assignment]
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    try:
        wait_for(lambda: notify.with_key("READY"), 30, "READY=1")
        wait_for(lambda: len(notify.pings()) >= 4, 30, "pings from the running loop")
        collector.stall.set()
        assert collector.stalled.wait(10)
        stuck_at = time.monotonic()
        # systemd (WatchdogSec=1s here) would kill the agent one second after the last ping.
        wait_for(lambda: time.monotonic() - stuck_at >= 3.0, 10, "three seconds stuck")
        assert notify.pings(stuck_at) == []
        collector.release.set()
        wait_for(lambda: len(notify.pings(stuck_at)) >= 2, 30, "pings after the loop resumed")
    finally:
        collector.release.set()
        agent.stop_event.set()
        loop.join(30)
    assert not loop.is_alive()
    assert notify.with_key("STOPPING")


def _fake_ca(path: Path) -> Path:
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


def _verify(unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, but names them on stderr.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('broker_url = "mqtts://hub.lan:8883"\ndevice_id = "pi-1"\n'
                      'broker_ca_file = "/etc/fleetpulse/ca.crt"\n')
    root = tmp_path / "root"
    result = subprocess.run([sys.executable, "-m", "agent.main", "install-service", "--root",
                             str(root), "--config-from", "-", "--ca-file",
                             str(_fake_ca(tmp_path / "ca.crt"))], cwd=REPO, env=base_env(),
                            input=config.read_text(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert (root / "etc/fleetpulse/agent.toml").read_text() == config.read_text()  # stdin
    assert "WARNING" not in result.stdout  # the CA the config names was installed
    unit = root / "etc/systemd/system" / UNIT
    assert Path(sys.executable).parent.joinpath("fleetpulse-agent").exists()
    _verify(unit)
    # The shipped file with a typo'd directive does not pass: the check can fail.
    broken = tmp_path / UNIT
    broken.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    with pytest.raises(AssertionError, match="NoNewPrivilege"):
        _verify(broken)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built as a user would (pip wheel, isolated build)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("agent", "hub", "shared"):
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "-w", str(base / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (found,) = (base / "dist").glob("fleetpulse-*.whl")
    return found


def test_install_script_from_a_wheel_into_a_venv_and_root_then_uninstall(
        wheel: Path, tmp_path: Path) -> None:
    root, venv = tmp_path / "root", tmp_path / "opt" / "venv"
    config = tmp_path / "agent.toml"
    config.write_text('# from add-device\nbroker_url = "mqtts://hub.lan:8883"\n'
                      'broker_username = "pi-5"\nbroker_password = "s3cret"\n'
                      'device_id = "pi-5"\nbroker_ca_file = "/etc/fleetpulse/ca.crt"\n')
    # Offline: the agent's dependencies come from this machine's Python (as Debian's
    # python3-psutil & co. would on a Pi), fleetpulse itself from the wheel.
    env = {**base_env(), "PIP_NO_INDEX": "1"}
    result = subprocess.run(["bash", str(REPO / "deploy/install-agent.sh"), "--config",
                             str(config), "--ca", str(_fake_ca(tmp_path / "ca.crt")),
                             "--venv", str(venv), "--system-site-packages", "--root",
                             str(root), str(wheel)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "systemctl status fleetpulse-agent" in result.stdout
    assert "journalctl -u fleetpulse-agent -f" in result.stdout

    agent_exe = venv / "bin" / "fleetpulse-agent"
    unit = root / "etc/systemd/system" / UNIT
    assert f"ExecStart={agent_exe} run --config %d/agent.toml" in unit.read_text().splitlines()
    assert (root / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    _verify(unit)
    installed = root / "etc/fleetpulse/agent.toml"
    assert installed.read_text() == config.read_text()
    info = installed.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    assert (root / "etc/fleetpulse/ca.crt").read_text().startswith("-----BEGIN CERTIFICATE")
    assert any(line.startswith("fleetpulse:") for line in
               (root / "etc/passwd").read_text().splitlines())

    # The venv runs its own copy of the agent (not this checkout), and it works.
    where = subprocess.run([str(venv / "bin/python"), "-c", "import agent; print(agent.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(venv))
    once = subprocess.run([str(agent_exe), "once", "--device-id", "pi-5", "--state-dir",
                           str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=base_env())
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["device_id"] == "pi-5"

    # Again: an upgrade in place replaces the code (even of the same version) and keeps
    # the config.
    installed_module = Path(where.stdout.strip()).parent / "notify.py"
    pristine = installed_module.read_text()
    installed_module.write_text(pristine + "# changed on the device\n")
    config.write_text('device_id = "other"\n')
    again = subprocess.run(["bash", str(REPO / "deploy/install-agent.sh"), "--config",
                            str(config), "--venv", str(venv), "--root", str(root), str(wheel)],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "pi-5" in installed.read_text()
    assert installed_module.read_text() == pristine

    gone = subprocess.run([str(agent_exe), "uninstall-service", "--root", str(root)],
                          capture_output=True, text=True, timeout=60, env=base_env())
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants" / UNIT).exists()
    assert installed.exists()  # kept without --purge
    purged = subprocess.run([str(agent_exe), "uninstall-service", "--root", str(root),
                             "--purge"], capture_output=True, text=True, timeout=60,
                            env=base_env())
    assert purged.returncode == 0, purged.stderr
    assert not installed.exists() and not (root / "etc/fleetpulse").exists()


def test_install_script_refuses_a_missing_package_file_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(REPO / "deploy/install-agent.sh"), "--root",
                             str(tmp_path), str(tmp_path / "nope.whl")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"install-agent.sh: no package file {tmp_path / 'nope.whl'}"]
    assert not (tmp_path / "etc").exists()


def test_sigterm_makes_the_agent_say_stopping(broker: MosquittoServer, notify: NotifySocket,
                                              private_dir: Path, prefix: str) -> None:
    agent = agent_process(private_dir, broker_url=broker.url, prefix=prefix,
                          device_id="svc-stop", interval_s="1")
    agent.env.update(NOTIFY_SOCKET=notify.name)
    agent.start()
    try:
        wait_for(lambda: notify.with_key("READY"), 30, "READY=1")
        assert notify.pings() == []  # no WATCHDOG_USEC: no pings
        os.kill(agent.pid, signal.SIGTERM)
        wait_for(lambda: notify.with_key("STOPPING"), 30, "STOPPING=1")
        wait_for(lambda: not agent.running(), 30, "the agent to exit")
    finally:
        code = agent.stop()
    assert code == 0


def _syscall_group(name: str) -> set[str]:
    """The system calls of a systemd group such as @system-service, nested groups expanded."""
    listed = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                            text=True, check=True, timeout=60).stdout.splitlines()[1:]
    calls: set[str] = set()
    for line in (entry.strip() for entry in listed):
        if line.startswith("@"):
            calls |= _syscall_group(line)
        elif line and not line.startswith("#"):
            calls.add(line)
    return calls


def _unit_value(key: str) -> list[str]:
    values = [line.split("=", 1)[1] for line in unit_template().splitlines()
              if line.startswith(key + "=")]
    assert len(values) == 1, (key, values)
    return values[0].split()


def test_the_agent_fits_the_units_sandbox_system_calls_address_families_and_writes(
        broker: MosquittoServer, private_dir: Path, prefix: str) -> None:
    """Run the real agent (collecting, publishing, spooling) under strace and check that
    everything it does is allowed by the unit's SystemCallFilter=, RestrictAddressFamilies=
    and ProtectSystem=strict (writes only in its state directory), which cannot be tried
    under systemd here."""
    trace = private_dir / "strace.txt"
    state = private_dir / "state"
    watcher = Client(broker.port, f"watch-{prefix}").connect().subscribe(f"{prefix}/#")
    env = base_env(broker_url=broker.url, topic_prefix=prefix, device_id="sandboxed",
                   interval_s="0.2", spool_flush_s="0.5", state_dir=str(state))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the venv's .pyc files are written by pip
    agent = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), "-e", "signal=none",
                              sys.executable, "-m", "agent.main", "run"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: watcher.topics().count(f"{prefix}/sandboxed/metrics") >= 3, 60,
                 "readings through the broker")
    finally:
        # strace blocks fatal signals while it traces (-o FILE PROG): stop the agent itself.
        traced = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        for pid in traced:
            os.kill(int(pid), signal.SIGTERM)
        agent.wait(60)
        watcher.stop()
    assert traced and agent.returncode == 0
    calls, families, writes = set(), set(), set()
    for line in trace.read_text().splitlines():
        call = re.match(r"\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
        if call:
            calls.add(call.group(1))
        family = re.search(r"socket\((AF_[A-Z0-9]+)", line)
        if family:
            families.add(family.group(1))
        written = re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)", [^)]*O_(?:WRONLY|RDWR|CREAT)',
                            line)
        made = re.search(r'(?:mkdir|rename|unlink)(?:at)?\((?:AT_FDCWD, )?"([^"]+)"', line)
        for match in (written, made):
            if match and " = -1 " not in line:
                writes.add(match.group(1))
    assert "execve" in calls and "sendto" in calls  # the trace saw the agent at work

    filters = _unit_value("SystemCallFilter")
    allowed = set().union(*(_syscall_group(f) if f.startswith("@") else {f} for f in filters))
    assert calls - allowed == set()
    assert families - set(_unit_value("RestrictAddressFamilies")) == set()
    assert "AF_INET" in families  # it did connect over TCP
    outside = {w for w in writes if not (Path(w).is_relative_to(state) or w == "/dev/null"
                                         or Path(w).is_relative_to("/tmp"))}
    assert outside == set()


# What the unit's file-system options do, emulated in a private mount namespace: every
# mount read-only but the state directory (ProtectSystem=strict + StateDirectory=; /home
# included: ProtectHome=read-only), /sys and /proc/sys read-only (ProtectKernelTunables=),
# then an unprivileged user with the video group (User=, SupplementaryGroups=video).
# HIDE_PROC=1 mounts /proc as ProcSubset=pid does, to show why the unit must not.
SANDBOX = r"""
set -e
state=$1; shift
mount --bind "$state" "$state"
# The test's Python where the service user can reach it (a home of mode 0700 holds it here).
[ -z "${PY_PREFIX:-}" ] || mount --bind "$PY_PREFIX" "$PY_VIEW"
awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do
  case "$m" in /proc|/proc/*|/dev|/dev/*|/sys|/sys/*|"$state") continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount -o remount,bind,ro /sys
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
[ -z "${HIDE_PROC:-}" ] || mount -t proc -o subset=pid proc /proc
exec setpriv --reuid=65534 --regid=65534 --groups=44 -- "$@"
"""


def _paths(value: object, path: str = "") -> dict[str, bool]:
    """Every path in a reading's JSON, and whether its value is null."""
    found = {path: value is None}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= _paths(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found |= _paths(item, f"{path}[{i}]")
    return found


def _once(private_dir: Path, name: str, sandbox: dict[str, str] | None
          ) -> subprocess.CompletedProcess[str]:
    state = private_dir / name
    state.mkdir()
    python = sys.executable
    args = ["-m", "agent.main", "once", "--device-id", "sandboxed", "--state-dir", str(state)]
    env = base_env()
    if sandbox is not None:
        os.chown(state, 65534, 65534)
        prefix = Path(sys.base_prefix)
        if Path(sys.executable).is_relative_to(prefix) and not all(
                d.stat().st_mode & 0o001 for d in (prefix, *prefix.parents)):
            # The service user cannot reach this Python: the sandbox shows it elsewhere,
            # with its own libpython (else the loader takes the system's, and its paths).
            view = private_dir / "python"
            view.mkdir(exist_ok=True)
            python = str(view / Path(sys.executable).relative_to(prefix))
            sandbox = sandbox | {"PY_PREFIX": str(prefix), "PY_VIEW": str(view),
                                 "LD_LIBRARY_PATH": str(view / "lib")}
        (private_dir / "sandbox.sh").write_text(SANDBOX)
        args = ["unshare", "--mount", "--propagation", "private", "sh",
                str(private_dir / "sandbox.sh"), str(state), python, *args]
        env |= sandbox
    else:
        args = [python, *args]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_every_metric_stays_readable_by_the_service_user_in_the_units_file_sandbox(
        private_dir: Path) -> None:
    plain = _once(private_dir, "plain", None)
    sandboxed = _once(private_dir, "sandboxed", {})
    assert plain.returncode == 0 and sandboxed.returncode == 0, sandboxed.stderr
    # The same fields, and null in the same places (the platform's, not the sandbox's).
    assert _paths(json.loads(sandboxed.stdout)) == _paths(json.loads(plain.stdout))
    # The control: /proc as ProcSubset=pid leaves it has no /proc/stat for psutil.
    hidden = _once(private_dir, "hidden", {"HIDE_PROC": "1"})
    assert hidden.returncode != 0 and "/proc/stat" in hidden.stderr
