"""The device id: stable across reboots and renames, derived from the machine's own id."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

# Linux (systemd, and dbus on older systems); each is fixed at install time.
MACHINE_ID_FILES = ("etc/machine-id", "var/lib/dbus/machine-id")


def device_id_from_machine_id(machine_id: str) -> str:
    """Derive a device id from a machine id without revealing it (it is meant to be private)."""
    digest = hashlib.sha256(f"fleetpulse:{machine_id.strip()}".encode()).hexdigest()
    return f"fp-{digest[:12]}"


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


def default_device_id(state_dir: Path, root: Path = Path("/")) -> str:
    """Return the device id from the machine id, else from an id kept in the state directory.

    The fallback (Windows, macOS, containers without /etc/machine-id) is a random id
    written once, so it too survives reboots and renames.
    """
    machine_id = read_machine_id(root)
    if machine_id is None:
        kept = state_dir / "machine-id"
        try:
            machine_id = kept.read_text().strip() or None
        except OSError:
            machine_id = None
        if machine_id is None:
            machine_id = uuid.uuid4().hex
            state_dir.mkdir(parents=True, exist_ok=True)
            kept.write_text(machine_id + "\n")
    return device_id_from_machine_id(machine_id)
