"""Workspaces, keys and signing: what exists before a node runs anything."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nightcore.config import DEFAULT_CONFIG, DEFAULT_LIMITS, DEFAULT_MAX, NODE_PASSPHRASE_ENV
from nightcore.context import NodeContext
from nightcore.errors import NightCoreError, WorkspaceError
from nightcore.fsio import atomic_write
from nightcore.layout import Layout

if TYPE_CHECKING:
    from nightcore.trust.keys import GeneratedKey


def open_context(workspace: str | None = None, *, fips: bool | None = None) -> NodeContext:
    """The node context of the workspace at ``workspace`` (``-w``), ``NIGHTCORE_HOME`` or the
    current directory; ``fips=True`` only tightens the configured crypto policy."""
    return NodeContext.open(workspace, fips=fips)


def init_workspace(root: Path, *, name: str = "node", fips: bool = False) -> NodeContext:
    """Create a workspace with its node key. Refuses to touch an existing workspace."""
    from nightcore.trust.keys import generate_key

    root = root.resolve()
    layout = Layout(root)
    if layout.config_path.exists():
        raise WorkspaceError(f"{root} is already a Night Core workspace", code="WORKSPACE_EXISTS")
    for path in (
        layout.modules_dir,
        layout.trust_dir,
        layout.audit_dir,
        layout.revocation_mark_path.parent,
        layout.tenants_data_dir,
        layout.runs_dir,
        layout.cache_dir,
    ):
        path.mkdir(parents=True, exist_ok=True)
    private = layout.private_dir
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    passphrase = os.environ.get(NODE_PASSPHRASE_ENV)
    # The node key signs unattended (checkpoints, attestations): encrypted only when a
    # passphrase is provided through the environment; otherwise 0600 in a 0700 directory.
    gen = generate_key("node", private, passphrase.encode() if passphrase else None, fips=fips)
    os.replace(gen.public_path, layout.node_pub_path)
    config = DEFAULT_CONFIG.format(name=name, max=DEFAULT_MAX, default=DEFAULT_LIMITS)
    if fips:
        config = config.replace("fips = false", "fips = true")
    atomic_write(layout.config_path, config.encode())
    secret = layout.cache_secret_path
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    ctx = NodeContext(root)
    ctx.audit().append(
        "workspace_init",
        {"node_key_id": gen.key_id, "scheme": gen.scheme, "fips": fips, "name": name},
    )
    return ctx


def keygen(name: str, out_dir: Path, passphrase: bytes, *, fips: bool = False) -> GeneratedKey:
    from nightcore.trust.keys import generate_key

    return generate_key(name, out_dir, passphrase, fips=fips)


# -- signing (publisher side: needs no workspace) ------------------------------------------


@dataclass(frozen=True)
class SignResult:
    tenant: str
    envelope_path: Path
    key_id: str
    module_sha256: str


def sign_tenant(tenant_dir: Path, key: str, *, fips: bool = False) -> SignResult:
    """Sign ``tenant_dir``'s manifest and module digest into ``module.intoto.dsse.json``."""
    from nightcore.canonical import canonical
    from nightcore.module.manifest import parse_manifest_toml
    from nightcore.module.package import ENVELOPE_FILE, read_package
    from nightcore.module.verify import MANIFEST_PREDICATE_TYPE, WASM_HEADER
    from nightcore.trust.envelope import make_statement, sign_payload
    from nightcore.trust.keys import check_scheme, load_signer

    pkg = read_package(tenant_dir, need_envelope=False)
    if pkg.manifest is None:
        raise NightCoreError(f"{pkg.name}/manifest.toml is missing", code="MANIFEST_INVALID")
    manifest = parse_manifest_toml(pkg.manifest)
    if manifest.tenant != pkg.name:
        raise NightCoreError(
            f"manifest names tenant {manifest.tenant!r} but the directory is {pkg.name!r}",
            code="MANIFEST_MISMATCH",
        )
    if not pkg.module.startswith(WASM_HEADER):
        raise NightCoreError(
            "module.wasm is not a WebAssembly core module", code="MODULE_MALFORMED"
        )
    signer = load_signer(key)
    check_scheme(str(signer.public_key.scheme), fips)
    digest = hashlib.sha256(pkg.module).hexdigest()
    stmt = make_statement(
        [("module.wasm", digest)], MANIFEST_PREDICATE_TYPE, manifest.to_predicate()
    )
    envelope = sign_payload(canonical(stmt), [signer])
    out = tenant_dir / ENVELOPE_FILE
    if out.is_symlink():
        raise NightCoreError(
            f"{out} is a symlink; refusing to write through it", code="PACKAGE_INVALID"
        )
    atomic_write(out, envelope + b"\n")
    return SignResult(pkg.name, out, str(signer.public_key.keyid), digest)
