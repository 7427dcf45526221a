"""Raspberry Pi firmware facts: the throttling flags and the board model.

The firmware's ``get_throttled`` value is a bit field (Raspberry Pi documentation,
"vcgencmd get_throttled"):

    bit 0  under-voltage detected now        bit 16  under-voltage has occurred
    bit 1  ARM frequency capped now          bit 17  ARM frequency capping has occurred
    bit 2  currently throttled               bit 18  throttling has occurred
    bit 3  soft temperature limit active     bit 19  soft temperature limit has occurred

"Has occurred" means since boot. Kernels with the firmware driver expose it in sysfs
(cheap to read every second); otherwise ``vcgencmd get_throttled`` is run, at most every
``VCGENCMD_EVERY_S`` seconds, because starting a process each second would cost a Pi
Zero more than all other readings together.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from shared.schema import Throttling

VCGENCMD_EVERY_S = 10.0
_SYSFS_CANDIDATES = (
    "devices/platform/soc/soc:firmware/get_throttled",
    "devices/platform/soc/soc:firmware/raspberrypi-hwmon/get_throttled",
)
_BITS = {
    "under_voltage_now": 0, "freq_capped_now": 1, "throttled_now": 2, "soft_temp_limit_now": 3,
    "under_voltage_occurred": 16, "freq_capped_occurred": 17, "throttled_occurred": 18,
    "soft_temp_limit_occurred": 19,
}


def decode_throttled(raw: int | None) -> Throttling:
    """Decode the firmware's get_throttled value; all None where there is no value."""
    if raw is None:
        return {"raw": None, "under_voltage_now": None, "freq_capped_now": None,
                "throttled_now": None, "soft_temp_limit_now": None,
                "under_voltage_occurred": None, "freq_capped_occurred": None,
                "throttled_occurred": None, "soft_temp_limit_occurred": None}
    return {
        "raw": raw,
        "under_voltage_now": bool(raw >> 0 & 1),
        "freq_capped_now": bool(raw >> 1 & 1),
        "throttled_now": bool(raw >> 2 & 1),
        "soft_temp_limit_now": bool(raw >> 3 & 1),
        "under_voltage_occurred": bool(raw >> 16 & 1),
        "freq_capped_occurred": bool(raw >> 17 & 1),
        "throttled_occurred": bool(raw >> 18 & 1),
        "soft_temp_limit_occurred": bool(raw >> 19 & 1),
    }


def parse_throttled(text: str) -> int | None:
    """Parse ``throttled=0x50005`` (vcgencmd) or ``50005`` (sysfs, hex); None if neither."""
    match = re.search(r"(?:throttled=)?(?:0x)?([0-9a-fA-F]+)\s*$", text.strip())
    return int(match.group(1), 16) if match else None


def find_throttled_file(sys_root: Path = Path("/sys")) -> Path | None:
    """Find the firmware's sysfs get_throttled file (its place differs between models)."""
    for candidate in _SYSFS_CANDIDATES:
        path = sys_root / candidate
        if path.is_file():
            return path
    firmware_dirs = list((sys_root / "devices/platform").glob("**/*firmware*")) \
        if (sys_root / "devices/platform").is_dir() else []
    for directory in firmware_dirs:
        path = directory / "get_throttled"
        if path.is_file():
            return path
    return None


class ThrottleReader:
    """Read get_throttled from sysfs each call, or from vcgencmd at most every 10 s."""

    def __init__(self, sys_root: Path = Path("/sys"), vcgencmd: str | None = None) -> None:
        self._file = find_throttled_file(sys_root)
        self._fd = -1  # the sysfs file, kept open: pread from 0 shows the value anew
        self._vcgencmd = None if self._file else (vcgencmd or shutil.which("vcgencmd"))
        self._last_value: int | None = None
        self._last_run = -1e18

    @property
    def available(self) -> bool:
        """Whether there is anything to read (a Pi's firmware), else read() is always None."""
        return self._file is not None or self._vcgencmd is not None

    def read(self) -> int | None:
        if self._file is not None:
            try:
                if self._fd < 0:
                    self._fd = os.open(self._file, os.O_RDONLY | os.O_CLOEXEC)
                return parse_throttled(os.pread(self._fd, 64, 0).decode())
            except (OSError, UnicodeDecodeError):
                if self._fd >= 0:  # opened again at the next reading
                    os.close(self._fd)
                    self._fd = -1
                return None
        if self._vcgencmd is None:
            return None
        now = time.monotonic()
        if now - self._last_run >= VCGENCMD_EVERY_S:
            self._last_run = now
            try:
                out = subprocess.run([self._vcgencmd, "get_throttled"], capture_output=True,
                                     text=True, timeout=2, check=False).stdout
                self._last_value = parse_throttled(out)
            except (OSError, subprocess.SubprocessError):
                self._last_value = None
        return self._last_value


def read_model(root: Path = Path("/")) -> str | None:
    """Return the board model from the device tree (e.g. 'Raspberry Pi 4 Model B Rev 1.4')."""
    for place in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            return (root / place).read_bytes().rstrip(b"\x00").decode("utf-8", "replace").strip()
        except OSError:
            continue
    return None
