"""``make demo``: the main job on embedded defaults, end to end, in ``demo-workspace/``.

Builds the sample tenants, creates a workspace and keys, trusts the publisher, signs every
tenant, tampers with one signed copy, runs them all and prints the table. Everything goes
through the public API, exactly as the CLI would.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DEMO_DIR = Path("demo-workspace")
DEMO_KEYS = Path("demo-keys")
EXAMPLES = Path("examples/tenants")
DEMO_PASSPHRASE = "night-core-demo-passphrase"  # noqa: S105 - demo keys only, printed below


def build_tenant(src: Path, dest: Path) -> None:
    import wasmtime

    dest.mkdir(parents=True)
    wat = src / "module.wat"
    if wat.exists():
        (dest / "module.wasm").write_bytes(bytes(wasmtime.wat2wasm(wat.read_text())))
    else:
        shutil.copyfile(src / "module.wasm", dest / "module.wasm")
    shutil.copyfile(src / "manifest.toml", dest / "manifest.toml")


def main() -> int:
    from nightcore import app
    from nightcore.cli.main import main as cli_main
    from nightcore.cli.render import info

    if not EXAMPLES.is_dir():
        info("run `make demo` from the repository root (examples/tenants is needed)")
        return 2
    for old in (DEMO_DIR, DEMO_KEYS):
        if old.exists():
            shutil.rmtree(old)
    os.environ.setdefault("NIGHTCORE_KEY_PASSPHRASE", DEMO_PASSPHRASE)
    ctx = app.init_workspace(DEMO_DIR, name="demo-node")
    # The publisher's key lives outside the workspace, as it would on a publisher's machine.
    keys = DEMO_KEYS
    publisher = app.keygen("publisher", keys, os.environ["NIGHTCORE_KEY_PASSPHRASE"].encode())
    app.trust_add_key(ctx, publisher.public_path, scope="*", name="demo-publisher")
    tenants = sorted(p for p in EXAMPLES.iterdir() if (p / "manifest.toml").exists())
    for src in tenants:
        dest = ctx.layout.modules_dir / src.name
        build_tenant(src, dest)
        app.sign_tenant(dest, str(publisher.private_path))
    # A signed copy of hello whose module was changed after signing: it must be denied.
    hello = ctx.layout.modules_dir / "hello"
    if hello.exists():
        tampered = ctx.layout.modules_dir / "tampered"
        shutil.copytree(hello, tampered)
        manifest = (tampered / "manifest.toml").read_text()
        (tampered / "manifest.toml").write_text(
            manifest.replace('tenant = "hello"', 'tenant = "tampered"')
        )
        app.sign_tenant(tampered, str(publisher.private_path))
        wasm = bytearray((tampered / "module.wasm").read_bytes())
        wasm[-1] ^= 0x01
        (tampered / "module.wasm").write_bytes(bytes(wasm))
    info(f"workspace {ctx.root}: {len(tenants) + 1} tenants signed by {publisher.key_id[:16]}")
    code = cli_main(["-w", str(DEMO_DIR), "run"])
    cli_main(["-w", str(DEMO_DIR), "audit", "verify"])
    info(
        "hostile tenants are stopped with their codes and the tampered copy is denied: "
        "a non-zero exit from `run` is expected here."
    )
    info(
        f"open {DEMO_DIR / 'state' / 'dashboard.html'} in a browser for the report; "
        f"`nightcore -w {DEMO_DIR} serve` for the live console."
    )
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
