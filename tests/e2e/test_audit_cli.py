"""End to end: the transparency log through the real CLI, on real workspaces and real keys.

Every tampering of the log or of a checkpoint is named by ``audit verify`` with its code and the
entry it concerns; proofs round-trip through a directory holding nothing but ``node.pub.pem``;
every bad input is refused with a code and no traceback (the ``Cli`` fixture asserts that).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nightcore import app
from nightcore.audit import merkle, note
from nightcore.audit.checkpoint import checkpoint_origin
from nightcore.audit.log import ZERO_HASH, verify_chain
from nightcore.canonical import canonical
from nightcore.context import NodeContext
from nightcore.trust.keys import GeneratedKey, load_signer
from tests.conftest import Cli, CliResult, Env, run_cli_subprocess

# -- helpers -------------------------------------------------------------------------------


def log_path(env: Env) -> Path:
    return env.ws / "state" / "audit" / "audit.jsonl"


def raw_lines(env: Env) -> list[bytes]:
    return log_path(env).read_bytes().splitlines(keepends=True)


def write_lines(env: Env, lines: list[bytes]) -> None:
    log_path(env).write_bytes(b"".join(lines))


def rechain(lines: list[bytes]) -> list[bytes]:
    """What a careful forger does: renumber and re-link every line so the chain verifies."""
    out: list[bytes] = []
    prev = ZERO_HASH
    for seq, raw in enumerate(lines):
        rec = json.loads(raw)
        rec["seq"], rec["prev"] = seq, prev
        line = canonical(rec)
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return out


def node_private_key(env: Env) -> Ed25519PrivateKey:
    signer: Any = load_signer(str(env.ws / "private" / "node.key"))
    key = signer._private_key
    assert isinstance(key, Ed25519PrivateKey)
    return key


def checkpoint(env: Env) -> dict[str, Any]:
    res = env.cli("audit", "checkpoint", "--json")
    assert res.code == 0, res.err
    out: dict[str, Any] = res.json()
    return out


def verify_fails(env: Env, code: str) -> dict[str, Any]:
    res = env.cli("audit", "verify", "--json")
    assert res.code == 1, res.out
    report: dict[str, Any] = res.json()
    assert report["ok"] is False and report["code"] == code, report
    assert f"error[{code}]" in res.err and len(res.err.strip().splitlines()) == 1
    return report


def populated(env: Env, before: int = 3, after: int = 3) -> dict[str, Any]:
    """``before`` verify events, a checkpoint, then ``after`` more verify events."""
    env.add_tenant("hello")
    for _ in range(before):
        assert env.cli("verify").code == 0
    cp = checkpoint(env)
    for _ in range(after):
        assert env.cli("verify").code == 0
    return cp


def tail_note(env: Env) -> Path:
    return env.ws / "state" / "audit" / "audit.tail"


# -- the good path -------------------------------------------------------------------------


def test_checkpoint_signs_the_whole_log_and_verify_passes(env: Env) -> None:
    env.add_tenant("hello")
    assert env.cli("verify").code == 0
    n = len(raw_lines(env))
    cp = checkpoint(env)
    ws = NodeContext(env.ws)
    assert cp["ok"] is True and cp["size"] == n
    assert cp["origin"] == checkpoint_origin(ws.node_key_id())
    assert cp["key_name"] == ws.config.node_name == "node"
    stored = env.ws / "state" / "audit" / "checkpoints" / f"{n}.note"
    assert stored.read_bytes() == tail_note(env).read_bytes() == cp["note"].encode()
    # The checkpoint event comes after the signature and records what was signed.
    last = env.audit_lines()[-1]
    assert last["event"] == "checkpoint" and last["seq"] == n
    assert last["data"] == {"size": n, "root": cp["root"], "reason": "manual"}
    leaves = [merkle.leaf_hash(line.rstrip(b"\n")) for line in raw_lines(env)[:n]]
    assert merkle.root(leaves).hex() == cp["root"]

    res = env.cli("audit", "verify", "--json")
    assert res.code == 0, res.err
    report = res.json()
    assert report["ok"] is True and report["entries"] == n + 1
    assert report["head"] == hashlib.sha256(raw_lines(env)[-1].rstrip(b"\n")).hexdigest()
    assert report["checkpoints"] == 1 and report["latest_checkpoint"] == n
    text = env.cli("audit", "verify")
    assert text.code == 0 and "audit log OK" in text.out  # the verdict is the result: stdout


def test_checkpoint_text_output_is_the_signed_note(env: Env) -> None:
    res = env.cli("audit", "checkpoint", "--reason", "nightly")
    assert res.code == 0
    assert res.out == tail_note(env).read_text()
    assert env.audit_lines()[-1]["data"]["reason"] == "nightly"
    bad = env.cli("audit", "checkpoint", "--reason", "a\x1bb")
    assert bad.code == 2 and "error[USAGE]" in bad.err


# -- tampering -----------------------------------------------------------------------------


def test_edited_line_is_named(env: Env) -> None:
    populated(env)
    lines = raw_lines(env)
    rec = json.loads(lines[2])
    rec["data"]["forged"] = True
    lines[2] = canonical(rec) + b"\n"
    write_lines(env, lines)
    report = verify_fails(env, "AUDIT_CHAIN_BROKEN")
    assert report["seq"] == 3
    assert "line 2 differs from the line ingested into tree.bin" in report["error"]


def test_deleted_line_is_named(env: Env) -> None:
    populated(env)
    lines = raw_lines(env)
    del lines[4]
    write_lines(env, lines)
    assert verify_fails(env, "AUDIT_SEQ_GAP")["seq"] == 4


def test_reordered_lines_are_named(env: Env) -> None:
    populated(env)
    lines = raw_lines(env)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(env, lines)
    assert verify_fails(env, "AUDIT_SEQ_GAP")["seq"] == 2


def test_truncation_after_a_checkpoint_is_named(env: Env) -> None:
    cp = populated(env)
    keep = cp["size"] - 2
    write_lines(env, raw_lines(env)[:keep])  # a clean cut at a line boundary: the chain is fine
    verify_chain(iter(raw_lines(env)))
    report = verify_fails(env, "AUDIT_TRUNCATED")
    assert report["seq"] == keep and f"signed a tree of {cp['size']}" in report["error"]


def test_truncation_mid_line_is_still_truncation(env: Env) -> None:
    cp = populated(env)
    data = log_path(env).read_bytes()
    cut = sum(len(x) for x in raw_lines(env)[: cp["size"] - 1]) + 10
    log_path(env).write_bytes(data[:cut])
    assert verify_fails(env, "AUDIT_TRUNCATED")["seq"] == cp["size"] - 1


def test_signature_byte_flipped_is_forged(env: Env) -> None:
    populated(env)
    text = tail_note(env).read_text()
    body, sig_line = text.rsplit("\n\n", 1)
    name, b64 = sig_line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 0x01  # inside the Ed25519 signature (after the 4-byte key ID)
    forged = f"{body}\n\n{name} {base64.b64encode(bytes(raw)).decode()}\n"
    tail_note(env).write_text(forged)
    report = verify_fails(env, "CHECKPOINT_FORGED")
    assert "audit.tail" in report["error"]


def test_root_replaced_without_resigning_is_forged(env: Env) -> None:
    cp = populated(env)
    stored = env.ws / "state" / "audit" / "checkpoints" / f"{cp['size']}.note"
    old_root = base64.b64encode(bytes.fromhex(cp["root"])).decode()
    new_root = base64.b64encode(hashlib.sha256(b"another history").digest()).decode()
    stored.write_text(stored.read_text().replace(old_root, new_root))
    report = verify_fails(env, "CHECKPOINT_FORGED")
    assert f"checkpoints/{cp['size']}.note" in report["error"]


def test_validly_signed_wrong_root_is_a_root_mismatch(env: Env) -> None:
    """A checkpoint the node key did sign, of another history (a fork, or a stolen key)."""
    cp = populated(env)
    body = note.Checkpoint(cp["origin"], cp["size"], hashlib.sha256(b"fork").digest()).body()
    signed = note.sign_note(body, "node", node_private_key(env))
    (env.ws / "state" / "audit" / "checkpoints" / f"{cp['size']}.note").write_bytes(signed)
    verify_fails(env, "CHECKPOINT_ROOT_MISMATCH")


def test_rewritten_history_with_a_valid_chain_is_a_root_mismatch(env: Env) -> None:
    cp = populated(env)
    lines = raw_lines(env)
    rec = json.loads(lines[1])
    rec["data"]["code"] = "SIGNATURE_INVALID"
    lines[1] = canonical(rec) + b"\n"
    write_lines(env, rechain(lines))
    verify_chain(iter(raw_lines(env)))  # the chain alone cannot tell
    report = verify_fails(env, "CHECKPOINT_ROOT_MISMATCH")
    assert report["seq"] == 1, "tree.bin remembers which line was ingested differently"
    assert f"checkpoints/{cp['size']}.note" in report["error"]
    # ... and the node refuses to sign the rewritten history.
    res = env.cli("audit", "checkpoint")
    assert res.code == 1 and "error[AUDIT_TREE_MISMATCH]" in res.err


def test_rewritten_history_without_checkpoint_files_is_caught_by_the_event(env: Env) -> None:
    cp = populated(env)
    shutil.rmtree(env.ws / "state" / "audit" / "checkpoints")
    tail_note(env).unlink()
    lines = raw_lines(env)
    del lines[2]
    write_lines(env, rechain(lines))
    report = verify_fails(env, "CHECKPOINT_EVENT_MISMATCH")
    assert report["seq"] == cp["size"] - 1  # the checkpoint event moved up by one line


def test_renamed_checkpoint_file_is_refused(env: Env) -> None:
    cp = populated(env)
    cdir = env.ws / "state" / "audit" / "checkpoints"
    (cdir / f"{cp['size']}.note").rename(cdir / "2.note")
    verify_fails(env, "CHECKPOINT_MALFORMED")


def test_uncheckpointed_last_line_edit_warns_and_rebuilds_the_tree(env: Env) -> None:
    populated(env)
    assert env.cli("audit", "prove", "0").code == 0  # syncs tree.bin over the whole log
    lines = raw_lines(env)
    rec = json.loads(lines[-1])
    rec["data"]["forged"] = True
    lines[-1] = canonical(rec) + b"\n"
    write_lines(env, lines)
    # The node refuses to sign over it ...
    res = env.cli("audit", "checkpoint")
    assert res.code == 1 and "error[AUDIT_TREE_MISMATCH]" in res.err
    # ... verify has nothing signed to contradict it: it passes, warns, rebuilds tree.bin and
    # keeps the old one as evidence.
    res = env.cli("audit", "verify", "--json")
    assert res.code == 0
    report = res.json()
    assert report["tree"] == "rebuilt" and any("disagrees" in w for w in report["warnings"])
    audit_dir = env.ws / "state" / "audit"
    assert list(audit_dir.glob("tree.bin.mismatch-*"))
    assert env.cli("audit", "checkpoint").code == 0


def test_torn_tail_is_reported_then_recovered(env: Env) -> None:
    populated(env, after=0)
    with log_path(env).open("ab") as fh:
        fh.write(b'{"data":{},"ev')
    verify_fails(env, "AUDIT_TORN_TAIL")
    assert env.cli("verify").code == 0  # any append moves the torn tail aside
    assert env.cli("audit", "verify").code == 0
    assert any(r["event"] == "audit_torn_tail_recovered" for r in env.audit_lines())


# -- proofs --------------------------------------------------------------------------------


def make_proof(env: Env, seq: int, tmp: Path) -> tuple[Path, Path]:
    proof, entry = tmp / f"proof-{seq}.txt", tmp / f"entry-{seq}.json"
    res = env.cli("audit", "prove", str(seq), "--out", str(proof), "--entry-out", str(entry))
    assert res.code == 0, res.err
    return proof, entry


def test_prove_then_verify_offline_with_only_the_public_key(env: Env, tmp_path: Path) -> None:
    populated(env)
    out = tmp_path / "out"
    out.mkdir()
    proof, entry = make_proof(env, 2, out)
    assert entry.read_bytes() == raw_lines(env)[2].rstrip(b"\n")
    fresh = tmp_path / "third-party"
    fresh.mkdir()
    for f in (proof, entry, env.ws / "node.pub.pem"):
        shutil.copy(f, fresh / f.name)
    res = run_cli_subprocess(
        "audit",
        "verify-proof",
        proof.name,
        "--key",
        "node.pub.pem",
        "--entry",
        entry.name,
        "--json",
        cwd=fresh,
        env={"NIGHTCORE_HOME": str(fresh / "nowhere")},
    )
    assert res.code == 0, res.err
    out_json = res.json()
    assert out_json["ok"] is True and out_json["index"] == 2
    assert out_json["entry"]["seq"] == 2 and out_json["signed_by"] == ["node"]
    assert sorted(p.name for p in fresh.iterdir()) == sorted(
        [proof.name, entry.name, "node.pub.pem"]
    )


def test_prove_prints_a_tlog_proof_and_checkpoints_when_needed(env: Env, tmp_path: Path) -> None:
    populated(env)
    n = len(raw_lines(env))
    last = n - 1  # written after the only checkpoint: proving it needs a new one
    res = env.cli("audit", "prove", str(last))
    assert res.code == 0
    assert res.out.startswith("c2sp.org/tlog-proof@v1\nindex " + str(last) + "\n")
    parsed = note.parse_tlog_proof(res.out.encode())
    assert note.parse_checkpoint(parsed.checkpoint.split(b"\n\n")[0] + b"\n").size == n
    assert env.audit_lines()[-1]["data"]["reason"] == "prove"
    # A second proof of an entry the latest checkpoint covers signs nothing new.
    before = len(raw_lines(env))
    assert env.cli("audit", "prove", "0").code == 0
    assert len(raw_lines(env)) == before


def test_prove_refuses_entries_not_in_the_log(env: Env) -> None:
    n = len(raw_lines(env))
    res = env.cli("audit", "prove", str(n + 5))
    assert res.code == 1 and "error[PROOF_INDEX_OUT_OF_RANGE]" in res.err
    for bad in ("-1", "abc", "01"):
        res = env.cli("audit", "prove", bad)
        assert res.code == 2 and "error[USAGE]" in res.err


def mutate_proof(proof: bytes, how: str) -> bytes:
    head, cp = proof.split(b"\n\n", 1)
    lines = head.split(b"\n")
    if how == "long":
        lines.append(lines[-1])
    elif how == "short":
        lines.pop()
    elif how == "index":
        lines[1] = b"index 1000"
    elif how == "flip":
        h = bytearray(base64.b64decode(lines[2]))
        h[0] ^= 1
        lines[2] = base64.b64encode(bytes(h))
    return b"\n".join(lines) + b"\n\n" + cp


@pytest.mark.parametrize(
    "case,code",
    [
        ("long", "PROOF_LENGTH_INVALID"),
        ("short", "PROOF_LENGTH_INVALID"),
        ("index", "PROOF_INDEX_OUT_OF_RANGE"),
        ("flip", "PROOF_ROOT_MISMATCH"),
        ("garbage", "PROOF_FORMAT_INVALID"),
        ("binary", "PROOF_FORMAT_INVALID"),
        ("empty", "PROOF_FORMAT_INVALID"),
        ("wrong_key", "CHECKPOINT_FORGED"),
        ("ecdsa_key", "CHECKPOINT_FORGED"),  # another node's (FIPS, P-256) key
        ("not_a_key", "KEY_INVALID"),
        ("other_entry", "PROOF_ROOT_MISMATCH"),
        ("edited_entry", "PROOF_ROOT_MISMATCH"),
        ("garbage_entry", "AUDIT_LINE_MALFORMED"),
        ("forged_checkpoint", "CHECKPOINT_FORGED"),
    ],
)
def test_verify_proof_refuses_bad_input(
    env: Env,
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
    capsys: pytest.CaptureFixture[str],
    case: str,
    code: str,
) -> None:
    populated(env)
    proof, entry = make_proof(env, 3, tmp_path)
    key = env.ws / "node.pub.pem"
    data = proof.read_bytes()
    if case in ("long", "short", "index", "flip"):
        proof.write_bytes(mutate_proof(data, case))
    elif case == "garbage":
        proof.write_text("hello, I am a proof\n")
    elif case == "binary":
        proof.write_bytes(b"\xff\xfe\x00garbage")
    elif case == "empty":
        proof.write_bytes(b"")
    elif case == "wrong_key":
        key = keys_dir["alice"].public_path  # a real Ed25519 key, not the node's
    elif case == "ecdsa_key":
        fips = app.init_workspace(tmp_path / "fips-ws", fips=True)
        key = fips.layout.node_pub_path
    elif case == "not_a_key":
        key = tmp_path / "junk.pem"
        key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    elif case == "other_entry":
        entry.write_bytes(raw_lines(env)[4].rstrip(b"\n"))
    elif case == "edited_entry":
        rec = json.loads(entry.read_bytes())
        rec["data"]["code"] = "KEY_REVOKED"
        entry.write_bytes(canonical(rec))
    elif case == "garbage_entry":
        entry.write_bytes(b"not an audit line")
    elif case == "forged_checkpoint":
        proof.write_bytes(data.replace(b"\nnightcore/", b"\nnightcore/x", 1))
    offline = Cli(capsys, None)  # no workspace at all
    res: CliResult = offline(
        "audit", "verify-proof", str(proof), "--key", str(key), "--entry", str(entry), "--json"
    )
    assert res.code in (1, 2)
    assert f"error[{code}]" in res.err, res.err
    assert res.json()["ok"] is False and res.json()["code"] == code


def test_verify_proof_of_an_entry_at_another_index(env: Env, tmp_path: Path) -> None:
    """A proof is bound to its index: the entry's own seq must agree with it."""
    populated(env)
    proof, entry = make_proof(env, 3, tmp_path)
    rec = json.loads(entry.read_bytes())
    assert rec["seq"] == 3
    res = env.cli(
        "audit",
        "verify-proof",
        str(proof),
        "--key",
        str(env.ws / "node.pub.pem"),
        "--entry",
        str(entry),
    )
    assert res.code == 0 and "OK: entry 3" in res.err


