"""Structured fuzzing (hypothesis) of every parser that reads bytes from outside the process.

The rule each parser must keep, whatever it is given: return a value, or raise a
``NightCoreError`` whose code is registered (``nightcore.codes``) and whose message is one line.
Any other exception (``KeyError``, ``RecursionError``, ``UnicodeDecodeError``...) is a crash: it
would reach the user as a traceback or cost a neighbour its outcome.

Inputs are random bytes and mutations (flips, truncations, insertions, splices) of a valid
sample of each format, so the search starts inside the format instead of at its first byte.
CI runs a bounded pass (``FUZZ_EXAMPLES``, default 150 per target); a longer one by hand:
``FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/unit/test_fuzz_parsers.py``. A crash
found becomes an ``@example`` on its target (hypothesis also replays it from its database).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightcore.codes import ALL_CODES
from nightcore.errors import NightCoreError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared 2-core machine: no wall-clock assertions
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,  # nothing written into the checkout
)

ROOT_B64 = base64.b64encode(hashlib.sha256(b"root").digest()).decode()
CHECKPOINT = f"nightcore/0123456789abcdef\n7\n{ROOT_B64}\n".encode()
NOTE = CHECKPOINT + b"\n\xe2\x80\x94 nightcore/0123456789abcdef AAAAAQ" + b"A" * 86 + b"==\n"
TLOG_PROOF = (
    b"c2sp.org/tlog-proof@v1\nindex 3\n"
    + base64.b64encode(hashlib.sha256(b"a").digest())
    + b"\n"
    + base64.b64encode(hashlib.sha256(b"b").digest())
    + b"\n\n"
    + NOTE
)
MANIFEST = b"""schema = 1
tenant = "hello"
version = "1.0.0"
entrypoint = "_start"
args = ["a"]
[limits]
fuel = 1000
wall_ms = 100
[capabilities]
env = { A = "b" }
fs = [{ guest = "/data", host = "data", mode = "rw" }]
net = ["https://api.example.com/v1/*"]
"""
ENVELOPE = json.dumps(
    {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(b'{"_type":"https://in-toto.io/Statement/v1"}').decode(),
        "signatures": [{"keyid": "ab" * 32, "sig": base64.b64encode(b"s" * 64).decode()}],
    }
).encode()
AUDIT_LINE = (
    b'{"data":{"run_id":"r"},"event":"run_start","node":"n","prev":"'
    + b"0" * 64
    + b'","seq":0,"tenant":"hello","ts":"2026-12-05T00:00:00.000000Z"}'
)
REGISTRY = json.dumps(
    {
        "schema": 1,
        "keys": [
            {
                "key_id": "ab" * 32,
                "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n",
                "scope": ["*"],
                "role": "publisher",
                "added": "2026-12-05T00:00:00Z",
            }
        ],
    }
).encode()
CONFIG = b"""[node]
name = "n1"
[policy.max_limits]
fuel = 1000000
wall_ms = 1000
[[audit.mirror]]
name = "dr"
kind = "dir"
path = "/tmp/x"
"""
SUMS = b"ab" * 32 + b"  nightcore-1.0.0.tar.gz\n"
NODE_REQUEST = b'{"v":1,"op":"run","args":{"tenants":["hello"]}}\n'
WORK_REQUEST = json.dumps(
    {"schema": 1, "request_id": "r-1", "tenant": "hello", "submitted": "2026-12-05T00:00:00Z"}
).encode()


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few flips, truncations, insertions and splices, or random bytes."""

    def apply(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
        buf = bytearray(data)
        for kind, pos, chunk in ops:
            at = pos % (len(buf) + 1)
            if kind == 0 and buf:
                buf[at % len(buf)] ^= 1 << (pos % 8)
            elif kind == 1:
                del buf[at:]
            elif kind == 2:
                buf[at:at] = chunk
            else:
                del buf[at : at + len(chunk) + 1]
        return bytes(buf)

    op = st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.binary(max_size=24))
    return st.one_of(
        st.builds(apply, st.just(seed), st.lists(op, min_size=1, max_size=6)),
        st.binary(max_size=512),
        st.just(seed),
    )


