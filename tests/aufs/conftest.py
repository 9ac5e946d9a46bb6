"""AUFS fixtures: maintainer keys (once per session), a real loopback HTTP server with attack
hooks, repositories, tenant packages and nodes."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from nightcore import app
from nightcore.aufs.config import Limits, Settings
from nightcore.aufs.repo import AufsRepo, init_repo
from nightcore.aufs.update import Updater, UpdateReport
from nightcore.context import NodeContext
from nightcore.trust.keys import GeneratedKey, load_signer
from tests.conftest import HELLO_WAT, PASSPHRASE, Cli, wat_module

# Small transport bounds keep the slow-retrieval tests fast; nothing asserts on timing.
FAST_LIMITS = Limits(download_timeout=1.5, gap_timeout=0.5, connect_timeout=2.0)


# -- keys --------------------------------------------------------------------------------------


@dataclass
class Maintainers:
    keys: dict[str, GeneratedKey]
    signers: dict[str, Signer]

    def path(self, name: str) -> str:
        return str(self.keys[name].private_path)

    def pub(self, name: str) -> str:
        return str(self.keys[name].public_path)

    def keyid(self, name: str) -> str:
        return self.keys[name].key_id


@pytest.fixture(scope="session")
def maintainers(tmp_path_factory: pytest.TempPathFactory) -> Maintainers:
    d = tmp_path_factory.mktemp("aufs-keys")
    keys = {n: app.keygen(n, d, PASSPHRASE.encode()) for n in ("m1", "m2", "m3", "m4", "evil")}
    signers = {n: load_signer(str(k.private_path)) for n, k in keys.items()}
    return Maintainers(keys, signers)


# -- a real HTTP server with attack hooks ------------------------------------------------------

Hook = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.requests.append(path)
        hook = self.server.hooks.get(path)
        if hook is not None:
            hook(self)
            return
        file = (self.server.public / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.server.public.resolve()) or not file.is_file():
            self.send_error(404)
            return
        send_bytes(self, file.read_bytes())

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, public: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.public = public
        self.hooks: dict[str, Hook] = {}
        self.requests: list[str] = []


def send_bytes(h: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def serve(data: bytes) -> Hook:
    return lambda h: send_bytes(h, data)


def trickle(data: bytes, delay: float = 0.1) -> Hook:
    """Send one byte per ``delay`` seconds (inside the gap timeout, never finishing fast)."""

    def hook(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            for i in range(len(data)):
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
                time.sleep(delay)
        except OSError:
            return

    return hook


def endless(chunk: bytes = b"A" * 65536, limit: int = 64 * 1024 * 1024) -> Hook:
    """No Content-Length, bytes until the client hangs up (capped for safety)."""

    def hook(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        sent = 0
        try:
            while sent < limit:
                h.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            return

    return hook


def truncated(data: bytes, keep: int) -> Hook:
    """Announce the full length, send ``keep`` bytes, drop the connection."""

    def hook(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:keep])
        h.wfile.flush()
        h.close_connection = True

    return hook


@dataclass
class RepoServer:
    server: _Server
    url: str

    @property
    def metadata_url(self) -> str:
        return self.url + "metadata/"

    @property
    def target_url(self) -> str:
        return self.url + "targets/"

    @property
    def hooks(self) -> dict[str, Hook]:
        return self.server.hooks

    @property
    def requests(self) -> list[str]:
        return self.server.requests


def start_server(public: Path) -> RepoServer:
    server = _Server(public)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return RepoServer(server, f"http://127.0.0.1:{server.server_address[1]}/")


# -- repositories, packages, nodes -------------------------------------------------------------


def make_package(
    root: Path, tenant: str, version: str, key: GeneratedKey, extra: str = "", wat: str = HELLO_WAT
) -> Path:
    """A signed tenant package directory ``root/<tenant>-<version>/<tenant>/``."""
    d = root / f"{tenant}-{version}" / tenant
    d.mkdir(parents=True, exist_ok=True)
    (d / "module.wasm").write_bytes(wat_module(wat))
    (d / "manifest.toml").write_text(
        f'schema = 1\ntenant = "{tenant}"\nversion = "{version}"\n{extra}'
    )
    app.sign_tenant(d, str(key.private_path))
    return d


def publish(repo: AufsRepo, m: Maintainers, *names: str) -> None:
    for n in names or ("m1", "m2"):
        repo.sign("targets", m.signers[n])
    repo.publish()


@dataclass
class World:
    """One repository served over HTTP and one node that trusts it."""

    tmp: Path
    repo: AufsRepo
    server: RepoServer
    ws: NodeContext
    m: Maintainers
    publisher: GeneratedKey
    limits: Limits = field(default_factory=lambda: FAST_LIMITS)

    def updater(self, **kw: Any) -> Updater:
        settings = Settings(self.server.metadata_url, self.server.target_url, True, self.limits)
        return Updater(self.ws, settings, **kw)

    def update(self, **kw: Any) -> UpdateReport:
        return self.updater(**kw).run()

    def client(self) -> Any:
        from nightcore.aufs.client import AufsClient

        return AufsClient(
            self.ws.layout.state_dir / "aufs" / "metadata",
            self.server.metadata_url,
            limits=self.limits,
            target_dir=self.ws.layout.state_dir / "aufs" / "targets",
            target_base_url=self.server.target_url,
        )

    def package(self, tenant: str, version: str, **kw: Any) -> Path:
        return make_package(self.tmp / "pkgs", tenant, version, self.publisher, **kw)

    def add_and_publish(self, src: Path, *signers: str, **kw: Any) -> None:
        self.repo.add_target(src, **kw)
        publish(self.repo, self.m, *signers)

    def audit_events(self, name: str) -> list[dict[str, Any]]:
        import json

        path = self.ws.layout.state_dir / "audit" / "audit.jsonl"
        return [
            rec
            for line in path.read_text().splitlines()
            if (rec := json.loads(line))["event"] == name
        ]

    def metadata(self, role: str) -> bytes:
        return (self.repo.metadata_dir / f"{role}.json").read_bytes()


@pytest.fixture
def world(
    tmp_path: Path, maintainers: Maintainers, keys_dir: dict[str, GeneratedKey]
) -> Iterator[World]:
    from nightcore.aufs.client import init_client

    m = maintainers
    repo, result, _ = init_repo(
        tmp_path / "repo", [m.path("m1"), m.path("m2"), m.pub("m3")], threshold=2
    )
    assert result is not None
    server = start_server(repo.path / "public")
    ws = app.init_workspace(tmp_path / "ws")
    app.trust_add_key(ws, keys_dir["alice"].public_path, scope="*")
    app.trust_add_key(ws, keys_dir["maint"].public_path, scope="*", role="maintainer")
    init_client(
        ws.layout.state_dir / "aufs" / "metadata",
        (repo.metadata_dir / "1.root.json").read_bytes(),
        limits=FAST_LIMITS,
    )
    w = World(tmp_path, repo, server, ws, m, keys_dir["alice"])
    yield w
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def cli_ws(world: World, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys, world.ws.root)


# -- crafting metadata as an attacker (or a compromised online key) would ----------------------

SER = JSONSerializer(compact=False)


def resign(md: Metadata[Any], *signers: Signer) -> bytes:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md.to_bytes(SER)


def forge_chain(
    w: World,
    targets_signers: list[Signer],
    *,
    edit_targets: Callable[[Targets], None] | None = None,
    targets_raw: bytes | None = None,
) -> dict[str, bytes]:
    """New targets (signed by ``targets_signers``), plus snapshot and timestamp re-signed with
    the repository's online keys: what an attacker holding the online keys could serve.
    Returns server paths -> bytes."""
    repo = w.repo
    snap_s = repo._online_signer("snapshot")
    ts_s = repo._online_signer("timestamp")
    t_md = Metadata[Targets].from_bytes(w.metadata("targets"))
    t_md.signed.version += 1
    if edit_targets is not None:
        edit_targets(t_md.signed)
    t_bytes = targets_raw if targets_raw is not None else resign(t_md, *targets_signers)
    s_md = Metadata[Snapshot].from_bytes(w.metadata("snapshot"))
    s_md.signed.version += 1
    s_md.signed.meta["targets.json"] = MetaFile.from_data(t_md.signed.version, t_bytes, ["sha256"])
    s_bytes = resign(s_md, snap_s)
    ts_md = Metadata[Timestamp].from_bytes(w.metadata("timestamp"))
    ts_md.signed.version += 1
    ts_md.signed.snapshot_meta = MetaFile.from_data(s_md.signed.version, s_bytes, ["sha256"])
    ts_md.signed.expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    ts_bytes = resign(ts_md, ts_s)
    return {
        f"/metadata/{t_md.signed.version}.targets.json": t_bytes,
        f"/metadata/{s_md.signed.version}.snapshot.json": s_bytes,
        "/metadata/timestamp.json": ts_bytes,
    }


def install_hooks(w: World, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        w.server.hooks[path] = serve(data)


def copy_public(w: World) -> Path:
    """Snapshot of the public dir (to replay old metadata later)."""
    dest = w.tmp / f"public-copy-{len(list(w.tmp.glob('public-copy-*')))}"
    shutil.copytree(w.repo.path / "public", dest)
    return dest
