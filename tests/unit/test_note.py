"""C2SP signed notes, checkpoints, vkeys and tlog-proofs (nightcore.audit.note).

The PeterNeumann / EnochRoot keys and notes are the public test vectors of the Go reference
implementation (golang.org/x/mod/sumdb/note, note_test.go). Ed25519 is deterministic, so signing
the same text with the same key must reproduce the published note byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from nightcore.audit import merkle
from nightcore.audit import note as n
from nightcore.errors import AuditError

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngot"
    "pRZb6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
).encode()
PETER_NOTE = TEXT + b"\n" + PETER_SIG


def peter_private() -> Ed25519PrivateKey:
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def peter() -> n.Verifier:
    return n.parse_vkey(PETER_VKEY)


def enoch() -> n.Verifier:
    return n.parse_vkey(ENOCH_VKEY)


def code_of(fn: Callable[[], object]) -> str:
    """The code of the AuditError ``fn`` raises (any other exception fails the test)."""
    with pytest.raises(AuditError) as e:
        fn()
    return e.value.code


def new_key() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key()


# ---------------------------------------------------------------------------------------------
# Keys and the Go reference vectors


def test_key_id_reproduces_the_go_vectors() -> None:
    v = peter()
    assert v.name == "PeterNeumann"
    assert n.key_id("PeterNeumann", v.public_key) == bytes.fromhex("c74f20a3")
    assert v.key_id.hex() == "c74f20a3"
    assert n.encode_vkey(v.name, v.public_key) == PETER_VKEY
    assert n.key_id("EnochRoot", enoch().public_key).hex() == "af0cfe78"
    assert n.encode_vkey("EnochRoot", enoch().public_key) == ENOCH_VKEY
    # The key ID is SHA-256(name || "\n" || 0x01 || key)[:4], computed here by hand.
    raw = base64.b64decode(PETER_VKEY.split("+", 2)[2])
    assert hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4].hex() == "c74f20a3"
    assert peter_private().public_key() == v.public_key


def test_sign_reproduces_the_go_note_byte_for_byte() -> None:
    assert n.sign_note(TEXT, "PeterNeumann", peter_private()) == PETER_NOTE
    opened = n.open_note(PETER_NOTE, [peter()])
    assert opened == (TEXT, ["PeterNeumann"])
    body, names = n.open_note(PETER_NOTE, {"PeterNeumann": peter().public_key})
    assert (body, names) == (TEXT, ["PeterNeumann"])


def test_go_open_semantics() -> None:
    both = TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    assert n.open_note(both, [peter()]).verified == ["PeterNeumann"]  # Enoch unknown: ignored
    assert n.open_note(both, [enoch()]).verified == ["EnochRoot"]
    assert n.open_note(both, [peter(), enoch()]).verified == ["PeterNeumann", "EnochRoot"]
    assert code_of(lambda: n.open_note(both, [])) == "NOTE_UNKNOWN_KEY"
    assert code_of(lambda: n.open_note(both, {})) == "NOTE_UNKNOWN_KEY"
    # the same verifier listed twice is not ambiguous
    assert n.open_note(PETER_NOTE, [peter(), enoch(), peter()]).verified == ["PeterNeumann"]
    # repeated *unknown* signatures are ignored like any unknown signature
    assert n.open_note(TEXT + b"\n" + PETER_SIG + ENOCH_SIG + ENOCH_SIG, [peter()]).body == TEXT


def test_mangled_vkeys_are_refused() -> None:
    b = PETER_VKEY.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                assert code_of(lambda: n.parse_vkey(b[i:j].decode())).startswith("VKEY_")  # noqa: B023
    for i in range(len(b)):
        mangled = bytearray(b)
        mangled[i] += 1
        text = mangled.decode("utf-8", "replace")
        assert code_of(lambda: n.parse_vkey(text)).startswith("VKEY_")  # noqa: B023
    # Go's own extra cases: wrong key length and unknown algorithm, with adjusted key IDs
    wrong_length = "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
    assert code_of(lambda: n.parse_vkey(wrong_length)) == "VKEY_INVALID"
    unknown_alg = "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    assert code_of(lambda: n.parse_vkey(unknown_alg)) == "VKEY_ALGORITHM_UNSUPPORTED"
    assert code_of(lambda: n.parse_vkey(PETER_VKEY.replace("c74f20a3", "c74f20a4"))) == (
        "VKEY_KEY_ID_MISMATCH"
    )
    assert code_of(lambda: n.parse_vkey(PETER_VKEY.replace("c74f20a3", "C74F20A3"))) == (
        "VKEY_INVALID"
    )


def test_key_names_are_checked() -> None:
    key, pub = new_key()
    for bad in ("", "a b", "a+b", "tab\there", "nbsp\u00a0x", "line\nbreak", "\x01"):
        assert code_of(lambda: n.sign_note(TEXT, bad, key)) == "NOTE_KEY_NAME_INVALID"  # noqa: B023
        assert code_of(lambda: n.key_id(bad, pub)) == "NOTE_KEY_NAME_INVALID"  # noqa: B023
        assert code_of(lambda: n.encode_vkey(bad, pub)) == "NOTE_KEY_NAME_INVALID"  # noqa: B023
        assert code_of(lambda: n.open_note(PETER_NOTE, [(bad, pub)])) == "NOTE_KEY_NAME_INVALID"  # noqa: B023
    # A signature line whose name has a space or a plus
    for line in (
        "\u2014 Bad Name x08go/ZJkuBS9UG/Sffc=\n",
        "\u2014 Peter+Neumann x08go/ZJkuBS9UG/Sffc=\n",
    ):
        note = TEXT + b"\n" + line.encode()
        assert code_of(lambda: n.open_note(note, [peter()])) == "NOTE_KEY_NAME_INVALID"  # noqa: B023


# ---------------------------------------------------------------------------------------------
# Round trips


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.lists(
        st.text(st.characters(min_codepoint=0x20, codec="utf-8"), max_size=40),
        min_size=1,
        max_size=6,
    ),
    st.text(
        st.characters(min_codepoint=0x21, codec="utf-8"),
        min_size=1,
        max_size=20,
    ).filter(lambda s: "+" not in s and not any(c.isspace() for c in s)),
)
def test_sign_open_round_trip(lines: list[str], name: str) -> None:
    body = "".join(line + "\n" for line in lines).encode()
    key, pub = new_key()
    signed = n.sign_note(body, name, key)
    assert n.open_note(signed, {name: pub}) == (body, [name])
    other, other_pub = new_key()
    cosigned = n.add_signature(signed, "witness.example", other)
    opened = n.open_note(cosigned, [(name, pub), ("witness.example", other_pub)])
    assert opened == (body, [name, "witness.example"])
    assert n.open_note(cosigned, [("witness.example", other_pub)]).verified == ["witness.example"]


def test_notes_may_contain_blank_lines_the_last_one_separates() -> None:
    key, pub = new_key()
    body = b"first\n\nthird\n\n"
    signed = n.sign_note(body, "log.example", key)
    assert n.open_note(signed, {"log.example": pub}).body == body


def test_cosigning_twice_is_refused() -> None:
    key, _ = new_key()
    signed = n.sign_note(TEXT, "log.example", key)
    assert (
        code_of(lambda: n.add_signature(signed, "log.example", key)) == "NOTE_SIGNATURE_DUPLICATE"
    )


# ---------------------------------------------------------------------------------------------
# Refusals of open_note, each with its code


def test_go_malformed_messages() -> None:
    bad_name_line = (
        "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngot"
        "pRZb6KE6RyyBwJnAM="
    ).encode()
    cases = [
        (TEXT, "NOTE_MALFORMED"),  # no signatures
        (TEXT + b"\n", "NOTE_MALFORMED"),  # empty signature block
        (TEXT + b"\n" + PETER_SIG[:-1], "NOTE_MALFORMED"),  # unterminated
        (b"\x01" + TEXT + b"\n" + PETER_SIG, "NOTE_ENCODING_INVALID"),
        (b"\xff" + TEXT + b"\n" + PETER_SIG, "NOTE_ENCODING_INVALID"),
        (TEXT + b"\n" + bad_name_line, "NOTE_MALFORMED"),  # unterminated (and a bad name)
        (TEXT + b"\n" + bad_name_line + b"\n", "NOTE_KEY_NAME_INVALID"),
        (TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n", "NOTE_MALFORMED"),
    ]
    for msg, code in cases:
        assert code_of(lambda: n.open_note(msg, [peter()])) == code, msg  # noqa: B023


def test_structural_refusals() -> None:
    v = [peter()]
    sig_b64 = PETER_SIG.decode().split(" ")[2].strip()
    refusals = {
        "missing blank line": (TEXT + PETER_SIG, "NOTE_MALFORMED"),
        "no em dash": (TEXT + b"\n" + PETER_SIG.replace("\u2014".encode(), b"-"), "NOTE_MALFORMED"),
        "no space after name": (TEXT + b"\n\xe2\x80\x94 PeterNeumann\n", "NOTE_MALFORMED"),
        "carriage return": (
            TEXT.replace(b"\n", b"\r\n") + b"\n" + PETER_SIG,
            "NOTE_ENCODING_INVALID",
        ),
        "overlong utf-8": (b"\xc0\xae" + PETER_NOTE, "NOTE_ENCODING_INVALID"),
        "surrogate utf-8": (b"\xed\xa0\x80\n" + PETER_NOTE, "NOTE_ENCODING_INVALID"),
        "bad base64": (
            TEXT + b"\n\xe2\x80\x94 PeterNeumann !!!!\n",
            "NOTE_SIGNATURE_ENCODING_INVALID",
        ),
        "unpadded base64": (
            TEXT + b"\n\xe2\x80\x94 PeterNeumann " + sig_b64.rstrip("=").encode() + b"\n",
            "NOTE_SIGNATURE_ENCODING_INVALID",
        ),
        "non-canonical base64": (
            TEXT + b"\n\xe2\x80\x94 PeterNeumann " + sig_b64[:-2].encode() + b"N=\n",
            "NOTE_SIGNATURE_ENCODING_INVALID",
        ),
        "urlsafe base64": (
            TEXT + b"\n" + PETER_SIG.replace(b"/", b"_"),
            "NOTE_SIGNATURE_ENCODING_INVALID",
        ),
        "too short signature": (
            TEXT + b"\n\xe2\x80\x94 PeterNeumann x08g\n",
            "NOTE_SIGNATURE_ENCODING_INVALID",
        ),
        "known key, 1-byte signature": (
            TEXT + b"\n\xe2\x80\x94 PeterNeumann x08go/Y=\n",
            "NOTE_SIGNATURE_INVALID",
        ),
        "empty signature": (
            TEXT + b"\n\xe2\x80\x94 PeterNeumann \n",
            "NOTE_SIGNATURE_ENCODING_INVALID",
        ),
        "too large": (b"a" * n.MAX_NOTE_SIZE + b"\n\n" + PETER_SIG, "NOTE_TOO_LARGE"),
        "not bytes": ("text\n\n" + PETER_SIG.decode(), "NOTE_MALFORMED"),
    }
    for what, (msg, code) in refusals.items():
        assert code_of(lambda: n.open_note(msg, v)) == code, what  # type: ignore[arg-type]  # noqa: B023


def test_signature_refusals() -> None:
    v = [peter()]
    # a same-length corruption of the known key's signature
    b64 = PETER_SIG.decode().split(" ")[2].strip()
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 1
    forged = TEXT + b"\n" + f"\u2014 PeterNeumann {base64.b64encode(raw).decode()}\n".encode()
    assert code_of(lambda: n.open_note(forged, v)) == "NOTE_SIGNATURE_INVALID"
    # Go's corruption (4 characters inserted): a known key with a 67-byte signature
    s = PETER_SIG.decode()
    inserted = TEXT + b"\n" + (s[:58] + "ABCD" + s[58:]).encode()
    assert code_of(lambda: n.open_note(inserted, v)) == "NOTE_SIGNATURE_INVALID"
    # a changed text
    assert code_of(lambda: n.open_note(PETER_NOTE.replace(b"crypto", b"Crypto"), v)) == (
        "NOTE_SIGNATURE_INVALID"
    )
    # a valid signature plus a bad one from the same known key: refused, not "one is enough"
    assert code_of(lambda: n.open_note(PETER_NOTE + forged.split(b"\n\n")[1], v)) in {
        "NOTE_SIGNATURE_DUPLICATE",
        "NOTE_SIGNATURE_INVALID",
    }
    # duplicate signatures from a known key
    assert code_of(lambda: n.open_note(PETER_NOTE + PETER_SIG, v)) == "NOTE_SIGNATURE_DUPLICATE"


def test_wrong_and_unknown_keys() -> None:
    key, pub = new_key()
    other_key, other_pub = new_key()
    signed = n.sign_note(TEXT, "log.example", key)
    # wrong key under the right name: its key ID differs, so the signature is not from a known key
    assert code_of(lambda: n.open_note(signed, {"log.example": other_pub})) == "NOTE_UNKNOWN_KEY"
    # unknown key name
    assert code_of(lambda: n.open_note(signed, {"other.example": pub})) == "NOTE_UNKNOWN_KEY"
    # a signature by another key forged under the known (name, key ID): must verify, does not
    sig = other_key.sign(TEXT)
    line = f"\u2014 log.example {base64.b64encode(n.key_id('log.example', pub) + sig).decode()}\n"
    forged = TEXT + b"\n" + line.encode()
    assert code_of(lambda: n.open_note(forged, {"log.example": pub})) == "NOTE_SIGNATURE_INVALID"
    # a verifier that is not an Ed25519 key
    assert code_of(lambda: n.open_note(signed, [("log.example", b"x" * 32)])) == (  # type: ignore[list-item]
        "NOTE_VERIFIER_INVALID"
    )


def test_ambiguous_verifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Colliding (name, key ID) pairs for different keys cannot be found quickly: force them.
    monkeypatch.setattr(n, "key_id", lambda name, key: b"\0\0\0\0")
    key, pub = new_key()
    _, other_pub = new_key()
    signed = n.sign_note(TEXT, "log.example", key)
    verifiers = [("log.example", pub), ("log.example", other_pub)]
    assert code_of(lambda: n.open_note(signed, verifiers)) == "NOTE_VERIFIER_AMBIGUOUS"
    assert n.open_note(signed, [("log.example", pub), ("log.example", pub)]).verified == [
        "log.example"
    ]


def test_signature_count_limit() -> None:
    v = [peter()]
    assert (
        code_of(lambda: n.open_note(TEXT + b"\n" + PETER_SIG * 101, v))
        == "NOTE_TOO_MANY_SIGNATURES"
    )
    assert (
        code_of(lambda: n.open_note(TEXT + b"\n" + PETER_SIG * 101, []))
        == "NOTE_TOO_MANY_SIGNATURES"
    )
    unknown = [
        f"\u2014 w{i}.example {base64.b64encode(bytes([i]) * 68).decode()}\n".encode()
        for i in range(99)
    ]
    exactly_100 = TEXT + b"\n" + b"".join(unknown) + PETER_SIG
    assert n.open_note(exactly_100, v).verified == ["PeterNeumann"]
    assert code_of(lambda: n.open_note(exactly_100 + ENOCH_SIG, v)) == "NOTE_TOO_MANY_SIGNATURES"


def test_every_truncation_is_refused() -> None:
    for cut in range(len(PETER_NOTE)):
        assert code_of(lambda: n.open_note(PETER_NOTE[:cut], [peter()])).startswith("NOTE_")  # noqa: B023


def test_sign_refusals() -> None:
    key, _ = new_key()
    assert code_of(lambda: n.sign_note(b"no newline", "k", key)) == "NOTE_MALFORMED"
    assert code_of(lambda: n.sign_note(b"", "k", key)) == "NOTE_MALFORMED"
    assert code_of(lambda: n.sign_note(b"\xff\n", "k", key)) == "NOTE_ENCODING_INVALID"
    assert code_of(lambda: n.sign_note(b"tab\there\n", "k", key)) == "NOTE_ENCODING_INVALID"
    assert (
        code_of(lambda: n.sign_note(b"a" * n.MAX_NOTE_SIZE + b"\n", "k", key)) == "NOTE_TOO_LARGE"
    )
    assert code_of(lambda: n.sign_note(TEXT, "k", b"key")) == "NOTE_SIGNER_INVALID"  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_mutated_notes_raise_only_audit_errors(data: st.DataObject) -> None:
    msg = bytearray(TEXT + b"\n" + PETER_SIG + ENOCH_SIG)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(msg) - 1))
        if op == "flip":
            msg[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            msg[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
        else:
            del msg[pos]
    try:
        opened = n.open_note(bytes(msg), [peter()])
    except AuditError as e:
        assert e.code.startswith("NOTE_")
    else:  # only changes confined to the unknown (Enoch) signature may pass
        assert opened == (TEXT, ["PeterNeumann"])
        assert bytes(msg).startswith(TEXT + b"\n" + PETER_SIG)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_audit_errors(blob: bytes) -> None:
    for fn in (
        lambda: n.open_note(blob, [peter()]),
        lambda: n.parse_checkpoint(blob),
        lambda: n.parse_tlog_proof(blob),
        lambda: n.parse_vkey(blob.decode("utf-8", "replace")),
    ):
        with contextlib.suppress(AuditError):
            fn()


# ---------------------------------------------------------------------------------------------
# Checkpoints

ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()


def test_checkpoint_body_and_parse_round_trip() -> None:
    cp = n.Checkpoint("example.com/log", 20852163, ROOT)
    assert cp.body() == f"example.com/log\n20852163\n{ROOT_B64}\n".encode()
    assert n.parse_checkpoint(cp.body()) == cp
    ext = n.Checkpoint("example.com/log", 0, merkle.EMPTY_ROOT, ("ext one", "— two"))
    assert ext.body().endswith("\next one\n\u2014 two\n".encode())
    assert n.parse_checkpoint(ext.body()) == ext
    big = n.Checkpoint("o", merkle.MAX_TREE_SIZE, ROOT)
    assert n.parse_checkpoint(big.body()).size == merkle.MAX_TREE_SIZE


def _cp(size: str, root: str = ROOT_B64, origin: str = "example.com/log") -> bytes:
    return f"{origin}\n{size}\n{root}\n".encode()


def test_checkpoint_sizes_are_canonical_decimals() -> None:
    assert n.parse_checkpoint(_cp("0")).size == 0
    assert n.parse_checkpoint(_cp("5")).size == 5
    for bad in (
        "+5",
        " 5",
        "5 ",
        "05",
        "00",
        "-1",
        "-0",
        "0x5",
        "5.0",
        "1e3",
        "5_0",
        "\u0665",
        "\uff15",
        "18446744073709551616",
        "99999999999999999999999",
        "five",
    ):
        assert code_of(lambda: n.parse_checkpoint(_cp(bad))) == "CHECKPOINT_SIZE_INVALID", bad  # noqa: B023


def test_checkpoint_refusals() -> None:
    short = base64.b64encode(ROOT[:31]).decode()
    for bad_root in (
        short,
        ROOT_B64.rstrip("="),
        ROOT_B64[:-2] + "B=",
        "!" * 44,
        ROOT_B64 + "AAAA",
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),
        ROOT.hex(),
    ):
        assert code_of(lambda: n.parse_checkpoint(_cp("5", bad_root))) == "CHECKPOINT_ROOT_INVALID"  # noqa: B023
    malformed = [
        b"example.com/log\n5\n",  # two lines
        _cp("5")[:-1],  # no final newline
        _cp("5") + b"\n",  # empty extension line
        _cp("5").replace(b"\n", b"\r\n"),
        b"\n5\n" + ROOT_B64.encode() + b"\n",  # empty origin
        b"\xffexample\n5\n" + ROOT_B64.encode() + b"\n",
        b"example\n\n" + ROOT_B64.encode() + b"\n",  # empty size line
        b"",
    ]
    for body in malformed:
        assert code_of(lambda: n.parse_checkpoint(body)) == "CHECKPOINT_MALFORMED", body  # noqa: B023
    assert code_of(lambda: n.Checkpoint("", 1, ROOT)) == "CHECKPOINT_MALFORMED"
    assert code_of(lambda: n.Checkpoint("a\nb", 1, ROOT)) == "CHECKPOINT_MALFORMED"
    assert code_of(lambda: n.Checkpoint("o", -1, ROOT)) == "CHECKPOINT_SIZE_INVALID"
    assert code_of(lambda: n.Checkpoint("o", 1 << 64, ROOT)) == "CHECKPOINT_SIZE_INVALID"
    assert code_of(lambda: n.Checkpoint("o", True, ROOT)) == "CHECKPOINT_SIZE_INVALID"
    assert code_of(lambda: n.Checkpoint("o", 1, ROOT[:31])) == "CHECKPOINT_ROOT_INVALID"
    assert code_of(lambda: n.Checkpoint("o", 1, ROOT, ("",))) == "CHECKPOINT_MALFORMED"
    assert code_of(lambda: n.Checkpoint("o", 1, ROOT, ("a\nb",))) == "CHECKPOINT_MALFORMED"


def test_open_checkpoint() -> None:
    key, pub = new_key()
    cp = n.Checkpoint("example.com/log", 7, ROOT)
    signed = n.sign_note(cp.body(), "example.com/log", key)
    opened = n.open_checkpoint(signed, {"example.com/log": pub}, origin="example.com/log")
    assert opened == (cp, ["example.com/log"])
    assert code_of(lambda: n.open_checkpoint(signed, {"example.com/log": pub}, origin="other")) == (
        "CHECKPOINT_ORIGIN_MISMATCH"
    )
    not_a_checkpoint = n.sign_note(b"hello\n", "example.com/log", key)
    assert code_of(lambda: n.open_checkpoint(not_a_checkpoint, {"example.com/log": pub})) == (
        "CHECKPOINT_MALFORMED"
    )


# ---------------------------------------------------------------------------------------------
# tlog-proof


def _log(size: int) -> tuple[merkle.TreeStore, Ed25519PrivateKey, Ed25519PublicKey]:
    store = merkle.TreeStore.from_leaf_hashes(
        merkle.leaf_hash(b"entry %d" % i) for i in range(size)
    )
    key, pub = new_key()
    return store, key, pub


def _signed_checkpoint(
    store: merkle.TreeStore, key: Ed25519PrivateKey, size: int | None = None
) -> bytes:
    cp = n.Checkpoint("example.com/log", store.size if size is None else size, store.root(size))
    return n.sign_note(cp.body(), "example.com/log", key)


def test_tlog_proof_round_trip_and_layout() -> None:
    store, key, pub = _log(37)
    signed = _signed_checkpoint(store, key)
    proof = store.inclusion_proof(5)
    data = n.format_tlog_proof(5, proof, signed)
    lines = data.split(b"\n")
    assert lines[0] == b"c2sp.org/tlog-proof@v1"
    assert lines[1] == b"index 5"
    assert lines[2 : 2 + len(proof)] == [base64.b64encode(p) for p in proof]
    assert lines[2 + len(proof)] == b""
    assert data.endswith(b"\n\n" + signed)
    parsed = n.parse_tlog_proof(data)
    assert parsed == n.TlogProof(5, tuple(proof), signed, None)
    verifiers = {"example.com/log": pub}
    opened = n.verify_tlog_proof(data, store.leaf_hash(5), verifiers, origin="example.com/log")
    assert opened.checkpoint.size == 37
    assert opened.verified == ["example.com/log"]

    with_extra = n.format_tlog_proof(5, proof, signed, extra=b"vrf proof bytes")
    assert with_extra.split(b"\n")[1] == b"extra " + base64.b64encode(b"vrf proof bytes")
    assert n.parse_tlog_proof(with_extra).extra == b"vrf proof bytes"
    n.verify_tlog_proof(with_extra, store.leaf_hash(5), verifiers, origin="example.com/log")

    one = merkle.TreeStore.from_leaf_hashes([merkle.leaf_hash(b"only")])
    signed_one = _signed_checkpoint(one, key)
    empty_proof = n.format_tlog_proof(0, [], signed_one)
    assert empty_proof.startswith(b"c2sp.org/tlog-proof@v1\nindex 0\n\n")
    n.verify_tlog_proof(empty_proof, one.leaf_hash(0), verifiers, origin="example.com/log")


def test_tlog_proof_verification_refusals() -> None:
    store, key, pub = _log(37)
    verifiers = {"example.com/log": pub}
    leaf = store.leaf_hash(5)
    proof = store.inclusion_proof(5, 36)

    def verify(data: bytes, leaf_hash: bytes = leaf, origin: str = "example.com/log") -> object:
        return n.verify_tlog_proof(data, leaf_hash, verifiers, origin=origin)

    good = n.format_tlog_proof(5, proof, _signed_checkpoint(store, key, 36))
    verify(good)
    # wrong size: the checkpoint is for 37 leaves, the proof for 36
    wrong_size = n.format_tlog_proof(5, proof, _signed_checkpoint(store, key, 37))
    assert code_of(lambda: verify(wrong_size)).startswith("PROOF_")
    # wrong leaf, wrong index, out of range index
    assert code_of(lambda: verify(good, store.leaf_hash(6))) == "PROOF_ROOT_MISMATCH"
    wrong_index = n.format_tlog_proof(4, proof, _signed_checkpoint(store, key, 36))
    assert code_of(lambda: verify(wrong_index)) == "PROOF_ROOT_MISMATCH"
    out_of_range = n.format_tlog_proof(36, [], _signed_checkpoint(store, key, 36))
    assert code_of(lambda: verify(out_of_range)) == "PROOF_INDEX_OUT_OF_RANGE"
    # checkpoint by an unknown key, or of another origin
    stranger, _ = new_key()
    assert code_of(
        lambda: verify(n.format_tlog_proof(5, proof, _signed_checkpoint(store, stranger, 36)))
    ) == ("NOTE_UNKNOWN_KEY")
    assert code_of(lambda: verify(good, origin="example.com/other")) == "CHECKPOINT_ORIGIN_MISMATCH"


def test_tlog_proof_format_refusals() -> None:
    store, key, _ = _log(9)
    signed = _signed_checkpoint(store, key)
    proof = store.inclusion_proof(3)
    good = n.format_tlog_proof(3, proof, signed)
    hashes = b"".join(base64.b64encode(p) + b"\n" for p in proof)
    head = b"c2sp.org/tlog-proof@v1\n"
    bad = {
        "header": b"c2sp.org/tlog-proof@v2\n" + good[len(head) :],
        "no header": good[len(head) :],
        "index 03": head + b"index 03\n" + hashes + b"\n" + signed,
        "index +3": head + b"index +3\n" + hashes + b"\n" + signed,
        "index  3": head + b"index  3\n" + hashes + b"\n" + signed,
        "index -3": head + b"index -3\n" + hashes + b"\n" + signed,
        "index huge": head + b"index 18446744073709551615\n" + hashes + b"\n" + signed,
        "no index": head + hashes + b"\n" + signed,
        "extra after index": head + b"index 3\nextra AAAA\n" + hashes + b"\n" + signed,
        "empty extra": head + b"extra \nindex 3\n" + hashes + b"\n" + signed,
        "bad hash": head + b"index 3\n" + hashes.replace(b"=", b"") + b"\n" + signed,
        "short hash": head + b"index 3\n" + base64.b64encode(b"x" * 31) + b"\n\n" + signed,
        "no blank line": head + b"index 3\n" + hashes,
        "not utf-8": head + b"index 3\n\xff\n\n" + signed,
        "too many hashes": head + b"index 3\n" + hashes[:45] * 65 + b"\n" + signed,
    }
    for what, data in bad.items():
        assert code_of(lambda: n.parse_tlog_proof(data)) == "PROOF_FORMAT_INVALID", what  # noqa: B023
    # the checkpoint part must be a structurally valid note
    assert code_of(lambda: n.parse_tlog_proof(good[:-1])).startswith("NOTE_")
    for cut in range(len(good)):
        assert code_of(lambda: n.parse_tlog_proof(good[:cut])) in {  # noqa: B023
            "PROOF_FORMAT_INVALID",
            "NOTE_MALFORMED",
            "NOTE_SIGNATURE_ENCODING_INVALID",
            "NOTE_ENCODING_INVALID",
            "NOTE_KEY_NAME_INVALID",
        }
    assert code_of(lambda: n.format_tlog_proof(-1, proof, signed)) == "PROOF_FORMAT_INVALID"
    assert code_of(lambda: n.format_tlog_proof(3, [b"x" * 31], signed)) == "PROOF_FORMAT_INVALID"
    assert (
        code_of(lambda: n.format_tlog_proof(3, [proof[0]] * 65, signed)) == "PROOF_FORMAT_INVALID"
    )
    assert (
        code_of(lambda: n.format_tlog_proof(3, proof, signed, extra=b"")) == "PROOF_FORMAT_INVALID"
    )
    assert code_of(lambda: n.format_tlog_proof(3, proof, b"not a note")).startswith("NOTE_")