def test_missing_proof_file_is_an_io_error(env: Env, tmp_path: Path) -> None:
    res = env.cli(
        "audit",
        "verify-proof",
        str(tmp_path / "nope"),
        "--key",
        str(env.ws / "node.pub.pem"),
        "--entry",
        str(tmp_path / "nope"),
    )
    assert res.code == 2 and "error[IO_ERROR]" in res.err


# -- consistency ---------------------------------------------------------------------------


def test_consistency_with_an_old_checkpoint(env: Env, tmp_path: Path) -> None:
    cp = populated(env)
    old = tmp_path / "old.note"
    old.write_text(cp["note"])  # what a third party kept
    for _ in range(3):
        assert env.cli("verify").code == 0
    proof = tmp_path / "consistency.txt"
    res = env.cli("audit", "consistency", str(old), "--out", str(proof), "--json")
    assert res.code == 0, res.err
    out = res.json()
    assert out["old_size"] == cp["size"] and out["new_size"] > cp["size"]
    assert out["old_root"] == cp["root"]
    fresh = tmp_path / "third-party"
    fresh.mkdir()
    shutil.copy(env.ws / "node.pub.pem", fresh / "node.pub.pem")
    offline = run_cli_subprocess(
        "audit",
        "verify-consistency",
        str(proof),
        "--old",
        str(old),
        "--key",
        "node.pub.pem",
        cwd=fresh,
    )
    assert offline.code == 0, offline.err
    assert f"extends checkpoint {cp['size']}" in offline.err