def refuses_cleanly(parse: Callable[[bytes], Any], data: bytes) -> None:
    from nightcore.node.protocol import ProtocolError

    try:
        parse(data)
    except ProtocolError as exc:
        # The node's wire parser: the light client imports no error tree; the node maps
        # this one type to NODE_REQUEST_INVALID.
        assert "\n" not in str(exc).strip()
    except NightCoreError as exc:
        assert exc.code in ALL_CODES, f"unregistered code {exc.code!r} for {data!r}"
        assert "\n" not in str(exc.message).strip(), f"multi-line message: {exc.message!r}"


def _targets() -> dict[str, tuple[Callable[[bytes], Any], bytes]]:
    from nightcore.audit.lines import parse_line_fast
    from nightcore.audit.log import parse_line
    from nightcore.audit.note import parse_checkpoint, parse_tlog_proof
    from nightcore.audit.proofs import parse_consistency_proof
    from nightcore.aufs.config import parse_settings
    from nightcore.config import parse_config
    from nightcore.mesh.work import parse_request as parse_work_request
    from nightcore.mesh.work import parse_result
    from nightcore.module.manifest import parse_manifest_toml
    from nightcore.node.protocol import parse_request as parse_node_request
    from nightcore.release import parse_sums
    from nightcore.trust.envelope import parse_envelope
    from nightcore.trust.registry import parse_registry

    return {
        "manifest": (parse_manifest_toml, MANIFEST),
        "envelope": (parse_envelope, ENVELOPE),
        "audit_line": (lambda b: parse_line(b, seq_hint=0), AUDIT_LINE),
        "audit_line_fast": (lambda b: parse_line_fast(b, seq_hint=0), AUDIT_LINE),
        "checkpoint": (parse_checkpoint, CHECKPOINT),
        "tlog_proof": (parse_tlog_proof, TLOG_PROOF),
        "consistency_proof": (parse_consistency_proof, TLOG_PROOF),
        "registry": (parse_registry, REGISTRY),
        "config": (parse_config, CONFIG),
        "aufs_settings": (parse_settings, CONFIG),
        "release_sums": (parse_sums, SUMS),
        "node_request": (parse_node_request, NODE_REQUEST),
        "work_request": (parse_work_request, WORK_REQUEST),
        "work_result": (parse_result, WORK_REQUEST),
    }


TARGETS = _targets()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_refuses_hostile_bytes_with_a_code(name: str) -> None:
    parse, seed = TARGETS[name]

    @FUZZ
    @given(data=mutated(seed))
    def check(data: bytes) -> None:
        refuses_cleanly(parse, data)

    check()


def test_signed_note_opening_refuses_with_a_code() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from nightcore.audit import note

    key = Ed25519PrivateKey.generate()
    name = "nightcore/0123456789abcdef"
    signed = note.sign_note(CHECKPOINT, name, key)
    verifiers = [note.parse_vkey(note.encode_vkey(name, key.public_key()))]

    @FUZZ
    @given(data=mutated(signed))
    def check(data: bytes) -> None:
        refuses_cleanly(lambda b: note.open_note(b, verifiers), data)

    check()


def test_tuf_custom_metadata_refuses_with_a_code() -> None:
    from nightcore.aufs.artifacts import parse_artifact

    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40))
    values = st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
        max_leaves=12,
    )
    fields = st.dictionaries(
        st.sampled_from(["kind", "version", "tenant", "min_runtime", "abi", "x"]), values
    )
    custom = st.one_of(values, st.builds(lambda f: {"nightcore": f}, fields))
    path = st.one_of(st.text(max_size=60), st.just("tenants/hello/1.0.0/hello.tar.gz"))

    @FUZZ
    @given(path=path, custom=custom, length=st.integers(-1, 1 << 40))
    def check(path: str, custom: object, length: int) -> None:
        refuses_cleanly(lambda _: parse_artifact(path, custom, "ab" * 32, length), b"")

    check()


def _bundle_seed() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (
            ("index.json", b'{"schema":1,"kind":"proof","files":{}}'),
            ("audit/audit.jsonl", AUDIT_LINE + b"\n"),
            ("runs/r/stdout", b"hello\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_bundle_reader_refuses_with_a_code(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from nightcore.evidence.bundle import verify_bundle

    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    counter = iter(range(1 << 30))

    @FUZZ
    @given(data=mutated(_bundle_seed()))
    def check(data: bytes) -> None:
        archive = tmp_path / f"b{next(counter)}.tar.gz"
        archive.write_bytes(data)
        try:
            refuses_cleanly(lambda _: verify_bundle(archive, pem), b"")
        finally:
            archive.unlink()

    check()
