"""``make release``: a reproducible, signed release of a commit (docs/supply-chain.md).

1. Clone the commit (default: HEAD of this repository) twice into fresh temporary directories
   with different paths, and build the sdist and the wheel in each with setuptools' PEP 517
   backend (``setuptools.build_meta``, pinned in the lock; no build isolation, no network),
   ``SOURCE_DATE_EPOCH`` = the commit time, a fixed umask per build (different ones, on
   purpose), ``PYTHONHASHSEED=0``, ``TZ=UTC``.
2. Normalize each archive: members sorted (a wheel's ``.dist-info`` last, ``RECORD`` at the
   end), every timestamp ``SOURCE_DATE_EPOCH``, owners root/root with no names, modes 0644 or
   0755, gzip header without name or time.
3. Compare the two builds by SHA-256; any difference fails, naming the file.
4. Write the release directory (``nightcore.release`` describes it): the artifacts, the
   CycloneDX SBOM of the wheel and its locked dependencies, ``SHA256SUMS``, the SLSA
   provenance statement, both signed (DSSE) with the release key.

Failures print ``release[CODE]: message``; exit 1 for a failed build or comparison, 2 for
bad usage.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# (build_meta rewrites sys.argv while it runs: the arguments are read first.)
BUILD = """
import os, sys
out, umask = sys.argv[1], int(sys.argv[2], 8)
os.umask(umask)
from setuptools import build_meta
build_meta.build_sdist(out)
build_meta.build_wheel(out)
"""


class ReleaseFailure(Exception):
    def __init__(self, code: str, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


def _audit_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "tools" / "audit_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("audit_deps", module)
    spec.loader.exec_module(module)
    return module


def git(*args: str, cwd: Path) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise ReleaseFailure("BUILD_FAILED", f"git {' '.join(args)}: {p.stderr.strip()[:300]}")
    return p.stdout.strip()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- normalization --------------------------------------------------------------------------


def _zip_order(name: str) -> tuple[int, str]:
    if name.endswith(".dist-info/RECORD"):
        return 2, name
    return (1 if ".dist-info/" in name else 0), name


def normalize_wheel(path: Path, epoch: int) -> None:
    """Rewrite a wheel with sorted members, fixed times and modes (contents and RECORD kept)."""
    date_time = max(time.gmtime(epoch)[:6], (1980, 1, 1, 0, 0, 0))
    with zipfile.ZipFile(path) as zin:
        members = [(i, zin.read(i)) for i in zin.infolist() if not i.is_dir()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zout:
        for info, data in sorted(members, key=lambda m: _zip_order(m[0].filename)):
            zi = zipfile.ZipInfo(info.filename, date_time=date_time)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.create_system = 3
            executable = (info.external_attr >> 16) & 0o111
            zi.external_attr = (0o100755 if executable else 0o100644) << 16
            zout.writestr(zi, data, compresslevel=9)
    path.write_bytes(buf.getvalue())


def normalize_sdist(path: Path, epoch: int) -> None:
    """Rewrite an sdist: sorted members, fixed mtime/owners/modes, a gzip header with no name
    or time."""
    with tarfile.open(path, "r:gz") as tin:
        members = []
        for m in tin.getmembers():
            if not (m.isfile() or m.isdir()):
                raise ReleaseFailure("BUILD_FAILED", f"{path.name}: {m.name} is not a file")
            fh = tin.extractfile(m) if m.isfile() else None
            members.append((m, fh.read() if fh is not None else b""))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m, data in sorted(members, key=lambda x: x[0].name):
            ti = tarfile.TarInfo(m.name)
            ti.type = m.type
            ti.mtime = epoch
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mode = 0o755 if m.isdir() or m.mode & 0o111 else 0o644
            ti.size = len(data) if m.isfile() else 0
            tout.addfile(ti, io.BytesIO(data) if m.isfile() else None)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    path.write_bytes(out.getvalue())


# -- building -------------------------------------------------------------------------------


def build_once(source: Path, commit: str, workdir: Path, epoch: int, umask: int) -> dict[str, Path]:
    """Clone ``commit`` of ``source`` into ``workdir`` and build it; the normalized artifacts."""
    clone = workdir / "source"
    git("clone", "-q", "--no-hardlinks", str(source), str(clone), cwd=workdir)
    git("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit, cwd=clone)
    out = workdir / "dist"
    out.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "SOURCE_DATE_EPOCH": str(epoch),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
    }
    p = subprocess.run(
        [sys.executable, "-I", "-c", BUILD, str(out), f"{umask:o}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-3:])
        raise ReleaseFailure("BUILD_FAILED", f"the build in {clone} failed: {tail[:400]}")
    artifacts = {f.name: f for f in sorted(out.iterdir())}
    for name, f in artifacts.items():
        if name.endswith(".whl"):
            normalize_wheel(f, epoch)
        elif name.endswith(".tar.gz"):
            normalize_sdist(f, epoch)
    kinds = sorted(n.rsplit(".", 1)[-1] for n in artifacts)
    if kinds != ["gz", "whl"]:
        raise ReleaseFailure("BUILD_FAILED", f"expected one sdist and one wheel, got {kinds}")
    return artifacts


def compare_builds(first: dict[str, Path], second: dict[str, Path]) -> list[str]:
    """One line per difference between two builds (file names and SHA-256)."""
    problems = []
    for name in sorted(set(first) | set(second)):
        if name not in first or name not in second:
            problems.append(
                f"{name} exists in only {'the first' if name in first else 'the second'} build"
            )
            continue
        a, b = sha256(first[name]), sha256(second[name])
        if a != b:
            problems.append(f"{name} differs between the two builds: sha256 {a} vs {b}")
    return problems


# -- the release directory ------------------------------------------------------------------


def _installed_record_digest(dist: str) -> str | None:
    from importlib import metadata

    try:
        text = metadata.distribution(dist).read_text("RECORD")
    except metadata.PackageNotFoundError:
        return None
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def materials(clone: Path, lock_pins: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in ("pyproject.toml", "requirements.lock", "requirements-dev.lock"):
        out.append({"name": name, "digest": {"sha256": sha256(clone / name)}})
    for dist in ("setuptools", "wheel"):
        pin = lock_pins.get(dist)
        if pin is None:
            continue
        entry: dict[str, Any] = {
            "uri": f"pkg:pypi/{dist}@{pin.version}",
            "digest": {"sha256": _installed_record_digest(dist) or ""},
            "annotations": {"digestOf": "installed RECORD", "lockHashes": list(pin.hashes)},
        }
        out.append(entry)
    return out


def _signer(key: str, public_key: str | None) -> Any:
    from nightcore.trust.keys import SslibSignerAdapter, load_file_signer, load_signer

    signer = load_file_signer(key)
    if signer is not None:
        return signer
    if public_key is None:
        raise ReleaseFailure("USAGE", "a KMS/HSM release key needs --public-key PEM", 2)
    from nightcore.trust.keys import public_key_from_pem

    pub = public_key_from_pem(Path(public_key).read_bytes())
    return SslibSignerAdapter(load_signer(key, public_key=pub))


def write_release(
    out: Path,
    artifacts: dict[str, Path],
    clone: Path,
    commit: str,
    repository: str,
    epoch: int,
    signer: Any,
) -> dict[str, str]:
    import setuptools

    from nightcore import release
    from nightcore.evidence.sbom import validate_sbom
    from nightcore.trust.envelope import sign_payload_with

    ad = _audit_deps()
    runtime, bad = ad.parse_lock((clone / "requirements.lock").read_text(), "requirements.lock")
    if bad:
        raise ReleaseFailure("BUILD_FAILED", f"requirements.lock: {bad[0]}")
    wheel = next(n for n in artifacts if n.endswith(".whl"))
    m = release.WHEEL_RE.match(wheel)
    if m is None:
        raise ReleaseFailure("BUILD_FAILED", f"unexpected wheel name {wheel}")
    version = m.group(1)
    out.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    for name, f in artifacts.items():
        shutil.copyfile(f, out / name)
        digests[name] = sha256(out / name)
    deps = [
        release.LockedDependency(p.name, p.version, p.hashes, p.marker)
        for p in runtime.values()
        if p.name != "setuptools"  # the build backend, not a dependency of the wheel
    ]
    sbom = release.release_sbom(version, digests[wheel], deps, epoch)
    validate_sbom(sbom)
    sbom_name = f"nightcore-{version}.cdx.json"
    (out / sbom_name).write_text(sbom)
    digests[sbom_name] = sha256(out / sbom_name)
    sums = release.format_sums(digests)
    (out / release.SUMS_FILE).write_bytes(sums)
    (out / release.SUMS_ENVELOPE).write_bytes(
        sign_payload_with(sums, signer, release.SUMS_PAYLOAD_TYPE)
    )
    tools = {
        "python": sys.version.split()[0],
        "setuptools": setuptools.__version__,
        "git": git("--version", cwd=clone).rsplit(" ", 1)[-1],
        "nightcore-release": "1",
    }
    statement = release.provenance_statement(
        digests,
        commit=commit,
        repository=repository,
        source_date_epoch=epoch,
        tools=tools,
        materials=materials(clone, runtime),
    )
    from nightcore.canonical import canonical

    (out / release.PROVENANCE_ENVELOPE).write_bytes(sign_payload_with(canonical(statement), signer))
    return digests


def make_release(
    source: Path, out: Path, key: str, public_key: str | None = None, rev: str = "HEAD"
) -> dict[str, str]:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseFailure(
            "USAGE", f"{out} exists and is not empty: remove it or pick another", 2
        )
    signer = _signer(key, public_key)  # the passphrase is asked before the long build
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=source)
    epoch = int(git("show", "-s", "--format=%ct", commit, cwd=source))
    repository = f"git+file://{source.resolve()}"
    if git("status", "--porcelain", "--untracked-files=no", cwd=source):
        print(
            f"release: note: uncommitted changes in {source} are not in the release "
            f"of {commit[:12]}"
        )
    with tempfile.TemporaryDirectory(prefix="nightcore-release-") as tmp:
        first_dir = Path(tmp) / "a"
        second_dir = Path(tmp) / "second-build" / "b"
        first_dir.mkdir()
        second_dir.mkdir(parents=True)
        first = build_once(source, commit, first_dir, epoch, 0o022)
        second = build_once(source, commit, second_dir, epoch, 0o077)
        problems = compare_builds(first, second)
        if problems:
            raise ReleaseFailure("NOT_REPRODUCIBLE", "; ".join(problems))
        print(
            f"release: two clean builds of {commit[:12]} agree: "
            + ", ".join(f"{n} {sha256(p)[:16]}" for n, p in sorted(first.items()))
        )
        return write_release(out, first, first_dir / "source", commit, repository, epoch, signer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="release", description=__doc__.split("\n\n")[0])
    ap.add_argument("--key", required=True, help="release private key (PEM path or key URI)")
    ap.add_argument("--public-key", help="its public key (PEM), for KMS/HSM key URIs")
    ap.add_argument("--out", type=Path, required=True, help="the release directory to write")
    ap.add_argument("--source", type=Path, default=ROOT, help="the git repository (default: this)")
    ap.add_argument("--rev", default="HEAD", help="the commit to release (default HEAD)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # a checkout that is not pip-installed
    from nightcore.errors import NightCoreError

    try:
        digests = make_release(args.source, args.out, args.key, args.public_key, args.rev)
    except ReleaseFailure as exc:
        print(f"release[{exc.code}]: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except NightCoreError as exc:
        print(f"release[{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    for name, d in sorted(digests.items()):
        print(f"{d}  {name}")
    print(
        f"release: written to {args.out}; verify with: nightcore release verify {args.out} "
        "--key RELEASE.pub.pem"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
