"""Tell systemd how the agent is doing: the sd_notify protocol, standard library only.

A service of ``Type=notify`` reports with one datagram of newline-separated ``KEY=VALUE``
lines to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (sd_notify(3); a leading ``@``
means Linux's abstract namespace). The agent sends ``READY=1`` once it has its first
reading, ``WATCHDOG=1`` from its collection loop at half of ``$WATCHDOG_USEC`` (set by
``WatchdogSec=``; systemd restarts the service when the pings stop), ``STATUS=…`` when the
connection or spool state changes (``systemctl status`` shows it) and ``STOPPING=1`` at
a stop.

Pure: :func:`format_message`, :func:`watchdog_period_s`, :func:`format_status`. I/O:
:class:`Notifier`, which is a no-op without ``$NOTIFY_SOCKET`` (run by hand, or under
another supervisor) and never raises into the loop: a failed send is logged once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


# --- pure ---------------------------------------------------------------------------------
def format_message(**fields: str | int) -> bytes:
    """Return one notify datagram, e.g. ``format_message(READY=1, STATUS="ok")``.

    A value must be one line: systemd splits the datagram at newlines.
    """
    lines = []
    for key, value in fields.items():
        text = str(value)
        if "\n" in text:
            raise ValueError(f"{key}: a notify value must be a single line")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


def socket_address(value: str) -> str | bytes:
    """Return the address to send to for ``$NOTIFY_SOCKET`` (``@name`` is abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_period_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Return how often to send ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or None.

    As sd_watchdog_enabled(3): the watchdog is meant for us only when ``$WATCHDOG_PID`` is
    unset or is our pid (a child started by the service must not ping for it).
    """
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(raw) / 1e6 / 2


def format_status(broker: str, *, connected: bool, ever_connected: bool,
                  since_epoch_s: float, spool_readings: int) -> str:
    """Return the agent's one-line STATUS, e.g. ``connected to mqtts://h:8883; spool 0 readings``.

    Args:
        since_epoch_s: when the current outage (or the first connection attempt) began.
    """
    spool = f"spool {spool_readings} reading{'' if spool_readings == 1 else 's'}"
    if connected:
        return f"connected to {broker}; {spool}"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since_epoch_s))
    if not ever_connected:
        return f"connecting to {broker} since {since}; {spool}"
    return f"broker {broker} unreachable since {since}; {spool}"


class StatusTracker:
    """Remember since when the broker has been away, to say so in each STATUS line."""

    def __init__(self, broker: str, start_epoch_s: float) -> None:
        self.broker = broker
        self._ever_connected = False
        self._since: float | None = start_epoch_s

    def line(self, *, connected: bool, spool_readings: int, now_epoch_s: float) -> str:
        if connected:
            self._ever_connected, self._since = True, None
        elif self._since is None:
            self._since = now_epoch_s  # the outage began (at the latest) now
        return format_status(self.broker, connected=connected,
                             ever_connected=self._ever_connected,
                             since_epoch_s=self._since or now_epoch_s,
                             spool_readings=spool_readings)


# --- I/O ----------------------------------------------------------------------------------
class Notifier:
    """Send notify messages to systemd, if it asked for them; otherwise do nothing."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        path = environ.get("NOTIFY_SOCKET", "")
        self._path = path
        self._address = socket_address(path) if path else None
        self.watchdog_s = watchdog_period_s(environ, pid) if path else None
        self._socket: socket.socket | None = None
        self._failed = False
        self._status: str | None = None
        self._next_ping = 0.0  # monotonic

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message; return False (and log once) if it could not be sent."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(format_message(**fields), self._address)
        except OSError as exc:
            if not self._failed:
                # Without systemd hearing from us the watchdog will restart the agent; say why.
                log.error("Cannot notify systemd at NOTIFY_SOCKET %s: %s.", self._path,
                          exc.strerror or exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> None:
        """Say the service has started (with its first status line)."""
        self._status = status
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        """Send ``STATUS=`` if it differs from the last one sent."""
        if status != self._status:
            self._status = status
            self.send(STATUS=status)

    def watchdog(self, now: float) -> None:
        """Ping the watchdog if half its period has passed since the last ping."""
        if self.watchdog_s is not None and now >= self._next_ping:
            self._next_ping = now + self.watchdog_s
            self.send(WATCHDOG=1)

    def watchdog_due_in(self, now: float) -> float:
        """Seconds until the next ping is due (infinite without a watchdog)."""
        if self.watchdog_s is None:
            return float("inf")
        return max(0.0, self._next_ping - now)

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
