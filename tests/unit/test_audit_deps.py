"""tools/audit_deps.py (``make audit``): each gate fails on hostile input with a clear message,
and the gates that need no network pass on this tree."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tomllib
from email.message import Message
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 12, 5)
H1 = "sha256:" + "a" * 64
H2 = "sha256:" + "b" * 64


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", REPO / "tools" / "audit_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_deps"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ad: Any = _load()


def codes(findings: list[Any]) -> list[str]:
    return [f.code for f in findings]


def lock(*lines: str) -> str:
    return "--extra-index-url file:///opt/pypi/simple\n\n" + "\n".join(lines) + "\n"


def pinned(name: str, version: str) -> str:
    return f"{name}=={version} \\\n    --hash={H1} \\\n    --hash={H2}\n    # via x"


# -- pins -----------------------------------------------------------------------------------


def test_the_real_locks_are_all_hash_pinned() -> None:
    for name in ("requirements.lock", "requirements-dev.lock", "requirements-bench.lock"):
        pins, bad = ad.parse_lock((REPO / name).read_text(), name)
        assert bad == [], bad
        assert pins and all(p.version and p.hashes for p in pins.values())
    pins, _ = ad.parse_lock((REPO / "requirements.lock").read_text(), "requirements.lock")
    assert pins["wasmtime"].version == "50.0.1"


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        (f"evil>=1.0 --hash={H1}", "UNPINNED", "evil is not pinned with =="),
        ("evil", "UNPINNED", "evil is not pinned"),
        (f"evil==1.* --hash={H1}", "UNPINNED", "evil is not pinned"),
        (f"evil @ https://example.invalid/evil.whl --hash={H1}", "UNPINNED", "evil"),
        ("evil==1.0", "HASH_MISSING", "evil==1.0 has no --hash"),
        ("evil==1.0 --hash=sha256:1234", "HASH_MISSING", "is not a hash"),
        ("evil==1.0 --hash=md5:" + "a" * 32, "HASH_MISSING", "is not a hash"),
        ("-r other.txt", "LOCK_INCLUDE", "'-r' is not allowed"),
        ("-e ./local", "LOCK_INCLUDE", "'-e' is not allowed"),
    ],
)
def test_a_hostile_lock_line_is_named(line: str, code: str, words: str) -> None:
    text = lock(pinned("good", "1.0"), line)
    pins, bad = ad.parse_lock(text, "requirements.lock")
    assert codes(bad) == [code]
    msg = str(bad[0])
    assert msg.startswith(f"audit[{code}] pins: requirements.lock:"), msg
    assert words in msg, msg
    assert "good" in pins


def test_a_duplicate_pin_fails() -> None:
    _, bad = ad.parse_lock(lock(pinned("a", "1"), pinned("A", "2")), "x.lock")
    assert codes(bad) == ["LOCK_DUPLICATE"]


def _copy_tree(tmp: Path) -> Path:
    root = tmp / "repo"
    root.mkdir()
    for name in ("pyproject.toml", "requirements.lock", "requirements-dev.lock"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "supply-chain", root / "supply-chain")
    return root


def _run_tool(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    import os

    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "audit_deps.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )


def test_make_audit_fails_on_an_injected_unpinned_dependency(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    ok = _run_tool(root, "--only", "pins")
    assert ok.returncode == 0, ok.stderr
    with (root / "requirements.lock").open("a") as fh:
        fh.write("requests>=2\n")
    p = _run_tool(root, "--only", "pins")
    assert p.returncode == 1
    assert "audit[UNPINNED] pins: requirements.lock:" in p.stderr
    assert "requests is not pinned with ==" in p.stderr
    assert "Traceback" not in p.stderr


# -- consistency ----------------------------------------------------------------------------


def _locks(runtime: list[str], dev: list[str], optional: list[str] | None = None) -> Any:
    locks = ad.Locks()
    locks.runtime, _ = ad.parse_lock(lock(*runtime), "requirements.lock")
    locks.dev, _ = ad.parse_lock(lock(*dev), "requirements-dev.lock")
    locks.optional, _ = ad.parse_lock(lock(*(optional or [])), "requirements-bench.lock")
    return locks


PYPROJECT: dict[str, Any] = {
    "build-system": {"requires": ["setuptools>=68"]},
    "project": {"dependencies": ["alpha>=1", "beta[x]==2.0", "gamma; sys_platform == 'nope'"]},
}
REQUIRES = {"alpha": ["delta>=0.1"], "beta": ["epsilon; extra == 'x'", "zeta; extra == 'y'"]}
RUNTIME = [
    pinned("alpha", "1.5"),
    pinned("beta", "2.0"),
    pinned("delta", "0.3"),
    pinned("epsilon", "4"),
    pinned("setuptools", "84"),
]
DEV = [*RUNTIME, pinned("pytest", "9")]
INSTALLED = {"alpha": "1.5", "beta": "2.0", "delta": "0.3", "epsilon": "4", "setuptools": "84"}
INSTALLED |= {"pytest": "9", "nightcore": "0.1.0"}


def consistency(
    runtime: list[str] = RUNTIME,
    dev: list[str] = DEV,
    installed: dict[str, str] = INSTALLED,
    pyproject: dict[str, Any] = PYPROJECT,
    optional: list[str] | None = None,
) -> list[Any]:
    return list(
        ad.check_consistency(
            pyproject,
            _locks(runtime, dev, optional),
            installed,
            lambda n: REQUIRES.get(n, []),
        )
    )


def test_an_agreeing_environment_passes() -> None:
    assert consistency() == []


def test_an_extra_installed_package_fails_by_name() -> None:
    bad = consistency(installed={**INSTALLED, "sneaky": "6.6"})
    assert codes(bad) == ["EXTRA_INSTALLED"]
    assert "sneaky 6.6 is installed but no lock pins it" in str(bad[0])
    # ... unless an optional lock (bench) pins it at that version
    assert (
        consistency(installed={**INSTALLED, "sneaky": "6.6"}, optional=[pinned("sneaky", "6.6")])
        == []
    )
    bad = consistency(installed={**INSTALLED, "sneaky": "6.7"}, optional=[pinned("sneaky", "6.6")])
    assert codes(bad) == ["VERSION_MISMATCH"]


def test_a_missing_or_drifted_install_fails() -> None:
    gone = {k: v for k, v in INSTALLED.items() if k != "pytest"}
    bad = consistency(installed=gone)
    assert codes(bad) == ["NOT_INSTALLED"] and "pytest==9" in str(bad[0])
    bad = consistency(installed={**INSTALLED, "delta": "0.4"})
    assert codes(bad) == ["VERSION_MISMATCH"]
    assert "delta 0.4 is installed but requirements-dev.lock" in str(bad[0])


def test_a_pyproject_dependency_missing_from_the_lock_fails() -> None:
    runtime = [r for r in RUNTIME if not r.startswith("alpha")]
    bad = consistency(runtime=runtime)
    assert "NOT_IN_LOCK" in codes(bad)
    assert any("pyproject.toml needs alpha" in str(f) for f in bad)


def test_a_transitive_dependency_missing_from_the_lock_fails() -> None:
    runtime = [r for r in RUNTIME if not r.startswith("delta")]
    bad = consistency(runtime=runtime)
    assert codes(bad)[0] == "NOT_IN_LOCK"
    assert "delta (needed by alpha) is not pinned in requirements.lock" in str(bad[0])


def test_a_pin_outside_the_pyproject_specifier_fails() -> None:
    pyproject = {**PYPROJECT, "project": {"dependencies": ["alpha>=2", "beta[x]==2.0"]}}
    bad = consistency(pyproject=pyproject)
    assert codes(bad) == ["SPEC_MISMATCH"]
    assert "alpha==1.5, outside pyproject.toml's alpha>=2" in str(bad[0])


def test_a_pin_nothing_needs_fails() -> None:
    runtime = [*RUNTIME, pinned("stowaway", "1")]
    bad = consistency(
        runtime=runtime,
        dev=[*DEV, pinned("stowaway", "1")],
        installed={**INSTALLED, "stowaway": "1"},
    )
    assert codes(bad) == ["LOCK_UNUSED"]
    assert "stowaway==1 is pinned but nothing in pyproject.toml" in str(bad[0])


def test_runtime_and_dev_locks_must_agree() -> None:
    dev = [pinned("alpha", "1.6"), *DEV[1:]]
    bad = consistency(dev=dev, installed={**INSTALLED, "alpha": "1.6"})
    assert codes(bad) == ["LOCK_DISAGREE"]


def test_this_tree_passes_the_offline_gates() -> None:
    # What `make audit` runs, minus the network (the vulnerability gate is tested below).
    assert ad.main(["--skip", "vulns"]) == 0


# -- SBOM -----------------------------------------------------------------------------------


def test_the_sbom_must_name_every_runtime_pin() -> None:
    pins, _ = ad.parse_lock(lock(pinned("alpha", "1.5"), pinned("beta", "2.0")), "r.lock")
    sbom = {"components": [{"type": "library", "name": "Alpha", "version": "1.5"}]}
    bad = ad.check_sbom(json.dumps(sbom), pins, validate=False)
    assert codes(bad) == ["SBOM_MISMATCH"] and "beta==2.0 is not in the SBOM" in str(bad[0])
    sbom["components"].append({"type": "library", "name": "beta", "version": "2.1"})
    bad = ad.check_sbom(json.dumps(sbom), pins, validate=False)
    assert "the SBOM has beta 2.1, the lock 2.0" in str(bad[0])
    assert codes(ad.check_sbom("{", pins, validate=False)) == ["SBOM_INVALID"]
    assert codes(ad.check_sbom('{"bomFormat": 1}', pins)) == ["SBOM_INVALID"]


# -- licences -------------------------------------------------------------------------------


def meta(**fields: Any) -> Message:
    m = Message()
    for k, v in fields.items():
        for item in v if isinstance(v, list) else [v]:
            m[k.replace("_", "-")] = item
    return m


def policy(exceptions: str = "") -> Any:
    """The committed allow-list, with ``exceptions`` instead of its own."""
    text = (REPO / "supply-chain" / "licences.toml").read_text()
    return ad.parse_licence_policy(
        text.split("[[exception]]", 1)[0] + exceptions, "licences.toml", TODAY
    )


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"License_Expression": "MIT"}, True),
        ({"License_Expression": "Apache-2.0 OR GPL-3.0-only"}, True),
        ({"License_Expression": "Apache-2.0 AND GPL-3.0-only"}, False),
        ({"License_Expression": "Apache-2.0 WITH LLVM-exception"}, True),
        ({"License_Expression": "GPL-2.0-only WITH Classpath-exception-2.0"}, False),
        ({"License_Expression": "(MIT OR AGPL-3.0-only) AND BSD-3-Clause"}, True),
        ({"License": "Apache Software License"}, True),
        ({"License": "GPL-3.0-or-later"}, False),
        ({"Classifier": ["License :: OSI Approved :: MIT License"]}, True),
        (
            {
                "License": "Dual License",
                "Classifier": [
                    "License :: OSI Approved :: BSD License",
                    "License :: OSI Approved :: Apache Software License",
                ],
            },
            True,
        ),
    ],
)
def test_licence_expressions(fields: dict[str, Any], ok: bool) -> None:
    p, _ = policy()
    bad = ad.check_licences([("pkg", "1.0", meta(**fields))], p)
    assert (bad == []) is ok, bad
    if not ok:
        assert codes(bad) == ["LICENCE_NOT_ALLOWED"]
        assert "pkg 1.0:" in str(bad[0]) and "is not on the allow-list" in str(bad[0])


def test_an_unknown_licence_fails_with_the_package_name() -> None:
    p, _ = policy()
    for fields in (
        {},
        {"License": "UNKNOWN"},
        {"License": "Copyright (c) someone\nAll rights reserved"},
        {"Classifier": ["License :: Other/Proprietary License"]},
        {"License_Expression": "MIT OR"},
    ):
        bad = ad.check_licences([("Mystery_Pkg", "0.1", meta(**fields))], p)
        assert codes(bad) == ["LICENCE_UNKNOWN"], (fields, bad)
        assert "mystery-pkg 0.1" in str(bad[0])


def test_a_reviewed_exception_admits_a_package_until_it_expires() -> None:
    entry = (
        '[[exception]]\npackage = "Mystery_Pkg"\nlicence = "BSD-3-Clause"\n'
        'reason = "upstream LICENSE file"\nreviewed = 2026-12-01\nexpires = {}\n'
    )
    p, bad = policy(entry.format("2027-01-01"))
    assert bad == []
    assert ad.check_licences([("mystery-pkg", "0.1", meta())], p) == []
    p, bad = policy(entry.format("2026-12-04"))
    assert codes(bad) == ["EXCEPTION_EXPIRED"] and "mystery-pkg expired on 2026-12-04" in str(
        bad[0]
    )
    assert codes(ad.check_licences([("mystery-pkg", "0.1", meta())], p)) == ["LICENCE_UNKNOWN"]
    _, bad = policy('[[exception]]\npackage = "x"\nlicence = "MIT"\n')
    assert codes(bad) == ["POLICY_INVALID"] and "lacks reason, reviewed, expires" in str(bad[0])


def test_every_installed_distribution_has_an_allowed_licence() -> None:
    p, bad = ad.load_licence_policy(REPO / "supply-chain" / "licences.toml", TODAY)
    assert bad == []
    assert ad.check_licences(ad.installed_metadata(), p) == []


# -- vulnerabilities ------------------------------------------------------------------------


PINS, _ = ad.parse_lock(
    lock(pinned("jinja2", "3.1.0"), pinned("idna", "3.20"), pinned("attrs", "26.1.0")), "d.lock"
)
REPORT = {
    "dependencies": [
        {
            "name": "jinja2",
            "version": "3.1.0",
            "vulns": [
                {
                    "id": "GHSA-h5c8-rqwp-cp95",
                    "aliases": ["CVE-2024-22195"],
                    "fix_versions": ["3.1.3"],
                }
            ],
        },
        {"name": "idna", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        {"name": "attrs", "skip_reason": "Dependency not found on PyPI and could not be audited"},
    ]
}
PROJECTS: dict[str, dict[str, Any]] = {
    "idna": {"info": {"version": "3.21"}, "vulnerabilities": []},
    "attrs": {
        "info": {"version": "26.1.0"},
        "vulnerabilities": [
            {"id": "PYSEC-2026-1", "aliases": ["CVE-2026-1"], "fixed_in": ["26.1.1"]},
            {"id": "PYSEC-2026-2", "aliases": [], "fixed_in": [], "withdrawn": "2026-11-01"},
        ],
    },
}


def ignores(text: str) -> tuple[Any, Any, Any]:
    result: tuple[Any, Any, Any] = ad.parse_ignores(text, "vulnerability-ignores.toml", TODAY)
    return result


def test_known_vulnerabilities_fail_with_package_id_and_fix() -> None:
    vulns, unaudited = ad.collect_vulns(REPORT, PINS, lambda n: PROJECTS[n])
    assert [p.name for p in unaudited] == ["idna"]
    bad = ad.judge_vulns(vulns, unaudited, [], [])
    text = [str(f) for f in bad]
    assert text == [
        "audit[VULNERABLE] vulns: attrs 26.1.0: PYSEC-2026-1 (CVE-2026-1); fixed in 26.1.1",
        "audit[VULNERABLE] vulns: jinja2 3.1.0: GHSA-h5c8-rqwp-cp95 (CVE-2024-22195); "
        "fixed in 3.1.3",
        "audit[UNAUDITED] vulns: idna==3.20: PyPI's vulnerability service has no answer for this "
        "version (pip-audit skipped it and it is not the project's latest release)",
    ]


def test_the_ignore_list_needs_reasons_and_expires() -> None:
    vulns, unaudited = ad.collect_vulns(REPORT, PINS, lambda n: PROJECTS[n])
    ign, acc, bad = ignores(
        '[[ignore]]\nid = "CVE-2024-22195"\npackage = "Jinja2"\nreason = "we never use the '
        'xmlattr filter"\nadded = 2026-12-01\nexpires = 2027-01-01\n'
        '[[ignore]]\nid = "PYSEC-2026-1"\npackage = "attrs"\nreason = "old"\n'
        "added = 2026-01-01\nexpires = 2026-06-01\n"
        '[[unaudited]]\npackage = "idna"\nversion = "3.20"\nreason = "behind latest"\n'
        "added = 2026-12-01\nexpires = 2027-01-01\n"
        '[[ignore]]\nid = "X-1"\npackage = "attrs"\nadded = 2026-12-01\nexpires = 2027-01-01\n'
    )
    assert codes(bad) == ["IGNORE_EXPIRED", "IGNORE_INVALID"]
    assert "PYSEC-2026-1 expired on 2026-06-01" in str(bad[0])
    assert "X-1 lacks reason" in str(bad[1])
    found = ad.judge_vulns(vulns, unaudited, ign, acc)
    # the jinja2 entry (matched by alias) and the idna entry hold; the expired one does not
    assert [str(f) for f in found] == [
        "audit[VULNERABLE] vulns: attrs 26.1.0: PYSEC-2026-1 (CVE-2026-1); fixed in 26.1.1"
    ]
    # an [[unaudited]] entry covers one version only: a re-pin must be reviewed again
    other = ad.Pin("idna", "3.19", (H1,), None, "x:1")
    assert codes(ad.judge_vulns([], [other], ign, acc)) == ["UNAUDITED"]


def test_the_committed_ignore_list_is_well_formed() -> None:
    doc = tomllib.loads((REPO / "supply-chain" / "vulnerability-ignores.toml").read_text())
    _, _, bad = ad.load_ignores(REPO / "supply-chain" / "vulnerability-ignores.toml", TODAY)
    assert bad == []
    for e in doc.get("unaudited", []):
        assert e["expires"] > e["added"]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
def test_an_unreachable_vulnerability_database_is_reported_never_passed(tmp_path: Path) -> None:
    # A real fault: every HTTPS request goes through a proxy on a closed loopback port.
    root = tmp_path / "repo"
    (root / "supply-chain").mkdir(parents=True)
    (root / "requirements.lock").write_text(lock(pinned("attrs", "26.1.0")))
    (root / "requirements-dev.lock").write_text(lock(pinned("attrs", "26.1.0")))
    proxy = f"http://127.0.0.1:{_closed_port()}"
    p = _run_tool(
        root,
        "--only",
        "vulns",
        env={"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": ""},
    )
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "audit[VULN_DB_UNREACHABLE] vulns: pip-audit could not reach PyPI" in p.stderr
    assert "Traceback" not in p.stderr
    assert "FAILED" in p.stdout


def test_make_test_warns_on_a_newly_unauditable_pin_and_still_fails_on_the_rest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A third party's release makes an older pin unauditable here (PyPI answers only for the
    latest release): ``make audit`` fails on it; ``make test`` (``--new-unaudited warn``)
    prints it and goes on. A known vulnerability fails either way. The gates' results are
    injected: an upstream release is not a fault a test can cause."""
    unaudited = ad.Finding("vulns", "UNAUDITED", "cryptography==50.0.2: no answer")
    vulnerable = ad.Finding("vulns", "VULNERABLE", "jinja2 3.1.0: GHSA-x")
    monkeypatch.setattr(ad, "run_gates", lambda *a: [unaudited])
    assert ad.main(["--only", "vulns"]) == ad.EXIT_FINDINGS
    capsys.readouterr()
    assert ad.main(["--only", "vulns", "--new-unaudited", "warn"]) == 0
    err = capsys.readouterr().err
    assert "audit[UNAUDITED]" in err and "warning" in err
    monkeypatch.setattr(ad, "run_gates", lambda *a: [unaudited, vulnerable])
    assert ad.main(["--only", "vulns", "--new-unaudited", "warn"]) == ad.EXIT_FINDINGS