def test_consistency_fails_after_history_rewrite(env: Env, tmp_path: Path) -> None:
    cp = populated(env)
    old = tmp_path / "old.note"
    old.write_text(cp["note"])
    # The forger rewrites history, re-chains it and removes every local trace of the signature.
    shutil.rmtree(env.ws / "state" / "audit" / "checkpoints")
    tail_note(env).unlink()
    (env.ws / "state" / "audit" / "tree.bin").unlink()
    lines = [x for x in raw_lines(env) if json.loads(x)["event"] != "checkpoint"]
    rec = json.loads(lines[1])
    rec["data"]["code"] = "OK-ish"
    lines[1] = canonical(rec) + b"\n"
    write_lines(env, rechain(lines))
    assert env.cli("audit", "verify").code == 0, "nothing local can tell any more"
    res = env.cli("audit", "consistency", str(old), "--json")
    assert res.code == 1
    assert res.json()["code"] == "CONSISTENCY_FAILED"
    assert "error[CONSISTENCY_FAILED]" in res.err


def test_consistency_after_truncation(env: Env, tmp_path: Path) -> None:
    cp = populated(env)
    old = tmp_path / "old.note"
    old.write_text(cp["note"])
    write_lines(env, raw_lines(env)[: cp["size"] - 1])
    res = env.cli("audit", "consistency", str(old))
    assert res.code == 1 and "error[AUDIT_TRUNCATED]" in res.err


