"""What a node or a ``nightcore mesh`` command connects to (``--mesh ...`` options).

Validated here, before anything is started: server URLs (``nats://`` or ``tls://``, host and
port), the deployment prefix and node name (``[a-z0-9-]``, see :mod:`nightcore.mesh.names`), a
credentials file and TLS files that exist. No nats import here: this is on the CLI's path.

Credentials file (``--mesh-creds``), by its content:

- a NATS ``.creds`` file (a user JWT and its nkey seed, ``-----BEGIN NATS USER JWT-----``),
- an nkey seed file (one line starting ``SU``),
- a user/password file: one line ``USER:PASSWORD`` (the password may contain ``:``).

The file must not be readable by group or others (like an SSH key): MESH_CONFIG_INVALID.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from nightcore.errors import NightCoreError
from nightcore.fsio import read_regular_capped
from nightcore.mesh.names import DEFAULT_PREFIX, Names, check_token

MAX_SERVERS = 32
MAX_CREDS_BYTES = 64 * 1024


def _bad(message: str) -> NightCoreError:
    return NightCoreError(message, code="MESH_CONFIG_INVALID")


def parse_servers(value: str) -> tuple[str, ...]:
    """``nats://h:p[,nats://h2:p2]`` -> the URLs (all are given to the client)."""
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    if not urls or len(urls) > MAX_SERVERS:
        raise _bad(f"--mesh takes 1..{MAX_SERVERS} comma-separated nats:// URLs")
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _bad(f"not a server URL: {url[:200]!r}") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            raise _bad(f"a server URL is nats://HOST:PORT or tls://HOST:PORT, not {url[:200]!r}")
        if parts.username or parts.password:
            raise _bad("put credentials in --mesh-creds, not in the server URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _bad(f"a server URL has no path or query: {url[:200]!r}")
    return urls


def default_node_name() -> str:
    """The host name made a valid node name (lower case, other characters -> ``-``)."""
    raw = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:64].strip("-")
    return raw or "node"


def _file(value: str | os.PathLike[str] | None, what: str) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise _bad(f"{what} {str(path)[:200]} is not a readable file")
    return path


@dataclass(frozen=True)
class Credentials:
    """What the client authenticates with (one of them)."""

    creds_file: Path | None = None  # NATS .creds (JWT + seed)
    nkey_seed_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        if self.creds_file is not None:
            return "creds"
        if self.nkey_seed_file is not None:
            return "nkey"
        if self.user is not None:
            return "user-password"
        return "none"


def load_credentials(path: Path) -> Credentials:
    """Read ``--mesh-creds`` (see the module docstring for the three forms)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise _bad(f"credentials file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise _bad(f"credentials file {path} is readable by group or others (chmod 600 it)")
        if st.st_size > MAX_CREDS_BYTES:
            raise _bad(f"credentials file {path} is larger than {MAX_CREDS_BYTES} bytes")
        # Read what was checked, not what the path names now (never blocking, capped).
        text = read_regular_capped(path, MAX_CREDS_BYTES).decode("utf-8")
    except OSError as exc:
        raise _bad(f"cannot read credentials file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _bad(f"credentials file {path} is not UTF-8 text") from None
    if "-----BEGIN NATS USER JWT-----" in text:
        return Credentials(creds_file=path)
    first = text.strip()
    if first.startswith("SU") and "\n" not in first and re.fullmatch(r"[A-Z2-7]+", first):
        return Credentials(nkey_seed_file=path)
    line = text.splitlines()[0] if text.splitlines() else ""
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise _bad(
            f"credentials file {path}: expected a NATS .creds file, an nkey seed (SU...) "
            "or one line USER:PASSWORD"
        )
    return Credentials(user=user, password=password)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None


@dataclass(frozen=True)
class MeshConfig:
    """One mesh connection: servers, deployment prefix, node name, credentials, TLS."""

    servers: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    node_name: str = field(default_factory=default_node_name)
    credentials: Credentials = field(default_factory=Credentials)
    tls: TlsFiles = field(default_factory=TlsFiles)
    js_domain: str | None = None  # the JetStream domain to address (None: the local one)
    connect_timeout_s: float = 5.0
    heartbeat_s: float = 2.0
    admit_timeout_s: float = 60.0  # how long a run waits for the node to catch up

    def __post_init__(self) -> None:
        check_token(self.prefix, "the mesh prefix")
        check_token(self.node_name, "the node name")
        if self.js_domain is not None:
            check_token(self.js_domain, "the JetStream domain")
        if (self.tls.cert is None) != (self.tls.key is None):
            raise _bad("--mesh-tls-cert and --mesh-tls-key go together")
        if not 0 <= self.admit_timeout_s <= 3600:
            raise _bad("--mesh-admit-timeout must be between 0 and 3600 seconds")

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @classmethod
    def from_options(
        cls,
        servers: str,
        *,
        prefix: str | None = None,
        node_name: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        js_domain: str | None = None,
        admit_timeout_s: float | None = None,
    ) -> MeshConfig:
        """From the CLI options (``--mesh``, ``--mesh-prefix``, ``--node-name``,
        ``--mesh-creds``, ``--mesh-tls-ca/-cert/-key``)."""
        creds_path = _file(creds, "credentials file")
        return cls(
            servers=parse_servers(servers),
            prefix=prefix or DEFAULT_PREFIX,
            node_name=node_name or default_node_name(),
            credentials=load_credentials(creds_path) if creds_path else Credentials(),
            tls=TlsFiles(
                _file(tls_ca, "TLS CA file"),
                _file(tls_cert, "TLS certificate file"),
                _file(tls_key, "TLS key file"),
            ),
            js_domain=js_domain,
            admit_timeout_s=60.0 if admit_timeout_s is None else admit_timeout_s,
        )

    def describe(self) -> dict[str, object]:
        """Plain data without secrets (for logs, status, audit lines)."""
        return {
            "servers": list(self.servers),
            "prefix": self.prefix,
            "node": self.node_name,
            "auth": self.credentials.kind,
            "tls": self.tls.enabled,
            "domain": self.js_domain,
        }
