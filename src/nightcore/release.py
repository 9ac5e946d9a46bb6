"""Night Core's own releases: their layout, their SBOM, and their offline verification.

``make release`` (``tools/release.py``) builds the sdist and wheel of a commit twice, in two
clean clones, compares them by SHA-256, and writes a release directory::

    nightcore-VERSION.tar.gz             the sdist (normalized: sorted, fixed times and owners)
    nightcore-VERSION-py3-none-any.whl   the wheel (normalized likewise)
    nightcore-VERSION.cdx.json           CycloneDX 1.5 SBOM: the wheel and its locked deps
    SHA256SUMS                           ``<sha256>  <name>`` for the three files above
    SHA256SUMS.dsse.json                 DSSE over SHA256SUMS by the release key
    provenance.intoto.dsse.json          DSSE over an in-toto Statement v1 (SLSA provenance v1)

:func:`verify_release` checks such a directory with only the release public key: both
signatures, every checksum, nothing unlisted, the provenance subjects are exactly the
artifacts with their digests, and the SBOM is valid CycloneDX naming this wheel. Each failure
has a stable code (``ReleaseCode`` in :mod:`nightcore.codes`); docs/supply-chain.md describes
the format and the checks.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.errors import NightCoreError

SUMS_FILE = "SHA256SUMS"
SUMS_ENVELOPE = "SHA256SUMS.dsse.json"
PROVENANCE_ENVELOPE = "provenance.intoto.dsse.json"
METADATA_FILES = frozenset({SUMS_FILE, SUMS_ENVELOPE, PROVENANCE_ENVELOPE})
SUMS_PAYLOAD_TYPE = "application/vnd.nightcore.sha256sums+text"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://nightcore.invalid/release-build/v1"
BUILDER_ID = "https://nightcore.invalid/builders/make-release"
MAX_SUMS_BYTES = 64 * 1024
MAX_FILES = 64
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
WHEEL_RE = re.compile(r"^nightcore-([0-9][0-9A-Za-z.+!]*)-py3-none-any\.whl$")
SDIST_RE = re.compile(r"^nightcore-([0-9][0-9A-Za-z.+!]*)\.tar\.gz$")
SBOM_RE = re.compile(r"^nightcore-([0-9][0-9A-Za-z.+!]*)\.cdx\.json$")
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9][A-Za-z0-9._+-]{0,199})$")


class ReleaseError(NightCoreError):
    """A release directory that does not verify."""


def sha256_file(path: Path) -> str:
    """The SHA-256 of the regular file ``path`` (a link, FIFO or device: ``OSError``)."""
    from nightcore.fsio import open_regular

    h = hashlib.sha256()
    with open_regular(path, follow=False, cap=MAX_ARTIFACT_BYTES) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- SHA256SUMS -----------------------------------------------------------------------------


def format_sums(digests: Mapping[str, str]) -> bytes:
    """``sha256sum``'s format (two spaces, text mode), sorted by name."""
    return "".join(f"{d}  {n}\n" for n, d in sorted(digests.items())).encode()


