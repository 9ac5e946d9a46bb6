"""The adapter registry: manifest schema translators and the host ABIs this runtime provides.

Threat model section 10 ("future ABI regression ... managed by adapter registry") and section
7 ("modified engine adapter or schema translator"): translators and ABI entries are code that
ships inside the runtime release, which itself arrives through AUFS (hash-checked, threshold
signed). Each translator has a name; the names applied to a package are recorded in the audit
event of its installation.

* A translator migrates a manifest (as a parsed table) from schema ``n`` to ``n + 1``. The
  registry chains them, so a schema-0 manifest reaches the current schema through every step.
  Schema 1 is the only schema today, so the default registry has no translators; the tests
  register one to exercise the mechanism.
* The ABI table maps each host ABI name to the first runtime version that provides it. A
  module asking for an ABI this runtime lacks is refused with ``ABI_UNSUPPORTED`` naming the
  runtime version that provides it (from this table, else from the target's signed
  ``min_runtime``).

What translators do *not* do: the trust layer verifies the *signed* manifest, and only in a
schema it reads (``module/manifest.py``). Translation serves the update channel's planning
(tenant, version, ABI, schema) so that it can refuse early with a precise reason; a package
whose signed manifest is in an older schema still needs a verifier that reads that schema.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nightcore.aufs.artifacts import compare_versions
from nightcore.aufs.errors import AufsError
from nightcore.module.manifest import SCHEMA_VERSION, SUPPORTED_ABIS

TranslateFn = Callable[[dict[str, Any]], dict[str, Any]]
MAX_CHAIN = 64


@dataclass(frozen=True)
class Translator:
    name: str
    from_schema: int
    fn: TranslateFn

    @property
    def to_schema(self) -> int:
        return self.from_schema + 1


@dataclass
class AdapterRegistry:
    current_schema: int = SCHEMA_VERSION
    # ABI name -> first Night Core runtime version that provides it.
    abis: dict[str, str] = field(default_factory=dict)
    provided: frozenset[str] = frozenset(SUPPORTED_ABIS)
    translators: dict[int, Translator] = field(default_factory=dict)

    def register_translator(self, name: str, from_schema: int, fn: TranslateFn) -> None:
        if from_schema in self.translators:
            raise ValueError(f"a translator from schema {from_schema} is already registered")
        if from_schema >= self.current_schema:
            raise ValueError("translators migrate older schemas to newer ones")
        self.translators[from_schema] = Translator(name, from_schema, fn)

    def register_abi(self, abi: str, since_runtime: str, *, provided: bool = False) -> None:
        self.abis[abi] = since_runtime
        if provided:
            self.provided = self.provided | {abi}

    def migrate(self, doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Bring a manifest table to the current schema; returns it and the translators used."""
        schema = doc.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise AufsError("manifest: schema must be an integer", code="SCHEMA_UNSUPPORTED")
        if schema > self.current_schema:
            raise AufsError(
                f"manifest schema {schema} is newer than this runtime reads "
                f"({self.current_schema}); update the runtime first",
                code="SCHEMA_UNSUPPORTED",
            )
        applied: list[str] = []
        out = dict(doc)
        while schema < self.current_schema:
            tr = self.translators.get(schema)
            if tr is None or len(applied) >= MAX_CHAIN:
                raise AufsError(
                    f"manifest schema {schema}: no translator to schema {schema + 1}",
                    code="SCHEMA_UNSUPPORTED",
                )
            out = tr.fn(dict(out))
            if out.get("schema") != tr.to_schema:
                raise AufsError(
                    f"translator {tr.name} did not produce schema {tr.to_schema}",
                    code="SCHEMA_UNSUPPORTED",
                )
            applied.append(tr.name)
            schema = tr.to_schema
        return out, applied

    def check_abi(self, abi: str, runtime_version: str, *, min_runtime: str = "") -> None:
        if abi in self.provided:
            return
        since = self.abis.get(abi) or min_runtime
        where = (
            f"Night Core {since} or later provides it"
            if since and compare_versions(since, runtime_version) > 0
            else "no known Night Core release provides it"
        )
        raise AufsError(
            f"module needs host ABI {abi[:80]!r}, which runtime {runtime_version} lacks; {where}",
            code="ABI_UNSUPPORTED",
        )


def default_registry() -> AdapterRegistry:
    reg = AdapterRegistry()
    for abi in SUPPORTED_ABIS:
        reg.register_abi(abi, "0.1.0", provided=True)
    return reg


@functools.cache
def runtime_version() -> str:
    """The version of the Night Core runtime executing this code."""
    from importlib import metadata

    try:
        return metadata.version("nightcore")
    except metadata.PackageNotFoundError:
        return "0.0.0"
