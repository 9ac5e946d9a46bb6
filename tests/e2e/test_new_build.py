"""End to end: ``nightcore new`` scaffolds a tenant that verifies once built and signed, and
``nightcore build`` compiles it reproducibly (WAT always; C when ziglang is installed)."""

from __future__ import annotations

import hashlib
import importlib.util
import tomllib
from pathlib import Path

import pytest

from nightcore import app
from nightcore.app import tenant as tenant_mod
from nightcore.errors import NightCoreError
from tests.conftest import Env

HAVE_ZIG = importlib.util.find_spec("ziglang") is not None


def _new_and_build(env: Env, name: str, *extra: str) -> Path:
    d = env.ws / "modules" / name
    r = env.cli("new", name, "--dir", str(d), *extra)
    assert r.code == 0, r.err
    r = env.cli("build", str(d))
    assert r.code == 0, r.err
    return d


def test_new_writes_a_commented_manifest_source_and_readme(env: Env) -> None:
    d = env.root / "hello"
    r = env.cli("new", "hello", "--dir", str(d), "--json")
    assert r.code == 0, r.err
    out = r.json()
    assert out["tenant"] == "hello" and out["lang"] == "wat"
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "manifest.toml", "module.wat"]
    text = (d / "manifest.toml").read_text()
    m = tomllib.loads(text)
    assert m["schema"] == 1 and m["tenant"] == "hello" and m["entrypoint"] == "_start"
    assert set(m["limits"]) == {"fuel", "wall_ms", "memory_bytes", "stack_bytes", "output_bytes"}
    for word in ("schema", "tenant", "version", "entrypoint", "env", "net", "fs", "limits"):
        assert f"# {word}" in text or f"\n# {word}:" in text or word in text.split("#", 1)[1]
    comments = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
    for word in ("env:", "net:", "fs:", "schema", "tenant id", "entry point", "Bounds"):
        assert word in comments, word
    readme = (d / "README.md").read_text()
    for cmd in ("nightcore build", "nightcore sign", "trust add-key", "nightcore -w ws run"):
        assert cmd in readme, cmd


def test_the_scaffolded_tenant_verifies_and_runs_once_built_and_signed(env: Env) -> None:
    d = _new_and_build(env, "hello")
    app.sign_tenant(d, str(env.publisher.private_path))
    r = env.cli("verify", "hello", "--json")
    assert r.code == 0, r.out + r.err
    assert r.json()[0]["code"] == "OK"
    r = env.cli("run", "hello", "--json")
    assert r.code == 0, r.out + r.err
    (row,) = r.json()
    assert row["code"] == "OK"
    stdout = env.ws / "state" / "runs" / str(row["run_id"]) / "stdout"
    assert stdout.read_text() == "hello from hello\n"


def test_build_is_reproducible_and_prints_the_sha256(env: Env) -> None:
    d = env.root / "hello"
    assert env.cli("new", "hello", "--dir", str(d)).code == 0
    first = env.cli("build", str(d))
    assert first.code == 0, first.err
    a = (d / "module.wasm").read_bytes()
    second = env.cli("build", str(d), "--json")
    assert second.code == 0, second.err
    b = (d / "module.wasm").read_bytes()
    assert a == b
    digest = hashlib.sha256(a).hexdigest()
    assert first.out == f"{digest}  {d / 'module.wasm'}\n"
    assert second.json()["sha256"] == digest and second.json()["lang"] == "wat"


@pytest.mark.skipif(not HAVE_ZIG, reason="the ziglang package is not installed")
def test_a_c_tenant_builds_reproducibly_and_runs(env: Env) -> None:
    d = _new_and_build(env, "wc", "--lang", "c")
    assert (d / "main.c").is_file() and not (d / "module.wat").exists()
    a = (d / "module.wasm").read_bytes()
    assert env.cli("build", str(d)).code == 0
    assert (d / "module.wasm").read_bytes() == a
    app.sign_tenant(d, str(env.publisher.private_path))
    r = env.cli("run", "wc", "--json")
    assert r.code == 0, r.out + r.err
    (row,) = r.json()
    assert row["code"] == "OK"
    assert (env.ws / "state" / "runs" / str(row["run_id"]) / "stdout").read_text() == (
        "hello from wc\n"
    )


def test_new_refuses_to_overwrite_and_bad_names(env: Env) -> None:
    d = env.root / "hello"
    d.mkdir()
    r = env.cli("new", "hello", "--dir", str(d))
    assert r.code == 2 and "error[TENANT_DIR_EXISTS]" in r.err
    assert list(d.iterdir()) == []
    r = env.cli("new", "Bad/Name", "--dir", str(env.root / "x"))
    assert r.code == 2 and "error[MANIFEST_INVALID]" in r.err
    r = env.cli("new", "hello", "--dir", str(env.root / "other"))
    assert r.code == 2 and "error[USAGE]" in r.err and "tenant id" in r.err
    assert not (env.root / "other").exists()


def test_build_refusals(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    d = env.root / "broken"
    assert env.cli("new", "broken", "--dir", str(d)).code == 0
    (d / "module.wat").write_text("(module (func $f (i32.add)))")
    r = env.cli("build", str(d))
    assert r.code == 2 and "error[BUILD_FAILED]" in r.err
    assert not (d / "module.wasm").exists()
    (d / "module.wat").write_text("(module (func")
    r = env.cli("build", str(d))
    assert r.code == 2 and "error[BUILD_FAILED]" in r.err
    assert not (d / "module.wasm").exists()
    r = env.cli("build", str(env.root / "missing"))
    assert r.code == 2 and "error[USAGE]" in r.err

    c = env.root / "cee"
    assert env.cli("new", "cee", "--lang", "c", "--dir", str(c)).code == 0
    real = importlib.util.find_spec

    def no_zig(name: str, *args: object) -> object:
        return None if name == "ziglang" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_zig)
    with pytest.raises(NightCoreError) as exc:
        tenant_mod.build_tenant(c)
    assert exc.value.code == "TOOLCHAIN_MISSING"
    assert "pip install ziglang" in exc.value.message
