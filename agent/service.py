"""``fleetpulse-agent install-service`` / ``uninstall-service``: run the agent under systemd.

install-service writes the unit shipped in this package (``agent/systemd/``) with ExecStart
pointing at the agent executable in use (e.g. the venv's ``/opt/fleetpulse/venv/bin/
fleetpulse-agent``), creates the ``fleetpulse`` system user (systemd-sysusers, or useradd
where there is none), creates ``/etc/fleetpulse/agent.toml`` (root's, mode 0600: the unit
hands the service a copy with ``LoadCredential=``) from the output of ``fleetpulse-hub
add-device`` if there is none yet, copies the broker's CA certificate if given, and enables
and starts the unit when systemd runs this machine.

``--root DIR`` installs into another tree (an SD card image being prepared, a package
being built, a test): nothing is started there, the unit is enabled offline (``systemctl
--root``) and the user is created in DIR's /etc/passwd.

Pure: :func:`render_unit`, :func:`find_agent_executable`. The rest is the I/O, each step
one printed line.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shared.config import AgentSettings, load_settings
from shared.errors import ConfigError

UNIT_NAME = "fleetpulse-agent.service"
SERVICE_USER = "fleetpulse"
UNIT_DIR = Path("etc/systemd/system")  # paths below are relative to --root
CONFIG_DIR = Path("etc/fleetpulse")
CONFIG_FILE = CONFIG_DIR / "agent.toml"
CA_FILE = CONFIG_DIR / "ca.crt"  # where `fleetpulse-hub add-device` tells the agent to look
STATE_DIR = Path("var/lib/fleetpulse-agent")  # the unit's StateDirectory=
SYSUSERS_FILE = Path("etc/sysusers.d/fleetpulse-agent.conf")
SYSUSERS_LINE = f'u {SERVICE_USER} - "fleetpulse agent" / /usr/sbin/nologin'
COMMANDS = ("install-service", "uninstall-service")
CHECK_HINT = (f"Check it: systemctl status {UNIT_NAME.removesuffix('.service')}; follow its "
              f"log: journalctl -u {UNIT_NAME.removesuffix('.service')} -f")
EMPTY_CONFIG = """\
# fleetpulse agent settings (README "Configuration"). Paste here what
# `fleetpulse-hub add-device <device-id>` printed on the hub's machine, then
# run: systemctl restart fleetpulse-agent
"""


class ServiceError(Exception):
    """A step failed; the message is the one line to print."""


# --- pure ---------------------------------------------------------------------------------
def unit_template() -> str:
    """Return the unit file shipped in the package."""
    return (resources.files("agent") / "systemd" / UNIT_NAME).read_text()


def render_unit(template: str, executable: Path) -> str:
    """Return the unit with ExecStart running ``executable`` (an absolute path)."""
    if not executable.is_absolute():
        raise ValueError(f"{executable} is not an absolute path")
    text = str(executable)
    if any(c in text for c in "\"'\\%$") or not text.isprintable():
        raise ValueError(f"{text!r}: systemd would read quotes, '\\', '%' or '$' in this path "
                         "as syntax; install the agent under a plainer path")
    quoted = f'"{text}"' if any(c.isspace() for c in text) else text
    lines = template.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(starts) != 1:
        raise ValueError("the unit template must have exactly one ExecStart= line")
    _, _, rest = lines[starts[0]].partition("=")
    arguments = rest.split(" ", 1)[1] if " " in rest else ""
    lines[starts[0]] = f"ExecStart={quoted} {arguments}".rstrip()
    return "\n".join(lines) + "\n"


def find_agent_executable(argv0: str, python: str,
                          which: Callable[[str], str | None] = shutil.which) -> Path | None:
    """Return the ``fleetpulse-agent`` executable this process was started from, or beside
    its Python (a venv's bin/), or on PATH."""
    candidates = []
    if Path(argv0).name == "fleetpulse-agent":
        candidates.append(Path(argv0))
    candidates.append(Path(python).parent / "fleetpulse-agent")
    found = which("fleetpulse-agent")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Path(os.path.abspath(candidate))  # keep a venv's symlinks as they are
    return None


# --- I/O ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where to install: ``root`` is "/" for this machine."""

    root: Path
    booted: bool | None = None  # None: find out (tests say)

    @property
    def live(self) -> bool:
        """True when installing into the running system and systemd runs it (sd_booted)."""
        if self.booted is not None:
            return self.booted
        return self.root == Path("/") and Path("/run/systemd/system").is_dir()

    def path(self, relative: Path) -> Path:
        return self.root / relative


def _say(line: str) -> None:
    print(line, flush=True)


def _run(args: list[str]) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise ServiceError(f"Cannot run {args[0]}: {exc.strerror}.") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ServiceError(f"`{shlex.join(args)}` failed: {detail[-1] if detail else ''}")


def _systemctl(target: Target, *args: str) -> None:
    if target.root == Path("/"):
        _run(["systemctl", *args])
    else:
        _run(["systemctl", f"--root={target.root}", *args])


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically with ``mode``, owned by root when we are root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), 0, 0)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_config(data: bytes, directory: Path) -> None:
    """Raise ServiceError unless ``data`` is a valid agent config (checked as the agent does)."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".check.", suffix=".toml") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.flush()
        try:
            load_settings(AgentSettings, file=Path(f.name), environ={})
        except ConfigError as exc:
            problems = " ".join(p.replace(f.name + ": ", "") for p in exc.problems)
            raise ServiceError(f"The config given is not a valid agent config: {problems} "
                               "Nothing was installed.") from exc


def _read_source(source: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise ServiceError(f"Cannot read --config-from {source}: {exc.strerror}.") from exc


def install_config(target: Target, source: str | None) -> None:
    config = target.path(CONFIG_FILE)
    if config.exists():
        mode = config.stat().st_mode & 0o777
        if mode != 0o600:
            config.chmod(0o600)
            _say(f"{config} exists; kept it and set its mode to 0600 (was {mode:04o}).")
        else:
            _say(f"{config} exists; kept it" + (" (--config-from not used; remove the file "
                                                 "to replace it)." if source else "."))
        return
    target.path(CONFIG_DIR).mkdir(mode=0o755, parents=True, exist_ok=True)
    if source is None:
        _write_private(config, EMPTY_CONFIG.encode(), 0o600)
        _say(f"WARNING: wrote an empty {config} (mode 0600): the agent will look for a broker "
             "on localhost. Paste the output of `fleetpulse-hub add-device <id>` into it.")
        return
    data = _read_source(source)
    _check_config(data, target.path(CONFIG_DIR))
    _write_private(config, data, 0o600)
    _say(f"Wrote {config} (mode 0600, root's; the service reads it through LoadCredential=).")


def install_ca(target: Target, ca_file: str | None) -> None:
    if ca_file is None:
        return
    try:
        data = Path(ca_file).read_bytes()
    except OSError as exc:
        raise ServiceError(f"Cannot read --ca-file {ca_file}: {exc.strerror}.") from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ServiceError(f"--ca-file {ca_file} is not a PEM certificate (no BEGIN "
                           "CERTIFICATE line).")
    _write_private(target.path(CA_FILE), data, 0o644)  # a CA certificate is public
    _say(f"Wrote {target.path(CA_FILE)} (the broker's CA certificate).")


def _check_ca_present(target: Target) -> None:
    try:
        settings = load_settings(AgentSettings, file=target.path(CONFIG_FILE), environ={})
    except ConfigError:
        return  # an existing file kept as it was; the agent will say what is wrong with it
    ca = settings.broker_ca_file
    if ca is not None and ca.is_absolute() and not target.path(ca.relative_to("/")).exists():
        _say(f"WARNING: the config names broker_ca_file {ca}, which does not exist: copy the "
             "hub's CA certificate there (or pass --ca-file).")


def create_user(target: Target) -> None:
    sysusers = shutil.which("systemd-sysusers")
    conf = target.path(SYSUSERS_FILE)
    if sysusers:
        # Also kept in sysusers.d, so an image prepared with --root makes the user at boot.
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("# fleetpulse agent's system user (fleetpulse-agent install-service)\n"
                        + SYSUSERS_LINE + "\n")
        args = [sysusers] + ([] if target.root == Path("/") else [f"--root={target.root}"])
        _run([*args, str(conf)])
        _say(f"System user {SERVICE_USER!r} is present (systemd-sysusers, {conf}).")
        return
    if target.root != Path("/"):
        raise ServiceError("Cannot create the service user under --root without "
                           "systemd-sysusers.")
    try:
        pwd.getpwnam(SERVICE_USER)
        _say(f"System user {SERVICE_USER!r} exists.")
        return
    except KeyError:
        pass
    _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
          "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER])
    _say(f"Created system user {SERVICE_USER!r}.")


def choose_device_id(state: Path, root: Path = Path("/")) -> str | None:
    """On a first install on this machine, choose the device id before systemd starts it.

    systemd makes ``StateDirectory=`` before the first start, and an existing state directory
    is what tells ``agent.identity`` that an earlier agent ran (so it keeps that agent's id).
    Choosing here, while the directory does not exist yet, gives a new install the id that
    tells cloned SD cards apart. Returns None when the directory exists (an upgrade).

    Args:
        root: where /etc, /proc and /sys are read from (a fake tree in tests).
    """
    if state.exists():
        return None
    from agent.identity import default_device_id

    device_id = default_device_id(state, root)
    try:
        user = pwd.getpwnam(SERVICE_USER)
        for path in (state, *state.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    except (KeyError, OSError):
        pass  # systemd gives StateDirectory= to the service's user at start
    return device_id


def install_service(target: Target, executable: Path, config_from: str | None,
                    ca_file: str | None, start: bool) -> None:
    install_ca(target, ca_file)
    install_config(target, config_from)
    _check_ca_present(target)
    create_user(target)
    # Not under --root: that machine is not the device (each copy of an image chooses its
    # own id at first start; the board's fingerprint in the kept id tells copies apart).
    if target.root == Path("/") and (chosen := choose_device_id(target.path(STATE_DIR))):
        _say(f"Default device id of this machine: {chosen} (kept in {STATE_DIR}).")
    unit = target.path(UNIT_DIR / UNIT_NAME)
    unit.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = render_unit(unit_template(), executable)
    except ValueError as exc:
        raise ServiceError(f"Cannot write the unit: {exc}.") from exc
    _write_private(unit, text.encode(), 0o644)
    _say(f"Wrote {unit} (ExecStart={executable} run).")
    if target.live:
        _systemctl(target, "daemon-reload")
        _systemctl(target, "enable", UNIT_NAME)
        if start:
            # restart, not start: after an upgrade the running agent must load the new code.
            _systemctl(target, "restart", UNIT_NAME)
        _say(f"Enabled {UNIT_NAME}" + (" and (re)started it." if start else
                                          "; not started (--no-start)."))
        _say(CHECK_HINT)
        return
    why = ("--root given" if target.root != Path("/") else
           "--no-start" if not start else "systemd is not running this machine (not PID 1)")
    if shutil.which("systemctl"):
        _systemctl(target, "enable", UNIT_NAME)  # offline: only the WantedBy= symlink
        _say(f"Enabled {UNIT_NAME} offline; not started ({why}).")
    else:
        _say(f"Not enabled or started ({why}; no systemctl).")
    _say("On the device, start it with: systemctl daemon-reload && systemctl enable --now "
         f"{UNIT_NAME.removesuffix('.service')}")
    _say(CHECK_HINT)


def uninstall_service(target: Target, purge: bool) -> None:
    unit = target.path(UNIT_DIR / UNIT_NAME)
    if target.live:
        if unit.exists():
            _systemctl(target, "disable", "--now", UNIT_NAME)
            _say(f"Stopped and disabled {UNIT_NAME}.")
    elif unit.exists() and shutil.which("systemctl"):
        _systemctl(target, "disable", UNIT_NAME)
        _say(f"Disabled {UNIT_NAME} offline.")
    if unit.exists():
        unit.unlink()
        _say(f"Removed {unit}.")
    else:
        _say(f"{unit} is not there; nothing to remove.")
    if target.live:
        _systemctl(target, "daemon-reload")
    config, state = target.path(CONFIG_FILE), target.path(STATE_DIR)
    if not purge:
        _say(f"Kept {config} and {state} (the spool and device id); --purge removes them.")
        return
    for path in (config, target.path(CA_FILE), target.path(SYSUSERS_FILE)):
        if path.exists():
            path.unlink()
            _say(f"Removed {path}.")
    with_dir = target.path(CONFIG_DIR)
    if with_dir.is_dir() and not any(with_dir.iterdir()):
        with_dir.rmdir()
    if state.exists():
        shutil.rmtree(state)
        _say(f"Removed {state} (its spool had readings not yet sent, if any).")
    _say(f"Kept the system user {SERVICE_USER!r} (files elsewhere may still be its own).")


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("install-service / uninstall-service")
    group.add_argument("--root", type=Path, default=Path("/"), help="install into this "
                       "directory tree instead of / (an image, a package); nothing is started")
    group.add_argument("--config-from", metavar="FILE", help="agent.toml to install as "
                       "/etc/fleetpulse/agent.toml if there is none (the output of "
                       "`fleetpulse-hub add-device`; '-' reads stdin)")
    group.add_argument("--ca-file", metavar="FILE", help="the broker's CA certificate, "
                       "copied to /etc/fleetpulse/ca.crt")
    group.add_argument("--no-start", action="store_true", help="install and enable, but do "
                       "not start")
    group.add_argument("--purge", action="store_true", help="uninstall-service: also remove "
                       "/etc/fleetpulse/agent.toml and the state directory (the spool)")


def run_service_command(args: argparse.Namespace) -> int:
    """Run install-service or uninstall-service; one line per step, one line on failure."""
    root = Path(os.path.abspath(args.root))
    if os.geteuid() != 0 and root == Path("/"):
        print(f"fleetpulse-agent {args.command} must run as root: sudo fleetpulse-agent "
              f"{args.command} …", file=sys.stderr)
        return 2
    target = Target(root)
    try:
        if args.command == "install-service":
            executable = find_agent_executable(sys.argv[0], sys.executable)
            if executable is None:
                print("Cannot find the fleetpulse-agent executable (beside this Python or on "
                      "PATH): install the package into a venv first (deploy/install-agent.sh).",
                      file=sys.stderr)
                return 2
            install_service(target, executable, args.config_from, args.ca_file,
                            start=not args.no_start)
        else:
            uninstall_service(target, args.purge)
    except ServiceError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.command} failed: {exc.filename or ''}: {exc.strerror}.", file=sys.stderr)
        return 1
    return 0
