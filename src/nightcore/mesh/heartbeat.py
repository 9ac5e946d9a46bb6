"""Node heartbeats: each node puts its state under its name in the ``<prefix>-nodes`` KV
bucket every ``heartbeat_s`` seconds (and ``alive: false`` when it stops).

Value (JSON): ``node``, ``alive``, ``cordoned`` (this node takes no mesh work), ``admitted``
(caught up with the trust stream), ``version`` (Night Core), ``ts`` (Unix time of this
heartbeat), ``started``, ``pid``, ``trust`` (``seq``, ``changes_version``,
``revocations_version`` applied) and whatever services put in ``agent.heartbeat_fields``.
``mesh status`` calls a node whose last heartbeat is older than three intervals not alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nightcore.mesh.agent import MeshAgent


def heartbeat_value(agent: MeshAgent, *, alive: bool) -> dict[str, Any]:
    from nightcore import __version__
    from nightcore.mesh.state import trust_versions

    return {
        "node": agent.config.node_name,
        "alive": alive,
        "cordoned": agent.node_cordoned(),
        "admitted": agent.admitted.is_set(),
        "version": __version__,
        "ts": round(time.time(), 3),
        "interval_s": agent.config.heartbeat_s,
        "started": round(agent.started, 3),
        "pid": os.getpid(),
        "trust": trust_versions(agent.ctx),
        **{k: v for k, v in agent.heartbeat_fields.items() if k not in ("node", "ts")},
    }


class HeartbeatService:
    name = "heartbeat"

    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent

    async def run(self, agent: MeshAgent) -> None:
        assert agent.stopping is not None
        kv = await agent.ensure_kv(agent.names.nodes_bucket, history=1)
        key = agent.config.node_name
        domain = agent.config.js_domain

        async def put(value: dict[str, Any]) -> None:
            data = json.dumps(value, sort_keys=True).encode()
            if domain is None:
                await kv.put(key, data)
                return
            # A bucket in another JetStream domain (a node in a second region): `$KV.` does
            # not cross the leafnode, the domain's API prefix does (mapped to `$KV.` there).
            await agent.js.publish(f"$JS.{domain}.API.$KV.{agent.names.nodes_bucket}.{key}", data)

        try:
            while not agent.stopping.is_set():
                if agent.connected.is_set():
                    await put(heartbeat_value(agent, alive=True))
                # The next one after the interval, or at once when the node's state changed
                # (caught up, a trust document applied) or it stops.
                assert agent.beat is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(agent.beat.wait(), timeout=agent.config.heartbeat_s)
                agent.beat.clear()
        finally:
            if agent.stopping.is_set() and agent.connected.is_set():
                final = heartbeat_value(agent, alive=False)
                from nats.errors import Error as NatsError

                # Best effort: `mesh status` ages a silent node out anyway.
                with contextlib.suppress(NatsError, TimeoutError, OSError):
                    await asyncio.wait_for(put(final), timeout=3)