def parse_sums(data: bytes) -> dict[str, str]:
    """Strict: every line ``<64 lowercase hex>  <plain file name>``, names unique."""
    if len(data) > MAX_SUMS_BYTES:
        raise ReleaseError(
            f"{SUMS_FILE} is larger than {MAX_SUMS_BYTES} bytes", code="RELEASE_SUMS_MALFORMED"
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ReleaseError(f"{SUMS_FILE} is not ASCII", code="RELEASE_SUMS_MALFORMED") from None
    if not text.endswith("\n"):
        raise ReleaseError(
            f"{SUMS_FILE} does not end with a newline", code="RELEASE_SUMS_MALFORMED"
        )
    out: dict[str, str] = {}
    for n, line in enumerate(text[:-1].split("\n"), 1):
        m = _SUM_LINE.fullmatch(line)
        if m is None or m.group(2) in METADATA_FILES:
            raise ReleaseError(
                f"{SUMS_FILE} line {n} is not '<sha256>  <file name>'",
                code="RELEASE_SUMS_MALFORMED",
            )
        if m.group(2) in out:
            raise ReleaseError(
                f"{SUMS_FILE} lists {m.group(2)} twice", code="RELEASE_SUMS_MALFORMED"
            )
        out[m.group(2)] = m.group(1)
    if not out:
        raise ReleaseError(f"{SUMS_FILE} lists no file", code="RELEASE_SUMS_MALFORMED")
    return out


# -- provenance -----------------------------------------------------------------------------


def provenance_statement(
    subjects: Mapping[str, str],
    *,
    commit: str,
    repository: str,
    source_date_epoch: int,
    tools: Mapping[str, str],
    materials: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA provenance v1 predicate for ``subjects``
    (file name -> sha256). Nothing in it varies between two builds of one commit."""
    from nightcore.trust.envelope import make_statement

    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "source": {"uri": repository, "digest": {"gitCommit": commit}},
                "target": "make release",
            },
            "internalParameters": {"SOURCE_DATE_EPOCH": source_date_epoch},
            "resolvedDependencies": [
                {"uri": repository, "digest": {"gitCommit": commit}},
                *materials,
            ],
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": dict(sorted(tools.items()))},
            "metadata": {"invocationId": f"{commit}:{source_date_epoch}"},
        },
    }
    return make_statement(sorted(subjects.items()), SLSA_PROVENANCE_V1, predicate)


# -- SBOM -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockedDependency:
    name: str
    version: str
    hashes: tuple[str, ...]  # "sha256:<hex>" from the lock
    marker: str | None = None


def release_sbom(
    version: str, wheel_sha256: str, deps: Iterable[LockedDependency], source_date_epoch: int
) -> str:
    """CycloneDX 1.5 JSON: the wheel (metadata component, with its SHA-256) and every
    dependency pinned in the runtime lock, with the lock's hashes. Reproducible: the serial
    number derives from the wheel's digest and the timestamp is ``SOURCE_DATE_EPOCH``."""
    import datetime as dt
    import uuid
    import warnings

    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot5
    from packageurl import PackageURL

    root = Component(
        name="nightcore",
        version=version,
        type=ComponentType.APPLICATION,
        purl=PackageURL("pypi", "nightcore", version),
        bom_ref=f"pypi:nightcore@{version}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel_sha256)],
    )
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"nightcore-release:{wheel_sha256}"))
    bom.metadata.timestamp = dt.datetime.fromtimestamp(source_date_epoch, dt.UTC)
    bom.metadata.component = root
    comps = []
    for d in sorted(deps, key=lambda d: d.name):
        props = [Property(name="nightcore:lock-hash", value=h) for h in d.hashes]
        if d.marker:
            props.append(Property(name="nightcore:marker", value=d.marker))
        comps.append(
            Component(
                name=d.name,
                version=d.version,
                type=ComponentType.LIBRARY,
                purl=PackageURL("pypi", d.name, d.version),
                bom_ref=f"pypi:{d.name}@{d.version}",
                properties=props,
            )
        )
    for c in comps:
        bom.components.add(c)
    bom.register_dependency(root, comps)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no defined dependencies.*")
        return str(JsonV1Dot5(bom).output_as_string(indent=2)) + "\n"


# -- verification ---------------------------------------------------------------------------


@dataclass
class Check:
    check: str
    ok: bool
    detail: str
    code: str = ""


@dataclass
class ReleaseVerification:
    directory: str
    key_id: str = ""
    version: str = ""
    commit: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def to_dict(self) -> dict[str, Any]:
        f = self.first_failure
        return {
            "ok": self.ok,
            "code": f.code if f else "OK",
            "directory": self.directory,
            "key_id": self.key_id,
            "version": self.version or None,
            "commit": self.commit or None,
            "artifacts": [{"name": n, "sha256": d} for n, d in sorted(self.artifacts.items())],
            "checks": [c.__dict__ for c in self.checks],
        }


def _read_small(path: Path, limit: int, what: str) -> bytes:
    # listing() checked every file with lstat; the same checks again on what is opened (not
    # followed, never blocking): a file swapped for a FIFO or a link since then is refused.
    from nightcore.fsio import read_input

    return read_input(
        path, limit, what=what, code="RELEASE_MALFORMED", error=ReleaseError, follow=False
    )


