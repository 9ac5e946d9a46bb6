"""AUFS in FIPS mode: only FIPS-approved keys (ECDSA P-256/P-384) count towards a TUF threshold.

Real repositories (keys generated at test time) served by a real HTTP server on 127.0.0.1, and
the ``nightcore`` CLI as a subprocess, as an operator drives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nightcore import app
from nightcore.aufs.repo import init_repo
from nightcore.trust.keys import GeneratedKey, generate_key
from tests.aufs.conftest import Maintainers, World, start_server
from tests.conftest import PASSPHRASE, run_cli_subprocess


def _nc(ws: Path, *args: str) -> tuple[int, str, str]:
    res = run_cli_subprocess("-w", str(ws), *args)
    assert "Traceback" not in res.err, res.err
    return res.code, res.out, res.err


@pytest.fixture(scope="module")
def p256_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneratedKey]:
    d = tmp_path_factory.mktemp("aufs-p256")
    keys = {n: app.keygen(n, d, PASSPHRASE.encode(), fips=True) for n in ("e1", "e2")}
    keys["online"] = generate_key("online", d, None, fips=True)  # unencrypted online key
    return keys


def test_fips_node_refuses_ed25519_only_metadata(world: World, tmp_path: Path) -> None:
    """The world's repository is signed by Ed25519 keys only. A node that trusted it before
    FIPS was on refreshes fine without FIPS, and is refused with --fips; a FIPS workspace
    refuses to bootstrap trust from it at all."""
    world.add_and_publish(world.package("hello", "1.0.0"))
    ws = world.ws.root
    url = ["--metadata-url", world.server.metadata_url]
    code, out, err = _nc(ws, "--fips", "aufs", "client", "refresh", *url, "--json")
    assert code == 2, (out, err)
    assert "error[ALGORITHM_NOT_ALLOWED]" in err and "FIPS" in err
    refused = world.audit_events("aufs_refused")
    assert refused and refused[-1]["data"]["code"] == "ALGORITHM_NOT_ALLOWED"
    # Control: the same node, the same repository, without FIPS.
    code, out, err = _nc(ws, "aufs", "client", "refresh", *url, "--json")
    assert code == 0, err
    assert json.loads(out)["versions"]["targets"] >= 2

    fips_ws = tmp_path / "fips-ws"
    assert run_cli_subprocess("init", str(fips_ws), "--fips").code == 0
    root = world.repo.metadata_dir / "1.root.json"
    code, _out, err = _nc(fips_ws, "aufs", "client", "init", str(root))
    assert code == 2 and "error[ALGORITHM_NOT_ALLOWED]" in err
    assert not (fips_ws / "state/aufs/metadata/root.json").exists()


def _ecdsa_world(
    tmp_path: Path, m: Maintainers, keys: dict[str, GeneratedKey], *, ed25519_targets: bool
) -> tuple[Path, str]:
    """A repository whose root and online keys are P-256; targets keys are Ed25519 (m1, m2) or
    P-256. Returns (its 1.root.json, the metadata URL of its server)."""
    targets = [m.path("m1"), m.path("m2")] if ed25519_targets else None
    repo, result, _ = init_repo(
        tmp_path / "repo",
        [str(keys["e1"].private_path), str(keys["e2"].private_path)],
        threshold=2,
        targets_keys=targets,
        targets_threshold=2,
        online_key=str(keys["online"].private_path),
    )
    assert result is not None
    server = start_server(repo.path / "public")
    return repo.metadata_dir / "1.root.json", server.metadata_url


@pytest.mark.parametrize("ed25519_targets", [True, False])
def test_fips_node_counts_only_approved_keys(
    tmp_path: Path,
    maintainers: Maintainers,
    p256_keys: dict[str, GeneratedKey],
    ed25519_targets: bool,
) -> None:
    """Root and online roles signed with P-256: a FIPS node bootstraps trust. Its refresh is
    refused when targets' threshold is met only by Ed25519 signatures, accepted when P-256."""
    os.environ.setdefault("NIGHTCORE_KEY_PASSPHRASE", PASSPHRASE)
    root, url = _ecdsa_world(tmp_path, maintainers, p256_keys, ed25519_targets=ed25519_targets)
    ws = tmp_path / "ws"
    assert run_cli_subprocess("init", str(ws), "--fips").code == 0
    code, _out, err = _nc(ws, "aufs", "client", "init", str(root))
    assert code == 0, err
    code, out, err = _nc(ws, "aufs", "client", "refresh", "--metadata-url", url, "--json")
    if ed25519_targets:
        assert code == 2 and "error[ALGORITHM_NOT_ALLOWED]" in err, (out, err)
        assert "targets" in err
    else:
        assert code == 0, err
        assert json.loads(out)["versions"]["targets"] == 1
