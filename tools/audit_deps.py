"""``make audit``: the supply-chain gates over the locks and the installed environment.

Gates (docs/supply-chain.md says what each checks and how to update its reviewed files):

``pins``         every requirement in ``requirements*.lock`` is ``name==version`` with at least
                 one ``--hash``; no includes, editables, URLs or duplicates.
``consistency``  ``pyproject.toml``, the locks and the installed environment agree: every
                 dependency is pinned (and the pin satisfies its specifier), nothing is pinned
                 that nothing needs, every dev-lock entry is installed at its pinned version,
                 nothing is installed that no lock names.
``sbom``         a CycloneDX SBOM of this environment (the product's own ``nightcore sbom``
                 code) validates, and names every runtime- and dev-lock pin at its version.
``licences``     every installed distribution's licence (License-Expression, License, or the
                 classifiers) is on ``supply-chain/licences.toml``'s allow-list, or has a
                 reviewed, unexpired exception there.
``vulns``        ``pip-audit -s pypi`` over the locks; a known vulnerability fails with the
                 package, its id and the fix version unless ``supply-chain/vulnerability-
                 ignores.toml`` has an unexpired entry with a reason. A database that cannot be
                 reached fails with ``VULN_DB_UNREACHABLE`` (exit 3), never silently.

Each failure is one line ``audit[CODE] gate: message``. Exit 0 when every gate passes, 1 on a
finding, 3 when the vulnerability database could not be reached (and nothing else failed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GATES = ("pins", "consistency", "sbom", "licences", "vulns")
RUNTIME_LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
OPTIONAL_LOCKS = ("requirements-bench.lock",)  # installed only by `make bench`
LICENCES_FILE = "supply-chain/licences.toml"
IGNORES_FILE = "supply-chain/vulnerability-ignores.toml"
PROJECT = "nightcore"
EXIT_OK, EXIT_FINDINGS, EXIT_UNREACHABLE = 0, 1, 3
PYPI_JSON = "https://pypi.org/pypi/{name}/json"
_HASH_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Finding:
    gate: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"audit[{self.code}] {self.gate}: {self.message}"


@dataclass(frozen=True)
class Pin:
    name: str  # normalized
    version: str
    hashes: tuple[str, ...]
    marker: str | None
    where: str  # file:line

    def applies(self) -> bool:
        """Whether this pin's environment marker holds here."""
        if not self.marker:
            return True
        from packaging.markers import Marker

        return bool(Marker(self.marker).evaluate())


# -- pins -----------------------------------------------------------------------------------

