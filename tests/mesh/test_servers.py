"""The test harness itself: real servers come up healthy, stop cleanly, and a second region
mirrors a stream of the first through its leafnode connection."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.mesh.servers import NatsCluster, NatsServer


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_single_server_jetstream_and_clean_stop(nats_server: NatsServer) -> None:
    import nats

    async def go() -> int:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="t", subjects=["t.>"])
        ack = await js.publish("t.a", b"x")
        await nc.close()
        return int(ack.seq)

    assert _run(go()) == 1
    assert nats_server.stop() == 0


def test_cluster_of_three_replicates(nats_cluster: NatsCluster) -> None:
    import nats

    async def go() -> int:
        nc = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1)
        js = nc.jetstream()
        await js.add_stream(name="r3", subjects=["r3.>"], num_replicas=3)
        await js.publish("r3.a", b"x")
        info = await js.stream_info("r3")
        await nc.close()
        return len(info.cluster.replicas or []) if info.cluster else 0

    assert _run(go()) == 2  # the leader and two replicas


def test_second_region_mirrors_through_leafnode(
    nats_server: NatsServer, region_west: NatsServer
) -> None:
    import nats
    from nats.js.api import ExternalStream, StreamSource

    async def go() -> int:
        hub = await nats.connect(nats_server.url)
        await hub.jetstream().add_stream(name="src", subjects=["east.>"])
        for i in range(5):
            await hub.jetstream().publish("east.x", str(i).encode())
        west = await nats.connect(region_west.url)
        wjs = west.jetstream()
        await wjs.add_stream(
            name="src-west",
            mirror=StreamSource(name="src", external=ExternalStream(api="$JS.hub.API")),
        )
        deadline = asyncio.get_running_loop().time() + 60
        count = 0
        while asyncio.get_running_loop().time() < deadline:
            count = (await wjs.stream_info("src-west")).state.messages
            if count == 5:
                break
            await asyncio.sleep(0.05)  # polling a condition with a deadline
        await hub.close()
        await west.close()
        return int(count)

    assert _run(go()) == 5
