"""Fixtures of the mesh tests: real nats-server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh.servers import (
    NatsCluster,
    NatsServer,
    free_port,
    make_cluster,
    nats_server_binary,
    second_region,
)


@pytest.fixture(autouse=True)
def _need_nats_server() -> None:
    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed (make test installs it: tools/system_deps.py)")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """One JetStream server (JetStream domain ``hub``, with a leafnode port: a second region
    can join it and address its streams through ``$JS.hub.API``)."""
    server = NatsServer(tmp_path / "nats", leafnode_port=free_port(), domain="hub").start()
    yield server
    server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three JetStream servers routed into one cluster."""
    cluster = make_cluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()


@pytest.fixture
def region_west(tmp_path: Path, nats_server: NatsServer) -> Iterator[NatsServer]:
    """A second region (JetStream domain ``west``) joined to ``nats_server`` as a leafnode."""
    server = second_region(tmp_path / "west", nats_server, "west")
    yield server
    server.stop()
