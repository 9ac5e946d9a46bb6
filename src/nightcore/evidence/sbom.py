"""The node's SBOM (CycloneDX 1.5 JSON, via cyclonedx-python-lib).

Components: every Python distribution installed in the runtime's environment (name,
version, purl, licence, and a SHA-256 of the distribution's installed ``RECORD`` file, which
itself lists the hash of every installed file), plus every admitted tenant module (SHA-256,
tenant version, signer key id) taken from the audit log's ``admit`` events.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from nightcore.errors import NightCoreError


def _licence(dist: metadata.Distribution) -> str | None:
    meta: Any = dist.metadata  # an email.message.Message underneath
    expr = meta.get("License-Expression")
    if expr:
        return str(expr)
    lic = meta.get("License")
    if lic and len(lic) < 80 and "\n" not in lic:
        return str(lic)
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License :: OSI Approved :: "):
            return str(c.rsplit(" :: ", 1)[1])
    return None


def _record_digest(dist: metadata.Distribution) -> str | None:
    text = dist.read_text("RECORD")
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def admitted_tenants(audit_lines: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """module sha256 -> {tenant, key_id} for every module ever admitted on this node, from
    the node's audit log lines."""
    out: dict[str, dict[str, Any]] = {}
    for raw in audit_lines:
        if b'"event":"admit"' not in raw:
            continue
        rec = json.loads(raw)
        d = rec.get("data", {})
        sha = d.get("module_sha256")
        if isinstance(sha, str):
            out[sha] = {"tenant": rec.get("tenant", ""), "key_id": d.get("key_id", "")}
    return out


def build_sbom(audit_lines: Iterable[bytes] | None) -> str:
    """The SBOM: the runtime's distributions, plus the tenant modules admitted in
    ``audit_lines`` (a node's audit log; None for the runtime alone)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
    from cyclonedx.output.json import JsonV1Dot5
    from packageurl import PackageURL

    bom = Bom()
    bom.metadata.component = Component(
        name="nightcore", version=metadata.version("nightcore"), type=ComponentType.APPLICATION
    )
    seen: set[str] = set()
    for dist in sorted(metadata.distributions(), key=lambda d: str(d.metadata["Name"]).lower()):
        name = str(dist.metadata["Name"])
        key = name.lower()
        if key in seen:
            continue
        seen.add(key)
        version = str(dist.version)
        licences: list[Any] = []
        lic = _licence(dist)
        if lic:
            licences.append(
                LicenseExpression(lic)
                if " OR " in lic or " AND " in lic
                else DisjunctiveLicense(name=lic)
            )
        digest = _record_digest(dist)
        bom.components.add(
            Component(
                name=name,
                version=version,
                type=ComponentType.LIBRARY,
                purl=PackageURL("pypi", key, version),
                bom_ref=f"pypi:{key}@{version}",
                licenses=licences,
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digest)] if digest else [],
                properties=[Property(name="nightcore:hash-of", value="installed RECORD")]
                if digest
                else [],
            )
        )
    if audit_lines is not None:
        for sha, info in sorted(admitted_tenants(audit_lines).items()):
            bom.components.add(
                Component(
                    name=str(info["tenant"]) or "unknown",
                    version=sha[:12],
                    type=ComponentType.APPLICATION,
                    bom_ref=f"wasm:{sha}",
                    hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)],
                    properties=[
                        Property(name="nightcore:signer_key_id", value=str(info["key_id"])),
                        Property(name="nightcore:kind", value="tenant-module"),
                    ],
                )
            )
    import warnings

    with warnings.catch_warnings():
        # The SBOM inventories what is installed; it does not claim a dependency graph, which
        # cyclonedx-python-lib warns about for every root component without one.
        warnings.filterwarnings("ignore", message=".*has no defined dependencies.*")
        return str(JsonV1Dot5(bom).output_as_string(indent=2))


def validate_sbom(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    if err is not None:
        raise NightCoreError(
            f"SBOM does not validate against CycloneDX 1.5: {err}", code="SBOM_INVALID"
        )


def write_sbom(audit_lines: Iterable[bytes] | None, out: Path) -> str:
    text = build_sbom(audit_lines)
    validate_sbom(text)
    out.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()
