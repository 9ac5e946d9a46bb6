"""``make release`` (tools/release.py) and ``nightcore release verify``.

One real release of this repository's HEAD is built per session (two clean clones, compared
by SHA-256, signed with a release key generated here); each test tampers with a copy of it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nightcore import __version__, app
from nightcore.canonical import canonical
from nightcore.trust.envelope import sign_payload_with
from nightcore.trust.keys import GeneratedKey, load_file_signer
from tests.conftest import PASSPHRASE, run_cli_subprocess
from tests.e2e.test_json_schemas import check

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("release_tool", REPO / "tools" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["release_tool"] = module
    spec.loader.exec_module(module)
    return module


tool: Any = _load_tool()


@dataclass
class Release:
    dir: Path
    key: GeneratedKey
    other: GeneratedKey
    stdout: str


def _make_release(key: GeneratedKey, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "release.py"),
            "--key",
            str(key.private_path),
            "--out",
            str(out),
            "--source",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    keys = tmp_path_factory.mktemp("release-keys")
    key = app.keygen("release", keys, PASSPHRASE.encode())
    other = app.keygen("impostor", keys, PASSPHRASE.encode())
    out = tmp_path_factory.mktemp("release") / "dist"
    p = _make_release(key, out)
    assert p.returncode == 0, p.stderr
    return Release(out, key, other, p.stdout)


@pytest.fixture
def copy(release: Release, tmp_path: Path) -> Path:
    d = tmp_path / "release"
    shutil.copytree(release.dir, d)
    return d


SCHEMA = json.loads((REPO / "docs" / "schemas" / "release-verify.schema.json").read_text())


def verify(d: Path, key: Path) -> dict[str, Any]:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    r = run_cli_subprocess("release", "verify", str(d), "--key", str(key), "--json")
    assert "Traceback" not in r.err
    doc: dict[str, Any] = r.json()
    errors = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(doc)]
    assert not errors, errors  # docs/schemas/release-verify.schema.json, pass or fail
    assert r.code == (0 if doc["ok"] else 1), (r.code, doc)
    return doc


def failure(doc: dict[str, Any]) -> tuple[str, str]:
    bad = [c for c in doc["checks"] if not c["ok"]]
    assert len(bad) == 1 and not doc["ok"], doc
    return bad[0]["code"], bad[0]["detail"]


def artifact(d: Path, suffix: str) -> Path:
    (found,) = [p for p in d.iterdir() if p.name.endswith(suffix)]
    return found


def resign_sums(d: Path, key: GeneratedKey) -> None:
    """What an insider with the release key (or a buggy tool) could write."""
    from nightcore import release as rel

    signer = load_file_signer(str(key.private_path))
    sums = (d / rel.SUMS_FILE).read_bytes()
    (d / rel.SUMS_ENVELOPE).write_bytes(sign_payload_with(sums, signer, rel.SUMS_PAYLOAD_TYPE))


def statement(d: Path) -> dict[str, Any]:
    env = json.loads((d / "provenance.intoto.dsse.json").read_bytes())
    doc: dict[str, Any] = json.loads(base64.b64decode(env["payload"]))
    return doc


def sign_statement(d: Path, st: dict[str, Any], key: GeneratedKey) -> None:
    signer = load_file_signer(str(key.private_path))
    (d / "provenance.intoto.dsse.json").write_bytes(sign_payload_with(canonical(st), signer))


# -- the good release -----------------------------------------------------------------------


def test_a_release_verifies_offline_with_the_release_key(release: Release) -> None:
    doc = verify(release.dir, release.key.public_path)
    assert doc["code"] == "OK" and doc["version"] == __version__
    assert doc["key_id"] == release.key.key_id
    assert [c["check"] for c in doc["checks"]] == [
        "files",
        "checksum signature",
        "checksums",
        "provenance",
        "SBOM",
    ]
    names = sorted(a["name"] for a in doc["artifacts"])
    assert names == [
        f"nightcore-{__version__}-py3-none-any.whl",
        f"nightcore-{__version__}.cdx.json",
        f"nightcore-{__version__}.tar.gz",
    ]
    st = statement(release.dir)
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"]["gitCommit"] == doc["commit"]
    assert {d.get("name") for d in deps} >= {"pyproject.toml", "requirements.lock"}
    assert any(str(d.get("uri", "")).startswith("pkg:pypi/setuptools@") for d in deps)
    tools = st["predicate"]["runDetails"]["builder"]["version"]
    assert set(tools) >= {"python", "setuptools", "git"}
    # the human table, and the line the release tool printed for SHA256SUMS
    r = run_cli_subprocess(
        "release", "verify", str(release.dir), "--key", str(release.key.public_path)
    )
    assert r.code == 0 and f"release nightcore {__version__}" in r.err
    for line in (release.dir / "SHA256SUMS").read_text().splitlines():
        assert line in release.stdout.splitlines()


def test_the_release_sbom_lists_the_locked_runtime_dependencies(release: Release) -> None:
    sbom = json.loads(artifact(release.dir, ".cdx.json").read_text())
    comps = {c["name"]: c["version"] for c in sbom["components"]}
    assert comps["wasmtime"] == "50.0.1" and "cryptography" in comps
    assert "setuptools" not in comps and "pytest" not in comps
    assert sbom["metadata"]["component"]["name"] == "nightcore"


def test_archives_are_normalized(release: Release) -> None:
    epoch = int(
        statement(release.dir)["predicate"]["buildDefinition"]["internalParameters"][
            "SOURCE_DATE_EPOCH"
        ]
    )
    with zipfile.ZipFile(artifact(release.dir, ".whl")) as z:
        infos = z.infolist()
    names = [i.filename for i in infos]
    assert names[-1].endswith(".dist-info/RECORD")
    body = [n for n in names if ".dist-info/" not in n]
    assert body == sorted(body)
    stamp = max(time.gmtime(epoch)[:6], (1980, 1, 1, 0, 0, 0))
    # ZIP (DOS) times have 2-second resolution: an odd second is stored one second earlier.
    stamp = (*stamp[:5], stamp[5] - stamp[5] % 2)
    assert {i.date_time for i in infos} == {stamp}
    assert {(i.external_attr >> 16) & 0o7777 for i in infos} <= {0o644, 0o755}
    raw = artifact(release.dir, ".tar.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        members = t.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(epoch, 0, 0, "", "")}


def test_a_second_release_of_the_same_commit_has_identical_sums(
    release: Release, tmp_path: Path
) -> None:
    # Another key, another directory, another pair of clean clones: the same SHA256SUMS.
    commit = statement(release.dir)["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "release.py"),
            "--key",
            str(release.other.private_path),
            "--out",
            str(tmp_path / "again"),
            "--source",
            str(REPO),
            "--rev",
            commit["digest"]["gitCommit"],
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "again" / "SHA256SUMS").read_bytes() == (
        release.dir / "SHA256SUMS"
    ).read_bytes()


def test_make_release_refuses_a_non_empty_directory(release: Release, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.whl").write_bytes(b"x")
    p = _make_release(release.key, tmp_path / "out")
    assert p.returncode == 2 and "release[USAGE]:" in p.stderr and "not empty" in p.stderr


# -- tampering ------------------------------------------------------------------------------


def test_a_flipped_byte_in_the_wheel_fails(release: Release, copy: Path) -> None:
    wheel = artifact(copy, ".whl")
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_DIGEST_MISMATCH" and wheel.name in detail
    # The CLI's human form: one error line, exit 1.
    r = run_cli_subprocess("release", "verify", str(copy), "--key", str(release.key.public_path))
    assert r.code == 1 and f"error[RELEASE_DIGEST_MISMATCH]: {wheel.name}" in r.err


def test_rewritten_sums_for_a_tampered_wheel_fail(release: Release, copy: Path) -> None:
    from nightcore.release import format_sums, parse_sums, sha256_file

    wheel = artifact(copy, ".whl")
    with wheel.open("ab") as fh:
        fh.write(b"trailing")
    sums = parse_sums((copy / "SHA256SUMS").read_bytes())
    sums[wheel.name] = sha256_file(wheel)
    (copy / "SHA256SUMS").write_bytes(format_sums(sums))
    code, _ = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_SUMS_MISMATCH"


def test_a_removed_checksum_line_fails(release: Release, copy: Path) -> None:
    lines = (copy / "SHA256SUMS").read_text().splitlines(keepends=True)
    (copy / "SHA256SUMS").write_text("".join(lines[1:]))
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_SUMS_MISMATCH" and "SHA256SUMS" in detail
    # ... and re-signed (an insider): the file it no longer lists is named
    resign_sums(copy, release.key)
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_FILE_UNLISTED" and lines[0].split()[1] in detail


def test_the_wrong_key_fails(release: Release) -> None:
    code, detail = failure(verify(release.dir, release.other.public_path))
    assert code == "RELEASE_SIGNATURE_INVALID"
    assert release.other.key_id[:16] in detail and release.key.key_id[:16] in detail


def test_a_forged_statement_fails(release: Release, copy: Path) -> None:
    st = statement(copy)
    st["subject"][0]["digest"]["sha256"] = "0" * 64
    env = json.loads((copy / "provenance.intoto.dsse.json").read_bytes())
    env["payload"] = base64.b64encode(canonical(st)).decode()
    (copy / "provenance.intoto.dsse.json").write_bytes(canonical(env))
    code, _ = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_SIGNATURE_INVALID"
    sign_statement(copy, st, release.other)  # signed, by someone else
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_SIGNATURE_INVALID" and "provenance" in detail
    sign_statement(copy, st, release.key)  # signed by the release key, wrong digest
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_SUBJECT_MISMATCH" and st["subject"][0]["name"] in detail


@pytest.mark.parametrize(
    "edit",
    [
        lambda st: st.update(predicateType="https://slsa.dev/provenance/v0.2"),
        lambda st: st.update(_type="https://in-toto.io/Statement/v0.1"),
        lambda st: st["predicate"]["buildDefinition"].update(resolvedDependencies=[]),
        lambda st: st["predicate"]["runDetails"].pop("builder"),
        lambda st: st["predicate"]["buildDefinition"]["resolvedDependencies"][0].update(
            digest={"gitCommit": "not-a-commit"}
        ),
        lambda st: st.update(subject=[{"name": "x"}]),
    ],
)
def test_a_signed_statement_that_is_not_provenance_fails(
    release: Release, copy: Path, edit: Any
) -> None:
    st = statement(copy)
    edit(st)
    sign_statement(copy, st, release.key)
    code, _ = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_PROVENANCE_INVALID"


def test_files_outside_the_sums_or_missing_fail(release: Release, copy: Path) -> None:
    (copy / "extra.whl").write_bytes(b"PK")
    assert failure(verify(copy, release.key.public_path))[0] == "RELEASE_FILE_UNLISTED"
    (copy / "extra.whl").unlink()
    (copy / "link").symlink_to(copy / "SHA256SUMS")
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_MALFORMED" and "'link'" in detail
    (copy / "link").unlink()
    sbom = artifact(copy, ".cdx.json")
    sbom.unlink()
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_FILE_MISSING" and sbom.name in detail
    (copy / "SHA256SUMS.dsse.json").unlink()
    code, detail = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_FILE_MISSING" and "SHA256SUMS.dsse.json" in detail
    assert failure(verify(copy / "nope", release.key.public_path))[0] == "RELEASE_FILE_MISSING"


def test_an_invalid_sbom_fails(release: Release, copy: Path) -> None:
    from nightcore.release import format_sums, parse_sums, sha256_file

    sbom = artifact(copy, ".cdx.json")
    doc = json.loads(sbom.read_text())
    edits: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda d: d.update(bomFormat="SPDX"), "CycloneDX"),
        (lambda d: d["metadata"]["component"].update(version="9.9.9"), "does not describe"),
        (lambda d: d["metadata"]["component"].update(hashes=[]), "wheel's SHA-256"),
    ]
    for edit, words in edits:
        bad = json.loads(json.dumps(doc))
        edit(bad)
        sbom.write_text(json.dumps(bad))
        sums = parse_sums((copy / "SHA256SUMS").read_bytes())
        sums[sbom.name] = sha256_file(sbom)
        (copy / "SHA256SUMS").write_bytes(format_sums(sums))
        resign_sums(copy, release.key)
        st = statement(copy)
        for s in st["subject"]:
            if s["name"] == sbom.name:
                s["digest"]["sha256"] = sums[sbom.name]
        sign_statement(copy, st, release.key)
        code, detail = failure(verify(copy, release.key.public_path))
        assert code == "RELEASE_SBOM_INVALID" and words in detail, detail


@pytest.mark.parametrize(
    "sums",
    [
        b"",
        b"not a sums file\n",
        b"%s  ../etc/passwd\n" % (b"a" * 64),
        b"%s  SHA256SUMS\n" % (b"a" * 64),
        b"%s  a.whl\n%s  a.whl\n" % (b"a" * 64, b"b" * 64),
        b"%s  a.whl" % (b"a" * 64),
        b"%s  a.whl\n" % (b"A" * 64),
        "\u00e9".encode() + b"\n",
    ],
)
def test_a_malformed_signed_sums_file_fails(release: Release, copy: Path, sums: bytes) -> None:
    (copy / "SHA256SUMS").write_bytes(sums)
    resign_sums(copy, release.key)
    code, _ = failure(verify(copy, release.key.public_path))
    assert code == "RELEASE_SUMS_MALFORMED"


def test_a_bad_key_file_is_a_usage_error(release: Release, tmp_path: Path) -> None:
    r = run_cli_subprocess("release", "verify", str(release.dir), "--key", str(tmp_path / "none"))
    assert r.code == 2 and "error[USAGE]" in r.err
    (tmp_path / "bad.pem").write_text("not a key")
    r = run_cli_subprocess(
        "release", "verify", str(release.dir), "--key", str(tmp_path / "bad.pem")
    )
    assert r.code == 2 and "error[KEY_INVALID]" in r.err and "Traceback" not in r.err


# -- the build tool's own parts -------------------------------------------------------------


def test_two_builds_that_differ_are_named(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for d, content in ((a, b"one"), (b, b"two")):
        (d / "nightcore-1.0-py3-none-any.whl").write_bytes(content)
        (d / "nightcore-1.0.tar.gz").write_bytes(b"same")
    (a / "only-here.txt").write_bytes(b"")
    first = {p.name: p for p in a.iterdir()}
    second = {p.name: p for p in b.iterdir()}
    problems = tool.compare_builds(first, second)
    assert len(problems) == 2
    assert problems[0].startswith("nightcore-1.0-py3-none-any.whl differs between the two builds")
    assert problems[1] == "only-here.txt exists in only the first build"
    assert tool.compare_builds(first, first) == []


def test_normalizing_removes_order_time_and_mode_differences(tmp_path: Path) -> None:
    def wheel(path: Path, order: list[str], when: tuple[int, ...], mode: int) -> None:
        with zipfile.ZipFile(path, "w") as z:
            for name in order:
                zi = zipfile.ZipInfo(name, date_time=when)  # type: ignore[arg-type]
                zi.external_attr = mode << 16
                z.writestr(zi, name.encode())

    names = ["pkg/a.py", "pkg-1.dist-info/RECORD", "pkg/b.py", "pkg-1.dist-info/METADATA"]
    one, two = tmp_path / "one.whl", tmp_path / "two.whl"
    wheel(one, names, (2020, 1, 1, 0, 0, 0), 0o100664)
    wheel(two, list(reversed(names)), (2024, 5, 6, 7, 8, 10), 0o100600)
    assert one.read_bytes() != two.read_bytes()
    for w in (one, two):
        tool.normalize_wheel(w, 1_700_000_000)
    assert one.read_bytes() == two.read_bytes()
    with zipfile.ZipFile(one) as z:
        assert z.namelist() == [
            "pkg/a.py",
            "pkg/b.py",
            "pkg-1.dist-info/METADATA",
            "pkg-1.dist-info/RECORD",
        ]

    def sdist(path: Path, order: list[str], mtime: int, uid: int) -> None:
        with tarfile.open(path, "w:gz") as t:
            for name in order:
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.uid, ti.uname, ti.mode = 1, mtime, uid, "someone", 0o664
                t.addfile(ti, io.BytesIO(b"x"))

    s1, s2 = tmp_path / "one.tar.gz", tmp_path / "two.tar.gz"
    sdist(s1, ["p/a", "p/b"], 1, 1000)
    sdist(s2, ["p/b", "p/a"], 2, 0)
    for s in (s1, s2):
        tool.normalize_sdist(s, 1_700_000_000)
    assert s1.read_bytes() == s2.read_bytes()


# -- AUFS -----------------------------------------------------------------------------------


def test_a_verified_release_is_staged_as_the_aufs_runtime_target(
    release: Release, copy: Path, tmp_path: Path
) -> None:
    from nightcore.aufs.repo import AufsRepo, init_repo

    keys = [app.keygen(f"m{i}", tmp_path / "keys", PASSPHRASE.encode()) for i in (1, 2)]
    init_repo(tmp_path / "repo", [str(k.private_path) for k in keys], threshold=2)
    wheel = artifact(release.dir, ".whl")
    r = run_cli_subprocess(
        "release",
        "stage",
        str(release.dir),
        "--key",
        str(release.key.public_path),
        "--repo",
        str(tmp_path / "repo"),
        "--json",
    )
    assert r.code == 0, r.err
    out = check("release-stage", r.json())  # docs/schemas/release-stage.schema.json
    assert out["target"] == f"runtime/{wheel.name}" and out["version"] == __version__
    staged = AufsRepo(tmp_path / "repo").listed_target(out["target"])
    assert staged is not None
    assert staged.hashes["sha256"] == out["sha256"] == tool.sha256(wheel)
    assert staged.custom["nightcore"]["kind"] == "runtime"
    # A release that does not verify stages nothing.
    (tmp_path / "repo2").mkdir()
    init_repo(tmp_path / "repo2" / "r", [str(k.private_path) for k in keys], threshold=2)
    w = artifact(copy, ".whl")
    data = bytearray(w.read_bytes())
    data[100] ^= 0xFF
    w.write_bytes(bytes(data))
    r = run_cli_subprocess(
        "release",
        "stage",
        str(copy),
        "--key",
        str(release.key.public_path),
        "--repo",
        str(tmp_path / "repo2" / "r"),
    )
    assert r.code == 2 and "error[RELEASE_DIGEST_MISMATCH]" in r.err
    assert AufsRepo(tmp_path / "repo2" / "r").listed_target(f"runtime/{w.name}") is None
