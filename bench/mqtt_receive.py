"""CPU per received message of MQTT client libraries, as the hub would use them.

Measures: a subscriber's own CPU (process time, all threads) per QoS 1 message while it
drains ``--messages`` messages (the bench's 2,570-byte metrics payload) that a persistent
MQTT v5 session holds: connect with the same client id and ``clean_start`` off, Receive
Maximum 1,000, and a PUBACK for every message (sent as the hub sends it after a commit;
here at once). Nothing is parsed or stored: the receive path alone. Each client runs in a
fresh process; the clients alternate for ``--rounds`` rounds on one Mosquitto.

Baseline in the same run: paho-mqtt 2.2 (the hub's client, ``manual_ack``). Against it: a
plain asyncio Protocol with the ``mqtt5`` codec (Rust; PUBLISH parsed by ``mqtt5.read``,
PUBACK built by it), skipped with one line when not installed; and the hub's own session
(hub/ingest/session.py, built on that codec: its thread, its callback per read, acks handed
over with ``call_soon_threadsafe`` as the hub's writer hands them). gmqtt 0.8 was tried
too: with ``clean_session`` off and ``optimistic_acknowledgement`` off its subscriber
received nothing of the stored session within 120 s here, so it is left out.

    python3 -m bench.mqtt_receive [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hub_ingest import template
from tests.servers import MosquittoServer

TOPIC = "bench/dev-1/metrics"
CLIENTS = {"paho": "paho.mqtt", "mqtt5": "mqtt5", "session": "mqtt5"}

# --- the subscribers, each run as ``python -m bench.mqtt_receive --client NAME ...`` -------


def _paho(port: int, client_id: str, count: int, subscribe_only: bool) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1000
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=True)
    state = {"n": 0, "start": 0.0, "end": 0.0}

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if state["n"] == 0:
            state["start"] = time.process_time()
        c.ack(msg.mid, msg.qos)
        state["n"] += 1
        if state["n"] == count:
            state["end"] = time.process_time()
            c.disconnect()

    def on_connect(c: mqtt.Client, *args: object) -> None:
        if subscribe_only:
            c.subscribe("bench/+/metrics", qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda c, *a: c.disconnect()
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_forever()
    return 0.0 if subscribe_only else (state["end"] - state["start"]) / max(1, count - 1)


def _mqtt5(port: int, client_id: str, count: int, subscribe_only: bool) -> float:
    import asyncio

    import mqtt5

    class Subscriber(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[float]) -> None:
            self.buffer = bytearray()
            self.done = done
            self.n, self.start = 0, 0.0
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            transport.write(mqtt5.ConnectPacket(client_id, clean_start=False,
                                                session_expiry_interval=3600,
                                                receive_max=1000).write())

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            view = memoryview(self.buffer)
            used = 0
            acks = []
            while True:
                try:
                    packet, size = mqtt5.read(view[used:])
                except Exception:  # an incomplete packet: wait for more bytes
                    break
                used += size
                if isinstance(packet, mqtt5.PublishPacket):
                    if self.n == 0:
                        self.start = time.process_time()
                    if packet.packet_id is not None:
                        acks.append(mqtt5.PubAckPacket(packet.packet_id).write())
                    self.n += 1
                elif isinstance(packet, mqtt5.ConnAckPacket) and subscribe_only:
                    assert self.transport is not None
                    self.transport.write(mqtt5.SubscribePacket(
                        1, [mqtt5.TopicFilter("bench/+/metrics", max_qos=mqtt5.QoS.AT_LEAST_ONCE)]
                    ).write())
                elif isinstance(packet, mqtt5.SubAckPacket) and not self.done.done():
                    self.done.set_result(0.0)
            view.release()
            del self.buffer[:used]
            if acks and self.transport is not None:
                self.transport.write(b"".join(acks))
            if self.n >= count and not self.done.done():
                self.done.set_result((time.process_time() - self.start) / max(1, count - 1))

    async def run() -> float:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        transport, _ = await loop.create_connection(lambda: Subscriber(done), "127.0.0.1", port)
        result = await done
        transport.write(mqtt5.DisconnectPacket().write())
        transport.close()
        return result

    return asyncio.run(run())


def _session(port: int, client_id: str, count: int, subscribe_only: bool) -> float:
    import threading

    from hub.ingest.session import BrokerSession
    from shared.config import parse_broker_url

    session = BrokerSession(client_id, parse_broker_url(f"mqtt://127.0.0.1:{port}"),
                            session_expiry_s=3600, receive_maximum=1000)
    done = threading.Event()
    state = {"n": 0, "start": 0.0, "end": 0.0}

    def on_messages(packets: list[Any], generation: int) -> None:
        if state["n"] == 0:
            state["start"] = time.process_time()
        session.ack([(p.packet_id, int(p.qos), generation) for p in packets])
        state["n"] += len(packets)
        if state["n"] >= count:
            state["end"] = time.process_time()
            done.set()

    session.on_messages = on_messages
    if subscribe_only:
        session.on_connected = lambda: session.subscribe(["bench/+/metrics"], qos=1)
        session.start()
        time.sleep(1)  # the SUBACK (a bench, not a test)
    else:
        session.start()
        done.wait(120)
    session.stop()
    return 0.0 if subscribe_only else (state["end"] - state["start"]) / max(1, count - 1)


SUBSCRIBERS = {"paho": _paho, "mqtt5": _mqtt5, "session": _session}

# --- the driver -------------------------------------------------------------------------------


def _subscriber(name: str, port: int, client_id: str, count: int, subscribe_only: bool) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.mqtt_receive", "--client", name,
                          "--port", str(port), "--client-id", client_id, "--messages", str(count)]
                         + (["--subscribe-only"] if subscribe_only else []),
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"{name}: {out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_s_per_message"])


def _fill(port: int, payload: bytes, count: int) -> None:
    import paho.mqtt.client as mqtt

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(TOPIC, payload, qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    pub.loop_stop()
    pub.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"comma-separated, of {', '.join(CLIENTS)} (paho is the baseline)")
    parser.add_argument("--client", choices=list(SUBSCRIBERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--subscribe-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        per = SUBSCRIBERS[args.client](args.port, args.client_id, args.messages,
                                       args.subscribe_only)
        print(json.dumps({"cpu_s_per_message": per}))
        return 0
    names = []
    for name, module in CLIENTS.items():
        if name not in args.clients.split(","):
            continue
        if importlib.util.find_spec(module.split(".")[0]) is None:
            print(f"skipping {name}: not installed (pip install {name})")
        else:
            names.append(name)
    payload = template("0" * 32, small=True)
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-mqtt-receive-"))
    broker = MosquittoServer(work / "mqtt", persistence=False).start()
    results: dict[str, list[float]] = {n: [] for n in names}
    try:
        for round_ in range(args.rounds):
            for name in names:
                client_id = f"bench-{name}-{round_}"
                _subscriber(name, broker.port, client_id, 0, subscribe_only=True)
                _fill(broker.port, payload, args.messages)
                per = _subscriber(name, broker.port, client_id, args.messages, False)
                results[name].append(per * 1e6)
                print(f"round {round_ + 1}/{args.rounds} {name}: {per * 1e6:.1f} µs/message",
                      flush=True)
    finally:
        broker.stop()
    base = sorted(results["paho"])[len(results["paho"]) // 2] if results.get("paho") else None
    print(f"MQTT v5 receive, QoS 1, {len(payload):,}-byte messages, {args.messages:,} from a "
          f"persistent session, PUBACK each; subscriber CPU per message, median of "
          f"{args.rounds}:")
    for name, values in results.items():
        median = sorted(values)[len(values) // 2]
        ratio = f" ({median / base:.2f}× paho)" if base else ""
        print(f"  {name}: {median:.1f} µs{ratio}; all: {', '.join(f'{v:.1f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
