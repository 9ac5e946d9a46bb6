"""One test per rule of ``nightcore.module.verify.decide`` (in the style of python-tuf's
trusted-metadata-set tests): one fully valid case (a real Ed25519 key generated for the test
session, a real signed in-toto statement, a trust registry, a revocation list and a node policy)
verifies ``OK``; then each mutation breaks exactly one rule and must be refused with that rule's
code. The package reader's codes (``read_package``) are reached the same way from real files.
Every code of ``nightcore.codes.VerifyCode`` is reached by some case here.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest

from nightcore.canonical import canonical
from nightcore.codes import VerifyCode
from nightcore.errors import NightCoreError
from nightcore.module.manifest import parse_manifest_toml
from nightcore.module.package import (
    ENVELOPE_FILE,
    MANIFEST_FILE,
    MAX_MODULE_BYTES,
    MODULE_FILE,
    TenantPackage,
    read_package,
)
from nightcore.module.verify import MANIFEST_PREDICATE_TYPE, Decision, decide
from nightcore.policy import DEFAULT_MAX, Policy
from nightcore.trust.envelope import make_statement, sign_payload
from nightcore.trust.keys import GeneratedKey, load_signer
from nightcore.trust.pubkey import PublicKey
from nightcore.trust.registry import Registry, Revocation, RevocationList, TrustedKey
from tests.conftest import HELLO_WAT, wat_module

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
NOT_BEFORE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EXPIRES = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
HELLO = wat_module(HELLO_WAT)

# Asks for every capability kind a default node allows (so the policy rule has work to do).
VALID_TOML = """\
schema = 1
tenant = "hello"
version = "1.0.0"
not_before = 2026-01-01T00:00:00Z
expires = 2027-01-01T00:00:00Z
deterministic = true

[capabilities]
env = { GREETING = "hi" }

[[capabilities.fs]]
path = "data"
mode = "rw"

