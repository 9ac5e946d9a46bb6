"""Hostile bundles against ``proof verify``: decompression bombs hidden in tar metadata and
absurdly deep member names. Real archives built here, the real CLI in a subprocess, a real
Ed25519 key generated at test time."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The child may use this much address space; before the fix a 3 GiB PAX header made it die
# with MemoryError (a traceback, no JSON) instead of allocating gigabytes on a shared host.
_ADDRESS_SPACE = 1 << 30
# Peak resident memory a verify of a bomb may reach (the interpreter and imports included).
_PEAK_RSS_KIB = 256 * 1024

_RUNNER = """
import json, resource, subprocess, sys
limit = int(sys.argv[1])
def cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
p = subprocess.run([sys.executable, "-m", "nightcore", *sys.argv[2:]], capture_output=True,
                   text=True, preexec_fn=cap, timeout=300)
print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.fixture(scope="module")
def node_pub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "node.pub.pem"
    key = Ed25519PrivateKey.generate().public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, spki))
    return path


def _verify(bundle: Path, key: Path) -> tuple[int, dict[str, Any], int]:
    """Run ``nightcore proof verify --json`` in a child with capped address space; returns
    (exit code, parsed JSON, the child's peak RSS in KiB)."""
    argv = ["proof", "verify", str(bundle), "--key", str(key), "--json"]
    p = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(_ADDRESS_SPACE), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert "Traceback" not in res["err"], res["err"][-2000:]
    return res["rc"], json.loads(res["out"]), res["maxrss_kib"]


def _bomb(path: Path, typeflag: bytes, claimed: int) -> None:
    """A tar.gz whose first header is an extended header (PAX ``x`` or GNU long name ``L``)
    claiming ``claimed`` bytes, followed by that many bytes: a gzip stream of repeated
    1 MiB members (gzip allows concatenation), so ``claimed`` GiB cost ~``claimed`` MiB."""
    info = tarfile.TarInfo("././@LongLink" if typeflag == b"L" else "./PaxHeaders/bomb")
    info.type = typeflag
    info.size = claimed
    header = info.tobuf(tarfile.USTAR_FORMAT if typeflag == b"x" else tarfile.GNU_FORMAT)
    chunk = 1 << 20
    filler = b"9" * chunk  # PAX text is "<len> key=value\n": digits compress as well as zeros
    one = gzip.compress(filler, compresslevel=9, mtime=0)
    with path.open("wb") as fh:
        fh.write(gzip.compress(header, mtime=0))
        for _ in range(claimed // chunk):
            fh.write(one)


@pytest.mark.parametrize("typeflag", [b"x", b"L"], ids=["pax", "gnu-longname"])
def test_gzip_bomb_in_an_extended_header_stops_at_the_cap(
    tmp_path: Path, node_pub: Path, typeflag: bytes
) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    _bomb(bomb, typeflag, 3 << 30)
    assert bomb.stat().st_size < 8 << 20  # a small file ...
    rc, out, peak = _verify(bomb, node_pub)  # ... that asks for 3 GiB
    assert rc == 1 and out["code"] == "BUNDLE_TOO_LARGE", out
    assert peak < _PEAK_RSS_KIB, f"peak RSS {peak} KiB"


def test_many_extended_headers_are_capped_in_total(tmp_path: Path, node_pub: Path) -> None:
    """Each PAX header below the per-header cap, but together far beyond any sane index."""
    bomb = tmp_path / "many.tar.gz"
    value = "v" * 60_000
    with (
        gzip.open(bomb, "wb", compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for i in range(4000):  # 240 MB of headers, each under the per-header cap
            info = tarfile.TarInfo(f"f{i}")
            info.pax_headers = {"comment": value}
            tar.addfile(info, io.BytesIO(b""))
    rc, out, peak = _verify(bomb, node_pub)
    assert rc == 1 and out["code"] == "BUNDLE_TOO_LARGE", out
    assert peak < _PEAK_RSS_KIB, f"peak RSS {peak} KiB"


def _tar(path: Path, names: list[str]) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


def test_a_member_990_directories_deep_is_malformed_not_a_crash(
    tmp_path: Path, node_pub: Path
) -> None:
    deep = tmp_path / "deep.tar.gz"
    _tar(deep, ["d/" * 990 + "f"])
    rc, out, _ = _verify(deep, node_pub)
    assert rc == 1 and out["code"] == "BUNDLE_MALFORMED", out
    assert "deep" in out["checks"][0]["detail"]


def test_depth_cap_still_allows_real_bundle_paths(tmp_path: Path, node_pub: Path) -> None:
    """A shallow archive gets past extraction (then fails the index check, as it should)."""
    ok = tmp_path / "ok.tar.gz"
    _tar(ok, ["audit/proofs/1.tlog-proof", "content/modules/a.wasm", "a/b/c/d/e/f/g/h"])
    rc, out, _ = _verify(ok, node_pub)
    assert out["checks"][0]["check"] == "archive" and out["checks"][0]["ok"], out
    assert rc == 1 and out["code"] == "FILE_MISSING", out


@pytest.mark.parametrize(
    "names",
    [["a", "a/b"], ["a/b", "a"]],
    ids=["file-then-dir", "dir-then-file"],
)
def test_a_name_that_is_both_file_and_directory_is_refused(
    tmp_path: Path, node_pub: Path, names: list[str]
) -> None:
    bad = tmp_path / "clash.tar.gz"
    _tar(bad, names)
    rc, out, _ = _verify(bad, node_pub)
    assert rc == 1 and out["code"] in ("BUNDLE_MALFORMED", "BUNDLE_DUPLICATE"), out


def test_a_sparse_member_is_refused(tmp_path: Path, node_pub: Path) -> None:
    """A PAX GNU sparse map makes tarfile synthesise data the archive does not hold."""
    bad = tmp_path / "sparse.tar.gz"
    with tarfile.open(bad, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("index.json")
        info.size = 1
        info.pax_headers = {"GNU.sparse.map": "0,1", "GNU.sparse.size": "1048576"}
        tar.addfile(info, io.BytesIO(b"x"))
    rc, out, _ = _verify(bad, node_pub)
    assert rc == 1 and out["code"] == "BUNDLE_UNSAFE_MEMBER", out
