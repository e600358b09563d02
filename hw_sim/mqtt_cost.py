"""What one MQTT connection costs a load generator: memory, connect CPU, CPU per QoS 1 message.

``python -m hw_sim.mqtt_cost gmqtt --connections 1000 --messages 5`` (or ``aiomqtt``, which must then be
installed: it is not a dependency) opens the connections to a private Mosquitto, each subscribed to its own
topic, then every connection publishes ``--messages`` QoS 1 messages of 600 bytes (an event batch's size)
to itself and the run waits until all arrive. It prints one JSON line. docs/scale.md records why the load
generator uses gmqtt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from hw_sim.broker import MosquittoBroker
from hw_sim.loadgen import raise_fd_limit

PAYLOAD = b"x" * 600


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _gmqtt(port: int, n: int, msgs: int) -> tuple[float, float]:
    from gmqtt import Client

    got = 0
    done = asyncio.Event()

    def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        nonlocal got
        got += 1
        if got >= n * msgs:
            done.set()
        return 0

    clients = []
    for i in range(n):
        c = Client(f"cost-{i}")
        c.on_message = on_message
        await c.connect("127.0.0.1", port, keepalive=60)
        c.subscribe(f"cost/{i}", qos=1)
        clients.append(c)
    connected_cpu = time.process_time()
    await asyncio.sleep(0.5)  # the SUBACKs
    for _ in range(msgs):
        for i, c in enumerate(clients):
            c.publish(f"cost/{i}", PAYLOAD, qos=1)
    await asyncio.wait_for(done.wait(), 120)
    end_cpu = time.process_time()
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    return connected_cpu, end_cpu


async def _aiomqtt(port: int, n: int, msgs: int) -> tuple[float, float]:
    import aiomqtt

    got = 0
    done = asyncio.Event()

    async def reader(c: aiomqtt.Client) -> None:
        nonlocal got
        async for _ in c.messages:
            got += 1
            if got >= n * msgs:
                done.set()

    clients = []
    readers = []
    for i in range(n):
        c = aiomqtt.Client("127.0.0.1", port, identifier=f"cost-{i}")
        await c.__aenter__()
        await c.subscribe(f"cost/{i}", qos=1)
        clients.append(c)
        readers.append(asyncio.create_task(reader(c)))
    connected_cpu = time.process_time()
    await asyncio.sleep(0.5)
    for _ in range(msgs):
        await asyncio.gather(*(c.publish(f"cost/{i}", PAYLOAD, qos=1) for i, c in enumerate(clients)))
    await asyncio.wait_for(done.wait(), 120)
    end_cpu = time.process_time()
    for t in readers:
        t.cancel()
    await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients), return_exceptions=True)
    return connected_cpu, end_cpu


def measure(library: str, connections: int, messages: int) -> dict[str, object]:
    raise_fd_limit(2 * connections + 256)
    with MosquittoBroker() as broker:
        rss0, cpu0 = _rss_kib(), time.process_time()
        run = _gmqtt if library == "gmqtt" else _aiomqtt
        rss_box: list[int] = []

        async def go() -> tuple[float, float]:
            result = await run(broker.port, connections, messages)
            rss_box.append(_rss_kib())
            return result

        connected_cpu, end_cpu = asyncio.run(go())
    return {
        "library": library,
        "connections": connections,
        "rss_kib_per_connection": round((rss_box[0] - rss0) / connections, 1),
        "connect_cpu_ms_per_connection": round((connected_cpu - cpu0) * 1000 / connections, 2),
        "cpu_us_per_qos1_message": round((end_cpu - connected_cpu) * 1e6 / (connections * messages)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.mqtt_cost", description=__doc__.splitlines()[0] if __doc__
                                else "")
    p.add_argument("library", choices=["gmqtt", "aiomqtt"])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--messages", type=int, default=5, help="QoS 1 messages each connection sends to itself")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.library, a.connections, a.messages)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
