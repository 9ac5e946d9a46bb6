"""A hostile-input corpus, run end to end through the CLI: every file the product reads from a
workspace or a user, malformed in the ways an attacker or a broken disk would.

The rule for each case: the command refuses with a stable code and one line (no traceback:
the ``Cli`` fixture asserts that), nothing already recorded is lost (the audit log only
grows), the workspace still verifies afterwards, and a refusal that is a security decision
(a tenant's files) is in the audit log with its code.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from nightcore.codes import ALL_CODES
from tests.conftest import Env

BIG = 24 * 1024 * 1024  # above every reader's cap


def _variants(valid: bytes, *, deep: bytes, dup: bytes) -> dict[str, Callable[[Path], None]]:
    """Ways to break one file (each writes the hostile version in place)."""

    def put(data: bytes) -> Callable[[Path], None]:
        def do(p: Path) -> None:
            p.write_bytes(data)

        return do

    def link(target: str) -> Callable[[Path], None]:
        def do(p: Path) -> None:
            p.unlink()
            p.symlink_to(target)

        return do

    def directory(p: Path) -> None:
        p.unlink()
        p.mkdir()
        (p / "x").write_bytes(valid)

    return {
        "empty": put(b""),
        "truncated": put(valid[: len(valid) // 2]),
        "garbage": put(os.urandom(4096)),
        "nul": put(valid.replace(b"\n", b"\x00", 1)),
        "bad-utf8": put(valid + b"\xff\xfe\xc3("),
        "ansi": put(valid.replace(b"hello", b"hel\x1b[31mlo\x1b]8;;http://x\x07", 1)),
        "oversized": put(valid + b" " * BIG),
        "deep": put(deep),
        "duplicate-keys": put(dup),
        "wrong-types": put(valid.replace(b'"1.0.0"', b"[1, 2]").replace(b"1.0.0", b"{}")),
        "link-dev-zero": link("/dev/zero"),
        "link-outside": link("/etc/passwd"),
        "directory": directory,
    }


JSON_DEEP = b"[" * 200_000 + b"]" * 200_000
TOML_DEEP = b"a = " + b"[" * 200_000 + b"]" * 200_000 + b"\n"

# file (relative to the workspace) -> (command, how its refusal shows, duplicate-key sample)
FILES: dict[str, tuple[tuple[str, ...], str, bytes]] = {
    "modules/hello/manifest.toml": (
        ("verify", "hello"),
        "denial",
        b'schema = 1\ntenant = "hello"\ntenant = "evil"\nversion = "1.0.0"\n',
    ),
    "modules/hello/module.intoto.dsse.json": (
        ("verify", "hello"),
        "denial",
        b'{"payloadType": "a", "payloadType": "b", "payload": "", "signatures": []}',
    ),
    "modules/hello/module.wasm": (("verify", "hello"), "denial", b"\x00asm\x01\x00\x00\x00" * 2),
    "trust/registry.json": (("trust", "list"), "error", b'{"schema": 1, "schema": 2}'),
    "trust/revocations.json": (("revocations", "list"), "error", b'{"version": 1, "version": 2}'),
    "nightcore.toml": (("runs",), "error", b'[node]\nname = "a"\nname = "b"\n'),
    "state/cordons.json": (("run", "hello", "--no-dashboard"), "any", b'{"a": 1, "a": 2}'),
}

CASES = [
    (f, v)
    for f in FILES
    for v in _variants(b"", deep=b"", dup=b"")  # names only
]


# Hostile-looking but valid by design: an empty nightcore.toml means the embedded defaults.
VALID = {("nightcore.toml", "empty")}


def _is_toml(path: Path) -> bool:
    """A broken nightcore.toml that is still TOML (e.g. cut between two tables) is a shorter
    valid config: what it no longer says takes the embedded defaults."""
    import tomllib

    if path.is_symlink() or not path.is_file() or path.stat().st_size >= 1 << 20:
        return False
    try:
        tomllib.loads(path.read_bytes()[: 1 << 20].decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, OSError, RecursionError):
        return False
    return True


def _audit(ws: Path) -> bytes:
    return (ws / "state" / "audit" / "audit.jsonl").read_bytes()


@pytest.fixture
def ready(env: Env) -> Env:
    env.add_tenant("hello")
    env.add_tenant("other")
    assert env.cli("run", "--no-dashboard").code == 0
    # A revocation list, so that file exists to be broken.
    revoke = ("revoke", "module", "ab" * 32, "--key", str(env.maintainer.private_path))
    assert env.cli(*revoke, "--reason", "test").code == 0
    assert env.cli("cordon", "nobody", "--reason", "so cordons.json exists").code == 0
    return env


@pytest.mark.parametrize(("rel", "variant"), CASES, ids=[f"{f}:{v}" for f, v in CASES])
def test_hostile_file_is_refused_with_a_code_and_loses_nothing(
    ready: Env, rel: str, variant: str
) -> None:
    ws = ready.ws
    path = ws / rel
    original = path.read_bytes()
    command, shows, dup = FILES[rel]
    deep = TOML_DEEP if rel.endswith(".toml") else JSON_DEEP
    _variants(original, deep=deep, dup=dup)[variant](path)
    if path.is_file() and not path.is_symlink() and path.read_bytes() == original:
        pytest.skip("this variant does not apply to this file (nothing to replace)")
    before = _audit(ws)

    res = ready.cli(*command, "--json")
    if (rel, variant) in VALID or (rel == "nightcore.toml" and _is_toml(path)):
        # Documented as valid input: accepted, and nothing lost.
        assert res.code == 0, res.err
        assert _audit(ws).startswith(before)
        return

    assert res.code != 0, f"{rel} {variant}: accepted: {res.out[:300]}"
    if shows == "denial" or (shows == "any" and res.code == 1 and res.out.startswith("[")):
        rows = json.loads(res.out)
        row = next(r for r in rows if r["tenant"] == "hello")
        assert row["code"] in ALL_CODES and row["code"] != "OK", row
        assert "\n" not in row.get("reason", row.get("detail", "")), row
        other = [r for r in rows if r["tenant"] == "other"]
        assert not other or other[0]["code"] == "OK", other  # the neighbour is unaffected
        # A security decision: the refusal is in the audit log with its code.
        new = [json.loads(line) for line in _audit(ws)[len(before) :].splitlines()]
        assert any(r.get("tenant") == "hello" and row["code"] in json.dumps(r) for r in new)
    else:
        err = json.loads(res.out)
        assert err["code"] in ALL_CODES, err
        assert err["ok"] is False and "\n" not in err["error"], err
        assert re.fullmatch(r"error\[[A-Z0-9_]+\]: [^\n]+\n?", res.err), res.err

    # Nothing recorded is lost, and the workspace verifies once the file is restored.
    assert _audit(ws).startswith(before)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    path.write_bytes(original)
    res = ready.cli("audit", "verify", "--json")
    assert res.code == 0 and res.json()["ok"], res.out
