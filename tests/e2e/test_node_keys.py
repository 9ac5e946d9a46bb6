"""Node-key lifecycle and FIPS evidence, end to end through ``nightcore`` subprocesses.

Real keys generated at test time, real wasmtime runs, real bundles: a FIPS node (ECDSA P-256)
runs, checkpoints, exports and verifies; a node rotates its key and one log (and one proof
bundle) verifies across the rotation; checkpoints signed outside a key's range, by a revoked key
or with a tampered history are refused; a signer reached only through a securesystemslib URI
(a KMS/HSM stand-in) signs checkpoints and attestations.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.audit import note
from nightcore.audit.tree import LogTree
from nightcore.trust.keys import generate_key
from tests.conftest import HELLO_WAT, PASSPHRASE, REPO, CliResult, run_cli_subprocess, wat_module


def nc(*args: str, ok: bool = True) -> CliResult:
    res = run_cli_subprocess(*args)
    assert "Traceback" not in res.err, res.err
    if ok:
        assert res.code == 0, (args, res.out, res.err)
    return res


def nc_kms(*args: str) -> CliResult:
    """The CLI in a process where the ``softkms:`` signer plugin is registered."""
    p = subprocess.run(
        [sys.executable, "-m", "tests.e2e.kms_signer", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
        timeout=180,
    )
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return CliResult(p.returncode, p.stdout, p.stderr)


def workspace(tmp: Path, *, fips: bool = False) -> Path:
    """A workspace with one signed tenant ``hello`` (publisher key P-256 in FIPS mode)."""
    ws = tmp / "ws"
    nc("init", str(ws), *(["--fips"] if fips else []))
    pub = app.keygen("pub", tmp / "keys", PASSPHRASE.encode(), fips=fips)
    nc("-w", str(ws), "trust", "add-key", str(pub.public_path), "--scope", "*")
    d = ws / "modules" / "hello"
    d.mkdir(parents=True)
    (d / "module.wasm").write_bytes(wat_module(HELLO_WAT))
    (d / "manifest.toml").write_text('schema = 1\ntenant = "hello"\nversion = "1.0.0"\n')
    nc("sign", str(d), "--key", str(pub.private_path), *(["--fips"] if fips else []))
    return ws


def run_hello(ws: Path) -> dict[str, Any]:
    rows = json.loads(nc("-w", str(ws), "run", "hello", "--json").out)
    assert rows[0]["code"] == "OK", rows
    return dict(rows[0])


def prove(ws: Path, seq: int, tmp: Path) -> tuple[Path, Path]:
    proof, entry = tmp / f"{seq}.proof", tmp / f"{seq}.entry"
    nc("-w", str(ws), "audit", "prove", str(seq), "--out", str(proof), "--entry-out", str(entry))
    return proof, entry


def verify_proof(proof: Path, entry: Path, key: Path, *extra: str) -> CliResult:
    res = run_cli_subprocess(
        "audit", "verify-proof", str(proof), "--key", str(key), "--entry", str(entry), "--json",
        *extra,
    )  # fmt: skip
    assert "Traceback" not in res.err, res.err
    return res


def bundle_verify(bundle: Path, key: Path) -> tuple[int, dict[str, Any]]:
    res = run_cli_subprocess("proof", "verify", str(bundle), "--key", str(key), "--json")
    assert "Traceback" not in res.err, res.err
    return res.code, json.loads(res.out)


def tree_root(ws: Path, size: int) -> bytes:
    t = LogTree(ws / "state" / "audit")
    t.sync()
    return t.tree.root(size)


def origin_of(ws: Path) -> str:
    tail = (ws / "state" / "audit" / "audit.tail").read_text()
    return tail.split("\n", 1)[0]


def load_private(path: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(path.read_bytes(), None)


# -- FIPS ----------------------------------------------------------------------------------


def test_fips_node_runs_checkpoints_exports_and_verifies(tmp_path: Path) -> None:
    ws = workspace(tmp_path, fips=True)
    run_hello(ws)
    cp = json.loads(nc("-w", str(ws), "audit", "checkpoint", "--json").out)
    # Note signature type 0x02 as C2SP assigns it (transparency-dev/witness): key ID is the
    # first 4 bytes of SHA-256 over the DER SubjectPublicKeyInfo; the signature is DER ECDSA.
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = serialization.load_pem_public_key((ws / "node.pub.pem").read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text, sig_line = cp["note"].rsplit("\n\n", 1)
    raw = base64.b64decode(sig_line.strip().rsplit(" ", 1)[1])
    assert raw[:4] == hashlib.sha256(spki).digest()[:4]
    pub.verify(raw[4:], (text + "\n").encode(), ec.ECDSA(hashes.SHA256()))
    vkey = note.encode_vkey("node", pub)
    assert base64.b64decode(vkey.split("+", 2)[2])[0] == 0x02
    assert note.parse_vkey(vkey).key_id == raw[:4]

    assert "audit log OK" in nc("-w", str(ws), "audit", "verify").out
    proof, entry = prove(ws, 0, tmp_path)
    assert verify_proof(proof, entry, ws / "node.pub.pem").code == 0
    bundle = tmp_path / "fips-proof.tar.gz"
    nc("-w", str(ws), "proof", "export", "--out", str(bundle))
    code, res = bundle_verify(bundle, ws / "node.pub.pem")
    assert code == 0 and res["ok"], res


# -- rotation ------------------------------------------------------------------------------


@pytest.fixture
def rotated(tmp_path: Path) -> dict[str, Any]:
    """A node that ran before and after a key rotation."""
    ws = workspace(tmp_path)
    before = run_hello(ws)
    old_pub = tmp_path / "old.pub.pem"
    old_pub.write_bytes((ws / "node.pub.pem").read_bytes())
    old_proof = prove(ws, 0, tmp_path)  # against a checkpoint the old key signed
    rot = json.loads(nc("-w", str(ws), "node-key", "rotate", "--json").out)
    after = run_hello(ws)
    return {
        "ws": ws,
        "tmp": tmp_path,
        "rot": rot,
        "before": before,
        "after": after,
        "old_pub": old_pub,
        "old_proof": old_proof,
        "old_key": Path(rot["retired_key_file"]),
    }


def test_rotation_one_log_spans_both_keys(rotated: dict[str, Any]) -> None:
    ws, rot, tmp = rotated["ws"], rotated["rot"], rotated["tmp"]
    assert rot["old_key_id"] != rot["new_key_id"]
    assert rot["new_key_first_checkpoint"] > rot["old_key_last_checkpoint"]
    assert (ws / "node.pub.pem").read_bytes() != rotated["old_pub"].read_bytes()
    lines = [json.loads(x) for x in (ws / "state/audit/audit.jsonl").read_text().splitlines()]
    event = lines[rot["event_seq"]]
    assert event["event"] == "node_key_rotated"
    assert event["data"]["statement"]["new_key_id"] == rot["new_key_id"]
    assert rot["event_seq"] < rot["old_key_last_checkpoint"]  # covered by the old key
    listed = json.loads(nc("-w", str(ws), "node-key", "list", "--json").out)
    assert [k["key_id"] for k in listed["keys"]] == [rot["old_key_id"], rot["new_key_id"]]
    assert listed["keys"][0]["to_size"] == listed["keys"][1]["from_size"]

    res = json.loads(nc("-w", str(ws), "audit", "verify", "--json").out)
    assert res["ok"] and res["checkpoints"] >= 3, res

    # A proof made before the rotation: with the history, the new key vouches for the old one.
    proof, entry = rotated["old_proof"]
    history = ws / "state/audit/node-keys.json"
    new_pub = ws / "node.pub.pem"
    assert verify_proof(proof, entry, new_pub, "--key-history", str(history)).code == 0
    assert verify_proof(proof, entry, rotated["old_pub"], "--key-history", str(history)).code == 0
    res = verify_proof(proof, entry, new_pub)  # without the history the new key alone
    assert res.code == 1 and res.json()["code"] == "CHECKPOINT_FORGED"
    # A proof made after the rotation, of an entry logged before it.
    (tmp / "after").mkdir()
    proof2, entry2 = prove(ws, 0, tmp / "after")
    assert verify_proof(proof2, entry2, new_pub, "--key-history", str(history)).code == 0

    # A run attested by the old key replays after the rotation (the history names its key).
    res = run_cli_subprocess("-w", str(ws), "replay", rotated["before"]["run_id"], "--json")
    assert res.code == 0 and "Traceback" not in res.err, res.err

    # One proof bundle spanning both keys: attestations by the old and the new key.
    bundle = tmp / "proof.tar.gz"
    nc("-w", str(ws), "proof", "export", "--out", str(bundle))
    for pinned in (new_pub, rotated["old_pub"]):
        code, res = bundle_verify(bundle, pinned)
        assert code == 0 and res["ok"], res
    assert any(c.get("check") == "node keys" for c in res["checks"]), res


def test_checkpoint_signed_outside_its_key_range_is_refused(rotated: dict[str, Any]) -> None:
    ws, rot, tmp = rotated["ws"], rotated["rot"], rotated["tmp"]
    audit = ws / "state" / "audit"
    origin = origin_of(ws)
    old_key = load_private(rotated["old_key"])
    size = sum(1 for _ in (audit / "audit.jsonl").open("rb"))
    assert size > rot["old_key_last_checkpoint"]
    # The retired key signs the current log (past its rotation): a valid signature, refused.
    forged = note.sign_note(
        note.Checkpoint(origin, size, tree_root(ws, size)).body(), "node", old_key
    )
    (audit / "checkpoints" / f"{size}.note").write_bytes(forged)
    res = run_cli_subprocess("-w", str(ws), "audit", "verify", "--json")
    assert res.code == 1 and json.loads(res.out)["code"] == "CHECKPOINT_KEY_OUT_OF_RANGE", res
    (audit / "checkpoints" / f"{size}.note").unlink()
    assert nc("-w", str(ws), "audit", "verify").code == 0
    # The same forged checkpoint in an inclusion proof, verified offline.
    proof, entry = prove(ws, 0, tmp)
    parsed = note.parse_tlog_proof(proof.read_bytes())
    t = LogTree(audit)
    t.sync()
    bad = tmp / "forged.proof"
    bad.write_bytes(note.format_tlog_proof(0, t.tree.inclusion_proof(0, size), forged))
    history = audit / "node-keys.json"
    res = verify_proof(bad, entry, ws / "node.pub.pem", "--key-history", str(history))
    assert res.code == 1 and res.json()["code"] == "CHECKPOINT_KEY_OUT_OF_RANGE"
    assert parsed.index == 0
    # The new key signing a size before its range (history it never saw): refused too.
    new_key = load_private(ws / "private" / "node.key")
    early = rot["old_key_last_checkpoint"] - 1
    back = note.sign_note(
        note.Checkpoint(origin, early, tree_root(ws, early)).body(), "node", new_key
    )
    bad.write_bytes(note.format_tlog_proof(0, t.tree.inclusion_proof(0, early), back))
    res = verify_proof(bad, entry, ws / "node.pub.pem", "--key-history", str(history))
    assert res.code == 1 and res.json()["code"] == "CHECKPOINT_KEY_OUT_OF_RANGE"


def test_tampered_history_is_refused(rotated: dict[str, Any]) -> None:
    ws = rotated["ws"]
    path = ws / "state" / "audit" / "node-keys.json"
    doc = json.loads(path.read_bytes())
    doc["keys"][0]["to_size"] += 5  # extend the old key's range
    doc["keys"][1]["from_size"] += 5
    path.write_text(json.dumps(doc))
    res = run_cli_subprocess("-w", str(ws), "audit", "verify", "--json")
    assert res.code in (1, 2) and "NODE_KEY_HISTORY_INVALID" in res.out + res.err


def test_revoked_node_key(rotated: dict[str, Any]) -> None:
    ws, rot = rotated["ws"], rotated["rot"]
    res = run_cli_subprocess(
        "-w", str(ws), "node-key", "revoke", rot["new_key_id"][:12], "--last-trusted-size", "1"
    )
    assert res.code == 2 and "error[NODE_KEY_REVOKE_ACTIVE]" in res.err
    out = json.loads(
        nc("-w", str(ws), "node-key", "revoke", rot["old_key_id"][:12],
           "--last-trusted-size", "1", "--json").out
    )  # fmt: skip
    assert out["checkpoints_set_aside"], out
    assert nc("-w", str(ws), "audit", "verify").code == 0
    # The old proof's checkpoint (signed by the old key above size 1) is now refused.
    proof, entry = rotated["old_proof"]
    history = ws / "state" / "audit" / "node-keys.json"
    res = verify_proof(proof, entry, ws / "node.pub.pem", "--key-history", str(history))
    assert res.code == 1 and res.json()["code"] == "NODE_KEY_REVOKED"
    # A proof of the same entry against a checkpoint of the active key still verifies.
    (rotated["tmp"] / "r").mkdir()
    proof2, entry2 = prove(ws, 0, rotated["tmp"] / "r")
    assert (
        verify_proof(proof2, entry2, ws / "node.pub.pem", "--key-history", str(history)).code == 0
    )
    lines = (ws / "state/audit/audit.jsonl").read_text()
    assert '"event":"node_key_revoked"' in lines


# -- a KMS/HSM-style signer ----------------------------------------------------------------


def test_node_key_behind_a_signer_uri(tmp_path: Path) -> None:
    """Rotate to a key reached only through a securesystemslib signer URI; it signs checkpoints
    and run attestations; everything verifies offline with public keys only."""
    ws = workspace(tmp_path)
    run_hello(ws)
    kms = generate_key("kms", tmp_path / "kms", None, fips=False)
    uri = f"softkms:{kms.private_path}"
    rot = json.loads(
        nc_kms("-w", str(ws), "node-key", "rotate", "--to-key", uri,
               "--to-public", str(kms.public_path), "--json").out
    )  # fmt: skip
    assert rot["new_key_id"] == kms.key_id and rot["key"] == uri
    assert f'key = "{uri}"' in (ws / "nightcore.toml").read_text()
    rows = json.loads(nc_kms("-w", str(ws), "run", "hello", "--json").out)
    assert rows[0]["code"] == "OK"
    cp = json.loads(nc_kms("-w", str(ws), "audit", "checkpoint", "--json").out)
    assert cp["size"] > rot["old_key_last_checkpoint"]
    # Without the plugin, this host cannot reach the signer: nothing is signed.
    res = run_cli_subprocess("-w", str(ws), "audit", "checkpoint", "--json")
    assert res.code != 0
    assert nc("-w", str(ws), "audit", "verify").code == 0
    bundle = tmp_path / "kms-proof.tar.gz"
    nc_kms("-w", str(ws), "proof", "export", "--out", str(bundle))
    code, out = bundle_verify(bundle, kms.public_path)
    assert code == 0 and out["ok"], out


# -- publisher keys: age warnings and rotation ---------------------------------------------


def test_publisher_key_age_warning_and_rotation(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    reg_path = ws / "trust" / "registry.json"
    reg = json.loads(reg_path.read_bytes())
    old_id = reg["keys"][0]["keyid"]
    reg["keys"][0]["added"] = "2026-01-02T03:04:05Z"  # long before now: due for rotation
    reg_path.write_text(json.dumps(reg))
    res = nc("-w", str(ws), "doctor", "--json")  # a WARN is advice: doctor still exits 0
    warns = [c for c in json.loads(res.out) if c["status"] == "WARN"]
    assert warns and warns[0]["check"] == "publisher key age", warns
    assert old_id[:16] in warns[0]["detail"] and "rotate-key" in warns[0]["detail"]
    report = tmp_path / "report.html"
    nc("-w", str(ws), "dashboard", "build", "--out", str(report))
    assert "trusted for more than 90 days" in report.read_text()

    new = app.keygen("pub-2027", tmp_path / "keys", PASSPHRASE.encode())
    out = json.loads(
        nc("-w", str(ws), "trust", "rotate-key", old_id[:12], str(new.public_path),
           "--grace-days", "7", "--json").out
    )  # fmt: skip
    assert out["new"]["key_id"] == new.key_id and out["new"]["scope"] == out["old"]["scope"]
    assert out["old"]["expires"]  # the old key expires after the grace period
    nc("sign", str(ws / "modules" / "hello"), "--key", str(new.private_path))
    rows = json.loads(nc("-w", str(ws), "verify", "--json").out)
    assert rows[0]["code"] == "OK" and rows[0]["key_id"] == new.key_id, rows
    warns = [
        c for c in json.loads(nc("-w", str(ws), "doctor", "--json").out) if c["status"] == "WARN"
    ]
    assert len(warns) == 1 and old_id[:16] in warns[0]["detail"]  # until the old key goes
    lines = (ws / "state" / "audit" / "audit.jsonl").read_text()
    assert '"event":"trust_key_rotated"' in lines


def test_a_mirror_verifies_across_a_rotation(tmp_path: Path) -> None:
    """A mirror carries the node-key history with the log: after a rotation, the mirror's own
    check verifies the old key's checkpoints by the history (and the anchor still holds)."""
    ws = workspace(tmp_path)
    mirror = tmp_path / "mirror"
    cfg = ws / "nightcore.toml"
    cfg.write_text(
        cfg.read_text() + f'\n[[audit.mirror]]\nname = "dr"\nkind = "dir"\npath = "{mirror}"\n'
    )
    run_hello(ws)  # checkpoint by the first key, pushed to the mirror
    nc("-w", str(ws), "node-key", "rotate")
    run_hello(ws)  # checkpoint by the second key
    nc("-w", str(ws), "audit", "mirror", "sync")
    assert (mirror / "node-keys.json").read_bytes() == (
        ws / "state/audit/node-keys.json"
    ).read_bytes()
    res = nc("-w", str(ws), "audit", "verify", "--source", "dr", "--json", ok=False)
    assert res.code == 0 and json.loads(res.out)["ok"], res.out + res.err
