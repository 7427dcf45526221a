"""The floor under the agent's CPU: what the agent's stack costs with no metric work at all.

Once a second, on the same schedule and the same MQTT path as the agent (paho driven from
the loop, MQTT v5, QoS 1, a ~3.4 KB payload), this reads the same kernel files the agent
reads (/proc/stat, meminfo, net/dev, loadavg, each disk's /sys/block stat, statvfs of each
partition) and publishes a fixed payload: no parsing, no rates, no message building, no
JSON. ``bench.agent_cost --floor`` runs it beside the agent, so the difference between
the two is what fleetpulse's own per-second code costs.

    python3 -m bench.agent_floor --broker-url mqtt://127.0.0.1:1883 --topic t/floor/metrics
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from types import FrameType

from agent.collect import Collector
from shared.config import parse_broker_url
from shared.mqtt import MqttConnection

PAYLOAD_BYTES = 3400  # about the size of one of this VM's readings


def kernel_files(collector: Collector) -> tuple[list[int], list[str]]:
    """Open the files the agent reads each second; return them and the mountpoints."""
    mounts, disks = collector.watched()  # the same partitions and disks as the agent's
    paths = ["/proc/stat", "/proc/meminfo", "/proc/net/dev", "/proc/loadavg"]
    paths += [f"/sys/block/{disk}/stat" for disk in disks]
    return [os.open(p, os.O_RDONLY) for p in paths], mounts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--interval-s", type=float, default=1.0)
    args = parser.parse_args()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fds, mounts = kernel_files(Collector())
    payload = b"{" + b" " * (PAYLOAD_BYTES - 2) + b"}"
    mqtt = MqttConnection(f"bench-floor-{os.getpid()}", parse_broker_url(args.broker_url),
                          network_thread=False)
    mqtt.start()
    tick = time.monotonic()
    while not stop.is_set():
        mqtt.service()
        if time.monotonic() >= tick:
            for fd in fds:
                os.pread(fd, 65536, 0)
            for mountpoint in mounts:
                os.statvfs(mountpoint)
            if mqtt.connected:
                mqtt.publish(args.topic, payload, qos=1)
            tick += args.interval_s
        stop.wait(max(0.0, min(tick - time.monotonic(), mqtt.service_due_in())))
    mqtt.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
