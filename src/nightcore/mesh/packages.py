"""Tenant packages through the mesh: a JetStream object store (``P-packages``), one object per
tenant, that nodes fetch, verify and only then install (docs/mesh.md, "Tenant packages").

``nightcore mesh publish-tenant DIR`` puts the signed package (``module.wasm``, the signed
envelope, ``manifest.toml`` if present) as one object named after the tenant, so a node never
sees half of one version and half of another. The object is canonical JSON::

    {"schema": 1, "tenant": "hello", "files": {"module.wasm": "<base64>", ...}}

A node asked to run a tenant looks the object up. If there is none, it runs its own
``modules/<tenant>`` as before. If there is one it has not installed yet, it fetches it (size
capped before and while reading), parses it strictly, writes it into a staging directory
(``state/mesh/staging/``), reads it back with the same package reader as every run and decides
on it with the node's own registry, revocations and policy. Only an ``OK`` package replaces
``modules/<tenant>`` (a rename). A package that fails gets its code as the run's result and is
audited (``mesh_package_refused``). The node's copy is left as it was. The run then verifies the
installed package again, as every run does: the bus is never trusted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError
from nightcore.module.package import (
    ENVELOPE_FILE,
    MANIFEST_FILE,
    MAX_MODULE_BYTES,
    MODULE_FILE,
    read_package,
)

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

    from nightcore.mesh.agent import MeshAgent
    from nightcore.mesh.config import MeshConfig

SCHEMA = 1
FILES = (MODULE_FILE, ENVELOPE_FILE, MANIFEST_FILE)
MAX_OBJECT_BYTES = MAX_MODULE_BYTES * 4 // 3 + 4 * 1024 * 1024
"""The module's cap in base64 plus room for the envelope, the manifest and the JSON."""


def _invalid(message: str) -> NightCoreError:
    return NightCoreError(message, code="MESH_PACKAGE_INVALID")


def encode_package(tenant_dir: Path) -> tuple[str, bytes]:
    """(tenant, the object's bytes) of a signed package directory (read with the package
    reader's caps and no-symlink rule)."""
    pkg = read_package(tenant_dir)
    files = {MODULE_FILE: pkg.module, ENVELOPE_FILE: pkg.envelope or b""}
    if pkg.manifest is not None:
        files[MANIFEST_FILE] = pkg.manifest
    obj = {
        "schema": SCHEMA,
        "tenant": pkg.name,
        "files": {k: base64.b64encode(v).decode("ascii") for k, v in files.items()},
    }
    return pkg.name, canonical(obj)


def decode_package(data: bytes, tenant: str) -> dict[str, bytes]:
    """The files of a package object for ``tenant`` (untrusted bytes), or
    ``MESH_PACKAGE_INVALID``."""
    obj = parse_json(
        data, max_bytes=MAX_OBJECT_BYTES, what="the package object", code="MESH_PACKAGE_INVALID"
    )
    if not isinstance(obj, dict) or set(obj) != {"schema", "tenant", "files"}:
        raise _invalid("the package object does not have the package keys")
    if obj["schema"] != SCHEMA or isinstance(obj["schema"], bool):
        raise _invalid(f"unsupported package schema {obj['schema']!r}")
    if obj["tenant"] != tenant:
        raise _invalid("the package object is for another tenant than its name")
    files = obj["files"]
    if not isinstance(files, dict) or not set(files) <= set(FILES) or MODULE_FILE not in files:
        raise _invalid(f"the package files must be among {list(FILES)}, with {MODULE_FILE}")
    out = {}
    for name, text in files.items():
        if not isinstance(text, str):
            raise _invalid(f"{name} is not base64 text")
        try:
            out[name] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"{name} is not valid base64") from None
    return out


async def open_store(js: JetStreamContext, bucket: str, replicas: int) -> ObjectStore:
    from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

    try:
        return await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await js.create_object_store(bucket, replicas=replicas)
    except BadRequestError:  # created by another client at the same moment
        return await js.object_store(bucket)


async def publish_tenant_async(config: MeshConfig, tenant_dir: Path) -> dict[str, Any]:
    from nightcore.mesh.agent import default_replicas, mesh_error
    from nightcore.mesh.connect import connect

    tenant, data = encode_package(tenant_dir)
    nc = await connect(config, client_name="nightcore-mesh-cli", reconnect=False)
    try:
        js = nc.jetstream(domain=config.js_domain) if config.js_domain else nc.jetstream()
        try:
            store = await open_store(js, config.names.packages_store, default_replicas(config))
            info = await store.put(tenant, data)
        except NightCoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any nats error: one coded line
            raise mesh_error(exc, "publishing the tenant package") from None
        return {
            "tenant": tenant,
            "store": config.names.packages_store,
            "bytes": len(data),
            "digest": info.digest,
        }
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def publish_tenant(config: MeshConfig, tenant_dir: Path) -> dict[str, Any]:
    """``nightcore mesh publish-tenant DIR``: put the signed package in the object store."""
    return asyncio.run(publish_tenant_async(config, tenant_dir))


