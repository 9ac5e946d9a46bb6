"""C2SP signed notes with ECDSA (signature type 0x02) and the node-key history, pure.

Keys are generated at test time; the 0x02 rules (key ID = SHA-256(DER SPKI)[:4], DER ECDSA over
SHA-256 of the text) are recomputed here with ``cryptography`` directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from nightcore.audit import note
from nightcore.audit.keyhistory import KeyHistory, load_history
from nightcore.errors import AuditError, NightCoreError

BODY = note.Checkpoint("nightcore/0011223344556677", 3, b"\x07" * 32).body()


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_ecdsa_note_round_trip(curve: ec.EllipticCurve) -> None:
    private = ec.generate_private_key(curve)
    pub = private.public_key()
    signed = note.sign_note(BODY, "edge-1", private)
    raw = base64.b64decode(signed.rstrip(b"\n").rsplit(b" ", 1)[1])
    assert raw[:4] == hashlib.sha256(_spki(pub)).digest()[:4] == note.key_id("edge-1", pub)
    pub.verify(raw[4:], BODY, ec.ECDSA(hashes.SHA256()))
    assert note.open_note(signed, {"edge-1": pub}).verified == ["edge-1"]
    vkey = note.encode_vkey("edge-1", pub)
    assert base64.b64decode(vkey.split("+", 2)[2])[0] == note.SIG_ECDSA
    assert note.parse_vkey(vkey).key_id == raw[:4]


def test_ecdsa_and_ed25519_cosign_one_note() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    signed = note.add_signature(note.sign_note(BODY, "a", p256), "b", ed)
    opened = note.open_note(signed, [("a", p256.public_key()), ("b", ed.public_key())])
    assert opened.verified == ["a", "b"]


def test_ecdsa_signature_tampered_or_by_another_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    signed = note.sign_note(BODY, "n", private)
    text, line = signed.rsplit(b"\n\n", 1)
    raw = bytearray(base64.b64decode(line.rstrip(b"\n").rsplit(b" ", 1)[1]))
    raw[-1] ^= 1
    bad = text + b"\n\n\xe2\x80\x94 n " + base64.b64encode(bytes(raw)) + b"\n"
    with pytest.raises(AuditError) as exc:
        note.open_note(bad, {"n": private.public_key()})
    assert exc.value.code == "NOTE_SIGNATURE_INVALID"
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(AuditError) as exc:
        note.open_note(signed, {"n": other})
    assert exc.value.code == "NOTE_UNKNOWN_KEY"


def test_vkeys_outside_the_ecdsa_curves_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec as _ec

    k1 = _ec.generate_private_key(_ec.SECP256K1()).public_key()
    bad = "n+00000000+" + base64.b64encode(b"\x02" + _spki(k1)).decode()
    with pytest.raises(AuditError) as exc:
        note.parse_vkey(bad)
    assert exc.value.code == "VKEY_ALGORITHM_UNSUPPORTED"
    with pytest.raises(AuditError) as exc:
        note.sign_note(BODY, "n", _ec.generate_private_key(_ec.SECP256K1()))
    assert exc.value.code == "NOTE_SIGNER_INVALID"


def _pem(private: ed25519.Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"format": "x"}', json.dumps({"a": 1}).encode(), b"\xff" * 10],
)
def test_hostile_history_files(tmp_path: Path, data: bytes) -> None:
    pem = _pem(ed25519.Ed25519PrivateKey.generate())
    (tmp_path / "node-keys.json").write_bytes(data)
    with pytest.raises(NightCoreError) as exc:
        load_history(tmp_path, pem)
    assert exc.value.code == "NODE_KEY_HISTORY_INVALID"


def test_single_key_history_without_a_file(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    history = load_history(tmp_path, _pem(private))
    assert history.document is None and len(history.keys) == 1
    signed = note.sign_note(
        note.Checkpoint(history.origin, 5, b"\x01" * 32).body(), "node", private
    )
    assert history.open_checkpoint(signed).size == 5
    assert isinstance(history, KeyHistory)
