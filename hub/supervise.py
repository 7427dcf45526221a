"""``fleetpulse-hub run --workers N``: one supervisor, N hub processes on one share group.

One hub process is bound by its own interpreter lock (about one core: bench/README.md).
With ``workers`` > 1 the command starts N children, each a whole ``fleetpulse-hub run``
with ``--workers 1``, and supervises them:

* each child subscribes through the MQTT v5 shared subscription ``$share/<group>/…``
  (``share_group``, default ``fleetpulse``), so the broker spreads the messages over them;
* each child has its own persistent session, client id ``<client_id>-<i>``: a child that
  dies keeps its unacknowledged messages in its session, and the one started in its place
  (same id) gets them back;
* the HTTP API, the alert rules, compaction and retention run in child 0 only (one
  writer of alerts and one compactor, and one port); the others only ingest. Child 0's
  ``/health`` counts its own messages;
* a child that dies is started again at once (then after 0.5 s, doubling up to 30 s,
  while it keeps dying within a minute of its start); one that exits non-zero within its
  first seconds failed a start check (a wrong setting, a refused login, a port in use):
  the supervisor stops the others and exits with that code, as a single hub would;
* SIGTERM or SIGINT is forwarded to every child; the supervisor waits for them and exits.

The embedded database (no ``db`` set) is started by the supervisor, and its URL given to
the children in their environment. ``fleetpulse-hub run`` replaces itself with this
module's :func:`main` (``exec``), which imports only the settings: the supervisor holds
~17 MB instead of the hub's ~46 MB (bench/hub_ingest.py counts every process's RSS).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from shared.config import DEFAULT_HUB_CONFIG, HubSettings, add_setting_flags, settings_from_args
from shared.errors import ConfigError

log = logging.getLogger("fleetpulse.hub")

DEFAULT_SHARE_GROUP = "fleetpulse"
START_CHECK_S = 5.0  # a non-zero exit sooner than this is a failed start, not a crash
STABLE_S = 60.0  # a child that ran this long starts again without waiting
STOP_TIMEOUT_S = 30.0


def worker_client_id(client_id: str, index: int) -> str:
    """The client id of child ``index``: stable, so its session survives a restart."""
    return f"{client_id}-{index}"


def worker_args(argv: Sequence[str], settings: HubSettings, index: int) -> list[str]:
    """The command line of child ``index``: the supervisor's own, with the worker's
    settings appended (a flag given later wins, and flags win over files and environment)."""
    return [*argv, "--workers", "1", "--worker-index", str(index),
            "--client-id", worker_client_id(settings.client_id, index),
            "--share-group", settings.share_group or DEFAULT_SHARE_GROUP]


def restart_delay_s(failures: int) -> float:
    """Seconds before starting a child again after ``failures`` quick deaths in a row."""
    return 0.0 if failures <= 1 else float(min(30.0, 0.5 * 2 ** (failures - 2)))


@dataclass
class _Child:
    index: int
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # deaths within STABLE_S of their start, in a row
    due: float = 0.0  # when to start it again (monotonic)


def supervise(settings: HubSettings, argv: Sequence[str]) -> int:
    """Run ``settings.workers`` hub processes until SIGTERM/SIGINT; return the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = dict(os.environ)
    if settings.db is None:
        from hub.commands import database_url

        env["FLEETPULSE_DB"] = database_url(settings)  # the embedded one, started here
    children = [_Child(i) for i in range(settings.workers)]
    log.info("Starting %d hub workers (share group %s); worker 0 serves HTTP and runs alerts, "
             "compaction and retention.", settings.workers,
             settings.share_group or DEFAULT_SHARE_GROUP)
    try:
        while not stop.is_set():
            now = time.monotonic()
            for child in children:
                if child.popen is None:
                    if now >= child.due:
                        _start(child, argv, settings, env)
                    continue
                returned = child.popen.poll()
                if returned is None:
                    continue
                ran_s = now - child.started
                child.popen = None
                if returned > 0 and ran_s < START_CHECK_S:
                    log.error("Hub worker %d exited with code %d at start; stopping.",
                              child.index, returned)
                    return returned
                child.failures = child.failures + 1 if ran_s < STABLE_S else 1
                delay = restart_delay_s(child.failures)
                log.warning("Hub worker %d exited (%s) after %.0f s; starting it again%s.",
                            child.index, _describe(returned), ran_s,
                            f" in {delay:g} s" if delay else "")
                child.due = now + delay
            stop.wait(0.2)
    finally:
        _stop_all(children)
    log.info("Stopped %d hub workers.", len(children))
    return 0


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the supervisor dies, even by
    SIGKILL, so that no orphan keeps a worker's client id from its successor."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start(child: _Child, argv: Sequence[str], settings: HubSettings,
           env: dict[str, str]) -> None:
    args = [sys.executable, "-m", "hub.main", *worker_args(argv, settings, child.index)]
    # Its output goes where ours does. preexec_fn: the supervisor runs no other thread.
    child.popen = subprocess.Popen(args, env=env,
                                   preexec_fn=_die_with_parent)
    child.started = time.monotonic()
    log.info("Hub worker %d started (pid %d).", child.index, child.popen.pid)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


def _stop_all(children: list[_Child]) -> None:
    """SIGTERM every child and wait for them (SIGKILL after STOP_TIMEOUT_S)."""
    running = [c.popen for c in children if c.popen is not None]
    for popen in running:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for popen in running:
        try:
            popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("Hub worker pid %d did not stop within %g s; killing it.", popen.pid,
                      STOP_TIMEOUT_S)
            popen.kill()
            popen.wait()


def main(argv: list[str] | None = None) -> int:
    """Read the settings from ``fleetpulse-hub run``'s arguments, then :func:`supervise`."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fleetpulse-hub")
    parser.add_argument("command")
    parser.add_argument("--config")
    add_setting_flags(parser, HubSettings)
    args, _ = parser.parse_known_args(argv)  # flags of other commands do not matter here
    try:
        settings = settings_from_args(HubSettings, args, DEFAULT_HUB_CONFIG)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"Invalid configuration: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return supervise(settings, argv)


if __name__ == "__main__":
    sys.exit(main())
