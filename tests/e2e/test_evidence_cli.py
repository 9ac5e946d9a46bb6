"""Evidence end to end: attestations, proof bundles verified elsewhere, tampering, replay,
SBOM and forensic export — real runs, real keys, real archives."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.context import NodeContext
from nightcore.evidence.attestation import open_attestation, subject_digests
from nightcore.evidence.bundle import _Writer
from nightcore.evidence.sbom import build_sbom, validate_sbom
from nightcore.trust.keys import FileSigner, GeneratedKey
from nightcore.trust.pubkey import PublicKey
from tests.conftest import Env, run_cli_subprocess
from tests.e2e.test_run_cli import install


def _runs(env: Env) -> dict[str, dict[str, Any]]:
    res = env.cli("run", "--json")
    return {r["tenant"]: r for r in res.json()}


@pytest.fixture
def ran(env: Env) -> tuple[Env, dict[str, dict[str, Any]]]:
    install(env, "hello", "clock-random", "fs-writer")
    return env, _runs(env)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def _write_tar(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> None:  # type: ignore[assignment]
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)


def _verify(path: Path, key: Path) -> tuple[int, dict[str, Any]]:
    res = run_cli_subprocess("proof", "verify", str(path), "--key", str(key), "--json")
    assert "Traceback" not in res.err
    return res.code, json.loads(res.out)


def test_attestation_binds_outputs_and_written_files(ran: tuple[Env, dict[str, Any]]) -> None:
    env, rows = ran
    pub = PublicKey.from_pem((env.ws / "node.pub.pem").read_bytes())
    row = rows["fs-writer"]
    att = env.ws / "state/runs" / row["run_id"] / "attestation.intoto.dsse.json"
    stmt = open_attestation(att.read_bytes(), pub)
    subjects = subject_digests(stmt)
    assert subjects["module.wasm"] == row["module_sha256"]
    assert "fs/data/out.txt" in subjects
    p = stmt["predicate"]
    assert p["tenant"] == "fs-writer" and p["signer_key_id"] == row["key_id"]
    assert p["outcome"]["code"] == "OK" and p["limits"]["fuel"] > 0
    outcome = next(
        e
        for e in env.audit_lines()
        if e["event"] == "run_outcome" and e["data"]["run_id"] == row["run_id"]
    )
    assert p["audit_seq"] == outcome["seq"]
    clock = open_attestation(
        (
            env.ws / "state/runs" / rows["clock-random"]["run_id"] / "attestation.intoto.dsse.json"
        ).read_bytes(),
        pub,
    )
    assert clock["predicate"]["deterministic"] and "seed" in clock["predicate"]


def test_proof_bundle_verifies_elsewhere_with_only_the_public_key(
    ran: tuple[Env, dict[str, Any]], tmp_path: Path
) -> None:
    env, _ = ran
    bundle = env.root / "proof.tar.gz"
    res = env.cli("proof", "export", "--out", str(bundle), "--json")
    assert res.code == 0 and res.json()["runs"] == 3
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    shutil.copy(bundle, fresh / "proof.tar.gz")
    shutil.copy(env.ws / "node.pub.pem", fresh / "node.pub.pem")
    code, out = _verify(fresh / "proof.tar.gz", fresh / "node.pub.pem")
    assert code == 0 and out["ok"], out
    checks = {c["check"] for c in out["checks"]}
    assert {
        "index signature",
        "file hashes",
        "attestations",
        "inclusion proofs",
        "attestations vs audit",
    } <= checks
    members = _members(bundle)
    validate_sbom(members["sbom.cdx.json"].decode())
    index = json.loads(members["index.json"])
    import hashlib

    assert index["dashboard_sha256"] == hashlib.sha256(members["dashboard.html"]).hexdigest()
    assert b"hello" in members["dashboard.html"]


@pytest.mark.parametrize(
    "mutation,code",
    [
        ("flip", "FILE_HASH_MISMATCH"),
        ("add", "FILE_UNEXPECTED"),
        ("remove", "FILE_MISSING"),
        ("forge_index", "INDEX_SIGNATURE_INVALID"),
        ("traversal", "BUNDLE_UNSAFE_MEMBER"),
        ("symlink", "BUNDLE_UNSAFE_MEMBER"),
        ("huge", "BUNDLE_TOO_LARGE"),
        ("garbage", "BUNDLE_MALFORMED"),
    ],
)
def test_tampered_bundles_are_refused(
    ran: tuple[Env, dict[str, Any]],
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
    mutation: str,
    code: str,
) -> None:
    env, _ = ran
    bundle = env.root / "proof.tar.gz"
    assert env.cli("proof", "export", "--out", str(bundle)).code == 0
    members = _members(bundle)
    bad = tmp_path / "bad.tar.gz"
    extra: list[tarfile.TarInfo] = []
    if mutation == "flip":
        name = next(n for n in members if n.startswith("attestations/"))
        data = bytearray(members[name])
        data[len(data) // 2] ^= 1
        members[name] = bytes(data)
    elif mutation == "add":
        members["attestations/extra.json"] = b"{}"
    elif mutation == "remove":
        del members[next(n for n in members if n.startswith("audit/proofs/"))]
    elif mutation == "forge_index":
        from nightcore.trust.envelope import sign_payload_with
        from nightcore.trust.keys import load_file_signer

        mallory = load_file_signer(str(keys_dir["mallory"].private_path))
        index = json.loads(members["index.json"])
        index["runs"] = ["forged"]
        members["index.json"] = json.dumps(index).encode()
        members["index.dsse.json"] = sign_payload_with(
            members["index.json"], mallory, "application/vnd.nightcore.bundle-index+json"
        )
    elif mutation == "traversal":
        members["../escaped.txt"] = b"owned"
    elif mutation == "symlink":
        link = tarfile.TarInfo("keys/evil")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        extra.append(link)
    elif mutation == "huge":
        # A gzip bomb: 300 MB of zeros compresses to ~300 KB; the cap stops it unread.
        with gzip.open(bad, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as t:
            info = tarfile.TarInfo("sbom.cdx.json")
            info.size = 300 * 1024 * 1024
            t.addfile(info, io.BytesIO(bytes(info.size)))
    if mutation == "garbage":
        bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    elif mutation != "huge":
        _write_tar(bad, members, extra)
    code_, out = _verify(bad, env.ws / "node.pub.pem")
    assert code_ == 1 and out["code"] == code, out
    assert not (tmp_path / "escaped.txt").exists() and not (Path.cwd() / "escaped.txt").exists()


def _node_writer_bundle(env: Env, path: Path, change: str) -> None:
    """Re-sign a modified bundle with the node key itself: the deeper checks must still fail
    (a bug or a compromised exporter cannot make forged evidence verify)."""
    from nightcore.runner.pipeline import Runner

    members = _members(env.root / "proof.tar.gz")
    for own in ("index.json", "index.dsse.json", "SHA256SUMS"):
        members.pop(own)
    if change == "attestation_other_key":
        name = next(n for n in members if n.startswith("attestations/"))
        from nightcore.trust.envelope import parse_envelope, sign_payload_with
        from nightcore.trust.keys import load_file_signer

        other = load_file_signer(str(env.publisher.private_path))
        env_ = parse_envelope(members[name])
        members[name] = sign_payload_with(env_.payload, other)
    elif change == "forged_line":
        lines = members["audit/lines.jsonl"].split(b"\n")
        rec = json.loads(lines[-2])
        rec["data"]["code"] = "OK" if rec["data"].get("code") != "OK" else "TRAP"
        from nightcore.canonical import canonical

        lines[-2] = canonical(rec)
        members["audit/lines.jsonl"] = b"\n".join(lines)
    elif change == "other_checkpoint":
        env.cli("audit", "checkpoint")
        from nightcore.audit.tlog import transparency_log

        ws = NodeContext(env.ws)
        tl = transparency_log(
            ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
        )
        cp = tl.latest_checkpoint()
        assert cp is not None
        seq = int(
            next(n for n in members if n.startswith("audit/proofs/")).split("/")[-1].split(".")[0]
        )
        members[f"audit/proofs/{seq}.tlog-proof"] = tl.prove_at(seq, cp)
    w = _Writer()
    for k, v in members.items():
        w.add(k, v)
    ws = NodeContext(env.ws)
    node = {"id": ws.node_key_id(), "name": ws.config.node_name}
    w.write(path, node, "proof", {"checkpoint": {}}, Runner(ws).node_signer())


@pytest.mark.parametrize(
    "change,code",
    [
        ("attestation_other_key", "ATTESTATION_SIGNATURE_INVALID"),
        ("forged_line", "PROOF_ROOT_MISMATCH"),
        ("other_checkpoint", "PROOF_CHECKPOINT_MISMATCH"),
    ],
)
def test_forged_evidence_fails_even_under_a_valid_index(
    ran: tuple[Env, dict[str, Any]], tmp_path: Path, change: str, code: str
) -> None:
    env, _ = ran
    assert env.cli("proof", "export", "--out", str(env.root / "proof.tar.gz")).code == 0
    bad = tmp_path / "bad.tar.gz"
    _node_writer_bundle(env, bad, change)
    rc, out = _verify(bad, env.ws / "node.pub.pem")
    assert rc == 1 and out["code"] == code, out


def _resign(env: Env, members: dict[str, bytes], path: Path, kind: str) -> None:
    """Write ``members`` as a bundle under a fresh index signed by the node key itself."""
    from nightcore.runner.pipeline import Runner

    for own in ("index.json", "index.dsse.json", "SHA256SUMS"):
        members.pop(own, None)
    w = _Writer()
    for k, v in members.items():
        w.add(k, v)
    ws = NodeContext(env.ws)
    node = {"id": ws.node_key_id(), "name": ws.config.node_name}
    w.write(path, node, kind, {"checkpoint": {}}, Runner(ws).node_signer())


def _forge_attestation(members: dict[str, bytes], env: Env, change: str) -> None:
    from nightcore.trust.envelope import parse_envelope, sign_payload_with
    from nightcore.trust.keys import load_file_signer

    name = next(
        n
        for n in sorted(members)
        if n.startswith(("attestations/", "runs/")) and n.endswith(".intoto.dsse.json")
    )
    run_dir = name.rsplit("/", 1)[0]
    if change == "garbage_attestation":
        members[name] = b'{"not": "an envelope"}'
    elif change == "attestation_other_key":
        other = load_file_signer(str(env.publisher.private_path))
        members[name] = sign_payload_with(parse_envelope(members[name]).payload, other)
    elif change == "altered_stdout":
        members[f"{run_dir}/stdout"] = members[f"{run_dir}/stdout"] + b"forged\n"
    elif change == "removed_stdout":
        del members[f"{run_dir}/stdout"]
    elif change == "altered_module":
        mod = next(n for n in members if n.startswith("content/modules/"))
        members[mod] = members[mod] + b"\x00"


@pytest.mark.parametrize(
    "kind,change,code",
    [
        ("proof", "garbage_attestation", "ATTESTATION_INVALID"),
        ("forensic", "garbage_attestation", "ATTESTATION_INVALID"),
        ("forensic", "attestation_other_key", "ATTESTATION_SIGNATURE_INVALID"),
        ("forensic", "altered_stdout", "ATTESTATION_SUBJECT_MISMATCH"),
        ("forensic", "removed_stdout", "ATTESTATION_SUBJECT_MISMATCH"),
        ("forensic", "altered_module", "CONTENT_TAMPERED"),
    ],
)
def test_forged_attestations_fail_in_proof_and_forensic_bundles(
    ran: tuple[Env, dict[str, Any]], tmp_path: Path, kind: str, change: str, code: str
) -> None:
    """Both kinds of bundle get the same attestation checks, even under an index the node key
    signed (a buggy or compromised exporter)."""
    env, _ = ran
    good = env.root / "good.tar.gz"
    if kind == "proof":
        assert env.cli("proof", "export", "--out", str(good)).code == 0
    else:
        args = ("forensics", "export", "--tenant", "fs-writer", "--out", str(good))
        assert env.cli(*args).code == 0
    rc, out = _verify(good, env.ws / "node.pub.pem")
    assert rc == 0, out
    checks = {c["check"]: c for c in out["checks"]}
    assert checks["attestations"]["detail"].startswith("1 " if kind == "forensic" else "3 ")
    members = _members(good)
    _forge_attestation(members, env, change)
    bad = tmp_path / "bad.tar.gz"
    _resign(env, members, bad, kind)
    rc, out = _verify(bad, env.ws / "node.pub.pem")
    assert rc == 1 and out["code"] == code, out


def test_wrong_public_key_is_refused(
    ran: tuple[Env, dict[str, Any]], keys_dir: dict[str, GeneratedKey]
) -> None:
    env, _ = ran
    bundle = env.root / "proof.tar.gz"
    assert env.cli("proof", "export", "--out", str(bundle)).code == 0
    rc, out = _verify(bundle, keys_dir["mallory"].public_path)
    assert rc == 1 and out["code"] == "INDEX_SIGNATURE_INVALID"


def test_replay_matches_across_processes_and_nondeterminism_differs(env: Env) -> None:
    install(env, "clock-random")
    first = _runs(env)["clock-random"]
    res = run_cli_subprocess("-w", str(env.ws), "replay", first["run_id"], "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["code"] == "REPLAY_MATCH" and out["deterministic"]
    # The same module, signed without deterministic mode: real clock and randomness.
    d = env.ws / "modules" / "clock-random"
    text = (
        (d / "manifest.toml").read_text().replace("deterministic = true", "deterministic = false")
    )
    (d / "manifest.toml").write_text(text)
    app.sign_tenant(d, str(env.publisher.private_path))
    a = _runs(env)["clock-random"]
    b = _runs(env)["clock-random"]
    sa = (env.ws / "state/runs" / a["run_id"] / "stdout").read_bytes()
    sb = (env.ws / "state/runs" / b["run_id"] / "stdout").read_bytes()
    assert sa != sb
    res = env.cli("replay", a["run_id"], "--json")
    assert res.code == 1 and res.json()["code"] == "REPLAY_DIVERGED"
    assert res.json()["diverged"] == "stdout"


def test_replay_refuses_tampered_content(env: Env) -> None:
    install(env, "clock-random")
    row = _runs(env)["clock-random"]
    stored = env.ws / "state/content/modules" / f"{row['module_sha256']}.wasm"
    stored.write_bytes(stored.read_bytes() + b"\x00")
    res = env.cli("replay", row["run_id"])
    assert res.code == 2 and "error[CONTENT_TAMPERED]" in res.err
    res = env.cli("replay", "../../etc")
    assert res.code == 2 and "error[USAGE]" in res.err


def test_sbom_lists_runtime_and_tenants(ran: tuple[Env, dict[str, Any]]) -> None:
    env, rows = ran
    out = env.root / "sbom.json"
    assert env.cli("sbom", "--out", str(out)).code == 0
    text = out.read_text()
    validate_sbom(text)
    doc = json.loads(text)
    names = {c["name"].lower(): c for c in doc["components"]}
    for dist in ("wasmtime", "cryptography", "tuf"):
        assert names[dist]["version"], dist
    hashes = {h["content"] for c in doc["components"] for h in c.get("hashes", [])}
    assert rows["hello"]["module_sha256"] in hashes
    assert doc["specVersion"] == "1.5"
    validate_sbom(build_sbom(None))  # the runtime alone, without a workspace


def test_forensic_export_changes_nothing_and_verifies(ran: tuple[Env, dict[str, Any]]) -> None:
    env, _ = ran

    def state() -> dict[str, bytes]:
        # Derived caches (the run index, the Merkle tree cache) may be refreshed; every
        # record (audit log, checkpoints, runs, content, trust) must stay byte-identical.
        derived = ("nightcore.db", "tree.bin", "tree.state")
        return {
            str(p): p.read_bytes()
            for p in sorted((env.ws / "state").rglob("*"))
            if p.is_file() and not p.name.startswith(derived)
        }

    before = state()
    out = env.root / "forensic.tar.gz"
    res = env.cli("forensics", "export", "--tenant", "fs-writer", "--out", str(out), "--json")
    assert res.code == 0 and res.json()["runs"] == 1
    assert state() == before
    members = _members(out)
    assert "package/module.wasm" in members and "config/nightcore.toml" in members
    assert any(n.startswith("runs/") and n.endswith("/stdout") for n in members)
    rc, verdict = _verify(out, env.ws / "node.pub.pem")
    assert rc == 0 and verdict["ok"], verdict
    res = env.cli("forensics", "export", "--tenant", "<bad>", "--out", str(out))
    assert res.code == 2 and "TENANT_NAME_INVALID" in res.err


def test_file_signer_matches_node_key(env: Env) -> None:
    from nightcore.runner.pipeline import Runner

    signer = Runner(NodeContext(env.ws)).node_signer()
    assert isinstance(signer, FileSigner)
    assert signer.key_id == NodeContext(env.ws).node_key_id()


def test_a_deep_tree_in_a_rw_grant_ends_only_that_tenant(env: Env) -> None:
    """A tenant's data tree 1,000 levels deep (beyond PATH_MAX): the attestation walk refuses it
    with TREE_LIMIT for that tenant alone; the run as a whole and its neighbours go on."""
    from tests.deep_tree import build_deep_tree, remove_deep_tree

    install(env, "hello", "fs-writer")
    data = env.ws / "state/tenants/fs-writer/data"
    data.mkdir(parents=True)
    build_deep_tree(data, 1000)
    try:
        res = env.cli("run", "--json")
        rows = {r["tenant"]: r for r in res.json()}
        assert rows["fs-writer"]["code"] == "TREE_LIMIT", rows["fs-writer"]
        assert rows["hello"]["code"] == "OK"
        outcome = next(
            e
            for e in env.audit_lines()
            if e["event"] == "run_outcome" and e.get("tenant") == "fs-writer"
        )
        assert outcome["data"]["code"] == "TREE_LIMIT"
    finally:
        assert remove_deep_tree(data) == 1000