_REQ = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<rest>.*)$")
_ALLOWED_OPTIONS = ("--extra-index-url", "--index-url", "--find-links", "-i", "-f")


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined and comments dropped."""
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = n
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        joined = " ".join(p.strip() for p in buf).strip()
        buf = []
        if joined:
            yield start, joined
    if buf and " ".join(buf).strip():
        yield start, " ".join(p.strip() for p in buf).strip()


def parse_lock(text: str, filename: str) -> tuple[dict[str, Pin], list[Finding]]:
    """The pins of a lock file, and a finding for every line that is not a hash-pinned
    ``name==version``."""
    pins: dict[str, Pin] = {}
    bad: list[Finding] = []

    def fail(code: str, where: str, msg: str) -> None:
        bad.append(Finding("pins", code, f"{where}: {msg}"))

    for n, line in _logical_lines(text):
        where = f"{filename}:{n}"
        if line.startswith("-"):
            opt = line.split()[0].split("=", 1)[0]
            if opt in _ALLOWED_OPTIONS:
                continue
            fail(
                "LOCK_INCLUDE",
                where,
                f"{opt!r} is not allowed in a lock (includes, "
                "editables and constraints make it depend on other files)",
            )
            continue
        tokens = line.split()
        hashes = [t.split("=", 1)[1] for t in tokens if t.startswith("--hash=")]
        others = [t for t in tokens if t.startswith("-") and not t.startswith("--hash=")]
        spec = " ".join(t for t in tokens if not t.startswith("-"))
        m = _REQ.match(spec)
        if m is None or others:
            fail("UNPINNED", where, f"{line[:80]!r} is not a requirement this gate understands")
            continue
        name = normalize(m.group("name"))
        rest, _, marker = m.group("rest").partition(";")
        rest = rest.strip()
        version = rest[2:].strip() if rest.startswith("==") and not rest.startswith("===") else ""
        if not version or "*" in version or "," in version or " @ " in f" {rest}" or " " in version:
            fail("UNPINNED", where, f"{m.group('name')} is not pinned with == (got {rest!r})")
            continue
        if not hashes:
            fail("HASH_MISSING", where, f"{name}=={version} has no --hash")
            continue
        for h in hashes:
            algo, _, digest = h.partition(":")
            if _HASH_LEN.get(algo) != len(digest) or not re.fullmatch(r"[0-9a-f]+", digest):
                fail("HASH_MISSING", where, f"{name}=={version}: {h[:40]!r} is not a hash")
        if name in pins:
            fail("LOCK_DUPLICATE", where, f"{name} is pinned twice (also {pins[name].where})")
            continue
        pins[name] = Pin(name, version, tuple(hashes), marker.strip() or None, where)
    return pins, bad


@dataclass
class Locks:
    runtime: dict[str, Pin] = field(default_factory=dict)
    dev: dict[str, Pin] = field(default_factory=dict)
    optional: dict[str, Pin] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)


def read_locks(root: Path) -> tuple[Locks, list[Finding]]:
    locks = Locks()
    findings: list[Finding] = []
    for name in (RUNTIME_LOCK, DEV_LOCK, *OPTIONAL_LOCKS):
        path = root / name
        if not path.is_file():
            if name in (RUNTIME_LOCK, DEV_LOCK):
                findings.append(Finding("pins", "LOCK_MISSING", f"{name} does not exist"))
            continue
        pins, bad = parse_lock(path.read_text(), name)
        findings += bad
        locks.paths.append(path)
        if name == RUNTIME_LOCK:
            locks.runtime = pins
        elif name == DEV_LOCK:
            locks.dev = pins
        else:
            locks.optional.update(pins)
    return locks, findings


# -- consistency ----------------------------------------------------------------------------


def installed_distributions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for d in metadata.distributions():
        out.setdefault(normalize(str(d.metadata["Name"])), str(d.version))
    return out


def installed_requires(name: str) -> list[str]:
    from importlib import metadata

    try:
        return list(metadata.requires(name) or [])
    except metadata.PackageNotFoundError:
        return []


def _closure(
    roots: list[str], requires: Callable[[str], list[str]]
) -> tuple[dict[str, str], list[Finding]]:
    """Every distribution ``roots`` need (name -> the root or parent that needs it)."""
    from packaging.requirements import InvalidRequirement, Requirement

    need: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str], str]] = []
    bad: list[Finding] = []
    for r in roots:
        try:
            req = Requirement(r)
        except InvalidRequirement:
            bad.append(Finding("consistency", "SPEC_INVALID", f"{r!r} is not a requirement"))
            continue
        if req.marker is None or req.marker.evaluate():
            todo.append((normalize(req.name), frozenset(req.extras), "pyproject.toml"))
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras, parent = todo.pop()
        need.setdefault(name, parent)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in requires(name):
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            envs = [{"extra": e} for e in (*sorted(extras), "")]
            if req.marker is None or any(req.marker.evaluate(e) for e in envs):
                todo.append((normalize(req.name), frozenset(req.extras), name))
    return need, bad


def _check_pyproject(deps: list[str], locks: Locks, fail: Callable[[str, str], None]) -> None:
    """Every pyproject requirement (dependencies and build-system) is pinned in the runtime
    lock, inside its specifier."""
    from packaging.requirements import InvalidRequirement, Requirement

    for line in deps:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            fail("SPEC_INVALID", f"pyproject.toml: {line!r} is not a requirement")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = locks.runtime.get(normalize(req.name))
        if pin is None:
            fail(
                "NOT_IN_LOCK", f"pyproject.toml needs {req.name} but {RUNTIME_LOCK} does not pin it"
            )
        elif req.specifier and not req.specifier.contains(pin.version, prereleases=True):
            fail(
                "SPEC_MISMATCH",
                f"{RUNTIME_LOCK} pins {pin.name}=={pin.version}, outside pyproject.toml's "
                f"{req.name}{req.specifier}",
            )


def _check_runtime_lock(
    need: Mapping[str, str], locks: Locks, project: str, fail: Callable[[str, str], None]
) -> None:
    """The runtime lock pins exactly what pyproject needs, and the dev lock agrees with it."""
    for name, parent in sorted(need.items()):
        if name not in locks.runtime and name != project:
            fail("NOT_IN_LOCK", f"{name} (needed by {parent}) is not pinned in {RUNTIME_LOCK}")
    for name, pin in sorted(locks.runtime.items()):
        if name not in need and pin.applies():
            fail(
                "LOCK_UNUSED",
                f"{pin.where}: {name}=={pin.version} is pinned but nothing in pyproject.toml "
                "(dependencies or build-system) needs it",
            )
        dev = locks.dev.get(name)
        if dev is None:
            fail("LOCK_DISAGREE", f"{name} is in {RUNTIME_LOCK} but not in {DEV_LOCK}")
        elif dev.version != pin.version:
            fail(
                "LOCK_DISAGREE",
                f"{name}: {RUNTIME_LOCK} pins {pin.version}, {DEV_LOCK} pins {dev.version}",
            )


def _check_installed(
    locks: Locks, installed: Mapping[str, str], project: str, fail: Callable[[str, str], None]
) -> None:
    """Every dev-lock pin is installed at its version; nothing else is installed (but the
    project itself and pins of the optional locks)."""
    for name, pin in sorted(locks.dev.items()):
        if not pin.applies():
            continue
        have = installed.get(name)
        if have is None:
            fail("NOT_INSTALLED", f"{name}=={pin.version} ({pin.where}) is not installed")
        elif have != pin.version:
            fail(
                "VERSION_MISMATCH", f"{name} {have} is installed but {pin.where} pins {pin.version}"
            )
    for name, version in sorted(installed.items()):
        if name == project or name in locks.dev:
            continue
        opt = locks.optional.get(name)
        if opt is None:
            fail("EXTRA_INSTALLED", f"{name} {version} is installed but no lock pins it")
        elif opt.version != version:
            fail(
                "VERSION_MISMATCH",
                f"{name} {version} is installed but {opt.where} pins {opt.version}",
            )


def check_consistency(
    pyproject: Mapping[str, Any],
    locks: Locks,
    installed: Mapping[str, str],
    requires: Callable[[str], list[str]] = installed_requires,
    project: str = PROJECT,
) -> list[Finding]:
    """pyproject.toml, the locks and the installed environment agree."""
    out: list[Finding] = []

    def fail(code: str, msg: str) -> None:
        out.append(Finding("consistency", code, msg))

    deps = list(pyproject.get("project", {}).get("dependencies", []))
    deps += list(pyproject.get("build-system", {}).get("requires", []))
    _check_pyproject(deps, locks, fail)
    need, bad = _closure(deps, requires)
    out += bad
    _check_runtime_lock(need, locks, project, fail)
    _check_installed(locks, installed, project, fail)
    return out


# -- SBOM -----------------------------------------------------------------------------------


def check_sbom(sbom_text: str, pins: Mapping[str, Pin], validate: bool = True) -> list[Finding]:
    """The SBOM names every (applicable) pin of ``pins`` at its pinned version."""
    out: list[Finding] = []
    if validate:
        from nightcore.errors import NightCoreError
        from nightcore.evidence.sbom import validate_sbom

        try:
            validate_sbom(sbom_text)
        except NightCoreError as exc:
            return [Finding("sbom", "SBOM_INVALID", exc.message[:300])]
    try:
        doc = json.loads(sbom_text)
        comps = {
            normalize(str(c["name"])): str(c.get("version", ""))
            for c in doc.get("components", [])
            if c.get("type") == "library"
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return [Finding("sbom", "SBOM_INVALID", "the SBOM is not CycloneDX JSON with components")]
    for name, pin in sorted(pins.items()):
        if not pin.applies():
            continue
        got = comps.get(name)
        if got is None:
            out.append(
                Finding("sbom", "SBOM_MISMATCH", f"{name}=={pin.version} is not in the SBOM")
            )
        elif got != pin.version:
            out.append(
                Finding(
                    "sbom", "SBOM_MISMATCH", f"the SBOM has {name} {got}, the lock {pin.version}"
                )
            )
    return out


def environment_sbom() -> str:
    from nightcore.evidence.sbom import build_sbom

    return build_sbom(None)


# -- licences -------------------------------------------------------------------------------

_SPDX_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9.+:-]+)")


def _tokens(expr: str) -> list[str] | None:
    out: list[str] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _SPDX_TOKEN.match(expr, pos)
        if m is None:
            return None
        out.append(m.group(1))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


def spdx_allowed(expr: str, allowed: set[str], exceptions: set[str]) -> bool | None:
    """Whether an SPDX expression is acceptable: ``A OR B`` when either is, ``A AND B`` when
    both are, ``A WITH E`` when both are allowed. None when it is not an SPDX expression."""
    toks = _tokens(expr)
    if not toks:
        return None
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def atom() -> bool:
        nonlocal pos
        t = peek()
        if t is None or t.upper() in ("AND", "OR", "WITH", ")"):
            raise ValueError(t)
        pos += 1
        if t == "(":
            v = or_expr()
            if peek() != ")":
                raise ValueError("(")
            pos += 1
            return v
        ok = t.lower() in allowed
        if (peek() or "").upper() == "WITH":
            pos += 1
            e = peek()
            if e is None or e in "()":
                raise ValueError("WITH")
            pos += 1
            ok = ok and e.lower() in exceptions
        return ok

    def and_expr() -> bool:
        nonlocal pos
        v = atom()
        while (peek() or "").upper() == "AND":
            pos += 1
            v = atom() and v
        return v

    def or_expr() -> bool:
        nonlocal pos
        v = and_expr()
        while (peek() or "").upper() == "OR":
            pos += 1
            v = and_expr() or v
        return v

    try:
        v = or_expr()
    except ValueError:
        return None
    return v if pos == len(toks) else None


@dataclass(frozen=True)
class LicencePolicy:
    allow: set[str]
    exceptions_spdx: set[str]  # SPDX licence exceptions (``WITH``) allowed
    aliases: dict[str, str]  # free-text licence / classifier name -> SPDX id
    packages: dict[str, dict[str, Any]]  # normalized name -> reviewed exception entry


def load_licence_policy(path: Path, today: dt.date) -> tuple[LicencePolicy, list[Finding]]:
    return parse_licence_policy(path.read_text(), path.name, today)


def parse_licence_policy(
    text: str, filename: str, today: dt.date
) -> tuple[LicencePolicy, list[Finding]]:
    doc = tomllib.loads(text)
    bad: list[Finding] = []
    pkgs: dict[str, dict[str, Any]] = {}
    for e in doc.get("exception", []):
        name = normalize(str(e.get("package", "")))
        miss = [k for k in ("package", "licence", "reason", "reviewed", "expires") if not e.get(k)]
        if miss:
            bad.append(
                Finding(
                    "licences",
                    "POLICY_INVALID",
                    f"{filename}: exception {name or '?'} lacks {', '.join(miss)}",
                )
            )
            continue
        if not isinstance(e["expires"], dt.date) or e["expires"] < today:
            bad.append(
                Finding(
                    "licences",
                    "EXCEPTION_EXPIRED",
                    f"{filename}: the exception for {name} expired on {e['expires']}; "
                    "review it again",
                )
            )
            continue
        pkgs[name] = e
    policy = LicencePolicy(
        allow={str(a).lower() for a in doc.get("allow", [])},
        exceptions_spdx={str(a).lower() for a in doc.get("allow_exceptions", [])},
        aliases={str(k): str(v) for k, v in doc.get("aliases", {}).items()},
        packages=pkgs,
    )
    return policy, bad


def licence_of(meta: Any, aliases: Mapping[str, str]) -> tuple[str, str] | None:
    """(where it came from, SPDX expression) from a distribution's metadata, or None."""
    expr = meta.get("License-Expression")
    if expr:
        return "License-Expression", str(expr).strip()
    text = str(meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 100 and text.upper() != "UNKNOWN":
        if text in aliases:
            return "License", aliases[text]
        if _tokens(text) is not None and spdx_allowed(text, set(), set()) is not None:
            return "License", text
    names = []
    for c in meta.get_all("Classifier") or []:
        parts = [p.strip() for p in str(c).split("::")]
        if parts[0] != "License" or parts[-1] in ("OSI Approved", "DFSG approved"):
            continue
        names.append(aliases.get(parts[-1], ""))
    if names and all(names):
        # several licence classifiers: each must be acceptable (conservative).
        return "Classifier", " AND ".join(dict.fromkeys(names))
    return None


def check_licences(dists: Iterable[tuple[str, str, Any]], policy: LicencePolicy) -> list[Finding]:
    """``dists``: (name, version, metadata message)."""
    out: list[Finding] = []
    for raw_name, version, meta in sorted(dists, key=lambda d: normalize(d[0])):
        name = normalize(raw_name)
        if name in policy.packages:
            continue
        found = licence_of(meta, policy.aliases)
        if found is None:
            out.append(
                Finding(
                    "licences",
                    "LICENCE_UNKNOWN",
                    f"{name} {version}: no licence this gate can read (no License-Expression, an "
                    f"unrecognised License, no licence classifier); review it and add an exception "
                    f"to {LICENCES_FILE}",
                )
            )
            continue
        where, expr = found
        ok = spdx_allowed(expr, policy.allow, policy.exceptions_spdx)
        if not ok:
            out.append(
                Finding(
                    "licences",
                    "LICENCE_NOT_ALLOWED" if ok is False else "LICENCE_UNKNOWN",
                    f"{name} {version}: {expr!r} (from {where}) is not on the allow-list in "
                    f"{LICENCES_FILE}",
                )
            )
    return out


def installed_metadata() -> list[tuple[str, str, Any]]:
    from importlib import metadata

    seen: set[str] = set()
    out = []
    for d in metadata.distributions():
        name = str(d.metadata["Name"])
        if normalize(name) not in seen:
            seen.add(normalize(name))
            out.append((name, str(d.version), d.metadata))
    return out


# -- vulnerabilities -------------------------------------------------------------------------


class Unreachable(Exception):
    """The vulnerability database could not be reached."""


@dataclass(frozen=True)
class Vuln:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]