def test_consistency_refuses_a_forged_old_checkpoint(env: Env, tmp_path: Path) -> None:
    cp = populated(env)
    old = tmp_path / "old.note"
    old.write_text(cp["note"].replace(f"\n{cp['size']}\n", f"\n{cp['size'] - 1}\n", 1))
    res = env.cli("audit", "consistency", str(old))
    assert res.code == 1 and "error[CHECKPOINT_FORGED]" in res.err


def test_verify_consistency_refuses_a_tampered_proof(env: Env, tmp_path: Path) -> None:
    cp = populated(env)
    old = tmp_path / "old.note"
    old.write_text(cp["note"])
    for _ in range(2):
        assert env.cli("verify").code == 0
    proof = tmp_path / "c.txt"
    assert env.cli("audit", "consistency", str(old), "--out", str(proof)).code == 0
    text = proof.read_bytes()
    head, rest = text.split(b"\n\n", 1)
    lines = head.split(b"\n")
    h = bytearray(base64.b64decode(lines[2]))
    h[5] ^= 0x80
    lines[2] = base64.b64encode(bytes(h))
    proof.write_bytes(b"\n".join(lines) + b"\n\n" + rest)
    key = str(env.ws / "node.pub.pem")
    res = env.cli("audit", "verify-consistency", str(proof), "--old", str(old), "--key", key)
    assert res.code == 1 and "error[CONSISTENCY_FAILED]" in res.err
    proof.write_bytes(b"nightcore/consistency-proof@v1\nold x\n\n")
    res = env.cli("audit", "verify-consistency", str(proof), "--old", str(old), "--key", key)
    assert res.code == 1 and "error[PROOF_FORMAT_INVALID]" in res.err


