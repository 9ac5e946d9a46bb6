"""Verification throughput: Night Core's decision vs bare hashlib + cryptography, same run.

Prints, for 1, 100 and 1,000 signed tenants: Night Core's read+verify time (no audit), the
same with its durable audit line per decision, and the bare baseline (read files, SHA-256,
Ed25519 verify over the DSSE PAE) — and MB/s for a 2 MB module.

    .venv/bin/python benchmarks/verify.py
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from nightcore import app
from nightcore.canonical import canonical
from nightcore.context import NodeContext
from nightcore.module.manifest import parse_manifest_toml
from nightcore.module.verify import MANIFEST_PREDICATE_TYPE
from nightcore.runner.admission import verify_packages
from nightcore.trust.envelope import make_statement, parse_envelope, sign_payload
from nightcore.trust.keys import load_signer

PASS = "benchmark-passphrase"  # noqa: S105 - throwaway benchmark keys


def make_workspace(root: Path, n: int, module: bytes) -> tuple[NodeContext, list[str]]:
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = PASS
    ws = app.init_workspace(root / "ws")
    key = app.keygen("pub", root / "keys", PASS.encode())
    app.trust_add_key(ws, key.public_path, scope="*")
    signer = load_signer(str(key.private_path))
    names = []
    for i in range(n):
        name = f"t{i:04d}"
        d = ws.layout.modules_dir / name
        d.mkdir(parents=True)
        manifest = f'schema = 1\ntenant = "{name}"\nversion = "1.0.0"\n'
        (d / "manifest.toml").write_text(manifest)
        (d / "module.wasm").write_bytes(module)
        m = parse_manifest_toml(manifest.encode())
        stmt = make_statement(
            [("module.wasm", hashlib.sha256(module).hexdigest())],
            MANIFEST_PREDICATE_TYPE,
            m.to_predicate(),
        )
        (d / "module.intoto.dsse.json").write_bytes(sign_payload(canonical(stmt), [signer]))
        names.append(name)
    return ws, names


def bare_verify(ws: NodeContext, names: list[str]) -> None:
    """The floor: read the three files, hash, Ed25519-verify the PAE with cryptography."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    reg = ws.load_registry()
    pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(reg.keys[0].key.keyval["public"]))
    for name in names:
        d = ws.layout.modules_dir / name
        module = (d / "module.wasm").read_bytes()
        (d / "manifest.toml").read_bytes()
        env = parse_envelope((d / "module.intoto.dsse.json").read_bytes())
        hashlib.sha256(module).hexdigest()
        pub.verify(env.signatures[0].sig, env.pae())


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import wasmtime

    small = bytes(
        wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start")))')
    )
    # A valid 2 MB module: one data segment carrying 2 MB of bytes.
    payload = "\\00" * (2 * 1024 * 1024)
    big = bytes(
        wasmtime.wat2wasm(
            f'(module (memory (export "memory") 33) (data (i32.const 0) "{payload}") '
            '(func (export "_start")))'
        )
    )
    print(f"{'tenants':>8} {'nightcore ms':>13} {'+audit ms':>10} {'bare ms':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 100, 1000):
            ws, names = make_workspace(Path(tmp) / f"n{n}", n, small)
            repeat = 5 if n < 1000 else 3
            ours = best(lambda ws=ws, names=names: verify_packages(ws, names), repeat)
            audited = best(lambda ws=ws, names=names: app.verify(ws, names), repeat)
            bare = best(lambda ws=ws, names=names: bare_verify(ws, names), repeat)
            print(
                f"{n:>8} {ours * 1e3:>13.2f} {audited * 1e3:>10.2f} {bare * 1e3:>9.2f} "
                f"{ours / bare:>6.2f}x"
            )
        ws, names = make_workspace(Path(tmp) / "big", 1, big)
        mb = len(big) / 1e6
        ours = best(lambda: verify_packages(ws, names), 5)
        bare = best(lambda: bare_verify(ws, names), 5)
        print(
            f"2 MB module: nightcore {mb / ours:.0f} MB/s, bare {mb / bare:.0f} MB/s, "
            f"ratio {ours / bare:.2f}x (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
