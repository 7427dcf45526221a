"""The default device id: stable across reboots and renames, different on every board.

Operators flash one prepared SD card image onto many Pis; when the image was booted
before it was copied, every copy has the same /etc/machine-id. So the id mixes the
machine id with something that differs per board: the board's serial number (a Pi's
device tree ``serial-number``, or ``Serial`` in /proc/cpuinfo), else the lowest MAC
address among the permanent addresses (``addr_assign_type`` 0) of physical network
interfaces (those with a ``device`` link; bridges, veths and VPNs have none). The lowest,
not the first by name: interface names change, addresses do not.

The id is chosen once and kept in ``<state_dir>/device-id`` with a fingerprint of the
board it was chosen on, so it survives reboots, renames and a NIC added later. When the
kept fingerprint names another board (the state directory was copied with the image),
the id is chosen afresh, with a warning.

Upgrades keep their id: an agent that finds its state directory from an earlier run but
no ``device-id`` file keeps the id earlier versions derived (from the machine id alone)
and writes it down. Readings already stored under that id stay that device's history.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

# Linux (systemd, and dbus on older systems); each is fixed at install time.
MACHINE_ID_FILES = ("etc/machine-id", "var/lib/dbus/machine-id")
SERIAL_FILES = ("proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number")
DEVICE_ID_FILE = "device-id"
NO_BOARD = "-"


def device_id_from_machine_id(machine_id: str) -> str:
    """Derive a device id from a machine id without revealing it (it is meant to be private).

    This is the derivation of earlier versions, kept for installs that already use it.
    """
    digest = hashlib.sha256(f"fleetpulse:{machine_id.strip()}".encode()).hexdigest()
    return f"fp-{digest[:12]}"


def device_id_for(machine_id: str, board_id: str | None) -> str:
    """Derive a device id from the machine id and the board's own id (pure)."""
    if board_id is None:
        return device_id_from_machine_id(machine_id)
    digest = hashlib.sha256(f"fleetpulse:{machine_id.strip()}:{board_id}".encode()).hexdigest()
    return f"fp-{digest[:12]}"


def board_fingerprint(board_id: str | None) -> str:
    """A short hash of the board id, kept beside the device id (the id itself stays private)."""
    if board_id is None:
        return NO_BOARD
    return hashlib.sha256(f"fleetpulse-board:{board_id}".encode()).hexdigest()[:16]


def read_machine_id(root: Path = Path("/")) -> str | None:
    """Return the machine's id from /etc/machine-id or the dbus copy; None if absent."""
    for name in MACHINE_ID_FILES:
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _meaningful(serial: str) -> bool:
    return bool(serial) and set(serial.lower()) - {"0", "x"} != set()


def read_board_serial(root: Path = Path("/")) -> str | None:
    """Return the board's serial number (device tree, else /proc/cpuinfo); None if none."""
    for name in SERIAL_FILES:
        try:
            serial = (root / name).read_bytes().rstrip(b"\0").decode("ascii", "replace").strip()
        except OSError:
            continue
        if _meaningful(serial):
            return serial
    try:
        lines = (root / "proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == "serial" and _meaningful(value.strip()):
            return value.strip()
    return None


def read_permanent_mac(root: Path = Path("/")) -> str | None:
    """Return the lowest permanent MAC address of a physical network interface; None if none."""
    net = root / "sys/class/net"
    try:
        interfaces = list(net.iterdir())
    except OSError:
        return None
    found = []
    for interface in interfaces:
        try:
            if not (interface / "device").exists():
                continue  # virtual: loopback, bridge, veth, tun, wireguard...
            if (interface / "addr_assign_type").read_text().strip() != "0":
                continue  # random, stolen or set by hand: not the board's own
            mac = (interface / "address").read_text().strip().lower()
        except OSError:
            continue
        if mac and mac.strip("0:") and len(mac) >= 12:
            found.append(mac)
    return min(found) if found else None


def read_board_id(root: Path = Path("/")) -> str | None:
    """Return what tells this board apart: its serial number, else a permanent MAC."""
    serial = read_board_serial(root)
    if serial is not None:
        return f"serial:{serial}"
    mac = read_permanent_mac(root)
    return None if mac is None else f"mac:{mac}"


def _machine_id(state_dir: Path, root: Path) -> str:
    # Windows, macOS, containers without /etc/machine-id: a random id written once.
    machine_id = read_machine_id(root)
    if machine_id is not None:
        return machine_id
    kept = state_dir / "machine-id"
    try:
        machine_id = kept.read_text().strip() or None
    except OSError:
        machine_id = None
    if machine_id is None:
        machine_id = uuid.uuid4().hex
        state_dir.mkdir(parents=True, exist_ok=True)
        kept.write_text(machine_id + "\n")
    return machine_id


def _read_kept(path: Path) -> tuple[str, str] | None:
    try:
        parts = path.read_text().split()
    except OSError:
        return None
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


def _keep(path: Path, device_id: str, fingerprint: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(f"{device_id} {fingerprint}\n")
        os.replace(partial, path)  # whole or not at all
    except OSError as exc:
        # Not fatal: the same derivation gives the same id next time on this board.
        log.warning("Cannot keep the device id in %s (%s).", path, exc.strerror)


def default_device_id(state_dir: Path, root: Path = Path("/")) -> str:
    """Return this machine's device id: the one kept in ``state_dir``, else a new one.

    Args:
        root: the file system root to read /etc, /proc and /sys from (a fake tree in tests).
    """
    path = state_dir / DEVICE_ID_FILE
    board = read_board_id(root)
    fingerprint = board_fingerprint(board)
    kept = _read_kept(path)
    if kept is not None:
        device_id, kept_fingerprint = kept
        if NO_BOARD in (kept_fingerprint, fingerprint) or kept_fingerprint == fingerprint:
            return device_id
        # The state directory came from another board (copied with an SD card image).
        new_id = device_id_for(_machine_id(state_dir, root), board)
        log.warning("The device id %s kept in %s was chosen on another board (this state "
                    "directory was copied with a disk image); this board is %s.", device_id,
                    path, new_id)
        _keep(path, new_id, fingerprint)
        return new_id
    has_run_before = state_dir.is_dir()  # an earlier version made it (its spool's directory)
    machine_id = _machine_id(state_dir, root)
    device_id = (device_id_from_machine_id(machine_id) if has_run_before
                 else device_id_for(machine_id, board))
    _keep(path, device_id, fingerprint)
    return device_id
