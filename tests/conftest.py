"""Shared fixtures: real workspaces, real keys (generated per test session), real modules."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.cli.main import main as cli_main
from nightcore.trust.keys import GeneratedKey

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PASSPHRASE = "test-passphrase-not-secret"

HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def _isolate_env(mp: pytest.MonkeyPatch, home: Path) -> None:
    """Drop every ``NIGHTCORE_*`` variable the caller exported (a passphrase, a workspace, a
    repository), point HOME at ``home`` and set the one passphrase the test keys use."""
    for name in [n for n in os.environ if n.startswith("NIGHTCORE_")]:
        mp.delenv(name)
    mp.setenv("HOME", str(home))
    mp.setenv("NIGHTCORE_KEY_PASSPHRASE", PASSPHRASE)


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Before any session fixture (keys are generated and loaded there): the tests must not
    depend on the caller's environment, HOME or current directory. Subprocesses started by the
    tests inherit this environment."""
    home = tmp_path_factory.mktemp("home")
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        _isolate_env(mp, home)
        mp.chdir(cwd)
        yield home


@pytest.fixture(autouse=True)
def _isolated_test(monkeypatch: pytest.MonkeyPatch, _isolated_session: Path) -> None:
    """Per test again: a test that wrote ``os.environ`` directly cannot leak into the next."""
    _isolate_env(monkeypatch, _isolated_session)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``nightcore`` in-process (fast) exactly as argv would."""

    def __init__(self, capsys: pytest.CaptureFixture[str], ws: Path | None) -> None:
        self.capsys = capsys
        self.ws = ws

    def __call__(self, *args: str) -> CliResult:
        self.capsys.readouterr()
        argv = (["-w", str(self.ws)] if self.ws is not None else []) + list(args)
        code = cli_main(argv)
        cap = self.capsys.readouterr()
        assert "Traceback" not in cap.err
        return CliResult(code, cap.out, cap.err)


def run_cli_subprocess(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    address_space: int | None = None,
) -> CliResult:
    """``nightcore ARGS`` in a child process; ``address_space`` bounds the child's
    ``RLIMIT_AS`` (an endless read fails the child, not the machine)."""
    full_env = dict(os.environ, **(env or {}))

    def limit() -> None:  # pragma: no cover - runs in the child
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    p = subprocess.run(
        [sys.executable, "-m", "nightcore", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        preexec_fn=limit if address_space is not None else None,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


@contextlib.contextmanager
def serving(ws: Path) -> Iterator[tuple[dict[str, Any], subprocess.Popen[str]]]:
    """``nightcore -w WS serve --port 0 --json`` in a child: its first line (printed once it
    listens: readiness is that line, never a sleep) and the process; stopped with SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightcore", "-w", str(ws), "serve", "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline()), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def plant_special(path: Path, kind: str) -> None:
    """Put a special file at ``path`` (absent): ``fifo`` (an open for reading blocks),
    ``dev-zero`` (a link to an endless device) or ``directory``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:  # pragma: no cover
        raise AssertionError(kind)


def wat_module(text: str) -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(text))


def write_tenant(ws_root: Path, tenant: str, manifest: str, wasm: bytes) -> Path:
    d = ws_root / "modules" / tenant
    d.mkdir(parents=True, exist_ok=True)
    (d / "module.wasm").write_bytes(wasm)
    (d / "manifest.toml").write_text(manifest)
    return d


def simple_manifest(tenant: str, extra: str = "") -> str:
    return f'schema = 1\ntenant = "{tenant}"\nversion = "1.0.0"\n{extra}'


@dataclass
class Env:
    root: Path
    ws: Path
    publisher: GeneratedKey
    maintainer: GeneratedKey
    cli: Cli

    def add_tenant(
        self,
        tenant: str,
        extra: str = "",
        wasm: bytes | None = None,
        sign: bool = True,
        key: GeneratedKey | None = None,
    ) -> Path:
        d = write_tenant(
            self.ws,
            tenant,
            simple_manifest(tenant, extra),
            wasm if wasm is not None else wat_module(HELLO_WAT),
        )
        if sign:
            app.sign_tenant(d, str((key or self.publisher).private_path))
        return d

    def audit_lines(self) -> list[dict[str, Any]]:
        path = self.ws / "state" / "audit" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneratedKey]:
    d = tmp_path_factory.mktemp("keys")
    pw = PASSPHRASE.encode()
    return {name: app.keygen(name, d, pw) for name in ("alice", "maint", "mallory", "bob")}


@pytest.fixture
def env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys_dir: dict[str, GeneratedKey]
) -> Iterator[Env]:
    ws = app.init_workspace(tmp_path / "ws")
    app.trust_add_key(ws, keys_dir["alice"].public_path, scope="*")
    app.trust_add_key(ws, keys_dir["maint"].public_path, scope="*", role="maintainer")
    yield Env(tmp_path, ws.root, keys_dir["alice"], keys_dir["maint"], Cli(capsys, ws.root))
