"""AUFS against python-tuf's bare ``Updater``, same repository, same loopback server, same run.

Measures (median of several rounds, each on fresh local state where it matters):

1. refresh when nothing changed  -- AUFS client (our fetcher, limits, error mapping) vs a bare
   ``tuf.ngclient.Updater``; both build their updater from the trusted local root, as a new
   process would;
2. refresh + download of 100 targets into an empty cache -- AUFS client vs bare ``Updater``;
3. ``aufs update`` of 100 tenants (refresh, download, safe extraction, trust-layer
   verification, atomic install, audit lines) -- shown beside (2)'s bare time, since a bare
   ``Updater`` can only download.

    .venv/bin/python benchmarks/aufs.py [--targets 100] [--rounds 11]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tuf.ngclient import Updater

from nightcore import app
from nightcore.aufs.client import AufsClient, init_client
from nightcore.aufs.config import Limits, Settings
from nightcore.aufs.repo import init_repo
from nightcore.aufs.serve import serve_in_thread
from nightcore.aufs.update import Updater as AufsUpdater
from nightcore.context import NodeContext
from nightcore.trust.keys import load_signer

PASS = "benchmark-passphrase"  # noqa: S105 - throwaway benchmark keys
HELLO = (
    b"\x00asm\x01\x00\x00\x00\x01\x04\x01`\x00\x00\x03\x02\x01\x00\x07\n\x01\x06_start\x00\x00"
    b"\n\x04\x01\x02\x00\x0b"
)


def median_ms(
    fn: Callable[[], object], rounds: int, setup: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def paired_ms(
    a: Callable[[], object],
    b: Callable[[], object],
    rounds: int,
    setup: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Medians of ``a`` and ``b``, interleaved (a, b, b, a, ...) so drift hits both alike."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(rounds):
        order = [(a, ta), (b, tb)] if i % 2 == 0 else [(b, tb), (a, ta)]
        for fn, out in order:
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ta), statistics.median(tb)


def build(root: Path, n: int) -> tuple[Path, NodeContext, list[str]]:
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = PASS
    keys = root / "keys"
    m = [app.keygen(f"m{i}", keys, PASS.encode()) for i in (1, 2, 3)]
    pub = app.keygen("publisher", keys, PASS.encode())
    repo, _, _ = init_repo(root / "repo", [str(k.private_path) for k in m], threshold=2)
    for i in range(n):
        d = root / "pkgs" / f"t{i:03d}"
        d.mkdir(parents=True)
        (d / "module.wasm").write_bytes(HELLO)
        (d / "manifest.toml").write_text(f'schema = 1\ntenant = "t{i:03d}"\nversion = "1.0.0"\n')
        app.sign_tenant(d, str(pub.private_path))
        repo.add_target(d)
    for k in m[:2]:
        repo.sign("targets", load_signer(str(k.private_path)))
    repo.publish()
    ws = app.init_workspace(root / "ws-template")
    app.trust_add_key(ws, pub.public_path, scope="*")
    paths = [f"tenants/t{i:03d}/1.0.0.tar.gz" for i in range(n)]
    return repo.path, ws, paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nightcore-aufs-bench-"))
    try:
        t0 = time.perf_counter()
        repo, template, paths = build(tmp, args.targets)
        print(f"setup: {args.targets} signed tenant targets in {time.perf_counter() - t0:.1f} s")
        server, url = serve_in_thread(repo / "public")
        murl, turl = url + "metadata/", url + "targets/"
        root_bytes = (repo / "public" / "metadata" / "1.root.json").read_bytes()
        limits = Limits()

        # Trusted metadata dirs, fully refreshed once (state "nothing changed").
        aufs_md, bare_md = tmp / "aufs-md", tmp / "bare-md"
        init_client(aufs_md, root_bytes, limits=limits)
        AufsClient(aufs_md, murl, limits=limits).refresh()
        Updater(str(bare_md), murl, bootstrap=root_bytes).refresh()

        def aufs_refresh() -> None:
            AufsClient(aufs_md, murl, limits=limits).refresh()

        def bare_refresh() -> None:
            Updater(str(bare_md), murl, bootstrap=None).refresh()

        r_aufs, r_bare = paired_ms(aufs_refresh, bare_refresh, args.rounds * 20)

        # Refresh + download every target into fresh state.
        fresh_a, fresh_b, tdir_a, tdir_b = (tmp / n for n in ("fa", "fb", "ta", "tb"))

        def reset_downloads() -> None:
            for d in (fresh_a, fresh_b, tdir_a, tdir_b):
                shutil.rmtree(d, ignore_errors=True)
            init_client(fresh_a, root_bytes, limits=limits)
            Updater(str(fresh_b), murl, bootstrap=root_bytes)

        def aufs_download() -> None:
            c = AufsClient(fresh_a, murl, limits=limits, target_dir=tdir_a, target_base_url=turl)
            c.refresh()
            for p in paths:
                c.download(c.targetinfo(p))

        def bare_download() -> None:
            tdir_b.mkdir()
            u = Updater(str(fresh_b), murl, str(tdir_b), turl, bootstrap=None)
            u.refresh()
            for p in paths:
                info = u.get_targetinfo(p)
                assert info is not None
                u.download_target(info)

        d_aufs, d_bare = paired_ms(aufs_download, bare_download, args.rounds, reset_downloads)

        # Full update: a fresh copy of the node workspace each round.
        wsdir = tmp / "ws"
        holder: dict[str, NodeContext] = {}

        def reset_ws() -> None:
            shutil.rmtree(wsdir, ignore_errors=True)
            shutil.copytree(template.root, wsdir, symlinks=True)
            ws = NodeContext(wsdir)
            init_client(ws.layout.state_dir / "aufs" / "metadata", root_bytes, limits=limits)
            holder["ws"] = ws

        def full_update() -> None:
            rep = AufsUpdater(holder["ws"], Settings(murl, turl, True, limits)).run()
            assert rep.ok and sum(o.action == "installed" for o in rep.outcomes) == len(paths)

        u_full = median_ms(full_update, args.rounds, reset_ws)
        server.shutdown()

        n = len(paths)
        print(f"{'measure':<44} {'aufs ms':>9} {'bare tuf ms':>12} {'ratio':>6}")
        print(
            f"{'refresh, nothing changed':<44} {r_aufs:9.1f} {r_bare:12.1f} {r_aufs / r_bare:6.2f}"
        )
        print(
            f"{f'refresh + download {n} targets':<44} {d_aufs:9.1f} {d_bare:12.1f} "
            f"{d_aufs / d_bare:6.2f}"
        )
        print(
            f"{f'aufs update, {n} tenants (verify+install+audit)':<44} {u_full:9.1f} "
            f"{d_bare:12.1f} {u_full / d_bare:6.2f}"
        )
        print(f"per tenant, full update: {u_full / n:.2f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