# -- keys ----------------------------------------------------------------------------------


def test_fips_node_checkpoints_and_proves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIPS node's ECDSA P-256 key signs checkpoints (note signature type 0x02)."""
    ws = app.init_workspace(tmp_path / "ws", fips=True)
    cli = Cli(capsys, ws.root)
    res = cli("audit", "checkpoint", "--json")
    assert res.code == 0 and res.json()["size"] == 1
    proof, entry = tmp_path / "p", tmp_path / "e"
    assert cli("audit", "prove", "0", "--out", str(proof), "--entry-out", str(entry)).code == 0
    res = Cli(capsys, None)(
        "audit",
        "verify-proof",
        str(proof),
        "--key",
        str(ws.layout.node_pub_path),
        "--entry",
        str(entry),
    )
    assert res.code == 0, res.err
    assert cli("audit", "verify").code == 0


def test_encrypted_node_key_signs_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTCORE_NODE_KEY_PASSPHRASE", "node-passphrase-123")
    ws = app.init_workspace(tmp_path / "ws")
    assert b"ENCRYPTED" in (ws.root / "private" / "node.key").read_bytes()
    cli = Cli(capsys, ws.root)
    assert cli("audit", "checkpoint").code == 0
    assert cli("audit", "verify").code == 0


def test_node_name_that_cannot_be_a_note_key_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = app.init_workspace(tmp_path / "ws", name="edge 01")
    res = Cli(capsys, ws.root)("audit", "checkpoint")
    assert res.code == 1 and "error[CHECKPOINT_KEY_NAME_INVALID]" in res.err