def run_pip_audit(locks: list[Path], timeout: int = 30) -> dict[str, Any]:
    """pip-audit's JSON report over ``locks`` (PyPI's vulnerability service)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        cmd = [
            sys.executable,
            "-m",
            "pip_audit",
            "--require-hashes",
            "--disable-pip",
            "-s",
            "pypi",
            "-f",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            str(timeout),
            "-o",
            str(out),
        ]
        for p in locks:
            cmd += ["-r", str(p)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if out.is_file() and p.returncode in (0, 1):
            try:
                report: dict[str, Any] = json.loads(out.read_text())
                return report
            except ValueError:
                pass
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        err = tail[0][:300]
        if re.search(r"Connect|Proxy|Timeout|Max retries|resolve|unreachable|SSL", p.stderr):
            raise Unreachable(f"pip-audit could not reach PyPI's vulnerability service: {err}")
        raise RuntimeError(f"pip-audit failed (exit {p.returncode}): {err}")


def fetch_project_json(name: str, timeout: float = 30) -> dict[str, Any]:
    """PyPI's JSON API for a project (``/pypi/NAME/json``)."""
    url = PYPI_JSON.format(name=name)
    if not url.startswith("https://"):
        raise ValueError(url)
    req = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - fixed https URL
            doc: dict[str, Any] = json.loads(resp.read(32 << 20))
            return doc
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise Unreachable(f"PyPI answered {exc.code} for {name}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(f"PyPI's JSON API could not be reached for {name}: {exc}") from None


def _vulns_from_pypi(name: str, version: str, entries: Iterable[Mapping[str, Any]]) -> list[Vuln]:
    """PyPI's ``vulnerabilities`` entries as pip-audit reads them (withdrawn ones dropped)."""
    return [
        Vuln(
            name,
            version,
            str(v["id"]),
            tuple(map(str, v.get("aliases") or ())),
            tuple(map(str, v.get("fixed_in") or ())),
        )
        for v in entries
        if not v.get("withdrawn")
    ]


def collect_vulns(
    report: Mapping[str, Any],
    pins: Mapping[str, Pin],
    project_json: Callable[[str], dict[str, Any]] = fetch_project_json,
) -> tuple[list[Vuln], list[Pin]]:
    """Known vulnerabilities of the pins, and the pins no database could answer for.

    pip-audit skips a dependency its per-version query (``/pypi/NAME/VERSION/json``) gets a 404
    for. Where a project's latest release is the pinned version, PyPI's project document
    (``/pypi/NAME/json``) lists that release's vulnerabilities (the same database): it is used.
    Any other skipped pin is unaudited.
    """
    vulns: list[Vuln] = []
    skipped: list[str] = []
    for dep in report.get("dependencies", []):
        name = normalize(str(dep.get("name", "")))
        if "skip_reason" in dep:
            skipped.append(name)
            continue
        for v in dep.get("vulns", []):
            vulns.append(
                Vuln(
                    name,
                    str(dep.get("version", "")),
                    str(v["id"]),
                    tuple(map(str, v.get("aliases") or ())),
                    tuple(map(str, v.get("fix_versions") or ())),
                )
            )
    unaudited: list[Pin] = []
    names = sorted(n for n in set(skipped) if n in pins)
    with ThreadPoolExecutor(8) as pool:
        docs = list(pool.map(project_json, names))
    for name, doc in zip(names, docs, strict=True):
        pin = pins[name]
        latest = str(doc.get("info", {}).get("version", "")) if doc else ""
        if latest and latest == pin.version:
            vulns += _vulns_from_pypi(name, pin.version, doc.get("vulnerabilities") or [])
        else:
            unaudited.append(pin)
    return vulns, unaudited


def load_ignores(
    path: Path, today: dt.date
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Finding]]:
    """The reviewed ``[[ignore]]`` (vulnerability ids) and ``[[unaudited]]`` (pins no database
    answers for) entries still in force; expired or incomplete ones are findings."""
    return parse_ignores(path.read_text() if path.is_file() else "", path.name, today)


