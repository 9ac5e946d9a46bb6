"""Node-key lifecycle: rotation and revocation of the node key (docs/keys.md).

``rotate`` (``nightcore node-key rotate``): one audit log spans key generations.

1. Refused while a node agent serves the workspace (it holds the signer: ``NODE_RUNNING``).
2. The new key: generated locally (Ed25519, ECDSA P-256 in FIPS mode; encrypted when
   ``NIGHTCORE_NODE_KEY_PASSPHRASE`` is set) as ``private/node.key``, the old file kept as
   ``private/retired/node-<old key id>.key``; or an existing securesystemslib signer
   (``--to-key URI --to-public PEM``: KMS, HSM), written into ``[node] key``.
3. The transition statement ``{type, origin, old_key_id, new_key_id, new_public_pem,
   log_size}`` is signed by the old AND the new key and appended as a ``node_key_rotated``
   event; the OLD key then signs a checkpoint covering it (size ``R``).
4. The history (``state/audit/node-keys.json``) gets the old key's range ``..R`` and the new
   key from ``R``, signed by the new key; then the key file (or config) and ``node.pub.pem``
   are switched, and the NEW key signs a checkpoint.

``revoke KEYID --last-trusted-size N``: a retired key's signatures on checkpoints larger than
``N`` are refused from then on. Stored checkpoints it signed above ``N`` are moved to
``checkpoints/revoked/`` and the active key signs a checkpoint of the whole log; a
``node_key_revoked`` event records it. The active key cannot be revoked (rotate first).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from nightcore.context import NodeContext
from nightcore.errors import NightCoreError, UsageError, WorkspaceError

__all__ = ["node_key_history", "node_key_revoke", "node_key_rotate"]

ROTATION_EVENT = "node_key_rotated"
REVOCATION_EVENT = "node_key_revoked"
_NODE_TABLE = re.compile(r"^\[node\][ \t]*$", re.M)
_KEY_LINE = re.compile(r'^key[ \t]*=[ \t]*"[^"\n]*"[ \t]*$', re.M)


def node_key_history(ctx: NodeContext) -> dict[str, Any]:
    """The node-key history: each key, the checkpoint sizes it signs, its revocation."""
    history = ctx.transparency_log().history()
    return {"rotated": history.document is not None, **history.to_dict()}


def _node_lock(ctx: NodeContext) -> Any:
    from nightcore.fsio import file_lock

    ctx.layout.state_dir.mkdir(parents=True, exist_ok=True)
    busy = NightCoreError(
        f"a node agent serves {ctx.root}: stop it before changing the node key",
        code="NODE_RUNNING",
    )
    return file_lock(ctx.layout.node_lock_path, busy=busy)


def _set_config_key(ctx: NodeContext, value: str) -> None:
    """Point ``[node] key`` at ``value`` (a targeted edit of that one line)."""
    from nightcore.context import MAX_CONFIG_READ
    from nightcore.fsio import atomic_write, read_input

    data = read_input(
        ctx.layout.config_path,
        MAX_CONFIG_READ,
        what="nightcore.toml",
        code="CONFIG_INVALID",
        error=WorkspaceError,
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkspaceError("nightcore.toml is not UTF-8", code="CONFIG_INVALID") from None
    table = _NODE_TABLE.search(text)
    if table is None:
        raise WorkspaceError("nightcore.toml has no [node] table", code="CONFIG_INVALID")
    end = text.find("\n[", table.end())
    end = len(text) if end < 0 else end
    line = _KEY_LINE.search(text, table.end(), end)
    entry = f"key = {_toml_string(value)}"
    if line is None:
        new = text[: table.end()] + "\n" + entry + text[table.end() :]
    else:
        new = text[: line.start()] + entry + text[line.end() :]
    if tomllib.loads(new)["node"]["key"] != value:
        raise WorkspaceError("could not rewrite [node] key", code="CONFIG_INVALID")
    atomic_write(ctx.layout.config_path, new.encode("utf-8"))


def _toml_string(value: str) -> str:
    if any(c in value for c in '"\\\n') or not value.isprintable():
        raise UsageError("a key URI or path cannot contain quotes, backslashes or control chars")
    return f'"{value}"'


def _new_local_key(ctx: NodeContext) -> tuple[Any, bytes, Path]:
    """A new node key in ``private/`` (not yet in place): (signer, public PEM, private path)."""
    from nightcore.config import NODE_PASSPHRASE_ENV
    from nightcore.trust.keys import generate_key, load_file_signer

    passphrase = os.environ.get(NODE_PASSPHRASE_ENV)
    name = "node-next-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    gen = generate_key(
        name,
        ctx.layout.private_dir,
        passphrase.encode() if passphrase else None,
        fips=ctx.policy.fips,
    )
    pub = gen.public_path.read_bytes()
    gen.public_path.unlink()
    signer = load_file_signer(str(gen.private_path), NODE_PASSPHRASE_ENV)
    assert signer is not None
    return signer, pub, gen.private_path


def _external_key(ctx: NodeContext, uri: str, public_pem_path: Path) -> tuple[Any, bytes]:
    from nightcore.config import NODE_PASSPHRASE_ENV
    from nightcore.trust.keys import (
        SslibSignerAdapter,
        check_scheme,
        load_file_signer,
        load_signer,
    )
    from nightcore.trust.pubkey import PublicKey, read_public_pem

    pub = read_public_pem(public_pem_path, "--to-public")
    key = PublicKey.from_pem(pub)
    check_scheme(key.scheme, ctx.policy.fips)
    signer: Any = load_file_signer(uri, NODE_PASSPHRASE_ENV)
    if signer is None:
        signer = SslibSignerAdapter(load_signer(uri, NODE_PASSPHRASE_ENV, key.to_sslib()))
    if signer.key_id != key.keyid:
        raise WorkspaceError(
            "the new node signer does not match --to-public", code="NODE_KEY_MISMATCH"
        )
    return signer, pub


def node_key_rotate(
    ctx: NodeContext, *, to_key: str | None = None, to_public: Path | None = None
) -> dict[str, Any]:
    """Rotate the node key (module docstring); returns what changed."""
    from nightcore.audit.keyhistory import (
        HISTORY_FILE,
        TRANSITION_CONTEXT,
        sign_document,
        transition_statement,
    )
    from nightcore.canonical import canonical
    from nightcore.fsio import atomic_write
    from nightcore.trust.keys import check_scheme
    from nightcore.trust.pubkey import PublicKey

    if (to_key is None) != (to_public is None):
        raise UsageError("--to-key and --to-public go together")
    with _node_lock(ctx):
        tl = ctx.transparency_log()
        history = tl.history()
        old = history.current
        old_signer = ctx.node_signer()
        tl.checkpoint("node-key-rotation")  # the old key signs the log as it is (no fork)
        staged: Path | None = None
        if to_key is not None and to_public is not None:
            new_signer, new_pub = _external_key(ctx, to_key, to_public)
        else:
            new_signer, new_pub, staged = _new_local_key(ctx)
        try:
            new_key = PublicKey.from_pem(new_pub)
            check_scheme(new_key.scheme, ctx.policy.fips)
            if new_key.keyid in {k.key_id for k in history.keys}:
                raise WorkspaceError(
                    "the new node key is already in the history", code="NODE_KEY_MISMATCH"
                )
            from nightcore.audit.checkpoint import load_node_public_key

            load_node_public_key(new_pub)  # it must be able to sign checkpoints
            log_size = tl.sync()
            stmt = transition_statement(
                history.origin, old.key_id, new_key.keyid, new_pub, log_size
            )
            data = TRANSITION_CONTEXT + canonical(stmt)
            transition = {
                "statement": stmt,
                "old_signature": bytes(old_signer.sign(data)).hex(),
                "new_signature": bytes(new_signer.sign(data)).hex(),
            }
            event = ctx.audit().append(ROTATION_EVENT, transition)
            # The old key's last checkpoint covers the transition event.
            last_old = tl.checkpoint("node-key-rotated")
            boundary = last_old.size
            entries = [k.to_dict() for k in history.keys]
            entries[-1]["to_size"] = boundary
            entries.append(
                {
                    "key_id": new_key.keyid,
                    "public_pem": new_pub.decode("ascii"),
                    "from_size": boundary,
                    "to_size": None,
                    "transition": transition,
                    "revoked": None,
                }
            )
            doc = {
                "format": "nightcore/node-key-history@v1",
                "origin": history.origin,
                "keys": entries,
            }
            doc = sign_document(doc, new_key.keyid, new_signer.sign)
            # Switch: the retired key file is kept aside, the history names the new key, the
            # key file (or [node] key) and node.pub.pem follow.
            layout = ctx.layout
            retired: Path | None = None
            current_key = Path(ctx.node_key_uri())
            if staged is not None and current_key.is_file():
                retired_dir = layout.private_dir / "retired"
                retired_dir.mkdir(mode=0o700, exist_ok=True)
                retired = retired_dir / f"node-{old.key_id[:16]}.key"
                os.link(current_key, retired)
            atomic_write(layout.audit_dir / HISTORY_FILE, canonical(doc) + b"\n")
            if staged is not None:
                os.replace(staged, layout.default_node_key_path)
                staged = None
                if ctx.config.node_key != "private/node.key":
                    _set_config_key(ctx, "private/node.key")
            else:
                assert to_key is not None
                _set_config_key(ctx, to_key)
            atomic_write(layout.node_pub_path, new_pub)
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
        # The context loads the new key; the transparency log's signer follows the history.
        ctx.forget_node_key()
        first_new = ctx.transparency_log().checkpoint("node-key-rotated")
    return {
        "old_key_id": old.key_id,
        "new_key_id": new_key.keyid,
        "scheme": new_key.scheme,
        "event_seq": event.seq,
        "old_key_last_checkpoint": boundary,
        "new_key_first_checkpoint": first_new.size,
        "retired_key_file": str(retired) if retired is not None else None,
        "history": str(ctx.layout.audit_dir / HISTORY_FILE),
        "key": to_key or "private/node.key",
    }


def node_key_revoke(ctx: NodeContext, key_id: str, last_trusted_size: int) -> dict[str, Any]:
    """Revoke a retired node key after ``last_trusted_size`` (module docstring)."""
    from nightcore.audit.checkpoint import stored_checkpoints
    from nightcore.audit.keyhistory import HISTORY_FILE, KeyHistory, sign_document
    from nightcore.canonical import canonical
    from nightcore.errors import AuditError
    from nightcore.fsio import atomic_write
    from nightcore.layout import CHECKPOINTS_DIR_NAME

    if isinstance(last_trusted_size, bool) or last_trusted_size < 0:
        raise UsageError("--last-trusted-size is a log size (0 or more)")
    with _node_lock(ctx):
        tl = ctx.transparency_log()
        history = tl.history()
        target = history.key(key_id)
        if target.key_id == history.current.key_id:
            raise AuditError(
                "the active node key cannot be revoked: run 'nightcore node-key rotate' first",
                code="NODE_KEY_REVOKE_ACTIVE",
            )
        assert history.document is not None  # more than one key: a history file exists
        if target.revoked is not None:
            raise AuditError(
                f"node key {target.key_id[:16]} is already revoked", code="ALREADY_REVOKED"
            )
        signer = ctx.node_signer()
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = dict(history.document)
        doc["keys"] = [dict(k) for k in doc["keys"]]
        for entry in doc["keys"]:
            if entry["key_id"] == target.key_id:
                entry["revoked"] = {"last_trusted_size": last_trusted_size, "at": at}
        doc = sign_document(doc, history.current.key_id, signer.sign)
        new_bytes = canonical(doc) + b"\n"
        revised = KeyHistory.parse(new_bytes, ctx.node_public_pem())
        event = ctx.audit().append(
            REVOCATION_EVENT,
            {"key_id": target.key_id, "last_trusted_size": last_trusted_size, "at": at},
        )
        audit_dir = ctx.layout.audit_dir
        atomic_write(audit_dir / HISTORY_FILE, new_bytes)
        # Checkpoints the revoked key signed above the trusted size are no longer evidence.
        aside = audit_dir / CHECKPOINTS_DIR_NAME / "revoked"
        moved: list[str] = []
        for label, _size, data in stored_checkpoints(audit_dir):
            try:
                revised.open_checkpoint(data, what=label)
            except AuditError as exc:
                if exc.code != "NODE_KEY_REVOKED":
                    raise
                aside.mkdir(parents=True, exist_ok=True)
                name = label.replace("/", "-")
                os.replace(audit_dir / label, aside / name)
                moved.append(label)
        cp = tl.checkpoint("node-key-revoked")
    return {
        "key_id": target.key_id,
        "last_trusted_size": last_trusted_size,
        "event_seq": event.seq,
        "checkpoints_set_aside": moved,
        "checkpoint": cp.size,
    }
