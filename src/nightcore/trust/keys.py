"""Keys: generation, files at rest, public-key identity, and loading signers by URI.

Key model: securesystemslib ``SSlibKey`` (the same model python-tuf uses, so module signing
and AUFS share it). A key id is securesystemslib's default key id: SHA-256 over the canonical
JSON of (keytype, scheme, public value).

Private keys are encrypted PKCS#8 PEM files, mode 0600, never overwritten. Signers are
loaded through securesystemslib private-key URIs; Night Core registers one scheme of its
own, ``nightcore-key:<path>``, for passphrase-encrypted files (the passphrase comes from an
environment variable or a prompt). Any other registered scheme (``file2:`` for an
unencrypted file, ``awskms:``, ``gcpkms:``, ``hsm:`` ...) works unchanged, so a file key can
become an HSM or cloud-KMS key without code changes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import KeyError_, TrustError
from nightcore.fsio import open_regular, read_input

if TYPE_CHECKING:
    from securesystemslib.signer import SecretsHandler, Signer, SSlibKey

PASSPHRASE_ENV = "NIGHTCORE_KEY_PASSPHRASE"  # noqa: S105 - a variable name
URI_SCHEME = "nightcore-key"
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_KEY_FILE = 64 * 1024

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-sha2-nistp256"
ECDSA_P384 = "ecdsa-sha2-nistp384"
# FIPS 186-5 / SP 800-186 approved schemes this product signs and verifies with in FIPS mode.
FIPS_SCHEMES = frozenset({ECDSA_P256, ECDSA_P384})
DEFAULT_SCHEMES = frozenset({ED25519, ECDSA_P256, ECDSA_P384})


def allowed_schemes(fips: bool) -> frozenset[str]:
    return FIPS_SCHEMES if fips else DEFAULT_SCHEMES


def check_scheme(scheme: str, fips: bool) -> None:
    if scheme not in allowed_schemes(fips):
        mode = "FIPS mode" if fips else "this node"
        raise TrustError(
            f"signature scheme {scheme} is not allowed in {mode}", code="ALGORITHM_NOT_ALLOWED"
        )


@dataclass(frozen=True)
class GeneratedKey:
    name: str
    key_id: str
    scheme: str
    private_path: Path
    public_path: Path


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``; refuse if anything (even a dangling link) is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyError_(
            f"{path} already exists; refusing to overwrite a key", code="KEY_EXISTS"
        ) from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def generate_key(name: str, out_dir: Path, passphrase: bytes | None, *, fips: bool) -> GeneratedKey:
    """Generate a key pair: ``NAME.key`` (encrypted PKCS#8, 0600) and ``NAME.pub.pem``.

    ``passphrase=None`` writes an unencrypted key (only for unattended node keys kept
    outside shared directories); publisher and maintainer keys are always encrypted.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if not KEY_NAME_RE.fullmatch(name):
        raise KeyError_("key name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}", code="USAGE")
    if passphrase is not None and len(passphrase) < 8:
        raise KeyError_("passphrase must be at least 8 characters", code="PASSPHRASE_WEAK")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub.pem"
    if pub_path.exists() or pub_path.is_symlink():
        raise KeyError_(
            f"{pub_path} already exists; refusing to overwrite a key", code="KEY_EXISTS"
        )
    private: Any = (
        ec.generate_private_key(ec.SECP256R1()) if fips else (ed25519.Ed25519PrivateKey.generate())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase is not None
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_exclusive(priv_path, pem, 0o600)
    try:
        _write_exclusive(pub_path, pub_pem, 0o644)
    except Exception:
        priv_path.unlink()
        raise
    from nightcore.trust.pubkey import PublicKey

    key = PublicKey.from_pem(pub_pem)
    return GeneratedKey(name, key.keyid, key.scheme, priv_path, pub_path)


def public_key_from_pem(data: bytes) -> SSlibKey:
    """Parse a SubjectPublicKeyInfo PEM into an SSlibKey (key id computed, never trusted input)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    if len(data) > MAX_KEY_FILE:
        raise KeyError_("public key file is too large")
    try:
        pub = load_pem_public_key(data)
        return SSlibKey.from_crypto(pub)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"not a supported PEM public key ({type(exc).__name__})") from None


def passphrase_from_env_or_prompt(env: str = PASSPHRASE_ENV, *, confirm: bool = False) -> bytes:
    value = os.environ.get(env)
    if value is not None:
        return value.encode()
    import getpass
    import sys

    if not sys.stdin.isatty():
        raise KeyError_(
            f"no passphrase: set {env} or run in a terminal", code="PASSPHRASE_REQUIRED"
        )
    first = getpass.getpass("Key passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise KeyError_("passphrases do not match", code="PASSPHRASE_REQUIRED")
    return first.encode()


# PKCS#8 (RFC 8410) DER of an Ed25519 private key is this fixed 16-byte prefix and the 32-byte
# seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }.
_ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PKCS8_BEGIN = b"-----BEGIN PRIVATE KEY-----"
_PKCS8_END = b"-----END PRIVATE KEY-----"


def ed25519_from_pkcs8_pem(data: bytes) -> Any:
    """An unencrypted Ed25519 PKCS#8 PEM, read with ``cryptography``'s public
    ``Ed25519PrivateKey.from_private_bytes``; None for anything else (the caller then uses
    ``load_pem_private_key``). The run path's node key is this: parsing its fixed 48-byte DER
    here spares every cold ``nightcore run`` the import of ``serialization`` (~7 ms, measured
    in docs/performance.md). tests/unit/test_trust_core.py checks it agrees with cryptography.
    """
    import base64
    import binascii

    text = data.strip()
    if not (text.startswith(_PKCS8_BEGIN) and text.endswith(_PKCS8_END)):
        return None
    body = b"".join(text[len(_PKCS8_BEGIN) : -len(_PKCS8_END)].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(_ED25519_PKCS8_PREFIX) + 32 or not der.startswith(_ED25519_PKCS8_PREFIX):
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(der[len(_ED25519_PKCS8_PREFIX) :])


def _head(path: Path) -> bytes:
    """The first 64 bytes of a key file (is it encrypted?), or nothing for what is not a
    readable regular file (:func:`_load_private` then says why); never blocks on a FIFO."""
    try:
        with open_regular(path, follow=False) as fh:
            return fh.read(64)
    except OSError:
        return b""


def _load_private(path: Path, passphrase: bytes | None) -> Any:

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise KeyError_(f"key file {path} not found", code="KEY_NOT_FOUND") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise KeyError_(f"{path} is not a regular file", code="KEY_INVALID")
    if st.st_mode & 0o077:
        raise KeyError_(
            f"{path} is readable by group or others (chmod 600)", code="KEY_PERMISSIONS"
        )
    if st.st_size > MAX_KEY_FILE:
        raise KeyError_(f"{path} is too large to be a key", code="KEY_INVALID")
    # The same checks again on what is opened (not followed, never blocking): the file may
    # have been swapped for a FIFO or a link since the lstat.
    data = read_input(path, MAX_KEY_FILE, what="key file", code="KEY_INVALID", follow=False)
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if not encrypted:
        fast = ed25519_from_pkcs8_pem(data)
        if fast is not None:
            return fast
    # The public API only (issue 11: no private bindings on a security path), imported here
    # so that commands that never load a private key do not pay for it.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(data, passphrase if encrypted else None)
    except TypeError:
        raise KeyError_(f"{path}: passphrase required", code="PASSPHRASE_REQUIRED") from None
    except ValueError:
        raise KeyError_(
            f"{path}: wrong passphrase or not a PEM private key", code="KEY_DECRYPT_FAILED"
        ) from None


def _register_scheme() -> None:
    from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, CryptoSigner, Key

    class EncryptedFileSigner(CryptoSigner):
        """``nightcore-key:<path>``: an encrypted (or 0600 plain) PKCS#8 file."""

        @classmethod
        def from_priv_key_uri(
            cls,
            priv_key_uri: str,
            public_key: Key,
            secrets_handler: SecretsHandler | None = None,
        ) -> CryptoSigner:
            path = Path(priv_key_uri.partition(":")[2])
            data_head = _head(path)
            passphrase = None
            if b"ENCRYPTED" in data_head and secrets_handler is not None:
                passphrase = secrets_handler("passphrase").encode()
            private = _load_private(path, passphrase)
            return CryptoSigner(private, public_key)  # type: ignore[arg-type]

    SIGNER_FOR_URI_SCHEME.setdefault(URI_SCHEME, EncryptedFileSigner)


def key_uri_for_path(path: Path) -> str:
    return f"{URI_SCHEME}:{path.resolve()}"


def load_signer(
    uri_or_path: str, passphrase_env: str = PASSPHRASE_ENV, public_key: SSlibKey | None = None
) -> Signer:
    """Load a signer from a private-key URI or a plain file path.

    For a plain path (or ``nightcore-key:``) the public half is derived from the private
    key; for other URI schemes (KMS, HSM) ``public_key`` must be given.
    """
    from securesystemslib.signer import CryptoSigner, Signer

    _register_scheme()
    scheme, sep, rest = uri_or_path.partition(":")
    is_path = not sep or scheme == URI_SCHEME or len(scheme) == 1
    if is_path:
        path = Path(rest if scheme == URI_SCHEME else uri_or_path)
        passphrase: bytes | None = None
        if b"ENCRYPTED" in _head(path):
            passphrase = passphrase_from_env_or_prompt(passphrase_env)
        private = _load_private(path, passphrase)
        return CryptoSigner(private)
    if public_key is None:
        raise KeyError_(f"a public key is needed to use signer {scheme}:", code="USAGE")
    try:
        return Signer.from_priv_key_uri(
            uri_or_path, public_key, lambda _secret: os.environ.get(passphrase_env, "")
        )
    except ValueError as exc:
        raise KeyError_(f"cannot load signer: {exc}") from None


class FileSigner:
    """A signer over a local private-key file, using ``cryptography`` directly.

    The node signs a checkpoint and an attestation on every run; loading securesystemslib's
    signer machinery for that costs more than the run. Same key model, same DSSE bytes.
    """

    def __init__(self, private: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from nightcore.trust.pubkey import PublicKey

        self._private = private
        if isinstance(private, ed25519.Ed25519PrivateKey):
            # What PublicKey.from_pem makes of this key's PEM, without a PEM round trip.
            raw = private.public_key().public_bytes_raw()
            self.public_key = PublicKey.from_fields(ED25519, ED25519, raw.hex())
            return
        from cryptography.hazmat.primitives import serialization

        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = PublicKey.from_pem(pem)

    @property
    def key_id(self) -> str:
        return self.public_key.keyid

    def sign(self, data: bytes) -> bytes:
        if self.public_key.scheme == "ed25519":
            return bytes(self._private.sign(data))
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        algo = hashes.SHA256() if self.public_key.scheme.endswith("256") else hashes.SHA384()
        return bytes(self._private.sign(data, ec.ECDSA(algo)))


class SslibSignerAdapter:
    """Gives a securesystemslib Signer (KMS/HSM) the ``sign(bytes)``/``key_id`` shape."""

    def __init__(self, signer: Any) -> None:
        self._signer = signer
        self.key_id = str(signer.public_key.keyid)

    def sign(self, data: bytes) -> bytes:
        return bytes.fromhex(self._signer.sign(data).signature)


def load_file_signer(uri_or_path: str, passphrase_env: str = PASSPHRASE_ENV) -> FileSigner | None:
    """A FileSigner for a plain path or ``nightcore-key:``/``file2:`` URI; None for KMS/HSM."""
    scheme, sep, rest = uri_or_path.partition(":")
    if sep and len(scheme) > 1 and scheme not in (URI_SCHEME, "file2"):
        return None
    path = Path(rest if sep and len(scheme) > 1 else uri_or_path)
    encrypted = b"ENCRYPTED" in _head(path)
    passphrase = passphrase_from_env_or_prompt(passphrase_env) if encrypted else None
    return FileSigner(_load_private(path, passphrase))