class _Verifier:
    def __init__(self, directory: Path, public_pem: bytes) -> None:
        from nightcore.trust.pubkey import PublicKey

        self.dir = directory
        self.key = PublicKey.from_pem(public_pem)  # KEY_INVALID before anything is read
        self.files: dict[str, Path] = {}
        self.sums: dict[str, str] = {}
        self.wheel = self.sdist = self.sbom_name = ""
        self.version = self.commit = ""

    def listing(self) -> str:
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            raise ReleaseError(f"{self.dir} does not exist", code="RELEASE_FILE_MISSING") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ReleaseError(f"{self.dir} is not a directory", code="RELEASE_MALFORMED")
        entries = sorted(os.listdir(self.dir))
        if len(entries) > MAX_FILES:
            raise ReleaseError(f"more than {MAX_FILES} files", code="RELEASE_MALFORMED")
        for name in entries:
            st = os.lstat(self.dir / name)
            if not stat.S_ISREG(st.st_mode):
                raise ReleaseError(
                    f"{name!r} is not a regular file (a link, a directory ...)",
                    code="RELEASE_MALFORMED",
                )
            if st.st_size > MAX_ARTIFACT_BYTES:
                raise ReleaseError(
                    f"{name} is larger than {MAX_ARTIFACT_BYTES} bytes", code="RELEASE_MALFORMED"
                )
            self.files[name] = self.dir / name
        missing = sorted(METADATA_FILES - set(self.files))
        if missing:
            raise ReleaseError(
                f"the release has no {', '.join(missing)}", code="RELEASE_FILE_MISSING"
            )
        return f"{len(entries)} regular files"

    def _envelope(self, name: str, payload_type: str) -> bytes:
        from nightcore.trust.envelope import parse_envelope, verify_signature

        data = _read_small(self.files[name], 1 << 20, name)
        try:
            env = parse_envelope(data, payload_type=payload_type)
        except NightCoreError as exc:
            raise ReleaseError(f"{name}: {exc.message}", code="RELEASE_SIGNATURE_INVALID") from None
        if not verify_signature(env, self.key):
            ids = ", ".join(s.keyid[:16] or "-" for s in env.signatures)
            raise ReleaseError(
                f"{name} is not signed by release key {self.key.keyid[:16]} (signed by {ids})",
                code="RELEASE_SIGNATURE_INVALID",
            )
        return env.payload

    def sums_signature(self) -> str:
        payload = self._envelope(SUMS_ENVELOPE, SUMS_PAYLOAD_TYPE)
        sums = _read_small(self.files[SUMS_FILE], MAX_SUMS_BYTES, SUMS_FILE)
        if payload != sums:
            raise ReleaseError(
                f"{SUMS_FILE} is not the checksum list the release key signed",
                code="RELEASE_SUMS_MISMATCH",
            )
        self.sums = parse_sums(sums)
        return f"signed by {self.key.keyid[:16]}"

    def checksums(self) -> str:
        for name, digest in sorted(self.sums.items()):
            path = self.files.get(name)
            if path is None:
                raise ReleaseError(
                    f"{SUMS_FILE} lists {name}, which is not in the release",
                    code="RELEASE_FILE_MISSING",
                )
            got = sha256_file(path)
            if got != digest:
                raise ReleaseError(
                    f"{name}: sha256 {got[:16]}..., {SUMS_FILE} says {digest[:16]}...",
                    code="RELEASE_DIGEST_MISMATCH",
                )
        extra = sorted(set(self.files) - set(self.sums) - METADATA_FILES)
        if extra:
            raise ReleaseError(
                f"{', '.join(extra)} not listed in {SUMS_FILE}", code="RELEASE_FILE_UNLISTED"
            )
        wheels = [n for n in self.sums if WHEEL_RE.match(n)]
        sdists = [n for n in self.sums if SDIST_RE.match(n)]
        sboms = [n for n in self.sums if SBOM_RE.match(n)]
        if len(wheels) != 1 or len(sdists) != 1 or len(sboms) != 1:
            raise ReleaseError(
                "a release is one wheel, one sdist and one SBOM "
                f"(found {len(wheels)}, {len(sdists)}, {len(sboms)})",
                code="RELEASE_FILE_MISSING",
            )
        versions = {WHEEL_RE.match(wheels[0]), SDIST_RE.match(sdists[0]), SBOM_RE.match(sboms[0])}
        if len({m.group(1) for m in versions if m}) != 1:
            raise ReleaseError(
                "the wheel, sdist and SBOM name different versions", code="RELEASE_MALFORMED"
            )
        self.wheel, self.sdist, self.sbom_name = wheels[0], sdists[0], sboms[0]
        return f"{len(self.sums)} files match"

    def provenance(self) -> str:
        from nightcore.canonical import parse_json
        from nightcore.trust.envelope import PAYLOAD_TYPE_INTOTO, STATEMENT_TYPE

        payload = self._envelope(PROVENANCE_ENVELOPE, PAYLOAD_TYPE_INTOTO)

        def bad(why: str) -> ReleaseError:
            return ReleaseError(f"provenance: {why}", code="RELEASE_PROVENANCE_INVALID")

        try:
            st = parse_json(payload, max_bytes=1 << 20, what="the statement")
        except NightCoreError as exc:
            raise bad(exc.message) from None
        if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE:
            raise bad("not an in-toto Statement v1")
        if st.get("predicateType") != SLSA_PROVENANCE_V1:
            raise bad(f"predicateType is not {SLSA_PROVENANCE_V1}")
        pred: Any = st.get("predicate")
        try:
            deps = pred["buildDefinition"]["resolvedDependencies"]
            commit = next(d["digest"]["gitCommit"] for d in deps if "gitCommit" in d["digest"])
            builder = pred["runDetails"]["builder"]["id"]
        except (KeyError, TypeError, StopIteration):
            raise bad("no source commit or builder id") from None
        if not (isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit)):
            raise bad("the source commit is not a git commit id")
        if not isinstance(builder, str) or not builder:
            raise bad("no builder id")
        subjects: dict[str, str] = {}
        for s in st.get("subject") or []:
            try:
                subjects[str(s["name"])] = str(s["digest"]["sha256"])
            except (KeyError, TypeError):
                raise bad("a subject without a name and a sha256 digest") from None
        if subjects != self.sums:
            diff = sorted(set(subjects.items()) ^ set(self.sums.items()))
            raise ReleaseError(
                f"provenance subjects differ from the release's artifacts at "
                f"{', '.join(sorted({n for n, _ in diff}))}",
                code="RELEASE_SUBJECT_MISMATCH",
            )
        self.commit = commit
        return f"commit {commit[:12]}, builder {builder}"

    def sbom(self) -> str:
        import json

        from nightcore.evidence.sbom import validate_sbom

        data = _read_small(self.files[self.sbom_name], 16 << 20, self.sbom_name)
        try:
            text = data.decode("utf-8")
            validate_sbom(text)
            doc = json.loads(text)
            comp = doc["metadata"]["component"]
            digests = {h["content"] for h in comp.get("hashes", []) if h.get("alg") == "SHA-256"}
        except (NightCoreError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            detail = exc.message if isinstance(exc, NightCoreError) else type(exc).__name__
            raise ReleaseError(f"{self.sbom_name}: {detail}", code="RELEASE_SBOM_INVALID") from None
        m = WHEEL_RE.match(self.wheel)
        version = m.group(1) if m else ""
        if comp.get("name") != "nightcore" or comp.get("version") != version:
            raise ReleaseError(
                f"{self.sbom_name} does not describe nightcore {version}",
                code="RELEASE_SBOM_INVALID",
            )
        if self.sums[self.wheel] not in digests:
            raise ReleaseError(
                f"{self.sbom_name} does not name the wheel's SHA-256", code="RELEASE_SBOM_INVALID"
            )
        self.version = version
        return f"CycloneDX 1.5, nightcore {version}, {len(doc.get('components', []))} dependencies"


def verify_release(directory: Path, public_pem: bytes) -> ReleaseVerification:
    """Check a release directory offline with the release public key (PEM)."""
    v = _Verifier(directory, public_pem)
    res = ReleaseVerification(str(directory), key_id=v.key.keyid)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("files", v.listing),
        ("checksum signature", v.sums_signature),
        ("checksums", v.checksums),
        ("provenance", v.provenance),
        ("SBOM", v.sbom),
    ]
    for name, step in steps:
        try:
            res.checks.append(Check(name, True, step()))
        except ReleaseError as exc:
            res.checks.append(Check(name, False, exc.message, exc.code))
            break
        except OSError as exc:
            res.checks.append(
                Check(name, False, f"{exc.strerror}: {exc.filename}", "RELEASE_MALFORMED")
            )
            break
    if res.ok:
        res.version, res.commit = v.version, v.commit
        res.artifacts = dict(v.sums)
    return res