def test_node_public_key_swapped(env: Env, keys_dir: dict[str, GeneratedKey]) -> None:
    shutil.copy(keys_dir["alice"].public_path, env.ws / "node.pub.pem")
    res = env.cli("audit", "checkpoint")
    assert res.code == 2 and "error[NODE_KEY_MISMATCH]" in res.err


# -- show ----------------------------------------------------------------------------------


def test_show_filters_and_cleans(env: Env) -> None:
    env.add_tenant("hello")
    assert env.cli("verify").code == 0
    NodeContext(env.ws).audit().append("note", {"x": 1}, tenant="evil\x1b[31mred\u202e")
    rows = env.cli("audit", "show", "--json", "--limit", "0").json()
    assert [r["seq"] for r in rows] == list(range(len(raw_lines(env))))
    hello = env.cli("audit", "show", "--tenant", "hello", "--json").json()
    assert hello and all(r["tenant"] == "hello" for r in hello)
    verify = env.cli("audit", "show", "--event", "verify", "--json").json()
    assert [r["event"] for r in verify] == ["verify"]
    assert env.cli("audit", "show", "--since", "2999-01-01", "--json").json() == []
    assert len(env.cli("audit", "show", "--since", "2000-01-01", "--json").json()) == len(rows)
    last = env.cli("audit", "show", "--limit", "1", "--json").json()
    assert [r["seq"] for r in last] == [rows[-1]["seq"]]
    table = env.cli("audit", "show")
    assert table.code == 0 and "workspace_init" in table.out
    # ANSI sequences are removed whole; the bidi override becomes "?"
    assert "\x1b" not in table.out and "\u202e" not in table.out and "evilred?" in table.out
    bad = env.cli("audit", "show", "--since", "yesterday")
    assert bad.code == 2 and "error[USAGE]" in bad.err


def test_verify_signs_a_checkpoint_every_n_entries(env: Env) -> None:
    cfg = env.ws / "nightcore.toml"
    cfg.write_text(cfg.read_text() + "\n[audit]\ncheckpoint_every = 5\n")
    env.add_tenant("hello")
    for _ in range(6):
        assert env.cli("verify").code == 0
    events = [e["event"] for e in env.audit_lines()]
    assert events.count("checkpoint") >= 1
    assert env.cli("audit", "verify").code == 0
