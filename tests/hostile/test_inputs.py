"""The hostile corpus, extended to the files a user names on the command line and the files of
the other stores: a ``--key`` PEM, proof and forensic bundles, a release directory, AUFS
metadata (the node's trusted copy and a repository's), and the workspace files no parser test
reaches (the node key, trust files, audit state, run output), each replaced by a FIFO, a link
to ``/dev/zero``, a directory, an oversized, truncated, garbage or non-UTF-8 file.

Every case runs the real ``nightcore`` in a subprocess with a timeout and a memory limit, so a
read that blocks (a FIFO) or never ends (``/dev/zero``) fails the test instead of hanging or
exhausting the machine. The rule for each: the command refuses with a registered code (the
error object with ``--json``: ``{"ok": false, "code", "error"}``, or the failed check's
result where the command documents exit 1 for one), one line on stderr without a traceback,
and nothing already written is changed (or, for a local copy of something re-verifiable,
the copy is replaced by the verified original).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.codes import ALL_CODES
from nightcore.trust.keys import GeneratedKey
from tests.aufs.conftest import RepoServer, start_server
from tests.conftest import (
    HELLO_WAT,
    CliResult,
    plant_special,
    run_cli_subprocess,
    simple_manifest,
    wat_module,
    write_tenant,
)
from tests.hostile.test_corpus import BIG

TIMEOUT = 60  # a hang fails the case instead of blocking the suite
MEMORY = 3 << 30  # an endless read fails the child (MemoryError) instead of the machine

VARIANTS = ("fifo", "dev-zero", "directory", "oversized", "truncated", "garbage", "non-utf8")
_GARBAGE = random.Random(15).randbytes(4096)


def nightcore(*args: str, cwd: Path | None = None, memory: int = MEMORY) -> CliResult:
    """``nightcore --json ARGS`` in a child process, bounded in time and address space (a
    command that runs a tenant needs more: Wasmtime reserves 4 GiB and guard pages per
    linear memory)."""
    return run_cli_subprocess("--json", *args, cwd=cwd, timeout=TIMEOUT, address_space=memory)


def make_hostile(path: Path, variant: str) -> None:
    """Replace ``path`` (a file or a link) by its ``variant``; the original bytes are its
    content before (a link's target is read, never written through)."""
    valid = path.read_bytes()
    path.unlink()
    if variant in ("fifo", "dev-zero", "directory"):
        plant_special(path, variant)
        if variant == "directory":
            (path / "x").write_bytes(valid)
    elif variant == "oversized":
        path.write_bytes(valid + b" " * BIG)
    elif variant == "truncated":
        path.write_bytes(valid[: len(valid) // 2])
    elif variant == "garbage":
        path.write_bytes(_GARBAGE)
    elif variant == "non-utf8":
        path.write_bytes(b"\xc3\x28" + valid[2:])
    else:  # pragma: no cover
        raise AssertionError(variant)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes | str]:
    """Every regular file under ``root`` with its bytes (links and FIFOs by their kind), to
    show that a refusal changed nothing."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
        elif not p.is_dir():
            out[rel] = "special"
    return out


def assert_error(res: CliResult, code: str | tuple[str, ...]) -> dict[str, Any]:
    """Exit 2 with the error object carrying ``code`` and one clean line on stderr."""
    codes = (code,) if isinstance(code, str) else code
    assert res.code == 2, (res.code, res.out[:300], res.err[-600:])
    doc: dict[str, Any] = json.loads(res.out)
    assert doc["ok"] is False and doc["code"] in codes and doc["code"] in ALL_CODES, doc
    assert "\n" not in doc["error"], doc
    assert "Traceback" not in res.err
    assert re.fullmatch(r"error\[[A-Z0-9_]+\]: [^\n]+\n", res.err), res.err
    return doc


def assert_failed_check(res: CliResult, code: str) -> dict[str, Any]:
    """Exit 1 (a check ran and failed): the result document with ``ok`` false and ``code``."""
    assert res.code == 1, (res.code, res.out[:300], res.err[-600:])
    assert "Traceback" not in res.err and len(res.err.splitlines()) <= 1, res.err
    doc: dict[str, Any] = json.loads(res.out)
    assert doc["ok"] is False and doc["code"] == code and code in ALL_CODES, doc
    bad = [c for c in doc["checks"] if not c["ok"]]
    assert len(bad) == 1 and "\n" not in bad[0]["detail"], bad
    return doc


# -- a workspace with history, and its bundles (once per module) --------------------------------


@dataclass
class Base:
    root: Path
    ws: Path
    keys: dict[str, GeneratedKey]
    run_id: str

    @property
    def node_pub(self) -> Path:
        return self.ws / "node.pub.pem"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, keys_dir: dict[str, GeneratedKey]) -> Base:
    from nightcore.app.evidence import export_forensics, export_proof

    root = tmp_path_factory.mktemp("hostile-inputs")
    ctx = app.init_workspace(root / "ws")
    app.trust_add_key(ctx, keys_dir["alice"].public_path, scope="*")
    app.trust_add_key(ctx, keys_dir["maint"].public_path, scope="*", role="maintainer")
    d = write_tenant(ctx.root, "hello", simple_manifest("hello"), wat_module(HELLO_WAT))
    app.sign_tenant(d, str(keys_dir["alice"].private_path))
    report = app.run(ctx, ["hello"])
    maint = str(keys_dir["maint"].private_path)
    app.revoke(ctx, kind="module", subject="ab" * 32, key=maint, reason="test")
    export_proof(ctx, root / "proof.tar.gz")
    export_forensics(ctx, "hello", root / "forensic.tar.gz")
    ctx.audit().close()
    _release(root / "release", keys_dir["alice"])
    return Base(root, ctx.root, keys_dir, report.runs[0].run_id)


@pytest.fixture
def work(base: Base, tmp_path: Path) -> Base:
    """A private copy of the base (the workspace, its bundles, the public keys)."""
    shutil.copytree(base.root, tmp_path / "w", symlinks=True)
    return Base(tmp_path / "w", tmp_path / "w" / "ws", base.keys, base.run_id)


# -- a --key PEM --------------------------------------------------------------------------------

KEY_COMMANDS: dict[str, Callable[[Base, str], tuple[str, ...]]] = {
    "proof verify": lambda w, key: ("proof", "verify", str(w.root / "proof.tar.gz"), "--key", key),
    "release verify": lambda w, key: ("release", "verify", str(w.root / "release"), "--key", key),
    "trust add-key": lambda w, key: ("-w", str(w.ws), "trust", "add-key", key, "--scope", "*"),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("command", sorted(KEY_COMMANDS))
def test_a_hostile_key_argument_is_refused(work: Base, command: str, variant: str) -> None:
    key = work.root / "given.pub.pem"
    shutil.copyfile(work.node_pub, key)
    make_hostile(key, variant)
    before = snapshot(work.ws)
    res = nightcore(*KEY_COMMANDS[command](work, str(key)))
    doc = assert_error(res, "KEY_INVALID")
    if variant in ("fifo", "dev-zero", "directory", "oversized"):
        assert str(key) in doc["error"], doc  # it names the file it refused
    assert snapshot(work.ws) == before  # trust add-key: the registry and the log untouched


# -- proof and forensic bundles --------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["proof", "forensics"])
def test_a_hostile_bundle_fails_its_check(work: Base, kind: str, variant: str) -> None:
    bundle = work.root / ("proof.tar.gz" if kind == "proof" else "forensic.tar.gz")
    make_hostile(bundle, variant)
    res = nightcore(kind, "verify", str(bundle), "--key", str(work.node_pub))
    doc = assert_failed_check(res, "BUNDLE_MALFORMED")
    assert doc["checks"][0]["check"] == "archive", doc


def test_data_appended_to_a_bundle_is_refused(work: Base) -> None:
    """A signed bundle with bytes after its end: the verified content would carry them along."""
    bundle = work.root / "proof.tar.gz"
    ok = nightcore("proof", "verify", str(bundle), "--key", str(work.node_pub))
    assert ok.code == 0 and json.loads(ok.out)["ok"], ok.out
    with bundle.open("ab") as fh:
        fh.write(b"<script>not part of the bundle</script>" * 100)
    res = nightcore("proof", "verify", str(bundle), "--key", str(work.node_pub))
    assert_failed_check(res, "BUNDLE_MALFORMED")
    # Zero padding after the gzip member is still a bundle (tar and gzip both allow it).
    padded = work.root / "forensic.tar.gz"
    with padded.open("ab") as fh:
        fh.write(b"\0" * 4096)
    res = nightcore("forensics", "verify", str(padded), "--key", str(work.node_pub))
    assert res.code == 0 and json.loads(res.out)["ok"], res.out


# -- a release directory ---------------------------------------------------------------------


def _release(d: Path, key: GeneratedKey) -> None:
    """A small release signed by ``key`` that verifies (artifacts are placeholders: only their
    digests are checked)."""
    import hashlib

    from nightcore import release as rel
    from nightcore.canonical import canonical
    from nightcore.trust.envelope import sign_payload_with
    from nightcore.trust.keys import load_file_signer

    signer = load_file_signer(str(key.private_path))
    v = "0.0.0"
    d.mkdir()
    files = {f"nightcore-{v}-py3-none-any.whl": b"PK\x03\x04 wheel", f"nightcore-{v}.tar.gz": b"sd"}
    digests = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    sbom = rel.release_sbom(v, digests[f"nightcore-{v}-py3-none-any.whl"], [], 0).encode()
    (d / f"nightcore-{v}.cdx.json").write_bytes(sbom)
    digests[f"nightcore-{v}.cdx.json"] = hashlib.sha256(sbom).hexdigest()
    sums = rel.format_sums(digests)
    (d / rel.SUMS_FILE).write_bytes(sums)
    (d / rel.SUMS_ENVELOPE).write_bytes(sign_payload_with(sums, signer, rel.SUMS_PAYLOAD_TYPE))
    st = rel.provenance_statement(
        digests,
        commit="ab" * 20,
        repository="https://nightcore.invalid/repo",
        source_date_epoch=0,
        tools={},
        materials=[],
    )
    (d / rel.PROVENANCE_ENVELOPE).write_bytes(sign_payload_with(canonical(st), signer))


RELEASE_CODES = {
    "fifo": "RELEASE_MALFORMED",  # not a regular file
    "dev-zero": "RELEASE_MALFORMED",  # a link
    "directory": "RELEASE_MALFORMED",
    "oversized": "RELEASE_MALFORMED",  # above the SHA256SUMS cap
    "truncated": "RELEASE_SUMS_MISMATCH",  # not what the release key signed
    "garbage": "RELEASE_SUMS_MISMATCH",
    "non-utf8": "RELEASE_SUMS_MISMATCH",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_hostile_release_file_fails_its_check(work: Base, variant: str) -> None:
    d = work.root / "release"
    key = str(work.keys["alice"].public_path)
    make_hostile(d / "SHA256SUMS", variant)
    before = snapshot(d)
    res = nightcore("release", "verify", str(d), "--key", key)
    assert_failed_check(res, RELEASE_CODES[variant])
    assert snapshot(d) == before


def test_the_release_of_these_cases_verifies(base: Base) -> None:
    """The baseline: every refusal above is the hostile file's doing."""
    res = nightcore(
        "release",
        "verify",
        str(base.root / "release"),
        "--key",
        str(base.keys["alice"].public_path),
    )
    assert res.code == 0 and json.loads(res.out)["ok"], res.out


def test_a_release_path_that_is_not_a_directory_fails_its_check(work: Base) -> None:
    key = str(work.keys["alice"].public_path)
    fifo = work.root / "release-fifo"
    os.mkfifo(fifo)
    for path in (fifo, work.root / "proof.tar.gz", Path("/dev/zero")):
        res = nightcore("release", "verify", str(path), "--key", key)
        assert_failed_check(res, "RELEASE_MALFORMED")


# -- AUFS: the node's trusted metadata and a repository's ---------------------------------------


@dataclass
class Aufs:
    repo: Path
    ws: Path
    server: RepoServer


@pytest.fixture(scope="module")
def aufs_base(
    tmp_path_factory: pytest.TempPathFactory, keys_dir: dict[str, GeneratedKey]
) -> Iterator[Aufs]:
    """A repository served over HTTP (tests.aufs.conftest's server) and a workspace whose
    client trusts it and has refreshed once (all four roles stored)."""
    from nightcore.aufs.client import init_client
    from nightcore.aufs.config import Limits
    from nightcore.aufs.repo import init_repo

    root = tmp_path_factory.mktemp("hostile-aufs")
    keys = [str(keys_dir[n].private_path) for n in ("alice", "maint")]
    repo, published, _ = init_repo(root / "repo", keys, threshold=2)
    assert published is not None
    server = start_server(repo.path / "public")
    ctx = app.init_workspace(root / "ws")
    init_client(
        ctx.layout.state_dir / "aufs" / "metadata",
        (repo.metadata_dir / "1.root.json").read_bytes(),
        limits=Limits(),
    )
    (ctx.root / "aufs.toml").write_text(
        f'[aufs]\nmetadata_url = "{server.metadata_url}"\n'
        f'target_base_url = "{server.target_url}"\napply_runtime = true\n'
    )
    ctx.audit().close()
    res = nightcore("-w", str(ctx.root), "aufs", "client", "refresh")
    assert res.code == 0, res.err
    yield Aufs(repo.path, ctx.root, server)
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def aufs(aufs_base: Aufs, tmp_path: Path) -> Aufs:
    shutil.copytree(aufs_base.repo, tmp_path / "repo", symlinks=True)
    shutil.copytree(aufs_base.ws, tmp_path / "ws", symlinks=True)
    return Aufs(tmp_path / "repo", tmp_path / "ws", aufs_base.server)


def _audit_events(ws: Path) -> list[dict[str, Any]]:
    lines = (ws / "state" / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


TRUSTED_ROOT_CODES = {
    "fifo": "AUFS_METADATA_INVALID",
    "dev-zero": "AUFS_METADATA_INVALID",
    "directory": "AUFS_METADATA_INVALID",
    "oversized": "AUFS_TOO_LARGE",
    "truncated": "AUFS_METADATA_INVALID",
    "garbage": "AUFS_METADATA_INVALID",
    "non-utf8": "AUFS_METADATA_INVALID",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_hostile_trusted_root_is_refused_and_audited(aufs: Aufs, variant: str) -> None:
    """The trust anchor cannot be fetched again: refused, audited, nothing else touched."""
    mdir = aufs.ws / "state" / "aufs" / "metadata"
    make_hostile(mdir / "root.json", variant)
    before = snapshot(mdir)
    n = len(_audit_events(aufs.ws))
    res = nightcore("-w", str(aufs.ws), "aufs", "client", "refresh")
    doc = assert_error(res, TRUSTED_ROOT_CODES[variant])
    assert snapshot(mdir) == before
    new = _audit_events(aufs.ws)[n:]
    assert [(e["event"], e["data"]["code"]) for e in new] == [("aufs_refused", doc["code"])]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_hostile_local_timestamp_is_fetched_again(aufs: Aufs, variant: str) -> None:
    """A local copy of a role is a cache python-tuf re-verifies: one that is not a usable
    regular file counts as none and is replaced by the verified download; a directory cannot
    be replaced, so the refresh is refused and the directory stays."""
    mdir = aufs.ws / "state" / "aufs" / "metadata"
    good = (mdir / "timestamp.json").read_bytes()
    make_hostile(mdir / "timestamp.json", variant)
    res = nightcore("-w", str(aufs.ws), "aufs", "client", "refresh")
    if variant == "directory":
        assert_error(res, "IO_ERROR")
        assert (mdir / "timestamp.json").is_dir()
        return
    assert res.code == 0, (res.out, res.err)
    assert json.loads(res.out)["versions"]["timestamp"] == 1
    path = mdir / "timestamp.json"
    assert not path.is_symlink() and path.is_file() and path.read_bytes() == good


REPO_CODES = {
    "targets.json": {
        "fifo": "AUFS_REPOSITORY_ERROR",
        "dev-zero": "AUFS_REPOSITORY_ERROR",
        "directory": "AUFS_REPOSITORY_ERROR",
        "oversized": "AUFS_TOO_LARGE",
        "truncated": "AUFS_METADATA_INVALID",
        "garbage": "AUFS_METADATA_INVALID",
        "non-utf8": "AUFS_METADATA_INVALID",
    },
    "aufs-repo.json": dict.fromkeys(VARIANTS, "AUFS_CONFIG_INVALID"),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(REPO_CODES))
def test_a_hostile_repository_file_is_refused(aufs: Aufs, name: str, variant: str) -> None:
    path = aufs.repo / ("public/metadata/targets.json" if name == "targets.json" else name)
    make_hostile(path, variant)
    before = snapshot(aufs.repo)
    res = nightcore("aufs", "repo", "status", "--repo", str(aufs.repo))
    assert_error(res, REPO_CODES[name][variant])
    assert snapshot(aufs.repo) == before


# -- workspace files no parser test reaches ----------------------------------------------------

# file -> (command, what each of fifo / dev-zero gives: an error code, or "OK" for derived
# state that is rebuilt from the log)
WORKSPACE = {
    "node.pub.pem": (("audit", "verify"), "IO_ERROR"),
    "trust/registry.json": (("trust", "list"), "IO_ERROR"),
    "trust/revocations.json": (("revocations", "list"), "IO_ERROR"),
    "state/trust/revocations.version": (("verify", "hello"), "STATE_INVALID"),
    "state/audit/audit.jsonl": (("audit", "show"), "IO_ERROR"),
    "state/audit/audit.tail": (("audit", "verify"), "IO_ERROR"),
    "state/audit/checkpoints/NOTE": (("audit", "verify"), "IO_ERROR"),
    "state/audit/tree.state": (("audit", "verify"), "OK"),
    "state/audit/tree.bin": (("audit", "verify"), "OK"),
    "state/runs/RUN/stdout": (("logs", "RUN"), "IO_ERROR"),
    "private/cache.secret": (("dashboard", "build"), "OK"),  # the scan cache is unkeyed
}
WS_CASES = [(f, v) for f in WORKSPACE for v in ("fifo", "dev-zero")]


@pytest.mark.parametrize(("rel", "variant"), WS_CASES, ids=[f"{f}:{v}" for f, v in WS_CASES])
def test_a_special_file_in_the_workspace_is_refused(work: Base, rel: str, variant: str) -> None:
    command, expect = WORKSPACE[rel]
    notes = work.ws / "state" / "audit" / "checkpoints"
    rel = rel.replace("NOTE", min(notes.iterdir()).name).replace("RUN", work.run_id)
    path = work.ws / rel
    make_hostile(path, variant)
    log = work.ws / "state" / "audit" / "audit.jsonl"
    before = snapshot(work.ws, skip=work.ws / "state" / "audit")
    audit_before = log.read_bytes() if log.is_file() and not log.is_symlink() else b""
    res = nightcore("-w", str(work.ws), *(a.replace("RUN", work.run_id) for a in command))
    if expect == "OK":
        assert res.code == 0, (res.out[:300], res.err)
    else:
        assert_error(res, expect)
    after = snapshot(work.ws, skip=work.ws / "state" / "audit")
    if rel != "private/cache.secret":
        assert after == before
    if not rel.startswith("state/audit/audit.jsonl"):
        assert log.read_bytes().startswith(audit_before)  # nothing recorded is lost


def test_a_corrupt_revocation_mark_is_a_state_error(work: Base) -> None:
    """Not UTF-8, not digits: refused with its code (it was a UnicodeDecodeError traceback)."""
    mark = work.ws / "state" / "trust" / "revocations.version"
    for data in (b"\xff\xfe1\n", "١٢\n".encode(), b"1" * 100):
        mark.write_bytes(data)
        assert_error(nightcore("-w", str(work.ws), "verify", "hello"), "STATE_INVALID")


def test_a_non_utf8_wat_source_is_a_build_failure(work: Base) -> None:
    d = work.root / "t"
    d.mkdir()
    (d / "module.wat").write_bytes(b"(module)\xff\xfe")
    assert_error(nightcore("build", str(d)), "BUILD_FAILED")
    (d / "module.wat").unlink()
    os.mkfifo(d / "module.wat")
    assert_error(nightcore("build", str(d)), "USAGE")  # needs exactly one source file
    assert sorted(p.name for p in d.iterdir()) == ["module.wat"]


# -- files the run path reads: the cache secret and entries, the node key for a replay ---------

RUN_PATH = {
    # the module cache's key: no run without it (a FIFO would hang every run)
    "private/cache.secret": (("run", "hello", "--no-dashboard"), "CACHE_SECRET_INVALID"),
    # a cache entry is only a cache: refused, deleted and compiled again
    "state/cache/ENTRY": (("run", "hello", "--no-dashboard"), "OK"),
    "node.pub.pem": (("replay", "RUN"), "KEY_INVALID"),
}
RUN_CASES = [(f, v) for f in RUN_PATH for v in ("fifo", "dev-zero")]


@pytest.mark.parametrize(("rel", "variant"), RUN_CASES, ids=[f"{f}:{v}" for f, v in RUN_CASES])
def test_a_special_file_on_the_run_path_is_refused(work: Base, rel: str, variant: str) -> None:
    command, expect = RUN_PATH[rel]
    entries = sorted((work.ws / "state" / "cache").glob("*.cwasm"))
    assert entries, "the base run left no compiled entry"
    rel = rel.replace("ENTRY", entries[0].name)
    make_hostile(work.ws / rel, variant)
    log = work.ws / "state" / "audit" / "audit.jsonl"
    audit_before = log.read_bytes()
    args = (a.replace("RUN", work.run_id) for a in command)
    res = nightcore("-w", str(work.ws), *args, memory=16 << 30)
    if expect == "OK":
        assert res.code == 0, (res.out, res.err)
        assert json.loads(res.out)[0]["code"] == "OK"
        assert (work.ws / rel).is_file() and not (work.ws / rel).is_symlink()  # rewritten
        added = [json.loads(line) for line in log.read_bytes()[len(audit_before) :].splitlines()]
        (rejected,) = [r for r in added if r["event"] == "cache_rejected"]  # and audited
        assert rejected["data"]["reason"] in ("not_a_file", "unreadable"), rejected
    else:
        assert_error(res, expect)
        assert not (work.ws / rel).is_file()  # left as it was, not replaced
    assert log.read_bytes().startswith(audit_before)