def parse_ignores(
    text: str, filename: str, today: dt.date
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Finding]]:
    doc = tomllib.loads(text)
    bad: list[Finding] = []
    kept: dict[str, list[dict[str, Any]]] = {"ignore": [], "unaudited": []}
    need = {
        "ignore": ("id", "package", "reason", "added", "expires"),
        "unaudited": ("package", "version", "reason", "added", "expires"),
    }
    for kind, fields in need.items():
        for e in doc.get(kind, []):
            label = f"{filename}: [[{kind}]] {e.get('id') or e.get('package') or '?'}"
            miss = [k for k in fields if not e.get(k)]
            if miss:
                bad.append(Finding("vulns", "IGNORE_INVALID", f"{label} lacks {', '.join(miss)}"))
            elif not isinstance(e["expires"], dt.date) or not isinstance(e["added"], dt.date):
                bad.append(
                    Finding(
                        "vulns",
                        "IGNORE_INVALID",
                        f"{label}: added and expires must be TOML dates (YYYY-MM-DD)",
                    )
                )
            elif e["expires"] < today:
                bad.append(
                    Finding(
                        "vulns",
                        "IGNORE_EXPIRED",
                        f"{label} expired on {e['expires']}: review it again",
                    )
                )
            else:
                kept[kind].append(e)
    return kept["ignore"], kept["unaudited"], bad