[limits]
fuel = 1000000
"""


@dataclass(frozen=True)
class KeyEntry:
    name: str  # a key of the session's keys_dir: alice, maint, mallory, bob
    role: str = "publisher"
    scope: str = "*"
    expires: dt.datetime | None = None


Edit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class World:
    """Everything decide() reads. The defaults are the one fully valid case."""

    dir_name: str = "hello"
    manifest_toml: str = VALID_TOML  # signed (as the statement's predicate)
    disk_manifest: str | Literal["same"] | None = "same"  # manifest.toml beside the module
    module: bytes = HELLO
    signed_module: bytes | None = None  # the module whose digest is signed (default: module)
    edit_statement: Edit | None = None  # applied before signing
    payload: bytes | None = None  # signed instead of the statement
    signers: tuple[str, ...] = ("alice",)
    edit_envelope: Edit | None = None  # applied after signing
    envelope: bytes | Literal["signed"] | None = "signed"
    keys: tuple[KeyEntry, ...] = (KeyEntry("alice"), KeyEntry("maint", role="maintainer"))
    revoked_keys: tuple[str, ...] = ()
    revoked_modules: tuple[bytes, ...] = ()
    policy: Policy = field(default_factory=Policy)
    now: dt.datetime = NOW


class Keyring:
    def __init__(self, keys: dict[str, GeneratedKey]) -> None:
        self.keys = keys
        self.signers = {n: load_signer(str(k.private_path)) for n, k in keys.items()}
        self.public = {n: PublicKey.from_pem(k.public_path.read_bytes()) for n, k in keys.items()}

    def key_id(self, name: str) -> str:
        return str(self.public[name].keyid)

    def envelope(self, w: World) -> bytes | None:
        if w.envelope != "signed":
            return w.envelope
        payload = w.payload
        if payload is None:
            digest = hashlib.sha256(w.module if w.signed_module is None else w.signed_module)
            stmt = make_statement(
                [(MODULE_FILE, digest.hexdigest())],
                MANIFEST_PREDICATE_TYPE,
                parse_manifest_toml(w.manifest_toml.encode()).to_predicate(),
            )
            if w.edit_statement is not None:
                w.edit_statement(stmt)
            payload = canonical(stmt)
        env = sign_payload(payload, [self.signers[n] for n in w.signers])
        if w.edit_envelope is None:
            return env
        doc = json.loads(env)
        w.edit_envelope(doc)
        return json.dumps(doc).encode()

    def inputs(
        self, w: World
    ) -> tuple[TenantPackage, Registry, RevocationList, Policy, dt.datetime]:
        disk = w.manifest_toml if w.disk_manifest == "same" else w.disk_manifest
        pkg = TenantPackage(
            name=w.dir_name,
            path=Path("/nonexistent") / w.dir_name,
            module=w.module,
            envelope=self.envelope(w),
            manifest=None if disk is None else disk.encode(),
        )
        registry = Registry(
            tuple(
                TrustedKey(self.public[k.name], k.name, k.role, k.scope, k.expires, NOT_BEFORE)
                for k in w.keys
            )
        )
        revocations = RevocationList(
            version=1,
            keys=tuple(
                Revocation(self.key_id(n), "stolen laptop", "2026-05-01T00:00:00Z")
                for n in w.revoked_keys
            ),
            modules=tuple(
                Revocation(hashlib.sha256(m).hexdigest(), "CVE", "2026-05-01T00:00:00Z")
                for m in w.revoked_modules
            ),
        )
        return pkg, registry, revocations, w.policy, w.now

    def decide(self, w: World) -> Decision:
        return decide(*self.inputs(w))


@pytest.fixture(scope="module")
def keyring(keys_dir: dict[str, GeneratedKey]) -> Keyring:
    return Keyring(keys_dir)


VALID = World()


# -- the valid case ----------------------------------------------------------------------------


def test_the_valid_case_verifies(keyring: Keyring) -> None:
    d = keyring.decide(VALID)
    assert (d.code, d.ok) == (VerifyCode.OK, True), d.reason
    assert d.key_id == keyring.key_id("alice")
    assert d.module_sha256 == hashlib.sha256(HELLO).hexdigest()
    assert d.manifest == parse_manifest_toml(VALID_TOML.encode())


def test_the_valid_case_verifies_from_real_files(keyring: Keyring, tmp_path: Path) -> None:
    d = keyring.decide(VALID)
    pkg = read_package(write_package(tmp_path, keyring, VALID))
    assert decide(pkg, *keyring.inputs(VALID)[1:]) == replace(
        d, envelope_sha256=hashlib.sha256(pkg.envelope or b"").hexdigest()
    )


# -- one mutation per rule ---------------------------------------------------------------------


def _set(key: str, value: Any) -> Edit:
    return lambda doc: doc.__setitem__(key, value)


def _flip_signature(doc: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


def _swap_payload(doc: dict[str, Any]) -> None:
    """Keep the signature, serve another (well-formed) statement: the classic substitution."""
    stmt = json.loads(base64.b64decode(doc["payload"]))
    stmt["predicate"]["version"] = "9.9.9"
    doc["payload"] = base64.b64encode(canonical(stmt)).decode()


def _predicate(key: str, value: Any) -> Edit:
    return lambda stmt: stmt["predicate"].__setitem__(key, value)


OTHER_MODULE = wat_module('(module (func (export "_start")))')
NET_TOML = VALID_TOML.replace(
    "[[capabilities.fs]]", 'net = ["example.org:443"]\n\n[[capabilities.fs]]'
)
Mutation = tuple[str, str, Callable[[World], World]]


def mut(
    id_: str, code: str, change: Callable[[World], World] | None = None, **fields: Any
) -> Mutation:
    """A named mutation of the valid case: ``change``, or ``replace(world, **fields)``."""
    return id_, code, change or (lambda w: replace(w, **fields))


def edit_env(edit: Edit) -> Callable[[World], World]:
    return lambda w: replace(w, edit_envelope=edit)


def edit_stmt(edit: Edit) -> Callable[[World], World]:
    return lambda w: replace(w, edit_statement=edit)


def _two_subjects(stmt: dict[str, Any]) -> None:
    stmt["subject"].append(stmt["subject"][0])


def _no_sha256(stmt: dict[str, Any]) -> None:
    stmt["subject"][0]["digest"] = {}


# One mutation per rule of decide(), in its order; the code is that rule's.
MUTATIONS: list[Mutation] = [
    # 1. the envelope parses strictly
    mut("no-envelope", "ENVELOPE_MALFORMED", envelope=None),
    mut("envelope-not-json", "ENVELOPE_MALFORMED", envelope=b'{"payload":'),
    mut("envelope-too-large", "ENVELOPE_MALFORMED", envelope=b" " * (1 << 20) + b"{}"),
    mut("envelope-extra-field", "ENVELOPE_MALFORMED", edit_env(_set("x", 1))),
    mut("payload-type", "ENVELOPE_MALFORMED", edit_env(_set("payloadType", "text/plain"))),
    mut("payload-not-base64", "ENVELOPE_MALFORMED", edit_env(_set("payload", "***"))),
    mut("no-signatures", "ENVELOPE_MALFORMED", edit_env(_set("signatures", []))),
    # 2. a signature names a registry key
    mut("signer-not-in-registry", "KEY_UNTRUSTED", signers=("mallory",)),
    mut("empty-registry", "KEY_UNTRUSTED", keys=()),
    # 3. the key's scheme is allowed
    mut("ed25519-in-fips-mode", "ALGORITHM_NOT_ALLOWED", policy=Policy(fips=True)),
    # 4. the signature verifies over the PAE
    mut("signature-flipped", "SIGNATURE_INVALID", edit_env(_flip_signature)),
    mut("payload-swapped", "SIGNATURE_INVALID", edit_env(_swap_payload)),
    # 5. the key is not revoked, not expired, a publisher key
    mut("key-revoked", "KEY_REVOKED", revoked_keys=("alice",)),
    mut("key-expired", "KEY_EXPIRED", keys=(KeyEntry("alice", expires=NOW - SECOND),)),
    mut("key-expires-now", "KEY_EXPIRED", keys=(KeyEntry("alice", expires=NOW),)),
    mut("maintainer-signed", "KEY_UNTRUSTED", signers=("maint",)),
    # 6. the statement and its signed manifest are valid
    mut("payload-not-json", "MANIFEST_INVALID", payload=b"not json"),
    mut("statement-type", "MANIFEST_INVALID", edit_stmt(_set("_type", "x"))),
    mut("predicate-type", "MANIFEST_INVALID", edit_stmt(_set("predicateType", "x"))),
    mut("two-subjects", "MANIFEST_INVALID", edit_stmt(_two_subjects)),
    mut("subject-without-sha256", "MANIFEST_INVALID", edit_stmt(_no_sha256)),
    mut("predicate-unknown-field", "MANIFEST_INVALID", edit_stmt(_predicate("owner", "x"))),
    mut("predicate-bad-schema", "MANIFEST_INVALID", edit_stmt(_predicate("schema", 2))),
    # 7. signed for the tenant of its directory
    mut("other-directory", "MANIFEST_MISMATCH", dir_name="hello2"),
    # 8. the key's scope covers the tenant
    mut("out-of-scope", "KEY_OUT_OF_SCOPE", keys=(KeyEntry("alice", scope="billing-*"),)),
    # 9. the module is the signed one
    mut("module-swapped", "DIGEST_MISMATCH", signed_module=HELLO, module=OTHER_MODULE),
    # 10. the module is not revoked
    mut("module-revoked", "MODULE_REVOKED", revoked_modules=(HELLO,)),
    # 11. the module is WebAssembly (a core module)
    mut("not-wasm", "MODULE_MALFORMED", module=b"#!/bin/sh\necho hi\n"),
    mut("wasm-component", "MODULE_MALFORMED", module=b"\x00asm\x0d\x00\x01\x00"),
    # 12. now is inside [not_before, expires)
    mut("before-not-before", "MANIFEST_NOT_YET_VALID", now=NOT_BEFORE - SECOND),
    mut("at-expires", "MANIFEST_EXPIRED", now=EXPIRES),
    mut("after-expires", "MANIFEST_EXPIRED", now=EXPIRES + SECOND),
    # 13. manifest.toml, when present, is the signed manifest
    mut("disk-manifest-unparsable", "MANIFEST_INVALID", disk_manifest="schema = ["),
    mut(
        "disk-manifest-differs",
        "MANIFEST_MISMATCH",
        disk_manifest=VALID_TOML.replace("fuel = 1000000", "fuel = 2000000"),
    ),
    # 14. node policy allows every capability
    mut("policy-no-env", "CAPABILITY_DENIED", policy=Policy(allow_env=False)),
    mut("policy-no-fs", "CAPABILITY_DENIED", policy=Policy(allow_fs=False)),
    mut("policy-no-fs-rw", "CAPABILITY_DENIED", policy=Policy(allow_fs_rw=False)),
    mut("policy-no-deterministic", "CAPABILITY_DENIED", policy=Policy(allow_deterministic=False)),
    mut(
        "policy-fuel-max",
        "CAPABILITY_DENIED",
        policy=Policy(max_limits=dataclasses.replace(DEFAULT_MAX, fuel=999_999)),
    ),
    mut("net-asked", "CAPABILITY_DENIED", manifest_toml=NET_TOML),
]

# Mutations that must leave the case valid (the edges of the rules above).
STILL_VALID: list[Mutation] = [
    mut("at-not-before", "OK", now=NOT_BEFORE),
    mut("just-before-expires", "OK", now=EXPIRES - SECOND),
    mut("key-expires-later", "OK", keys=(KeyEntry("alice", expires=NOW + SECOND),)),
    mut("scope-glob-covers", "OK", keys=(KeyEntry("alice", scope="hel*"),)),
    mut("no-manifest-toml", "OK", disk_manifest=None),
    mut(
        "manifest-toml-reformatted", "OK", disk_manifest="# same\n" + VALID_TOML.replace(" = ", "=")
    ),
    mut("extra-untrusted-signature", "OK", signers=("mallory", "alice")),
    mut("other-key-revoked", "OK", revoked_keys=("bob",)),
    mut("other-module-revoked", "OK", revoked_modules=(OTHER_MODULE,)),
    mut("net-allowed", "OK", manifest_toml=NET_TOML, policy=Policy(allow_net=True)),
]


@pytest.mark.parametrize(
    ("code", "mutate"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_each_rule_refuses_with_its_code(
    keyring: Keyring, code: str, mutate: Callable[[World], World]
) -> None:
    d = keyring.decide(mutate(VALID))
    assert (d.code, d.ok) == (code, False), d.reason
    assert d.manifest is None and d.reason and "\n" not in d.reason


@pytest.mark.parametrize("mutate", [m[2] for m in STILL_VALID], ids=[m[0] for m in STILL_VALID])
def test_the_edges_of_the_rules_still_verify(
    keyring: Keyring, mutate: Callable[[World], World]
) -> None:
    d = keyring.decide(mutate(VALID))
    assert d.code == "OK", (d.code, d.reason)


def test_a_refusal_after_the_signature_names_the_signing_key(keyring: Keyring) -> None:
    before = keyring.decide(replace(VALID, signers=("mallory",)))
    after = keyring.decide(replace(VALID, revoked_modules=(HELLO,)))
    assert before.key_id == "" and after.key_id == keyring.key_id("alice")


# Two broken rules at once: the first rule in decide()'s order names the code.
PAIRS = [
    ("no-envelope", "key-revoked"),
    ("signer-not-in-registry", "ed25519-in-fips-mode"),
    ("signature-flipped", "key-revoked"),
    ("key-revoked", "module-swapped"),
    ("maintainer-signed", "predicate-unknown-field"),
    ("predicate-type", "other-directory"),
    ("other-directory", "out-of-scope"),
    ("out-of-scope", "module-swapped"),
    ("module-swapped", "module-revoked"),
    ("module-revoked", "after-expires"),
    ("not-wasm", "after-expires"),
    ("before-not-before", "disk-manifest-differs"),
    ("disk-manifest-differs", "policy-no-env"),
]
BY_ID = {m[0]: m for m in MUTATIONS}


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_the_first_failing_rule_names_the_code(keyring: Keyring, first: str, second: str) -> None:
    _, code, a = BY_ID[first]
    _, other, b = BY_ID[second]
    assert code != other
    assert keyring.decide(b(a(VALID))).code == code
    assert keyring.decide(a(b(VALID))).code == code


# -- the package reader's rules (real files) ---------------------------------------------------


def write_package(root: Path, keyring: Keyring, w: World) -> Path:
    d = root / w.dir_name
    d.mkdir(parents=True)
    (d / MODULE_FILE).write_bytes(w.module)
    (d / MANIFEST_FILE).write_text(w.manifest_toml)
    (d / ENVELOPE_FILE).write_bytes(keyring.envelope(w) or b"")
    return d


def _symlinked_module(d: Path) -> Path:
    real = d.parent / "elsewhere.wasm"
    (d / MODULE_FILE).rename(real)
    (d / MODULE_FILE).symlink_to(real)
    return d


def _module_too_large(d: Path) -> Path:
    with (d / MODULE_FILE).open("r+b") as fh:
        fh.truncate(MAX_MODULE_BYTES + 1)  # sparse: nothing is written
    return d


def _module_is_a_fifo(d: Path) -> Path:
    (d / MODULE_FILE).unlink()
    os.mkfifo(d / MODULE_FILE)
    return d


def _no_module(d: Path) -> Path:
    (d / MODULE_FILE).unlink()
    return d


def _bad_name(d: Path) -> Path:
    return d.rename(d.parent / "Hello;rm")


def _no_envelope(d: Path) -> Path:
    (d / ENVELOPE_FILE).unlink()
    return d


def _huge_manifest(d: Path) -> Path:
    (d / MANIFEST_FILE).write_text(VALID_TOML + "#" * (1 << 17))
    return d


PACKAGE_CASES: list[tuple[str, str, Callable[[Path], Path]]] = [
    ("module-symlink", "PACKAGE_INVALID", _symlinked_module),
    ("module-fifo", "PACKAGE_INVALID", _module_is_a_fifo),
    ("module-missing", "PACKAGE_INVALID", _no_module),
    ("module-too-large", "PACKAGE_TOO_LARGE", _module_too_large),
    ("directory-name", "TENANT_NAME_INVALID", _bad_name),
    ("envelope-missing", "ENVELOPE_MALFORMED", _no_envelope),
    ("manifest-too-large", "MANIFEST_INVALID", _huge_manifest),
]


@pytest.mark.parametrize(
    ("code", "mutate"), [c[1:] for c in PACKAGE_CASES], ids=[c[0] for c in PACKAGE_CASES]
)
def test_the_package_reader_refuses_with_its_code(
    keyring: Keyring, tmp_path: Path, code: str, mutate: Callable[[Path], Path]
) -> None:
    d = mutate(write_package(tmp_path, keyring, VALID))
    with pytest.raises(NightCoreError) as info:
        read_package(d)
    assert info.value.code == code, info.value.message


# -- every verify code is reached --------------------------------------------------------------

# Verify codes that no case here reaches, and where they are tested instead.
REACHED_ELSEWHERE: dict[str, str] = {}


def test_every_verify_code_is_reached_by_a_case() -> None:
    reached = {"OK"} | {m[1] for m in MUTATIONS} | {c[1] for c in PACKAGE_CASES}
    missing = sorted(set(VerifyCode) - reached - set(REACHED_ELSEWHERE))
    assert not missing, f"verify codes no case reaches: {missing}"
    assert reached <= set(VerifyCode), sorted(reached - set(VerifyCode))
