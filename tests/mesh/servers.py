"""Real ``nats-server`` processes for the mesh tests (and benchmarks/mesh.py).

Every server listens on free loopback ports (client, HTTP monitor, cluster route, leafnode),
is ready when its monitor's ``/healthz`` answers 200 (polled with a deadline, never a sleep),
and stops with SIGINT (``nats-server`` 2.9 exits 1 on SIGTERM). Each server has a config
file of its own (``server.conf`` in its directory): flags cannot express a JetStream domain or
leafnode remotes, and one format for every topology keeps them alike.

- :func:`single_server` / :class:`NatsServer`: one server with JetStream,
- :class:`NatsCluster`: three servers routed into one cluster (streams with 3 replicas),
- :func:`second_region`: a server with its own JetStream domain joined to a hub as a leafnode.

``NATS_SERVER`` names the binary (default: ``nats-server`` on PATH); tests skip with a clear
reason when it is missing (``make test`` installs it through tools/system_deps.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def nats_server_binary() -> str | None:
    return os.environ.get("NATS_SERVER") or shutil.which("nats-server")


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before by this process (the kernel may give
    a just-closed port again: a cluster needs a dozen distinct ones)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _q(value: str) -> str:
    return json.dumps(value)  # a quoted string the NATS config parser reads


@dataclass
class NatsServer:
    """One ``nats-server`` process (start with :meth:`start`, stop with :meth:`stop`)."""

    directory: Path
    name: str = "n1"
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    cluster_port: int | None = None  # set: part of a cluster
    routes: list[int] = field(default_factory=list)  # every cluster port (its own is fine)
    cluster_name: str = "nightcore"
    no_advertise: bool = False  # clients learn no other server (stay on the URLs they got)
    leafnode_port: int | None = None  # set: accepts leafnode connections
    leaf_remotes: list[int] = field(default_factory=list)  # hub leafnode ports to join
    domain: str | None = None  # its JetStream domain
    extra_conf: str = ""  # more config (authorization, tls)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def config_text(self) -> str:
        lines = [
            f"server_name: {_q(self.name)}",
            f'listen: "127.0.0.1:{self.port}"',
            f'http: "127.0.0.1:{self.monitor_port}"',
            "jetstream {",
            f"  store_dir: {_q(str(self.store_dir))}",
            *([f"  domain: {_q(self.domain)}"] if self.domain else []),
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(_q(f"nats-route://127.0.0.1:{p}") for p in self.routes)
            lines += [
                "cluster {",
                f"  name: {_q(self.cluster_name)}",
                f'  listen: "127.0.0.1:{self.cluster_port}"',
                f"  routes: [{routes}]",
                *(["  no_advertise: true"] if self.no_advertise else []),
                "}",
            ]
        if self.leafnode_port is not None or self.leaf_remotes:
            lines.append("leafnodes {")
            if self.leafnode_port is not None:
                lines.append(f'  listen: "127.0.0.1:{self.leafnode_port}"')
            if self.leaf_remotes:
                remotes = ", ".join(
                    "{{ urls: [{}] }}".format(_q(f"nats-leaf://127.0.0.1:{p}"))
                    for p in self.leaf_remotes
                )
                lines.append(f"  remotes: [{remotes}]")
            lines.append("}")
        if self.extra_conf:
            lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    def start(self, *, wait: bool = True) -> NatsServer:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "server.conf"
        conf.write_text(self.config_text())
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        if wait:
            self.wait_healthy()
        return self

    def healthz(self) -> int | None:
        """The monitor's /healthz status (200 healthy, 503 not yet), None if not listening."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            if self.healthz() == 200:
                return
            time.sleep(0.02)  # polling a condition with a deadline
        raise RuntimeError(f"nats-server {self.name} never became healthy: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGINT and wait (exit 0 on a clean stop); None if it was not running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL (a crash): the store directory stays for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def restart(self, *, wait: bool = True) -> NatsServer:
        """Start again on the same ports and store (after :meth:`stop` or :meth:`kill`)."""
        return self.start(wait=wait)


@dataclass
class NatsCluster:
    """Three routed servers: one cluster."""

    servers: list[NatsServer]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url_list(self) -> str:
        """For ``--mesh``: every server, comma-separated."""
        return ",".join(self.urls)

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        for s in self.servers:
            s.wait_healthy(timeout_s)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def make_cluster(
    directory: Path, size: int = 3, *, extra_conf: str = "", no_advertise: bool = False
) -> NatsCluster:
    """Start ``size`` servers routed into one cluster and wait until all are healthy (a lone
    clustered server stays 503: start all, then wait)."""
    routes = [free_port() for _ in range(size)]
    servers = [
        NatsServer(
            directory / f"n{i + 1}",
            name=f"n{i + 1}",
            cluster_port=routes[i],
            routes=routes,
            extra_conf=extra_conf,
            no_advertise=no_advertise,
        )
        for i in range(size)
    ]
    cluster = NatsCluster(servers)
    try:
        for s in servers:
            s.start(wait=False)
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def second_region(directory: Path, hub: NatsServer, domain: str = "west") -> NatsServer:
    """A server with its own JetStream ``domain`` joined to ``hub`` as a leafnode (``hub``
    needs a ``leafnode_port``: give it one before starting it). Subjects cross the leafnode
    connection: give each region its own subjects; streams of the other domain are addressed
    through ``$JS.<domain>.API`` (``nc.jetstream(domain=...)``, a mirror's ExternalStream)."""
    if hub.leafnode_port is None:
        raise ValueError("the hub has no leafnode port")
    return NatsServer(
        directory, name=f"region-{domain}", leaf_remotes=[hub.leafnode_port], domain=domain
    ).start()


@contextlib.contextmanager
def running(server: NatsServer) -> Iterator[NatsServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
