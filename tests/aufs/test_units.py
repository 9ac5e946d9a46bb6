"""Pure parts of AUFS: versions, artifacts, archives, adapters, overrides, settings, codes."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from tuf.api import exceptions as tx
from tuf.api.serialization import DeserializationError

from nightcore.aufs import artifacts, override
from nightcore.aufs.adapters import AdapterRegistry, default_registry
from nightcore.aufs.client import init_client
from nightcore.aufs.config import Limits, parse_settings
from nightcore.aufs.errors import AUFS_CODES, AufsError, from_tuf
from tests.aufs.conftest import Maintainers

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("1.10.0", "1.9.0", 1),
        ("2.0.0", "2.0.0", 0),
        ("1.0", "1.0.1", -1),
        ("1.0.0-2", "1.0.0-10", -1),
    ],
)
def test_version_order(a: str, b: str, want: int) -> None:
    assert artifacts.compare_versions(a, b) == want


def test_parse_artifact_binds_path_to_custom() -> None:
    ok = artifacts.custom_for("tenant", "1.0.0", tenant="hello", min_runtime="0.1.0")
    art = artifacts.parse_artifact("tenants/hello/1.0.0.tar.gz", ok, "ab" * 32, 10)
    assert art is not None and (art.tenant, art.version, art.min_runtime) == (
        "hello",
        "1.0.0",
        "0.1.0",
    )
    assert artifacts.parse_artifact("docs/readme.txt", None, "", 1) is None
    bad: list[tuple[str, Any]] = [
        ("tenants/other/1.0.0.tar.gz", ok),  # path names another tenant
        ("tenants/hello/2.0.0.tar.gz", ok),  # path names another version
        ("trust/registry.json", {"nightcore": {"kind": "registry"}}),  # no version
        ("x", {"nightcore": {"kind": "rootkit", "version": "1"}}),
        ("tenants/hello/1.0.0.tar.gz", {"nightcore": {**ok["nightcore"], "extra": 1}}),
        ("tenants/../x/1.0.0.tar.gz", artifacts.custom_for("tenant", "1.0.0", tenant="../x")),
        ("runtime/evil.sh", artifacts.custom_for("runtime", "1.0.0")),
    ]
    for path, custom in bad:
        with pytest.raises(AufsError) as ei:
            artifacts.parse_artifact(path, custom, "", 1)
        assert ei.value.code == "AUFS_TARGET_INVALID", path


def _pkg_files() -> dict[str, bytes]:
    return {"manifest.toml": b"m", "module.intoto.dsse.json": b"e", "module.wasm": b"\0asm"}


def test_tenant_tarball_is_reproducible_and_round_trips() -> None:
    files = _pkg_files()
    a = artifacts.build_tenant_tarball(files)
    assert a == artifacts.build_tenant_tarball(dict(reversed(files.items())))
    assert artifacts.read_tenant_tarball(a, max_members=8, max_bytes=1000) == files


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ([*_pkg_files().items(), ("manifest.toml", b"again")], "AUFS_ARCHIVE_UNSAFE"),
        ([*_pkg_files().items(), ("README", b"x")], "AUFS_ARCHIVE_UNSAFE"),
        ([("manifest.toml", b"m"), ("module.wasm", b"w")], "AUFS_TARGET_INVALID"),
        ([("module.wasm", b"w" * 5000)], "AUFS_TOO_LARGE"),
        ([(f"f{i}", b"") for i in range(20)], "AUFS_ARCHIVE_UNSAFE"),
    ],
    ids=["duplicate", "extra-member", "missing-envelope", "too-large", "too-many"],
)
def test_tenant_tarball_refusals(entries: list[tuple[str, bytes]], code: str) -> None:
    with pytest.raises(AufsError) as ei:
        artifacts.read_tenant_tarball(_tar(entries), max_members=8, max_bytes=1000)
    assert ei.value.code == code


def test_tenant_tarball_not_gzip() -> None:
    with pytest.raises(AufsError) as ei:
        artifacts.read_tenant_tarball(b"plain bytes", max_members=8, max_bytes=1000)
    assert ei.value.code == "AUFS_TARGET_INVALID"


def test_wheel_reader_refuses_links_and_escapes() -> None:
    def wheel(name: str, mode: int = 0o100644) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zi = zipfile.ZipInfo(name)
            zi.external_attr = mode << 16
            zf.writestr(zi, b"x")
        return buf.getvalue()

    assert artifacts.read_wheel(wheel("a/b.py"), max_members=10, max_bytes=10) == {"a/b.py": b"x"}
    for data in (wheel("../x.py"), wheel("/abs.py"), wheel("link", 0o120777)):
        with pytest.raises(AufsError) as ei:
            artifacts.read_wheel(data, max_members=10, max_bytes=10)
        assert ei.value.code == "AUFS_ARCHIVE_UNSAFE"


# -- adapters ----------------------------------------------------------------------------------


def _schema0_to_1(doc: dict[str, Any]) -> dict[str, Any]:
    """The test translator: schema 0 called the tenant ``name`` and had no ``abi`` field."""
    doc = dict(doc)
    doc["tenant"] = doc.pop("name")
    doc["schema"] = 1
    return doc


def test_translator_chain_brings_old_manifests_to_the_current_schema() -> None:
    reg = AdapterRegistry(current_schema=2)
    reg.register_translator("v0-name-to-tenant", 0, _schema0_to_1)
    reg.register_translator(
        "v1-add-abi", 1, lambda d: {**d, "schema": 2, "abi": "wasi_snapshot_preview1"}
    )
    out, applied = reg.migrate({"schema": 0, "name": "hello", "version": "1"})
    assert out == {"schema": 2, "tenant": "hello", "version": "1", "abi": "wasi_snapshot_preview1"}
    assert applied == ["v0-name-to-tenant", "v1-add-abi"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register_translator("again", 0, _schema0_to_1)


def test_translator_refusals() -> None:
    reg = default_registry()
    assert reg.migrate({"schema": 1, "tenant": "x"}) == ({"schema": 1, "tenant": "x"}, [])
    for doc in ({"schema": 0}, {"schema": 7}, {"schema": "1"}):
        with pytest.raises(AufsError) as ei:
            reg.migrate(doc)
        assert ei.value.code == "SCHEMA_UNSUPPORTED"
    bad = AdapterRegistry()
    bad.register_translator("broken", 0, lambda d: d)
    with pytest.raises(AufsError, match="did not produce schema 1"):
        bad.migrate({"schema": 0})


def test_abi_check_names_the_runtime_that_provides_it() -> None:
    reg = default_registry()
    reg.check_abi("wasi_snapshot_preview1", "0.1.0")
    reg.register_abi("wasi:cli/run@0.2.0", "0.4.0")
    with pytest.raises(AufsError) as ei:
        reg.check_abi("wasi:cli/run@0.2.0", "0.1.0")
    assert ei.value.code == "ABI_UNSUPPORTED" and "Night Core 0.4.0 or later" in ei.value.message
    with pytest.raises(AufsError) as ei:
        reg.check_abi("wasi:http@0.3", "0.1.0", min_runtime="0.9.0")
    assert "Night Core 0.9.0 or later" in ei.value.message
    with pytest.raises(AufsError) as ei:
        reg.check_abi("mystery", "0.1.0")
    assert "no known Night Core release" in ei.value.message


# -- overrides ---------------------------------------------------------------------------------


def _override(m: Maintainers, *names: str, expires: dt.datetime | None = None) -> bytes:
    payload = override.make_payload(
        "hello", "1.0.0", "ab" * 32, reason="why", expires=expires or NOW + dt.timedelta(days=1)
    )
    env: bytes | None = None
    for n in names:
        env = override.sign_override(env, payload, m.signers[n])
    assert env is not None
    return env


def _keys(m: Maintainers, *names: str) -> dict[str, Any]:
    return {m.keyid(n): m.signers[n].public_key for n in names}


def test_override_needs_two_distinct_role_keys(maintainers: Maintainers) -> None:
    m = maintainers
    keys = _keys(m, "m1", "m2", "m3")
    kw: dict[str, Any] = {"tenant": "hello", "version": "1.0.0", "sha256": "ab" * 32, "now": NOW}
    info = override.verify_override(_override(m, "m1", "m2"), keys, **kw)
    assert set(info.signers) == {m.keyid("m1"), m.keyid("m2")}
    # One key listed twice counts once.
    doc = json.loads(_override(m, "m1"))
    doc["signatures"].append(dict(doc["signatures"][0]))
    twice = json.dumps(doc).encode()
    # A key outside the targets role counts zero.
    cases = {
        "twice": twice,
        "outsider": _override(m, "m1", "evil"),
        "one": _override(m, "m1"),
    }
    for name, data in cases.items():
        with pytest.raises(AufsError) as ei:
            override.verify_override(data, keys, **kw)
        assert ei.value.code == "AUFS_OVERRIDE_INVALID", name
        assert "1 of the 2 distinct" in ei.value.message, name
    with pytest.raises(AufsError, match="another tenant"):
        override.verify_override(_override(m, "m1", "m2"), keys, **{**kw, "version": "2.0.0"})
    with pytest.raises(AufsError, match="expired"):
        late = _override(m, "m1", "m2", expires=NOW - dt.timedelta(seconds=1))
        override.verify_override(late, keys, **kw)


# -- settings, codes, client init --------------------------------------------------------------


def test_settings_parse_and_refuse() -> None:
    s = parse_settings(
        b'[aufs]\nmetadata_url = "http://x/m"\n'
        b"[aufs.limits]\ngap_timeout = 2\nmax_target_bytes = 10\n"
    )
    assert s.limits.gap_timeout == 2.0 and s.limits.max_target_bytes == 10
    for bad in (
        b"[aufs]\nfoo = 1\n",
        b'[aufs]\nmetadata_url = "file:///etc"\n',
        b"[aufs.limits]\ngap_timeout = -1\n",
        b"[aufs.limits]\nnope = 1\n",
        b"[other]\n",
        b"not toml [",
    ):
        with pytest.raises(AufsError) as ei:
            parse_settings(bad)
        assert ei.value.code == "AUFS_CONFIG_INVALID", bad


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (tx.EqualVersionNumberError(), "AUFS_ROLLBACK"),
        (tx.BadVersionNumberError("v"), "AUFS_ROLLBACK"),
        (tx.ExpiredMetadataError("e"), "AUFS_EXPIRED"),
        (tx.LengthOrHashMismatchError("h"), "AUFS_HASH_MISMATCH"),
        (tx.UnsignedMetadataError("u"), "AUFS_THRESHOLD"),
        (tx.DownloadLengthMismatchError("l"), "AUFS_TOO_LARGE"),
        (tx.SlowRetrievalError("s"), "AUFS_SLOW_RETRIEVAL"),
        (tx.DownloadHTTPError("x", 500), "AUFS_DOWNLOAD"),
        (tx.DownloadError("d"), "AUFS_DOWNLOAD"),
        (DeserializationError("x"), "AUFS_METADATA_INVALID"),
        (tx.RepositoryError("r"), "AUFS_REPOSITORY_ERROR"),
        (ValueError("v"), "AUFS_REPOSITORY_ERROR"),
    ],
)
def test_tuf_exception_mapping(exc: Exception, code: str) -> None:
    err = from_tuf(exc, "refresh")
    assert err.code == code and err.code in (*AUFS_CODES, "IO_ERROR")
    assert err.message.startswith("refresh: ")


def test_client_init_refusals(tmp_path: Path, maintainers: Maintainers) -> None:
    from nightcore.aufs.repo import init_repo

    m = maintainers
    repo, _, _ = init_repo(tmp_path / "r", [m.path("m1")], threshold=1)
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    limits = Limits()
    with pytest.raises(AufsError) as ei:
        init_client(tmp_path / "md", root, expect_sha256="00" * 32, limits=limits)
    assert ei.value.code == "AUFS_ROOT_MISMATCH"
    doc = json.loads(root)
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # signature no longer covers it
    with pytest.raises(AufsError) as ei:
        init_client(tmp_path / "md", json.dumps(doc).encode(), limits=limits)
    assert ei.value.code == "AUFS_THRESHOLD"
    info = init_client(tmp_path / "md", root, limits=limits)
    assert info.version == 1 and info.roles["root"]["threshold"] == 1
    with pytest.raises(AufsError) as ei:
        init_client(tmp_path / "md", root, limits=limits)
    assert ei.value.code == "AUFS_ALREADY_INITIALIZED"
    assert sorted(p.name for p in (tmp_path / "md").iterdir()) == ["root.json", "root_history"]
