"""Connect to the mesh with nats-py (imported here, lazily: never on the CLI's cold path).

Every server URL is given to the client, which reconnects forever
(``max_reconnect_attempts=-1``) and walks the list; credentials and TLS come from
:class:`~nightcore.mesh.config.MeshConfig`. A connection that cannot be made at all within
``connect_timeout_s`` is MESH_UNREACHABLE; an authorization failure is MESH_ERROR naming it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError

if TYPE_CHECKING:
    from nats.aio.client import Client

    from nightcore.mesh.config import MeshConfig

Callback = Callable[[], Awaitable[None]]


def tls_context(config: MeshConfig) -> ssl.SSLContext | None:
    """A client TLS context (verifying the server against ``--mesh-tls-ca`` or the system
    store; presenting ``--mesh-tls-cert``/``--mesh-tls-key`` for mutual TLS), or None."""
    tls = config.tls
    if not tls.enabled and not any(s.startswith("tls://") for s in config.servers):
        return None
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert is not None and tls.key is not None:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise NightCoreError(f"TLS files: {exc}", code="MESH_CONFIG_INVALID") from None
    return ctx


async def connect(
    config: MeshConfig,
    *,
    client_name: str | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    reconnect: bool = True,
    error_log: Callable[[str], None] | None = None,
) -> Client:
    """An open nats-py client for ``config`` (``reconnect=False``: one-shot CLI commands
    fail fast instead of waiting for a server forever)."""
    import nats
    from nats.errors import Error as NatsError
    from nats.errors import NoServersError

    kwargs: dict[str, Any] = {}
    creds = config.credentials
    if creds.creds_file is not None:
        kwargs["user_credentials"] = str(creds.creds_file)
    elif creds.nkey_seed_file is not None:
        kwargs["nkeys_seed"] = str(creds.nkey_seed_file)
    elif creds.user is not None:
        kwargs["user"] = creds.user
        kwargs["password"] = creds.password
    ctx = tls_context(config)
    if ctx is not None:
        kwargs["tls"] = ctx
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        line = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        errors.append(line)
        del errors[:-10]
        # Asynchronous errors (a permissions violation, a slow consumer) reach nobody else.
        if error_log is not None:
            error_log(line)

    async def nothing() -> None:
        return None

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=list(config.servers),
                name=client_name or f"nightcore-{config.node_name}",
                # nats-py retries the first connection too: forever for -1 (a node), twice per
                # server for 1 (a one-shot command fails fast with NoServersError).
                max_reconnect_attempts=-1 if reconnect else 1,
                allow_reconnect=reconnect,
                reconnect_time_wait=1 if reconnect else 0.1,
                connect_timeout=max(1, int(config.connect_timeout_s)),
                inbox_prefix=config.names.inbox_prefix(config.node_name),
                disconnected_cb=disconnected_cb or nothing,
                reconnected_cb=reconnected_cb or nothing,
                error_cb=on_error,
                **kwargs,
            ),
            timeout=config.connect_timeout_s * 2 + 1,
        )
    except (TimeoutError, NoServersError, OSError) as exc:
        detail = errors[-1] if errors else f"{type(exc).__name__}: {exc}"
        code = "MESH_ERROR" if "authorization" in detail.lower() else "MESH_UNREACHABLE"
        raise NightCoreError(
            f"cannot connect to {', '.join(config.servers)}: {detail}"[:500], code=code
        ) from None
    except NatsError as exc:
        raise NightCoreError(
            f"NATS refused the connection: {exc}"[:500], code="MESH_ERROR"
        ) from None
    return nc