def judge_vulns(
    vulns: Iterable[Vuln],
    unaudited: Iterable[Pin],
    ignores: list[dict[str, Any]],
    accepted_unaudited: list[dict[str, Any]],
) -> list[Finding]:
    out: list[Finding] = []
    for v in sorted(vulns, key=lambda v: (v.package, v.id)):
        ids = {v.id, *v.aliases}
        if any(normalize(str(e["package"])) == v.package and str(e["id"]) in ids for e in ignores):
            continue
        fix = ", ".join(v.fix_versions) or "none published"
        out.append(
            Finding(
                "vulns",
                "VULNERABLE",
                f"{v.package} {v.version}: {v.id}"
                + (f" ({', '.join(v.aliases)})" if v.aliases else "")
                + f"; fixed in {fix}",
            )
        )
    for pin in sorted(unaudited, key=lambda p: p.name):
        if any(
            normalize(str(e["package"])) == pin.name and str(e["version"]) == pin.version
            for e in accepted_unaudited
        ):
            continue
        out.append(
            Finding(
                "vulns",
                "UNAUDITED",
                f"{pin.name}=={pin.version}: PyPI's vulnerability service has no answer for this "
                "version (pip-audit skipped it and it is not the project's latest release)",
            )
        )
    return out


# -- driver ---------------------------------------------------------------------------------


