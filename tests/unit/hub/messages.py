"""Valid wire messages for hub tests, built by the agent's own encoder from synthetic samples."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import orjson

from agent.collect import Sample, StaticFacts
from agent.encode import build_meta, build_metrics, encode
from agent.rates import CoreTimes

MEMORY = {"total_bytes": 100, "available_bytes": 60, "used_bytes": 40, "free_bytes": 50,
          "percent": 40.0, "swap_total_bytes": 10, "swap_used_bytes": 0, "swap_free_bytes": 10,
          "swap_percent": 0.0, "swap_in_bytes": 0, "swap_out_bytes": 0}

BASE = Sample(
    monotonic_s=1.0, core_times=[CoreTimes(0, 100), CoreTimes(0, 100)],
    freq_mhz=(1500.0, 600.0, 1800.0), ctx_switches=1000, interrupts=500, soft_interrupts=200,
    syscalls=None, load=(1.0, 0.5, 0.25), memory=MEMORY,
    partitions=[{"mountpoint": "/", "device": "/dev/mmcblk0p2", "fstype": "ext4",
                 "total_bytes": 100, "used_bytes": 50, "free_bytes": 50, "percent": 50.0}],
    disk_io={"mmcblk0": (1, 2, 1000, 2000)},
    net_io={"eth0": (100, 200, 1, 2, 0, 0, 0, 0)},
    temperatures=[{"sensor": "cpu_thermal", "label": "", "celsius": 51.0}],
    battery=(None, None, None), throttled_raw=0x50005)


# One clock for every test that validates these messages: stamped and checked at the same
# instant, however long the suite has been running (a "now" read later would see them old,
# one read earlier would see them from the future).
NOW = datetime.now(timezone.utc)


def metrics(device_id: str = "pi-1", seq: int = 2, epoch_s: float | None = None,
            session_id: str = "s1") -> dict[str, Any]:
    cur = replace(BASE, monotonic_s=2.0, core_times=[CoreTimes(30, 200), CoreTimes(10, 200)],
                  ctx_switches=1100)
    message = build_metrics(BASE, cur, device_id=device_id, session_id=session_id, seq=seq,
                            epoch_s=NOW.timestamp() if epoch_s is None else epoch_s, interval_s=1.0)
    return orjson.loads(encode(message))


def metrics_bytes(**kwargs: Any) -> bytes:
    return orjson.dumps(metrics(**kwargs))


def meta_bytes(device_id: str = "pi-1") -> bytes:
    facts = StaticFacts("pi", "Raspberry Pi OS", "6.6", "aarch64", "Raspberry Pi 4", 4, 4, 10**9)
    return encode(build_meta(facts, device_id=device_id, session_id="s1", interval_s=1.0))
