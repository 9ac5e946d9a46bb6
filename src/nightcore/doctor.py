"""``nightcore doctor``: an honest report of the environment this node runs in."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from nightcore.errors import NightCoreError


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


# Where an OpenSSL 3 FIPS provider module (fips.so) is installed on common Linux hosts;
# ``OPENSSL_MODULES`` names the directory OpenSSL itself is told to load modules from.
FIPS_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/ossl-modules",
    "/usr/lib/aarch64-linux-gnu/ossl-modules",
    "/usr/lib64/ossl-modules",
    "/usr/lib/ossl-modules",
    "/usr/local/lib64/ossl-modules",
    "/usr/local/lib/ossl-modules",
)


def fips_provider_module() -> str | None:
    """The path of an OpenSSL FIPS provider module on this host, or None."""
    import os

    dirs = [os.environ["OPENSSL_MODULES"]] if os.environ.get("OPENSSL_MODULES") else []
    for d in [*dirs, *FIPS_MODULE_DIRS]:
        path = os.path.join(d, "fips.so")
        if os.path.isfile(path):
            return path
    return None


def openssl_fips_status(fips_mode: bool = False) -> tuple[str, str]:
    """Whether cryptography's OpenSSL runs with the FIPS provider active, and whether the host
    has one at all. Never claims validation.

    cryptography's wheel links its own OpenSSL: a host ``fips.so`` is used only when
    cryptography is built against the host OpenSSL and ``OPENSSL_CONF`` activates the provider
    (docs/keys.md); Night Core does not load it through cryptography's private bindings.
    """
    from cryptography.hazmat.backends.openssl.backend import backend

    enabled = bool(getattr(backend, "_fips_enabled", False))
    version = backend.openssl_version_text()
    if enabled:
        return (
            "OK",
            f"{version}: FIPS provider: active (this is not a validation claim)",
        )
    module = fips_provider_module()
    restricts = (
        "FIPS mode restricts algorithms only (ECDSA P-256/P-384, SHA-2)"
        if fips_mode
        else "fips = true would restrict algorithms only"
    )
    if module is None:
        return "INFO", f"{version}: FIPS provider: absent; {restricts}"
    return "INFO", (
        f"{version}: FIPS provider: installed at {module} but not active in cryptography's "
        f"OpenSSL (set OPENSSL_CONF to activate it; docs/keys.md); {restricts}"
    )


def run_checks(ws: Any | None) -> list[dict[str, str]]:
    checks: list[dict[str, str]] = []

    def add(check: str, status: str, detail: str) -> None:
        checks.append({"check": check, "status": status, "detail": detail})

    add(
        "python",
        "OK" if sys.version_info >= (3, 11) else "FAIL",
        f"{platform.python_implementation()} {platform.python_version()}",
    )
    for dist in ("wasmtime", "cryptography", "securesystemslib", "rfc8785", "rich"):
        v = _version(dist)
        add(dist, "OK" if v != "missing" else "FAIL", v)
    status, detail = openssl_fips_status(bool(ws is not None and ws.policy.fips))
    add("openssl fips", status, detail)
    from nightcore.sandbox.strongbox import seccomp_available

    why = seccomp_available()
    add(
        "strongbox",
        "OK" if not why else "INFO",
        why if why else "seccomp worker isolation available (nightcore run --strongbox)",
    )
    from nightcore.sandbox.landlock import abi_version

    abi = abi_version()
    add(
        "landlock",
        "OK" if abi else "WARN",
        f"ABI {abi}: strongbox workers see only their tenant's granted directories"
        if abi
        else "not available in this kernel: strongbox workers fall back to the per-tenant "
        "uid wall and the mount namespace (docs/strongbox.md)",
    )
    import resource

    from nightcore.sandbox.usage import RESERVE_MIN, node_reserve

    # Descriptors (docs/limits.md): runs raise the soft limit to the hard one and keep a
    # reserve for the node; a small hard limit leaves tenants little room.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = hard if hard != resource.RLIM_INFINITY else soft
    add(
        "descriptors",
        "OK" if room >= 4 * RESERVE_MIN else "WARN",
        f"RLIMIT_NOFILE soft {soft}, hard {hard}; a run raises the soft limit to the hard one "
        f"and keeps {node_reserve(room)} for the node (FD_LIMIT past that)",
    )
    from nightcore.sandbox.ffi import fence_status

    # The FFI fence: private wasmtime-py bindings the sandbox's limits depend on. A missing
    # hook makes every run that needs it fail with FFI_UNAVAILABLE (never run unlimited).
    for hook, present, detail in fence_status():
        add(f"ffi {hook}", "OK" if present else "FAIL", detail)
    if ws is None:
        add("workspace", "INFO", "no workspace here (nightcore init, -w DIR or NIGHTCORE_HOME)")
        return checks
    add("workspace", "OK", str(ws.root))
    if ws.policy.isolation == "strongbox" or ws.policy.strongbox_tenants:
        from nightcore.sandbox.isolation import strongbox_unavailable

        needed = strongbox_unavailable()
        which = (
            "every tenant"
            if ws.policy.isolation == "strongbox"
            else ", ".join(ws.policy.strongbox_tenants)
        )
        add(
            "isolation policy",
            "FAIL" if needed else "OK",
            f"strongbox required for {which}"
            + (f", not available: {needed} (those tenants are refused)" if needed else ""),
        )
    add(
        "policy fips",
        "INFO",
        "fips = true (FIPS allow-list enforced)" if ws.policy.fips else "fips = false",
    )
    try:
        add("node key", "OK", ws.node_key_id())
    except NightCoreError as exc:
        add("node key", "FAIL", str(exc))
    key_path = ws.layout.default_node_key_path
    if key_path.exists():
        mode = key_path.stat().st_mode & 0o777
        add("node key file", "OK" if mode & 0o077 == 0 else "FAIL", f"mode {mode:o}")
    try:
        registry = ws.load_registry()
        rl = ws.load_revocations(registry)
        add("trust", "OK", f"{len(registry.keys)} trusted keys, revocation list v{rl.version}")
    except NightCoreError as exc:
        add("trust", "FAIL", str(exc))
    else:
        from nightcore.trustops import KEY_AGE_WARN_DAYS, key_age_warnings

        for w in key_age_warnings(ws):
            add(
                f"{w['role']} key age",
                "WARN",
                f"{w['name']} ({w['key_id'][:16]}) was trusted {w['age_days']} days ago: rotate "
                f"every {KEY_AGE_WARN_DAYS} days (nightcore trust rotate-key)",
            )
    try:
        history = ws.transparency_log().history()
    except NightCoreError as exc:
        add("node key history", "FAIL", str(exc))
    else:
        revoked = sum(1 for k in history.keys if k.revoked is not None)
        add(
            "node key history",
            "OK",
            f"{len(history.keys)} node key(s) for log {history.origin}"
            + (f", {revoked} revoked" if revoked else ""),
        )
    return checks