def run_gates(root: Path, gates: Iterable[str], today: dt.date) -> list[Finding]:
    locks, findings = read_locks(root)
    gates = set(gates)
    if "consistency" in gates:
        pyproject = tomllib.loads((root / "pyproject.toml").read_text())
        findings += check_consistency(pyproject, locks, installed_distributions())
    if "sbom" in gates:
        findings += check_sbom(environment_sbom(), {**locks.dev, **locks.runtime})
    if "licences" in gates:
        policy, bad = load_licence_policy(root / LICENCES_FILE, today)
        findings += bad + check_licences(installed_metadata(), policy)
    if "vulns" in gates:
        ignores, accepted, bad = load_ignores(root / IGNORES_FILE, today)
        findings += bad
        all_pins = {**locks.optional, **locks.dev, **locks.runtime}
        try:
            report = run_pip_audit([p for p in locks.paths if p.name != RUNTIME_LOCK])
            vulns, unaudited = collect_vulns(report, all_pins)
        except Unreachable as exc:
            findings.append(Finding("vulns", "VULN_DB_UNREACHABLE", str(exc)))
        except RuntimeError as exc:
            findings.append(Finding("vulns", "AUDIT_TOOL_FAILED", str(exc)))
        else:
            findings += judge_vulns(vulns, unaudited, ignores, accepted)
    return findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="audit_deps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    ap.add_argument("--only", action="append", choices=GATES, help="run only these gates")
    ap.add_argument("--skip", action="append", choices=GATES, default=[], help="skip a gate")
    ap.add_argument(
        "--today",
        type=dt.date.fromisoformat,
        default=dt.datetime.now(dt.UTC).date(),
        help="the date expiry is judged against (default: today, UTC)",
    )
    ap.add_argument(
        "--new-unaudited",
        choices=("fail", "warn"),
        default="fail",
        help="a pin that became unauditable because its project released a newer version "
        "since the lock (UNAUDITED, not in the reviewed list): fail (make audit), or print "
        "it as a warning (make test: CI must not turn red on a third party's release day)",
    )
    args = ap.parse_args(argv)
    gates = [g for g in (args.only or GATES) if g not in args.skip]
    findings = run_gates(args.root, gates, args.today)
    if args.new_unaudited == "warn":
        for f in findings:
            if f.code == "UNAUDITED":
                print(f"{f} [warning: review it with make audit]", file=sys.stderr)
        findings = [f for f in findings if f.code != "UNAUDITED"]
    for f in findings:
        print(f, file=sys.stderr)
    unreachable = any(f.code == "VULN_DB_UNREACHABLE" for f in findings)
    status = "FAILED" if findings else "ok"
    print(f"make audit: {', '.join(gates)}: {len(findings)} finding(s): {status}")
    if not findings:
        return EXIT_OK
    if unreachable and all(f.code == "VULN_DB_UNREACHABLE" for f in findings):
        return EXIT_UNREACHABLE
    return EXIT_FINDINGS


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