class _Capped:
    """A write target that refuses more than ``cap`` bytes (the object's meta can lie)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.cap:
            raise NightCoreError("the package object is above its cap", code="PACKAGE_TOO_LARGE")
        self.parts.append(bytes(data))
        return len(data)


class PackageSync:
    """The node's side: install a tenant's package from the object store, verified first."""

    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent
        self._store: ObjectStore | None = None
        self._installed: dict[str, str] = {}  # tenant -> object digest installed (or refused)
        self._refused: dict[str, tuple[str, str]] = {}  # tenant -> (code, reason) of that digest
        self._lock = asyncio.Lock()

    async def _open(self) -> ObjectStore | None:
        from nats.js.errors import BucketNotFoundError, NotFoundError

        if self._store is None:
            try:
                self._store = await self.agent.js.object_store(self.agent.names.packages_store)
            except (BucketNotFoundError, NotFoundError):
                return None
        return self._store

    async def prepare(self, tenants: list[str]) -> dict[str, tuple[str, str]]:
        """Bring each tenant's package up to the object store's version; tenant -> (code,
        reason) for those whose object fails (they are not run)."""
        from nats.js.errors import NotFoundError, ObjectNotFoundError

        store = await self._open()
        if store is None:
            return {}
        refused: dict[str, tuple[str, str]] = {}
        async with self._lock:  # one install at a time; concurrent requests wait for it
            for tenant in tenants:
                try:
                    info = await store.get_info(tenant)
                except (ObjectNotFoundError, NotFoundError):
                    continue  # not published: the node's own modules/ as deployed
                digest = str(info.digest or "")
                if self._installed.get(tenant) != digest:
                    outcome = await self._install(store, tenant, info, digest)
                    self._installed[tenant] = digest
                    if outcome is None:
                        self._refused.pop(tenant, None)
                    else:
                        self._refused[tenant] = outcome
                if tenant in self._refused:
                    refused[tenant] = self._refused[tenant]
        return refused

    async def _install(
        self, store: ObjectStore, tenant: str, info: Any, digest: str
    ) -> tuple[str, str] | None:
        size = int(info.size or 0)
        try:
            if size > MAX_OBJECT_BYTES:
                raise NightCoreError(
                    f"the package object is {size} bytes, above {MAX_OBJECT_BYTES}",
                    code="PACKAGE_TOO_LARGE",
                )
            sink = _Capped(MAX_OBJECT_BYTES)
            try:
                await store.get(tenant, writeinto=sink)  # type: ignore[arg-type]
            except NightCoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - a digest mismatch, a lost chunk: coded
                raise _invalid(f"the package object cannot be read: {type(exc).__name__}") from None
            files = decode_package(b"".join(sink.parts), tenant)
            code, reason, module_sha = await asyncio.to_thread(
                self._stage_and_verify, tenant, files
            )
        except NightCoreError as exc:
            code, reason, module_sha = exc.code, exc.message, ""
        event = "mesh_package_installed" if code == "OK" else "mesh_package_refused"
        await asyncio.to_thread(
            self.agent.ctx.audit().append,
            event,
            {
                "object_digest": digest,
                "code": code,
                "reason": reason[:500],
                "module_sha256": module_sha,
            },
            tenant,
        )
        return None if code == "OK" else (code, reason)

    def _stage_and_verify(self, tenant: str, files: dict[str, bytes]) -> tuple[str, str, str]:
        """Write the files into a fresh staging directory, decide on them with the node's own
        trust, and install them only if they are OK. (code, reason, module sha256)."""
        from nightcore.fsio import atomic_write
        from nightcore.module.verify import decide

        ctx = self.agent.ctx
        layout = ctx.layout
        staging_root = layout.state_dir / "mesh" / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        holder = staging_root / f"{tenant}.{os.urandom(6).hex()}"
        holder.mkdir(mode=0o700)
        try:
            staged = holder / tenant
            staged.mkdir()
            for name, data in files.items():
                atomic_write(staged / name, data, 0o640)
            pkg = read_package(staged)
            registry = ctx.load_registry()
            decision = decide(
                pkg, registry, ctx.load_revocations(registry), ctx.policy, dt.datetime.now(dt.UTC)
            )
            if not decision.ok:
                return decision.code, decision.reason, decision.module_sha256
            target = layout.tenant_dir(tenant)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                os.rename(target, holder / "previous")
            os.rename(staged, target)
            return "OK", "installed from the object store", decision.module_sha256
        finally:
            shutil.rmtree(holder, ignore_errors=True)
