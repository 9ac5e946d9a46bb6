"""Every stable code Night Core raises or records, by domain, each with its one-line meaning.

Codes are what scripts, the audit log and dashboards rely on (messages may change). Each domain
is a :class:`~enum.StrEnum`, so a member compares equal to its string (``VerifyCode.OK == "OK"``)
and serialises as that string; ``member.meaning`` is its one-line meaning. :data:`ALL_CODES` is
the one list of every code with its domain(s) and meaning; ``docs/codes.md`` is rendered from it
(``python -m nightcore.codes``), and ``tests/unit/test_codes.py`` fails when the source raises or
records a code that is not here, or when the document and this module disagree.

A code may belong to more than one domain when it means the same failure seen from two places
(``OK`` ends both a verification and a run; ``DIGEST_MISMATCH`` is refused by the verifier and by
the sandbox). This module is not imported by ``nightcore.errors`` (the CLI's cold start), only
by callers that want the types.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple, Self


class Code(StrEnum):
    """A stable code: its value is the code string, ``meaning`` its one-line meaning."""

    meaning: str

    def __new__(cls, value: str, meaning: str = "") -> Self:
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.meaning = meaning
        return obj


class VerifyCode(Code):
    """The verification decision (``nightcore verify``, the first step of ``nightcore run``)."""

    OK = "OK", "signature, digest, manifest and policy all verified"
    ENVELOPE_MALFORMED = (
        "ENVELOPE_MALFORMED",
        "no envelope, not strict DSSE JSON, wrong payload type, bad base64, too large",
    )
    KEY_UNTRUSTED = (
        "KEY_UNTRUSTED",
        "no signature by a registry key, or the signing key is not a publisher key",
    )
    ALGORITHM_NOT_ALLOWED = (
        "ALGORITHM_NOT_ALLOWED",
        "the key's scheme is outside the allow-list (FIPS mode: ECDSA P-256/P-384 only)",
    )
    SIGNATURE_INVALID = (
        "SIGNATURE_INVALID",
        "a registry key's signature does not verify over the DSSE PAE",
    )
    KEY_REVOKED = "KEY_REVOKED", "the signing key is on the revocation list"
    KEY_EXPIRED = "KEY_EXPIRED", "the signing key's registry entry has expired"
    MANIFEST_INVALID = (
        "MANIFEST_INVALID",
        "the signed manifest, or `manifest.toml`, fails the schema, is too large or is missing",
    )
    MANIFEST_MISMATCH = (
        "MANIFEST_MISMATCH",
        "signed for another tenant than its directory, or `manifest.toml` differs from the "
        "signed one",
    )
    KEY_OUT_OF_SCOPE = "KEY_OUT_OF_SCOPE", "the key's scope glob does not cover the tenant id"
    DIGEST_MISMATCH = "DIGEST_MISMATCH", "`module.wasm` is not the signed module"
    MODULE_REVOKED = "MODULE_REVOKED", "the module digest is on the revocation list"
    MODULE_MALFORMED = "MODULE_MALFORMED", "`module.wasm` is not a WebAssembly core module"
    MANIFEST_NOT_YET_VALID = (
        "MANIFEST_NOT_YET_VALID",
        "the current time is before the signed manifest's `not_before`",
    )
    MANIFEST_EXPIRED = (
        "MANIFEST_EXPIRED",
        "the current time is at or after the signed manifest's `expires`",
    )
    CAPABILITY_DENIED = (
        "CAPABILITY_DENIED",
        "node policy does not allow a capability kind or limit the manifest asks for",
    )
    PACKAGE_INVALID = (
        "PACKAGE_INVALID",
        "a package file is a symlink, not a regular file, or missing",
    )
    PACKAGE_TOO_LARGE = (
        "PACKAGE_TOO_LARGE",
        "a package file is above its cap (`module.wasm` 64 MiB), or grew past it while read",
    )
    TENANT_NAME_INVALID = (
        "TENANT_NAME_INVALID",
        "not a valid tenant id `[a-z0-9][a-z0-9._-]{0,62}` (shell/HTML metacharacters, case)",
    )


class RunCode(Code):
    """The outcome of one tenant's run (``nightcore run``, ``run_outcome`` audit events)."""

    OK = "OK", "the entrypoint returned or called `proc_exit(0)`"
    EXIT_NONZERO = "EXIT_NONZERO", "`proc_exit(n)` with n ≠ 0 (`exit_code` holds n)"
    FUEL_EXHAUSTED = "FUEL_EXHAUSTED", "the fuel budget ran out"
    TIMEOUT = "TIMEOUT", "the wall-time limit passed (epoch interruption, or the watchdog's kill)"
    MEMORY_LIMIT = (
        "MEMORY_LIMIT",
        "linear memory reached its limit (a refused `memory.grow` then a failure)",
    )
    STACK_OVERFLOW = "STACK_OVERFLOW", "the wasm stack limit was hit"
    OUTPUT_LIMIT = (
        "OUTPUT_LIMIT",
        "stdout + stderr reached `output_bytes`; later writes fail with EIO",
    )
    TRAP = "TRAP", "any other trap (`detail` has the one-line message)"
    DISK_LIMIT = (
        "DISK_LIMIT",
        "the tenant's read-write grants hold more than `disk_bytes` bytes or `disk_files` "
        "entries (sampled during the run, checked at its end): the run was stopped",
    )
    FD_LIMIT = (
        "FD_LIMIT",
        "the run held more than `open_files` descriptors, or the node's descriptor reserve was "
        "reached: the run was stopped, its neighbours keep theirs",
    )
    COMPILE_LIMIT = (
        "COMPILE_LIMIT",
        "compiling the module took more than `compile_ms` or `compile_memory_bytes` in the "
        "bounded compile process: refused, nothing ran",
    )
    COMPILE_ERROR = "COMPILE_ERROR", "the module does not validate or compile"
    INSTANTIATE_ERROR = (
        "INSTANTIATE_ERROR",
        "unknown imports, a missing entrypoint, a failing start function",
    )
    CORDONED = "CORDONED", "the tenant is cordoned; it was verified but not executed"
    PREOPEN_INVALID = (
        "PREOPEN_INVALID",
        "a granted directory crosses a symlink or resolves outside the tenant's data root",
    )
    TREE_LIMIT = (
        "TREE_LIMIT",
        "the tenant's data tree is deeper than 128 directories or has more than 100,000 entries, "
        "so it was not handed to the worker uid (`--strongbox`) or not walked for the run "
        "attestation's written files; only this tenant is refused",
    )
    SECCOMP_VIOLATION = (
        "SECCOMP_VIOLATION",
        "`--strongbox`: the worker made a syscall outside its allow-list and was killed (SIGSYS)",
    )
    WORKER_CRASHED = (
        "WORKER_CRASHED",
        "the worker process running the tenant died (a strongbox worker for a reason other than "
        "SIGSYS, e.g. SIGABRT; a node worker killed or crashed): the run is closed with this code "
        "and the worker replaced",
    )
    WORKER_REPLY_INVALID = (
        "WORKER_REPLY_INVALID",
        "`--strongbox`: the worker's reply was malformed; it was killed and replaced",
    )
    STRONGBOX_UNAVAILABLE = (
        "STRONGBOX_UNAVAILABLE",
        "`--strongbox` was asked for, or node policy requires it for the tenant "
        "(`[policy] isolation`, `strongbox_tenants`), where seccomp/root/Linux is not "
        "available: the tenant is not run",
    )
    FFI_UNAVAILABLE = (
        "FFI_UNAVAILABLE",
        "the installed wasmtime-py lacks (or reshaped) a private binding a sandbox limit depends "
        "on (`nightcore doctor` lists them); the run is refused, never run without the limit",
    )
    HOST_ERROR = (
        "HOST_ERROR",
        "the host failed while handling this one tenant (preparing its directories, storing its "
        "output, hashing the files it wrote, an unexpected sandbox error); `detail` names the "
        "step and the error. Only this tenant bears it: its neighbours run and are recorded, and "
        "the checkpoint is signed",
    )
    INTERRUPTED = (
        "INTERRUPTED",
        "the run was started but its node stopped before it ended: closed by the node's next "
        "start (after a crash) or by its shutdown (after the grace period)",
    )
    CORDONED_IN_FLIGHT = (
        "CORDONED_IN_FLIGHT",
        "the kill switch: the tenant was cordoned while this run was in flight, and the run was "
        "stopped (in-process at the next epoch tick; `--strongbox`: its worker killed); the "
        "`run_outcome` line's `interrupted_by` names the cordon and its reason",
    )
    REVOKED_IN_FLIGHT = (
        "REVOKED_IN_FLIGHT",
        "the kill switch: the run's signing key or module digest was revoked (or the key removed "
        "from the registry, or the trust state stopped loading) while it was in flight, and the "
        "run was stopped; `interrupted_by` names the change (`key_revoked`, `module_revoked`, "
        "`key_removed`, `trust_state_invalid`)",
    )


class SandboxCode(Code):
    """Refusals of the sandbox and the strongbox (bad run configurations, worker protocol)."""

    SANDBOX_ERROR = "SANDBOX_ERROR", "a sandbox failure without a more precise code"
    SANDBOX_CLOSED = "SANDBOX_CLOSED", "a run was asked of a sandbox that is already closed"
    SANDBOX_CONFIG_INVALID = (
        "SANDBOX_CONFIG_INVALID",
        "a sandbox setting is out of range (`tick_ms`, strongbox `workers`)",
    )
    ARGV_INVALID = "ARGV_INVALID", "an argv entry is not UTF-8 text without NUL"
    ENV_INVALID = (
        "ENV_INVALID",
        "an environment name is empty or holds `=`/NUL, or a value is not UTF-8 without NUL",
    )
    SEED_INVALID = "SEED_INVALID", "the deterministic-mode seed is not an integer"
    LIMIT_INVALID = (
        "LIMIT_INVALID",
        "a limit is not an integer in its range, or the module is too large for the strongbox",
    )
    DIGEST_INVALID = "DIGEST_INVALID", "a run's `module_sha256` is not 64 hex digits"
    DIGEST_MISMATCH = (
        "DIGEST_MISMATCH",
        "the module bytes handed to the sandbox do not match the run's `module_sha256`",
    )
    PREOPEN_INVALID = (
        "PREOPEN_INVALID",
        "a preopen's guest path is empty, invalid or duplicated, or its host directory is not "
        "an existing absolute directory",
    )
    CACHE_DIR_INVALID = (
        "CACHE_DIR_INVALID",
        "the compiled-module cache path is not a directory or cannot be created",
    )
    CACHE_KEY_INVALID = "CACHE_KEY_INVALID", "a compiled-module cache key is malformed"
    CACHE_SECRET_INVALID = (
        "CACHE_SECRET_INVALID",
        "the compiled-module cache secret is shorter than its minimum",
    )
    BAD_REQUEST = (
        "BAD_REQUEST",
        "strongbox protocol: a request frame has an unknown operation or a mistyped field",
    )
    WORKER_ERROR = (
        "WORKER_ERROR",
        "strongbox protocol: the worker hit an unexpected error running one request",
    )
    WORKER_START = (
        "WORKER_START",
        "strongbox protocol: the worker failed while starting (the parent refuses with "
        "`WORKER_START_FAILED`)",
    )
    WORKER_START_FAILED = (
        "WORKER_START_FAILED",
        "a strongbox or node worker process did not start or sent no ready frame",
    )
    WORKER_KEY_MISMATCH = (
        "WORKER_KEY_MISMATCH",
        "a run was sent to a strongbox worker started for another tenant or other limits",
    )
    UID_MAP_INVALID = (
        "UID_MAP_INVALID",
        "`state/strongbox/ids.json` (tenant uids of the strongbox) is unreadable or malformed "
        "(two tenants with one id, unknown version): the tenant is not run",
    )
    UID_RANGE_EXHAUSTED = (
        "UID_RANGE_EXHAUSTED",
        "every uid of `[run] strongbox_uid_base` .. `+ strongbox_uid_count` is taken: a new "
        "tenant gets none and is not run confined",
    )


class TrustCode(Code):
    """Keys, the trust registry and revocation lists (``keygen``, ``sign``, ``trust ...``)."""

    TRUST_REFUSED = (
        "TRUST_REFUSED",
        "a trust decision refused something without a more precise code",
    )
    KEY_INVALID = (
        "KEY_INVALID",
        "a key file is not a regular file, is too large, or is not a usable key",
    )
    KEY_EXISTS = (
        "KEY_EXISTS",
        "the key file already exists (never overwritten), or the key is already in the registry "
        "or already serves that AUFS role",
    )
    KEY_NOT_FOUND = (
        "KEY_NOT_FOUND",
        "no such key file, no unique registry key for that id prefix, or not a key of that role",
    )
    KEY_PERMISSIONS = "KEY_PERMISSIONS", "a private key file is readable by group or others"
    KEY_DECRYPT_FAILED = (
        "KEY_DECRYPT_FAILED",
        "wrong passphrase, or not a PEM private key",
    )
    KEY_ID_MISMATCH = "KEY_ID_MISMATCH", "a key id does not match its key material"
    PASSPHRASE_REQUIRED = (
        "PASSPHRASE_REQUIRED",
        "an encrypted key needs a passphrase: none in the environment and no terminal, or the "
        "two entries differ",
    )
    PASSPHRASE_WEAK = "PASSPHRASE_WEAK", "a new key's passphrase is shorter than 8 characters"
    ALGORITHM_NOT_ALLOWED = (
        "ALGORITHM_NOT_ALLOWED",
        "FIPS mode: a key or signature scheme outside ECDSA P-256/P-384 is refused",
    )
    REGISTRY_INVALID = (
        "REGISTRY_INVALID",
        "the trust registry file does not parse or breaks its schema",
    )
    REVOCATION_INVALID = (
        "REVOCATION_INVALID",
        "the revocation list does not parse or breaks its schema",
    )
    REVOCATION_SIGNER_INVALID = (
        "REVOCATION_SIGNER_INVALID",
        "the revocation list is not signed by a maintainer key of the registry",
    )
    SIGNATURE_INVALID = (
        "SIGNATURE_INVALID",
        "the revocation list's signature does not verify",
    )
    REVOCATION_ROLLBACK = (
        "REVOCATION_ROLLBACK",
        "the revocation list is older than one already accepted, or missing after one was",
    )
    ALREADY_REVOKED = "ALREADY_REVOKED", "the key or module is already revoked"
    TRUST_FILE_TOO_LARGE = (
        "TRUST_FILE_TOO_LARGE",
        "a trust file (registry, revocations) is larger than its cap",
    )


class WorkspaceCode(Code):
    """The workspace, its configuration, its state and tenants (``init``, ``cordon``, ...)."""

    WORKSPACE_INVALID = "WORKSPACE_INVALID", "the workspace is unusable (no more precise code)"
    WORKSPACE_NOT_FOUND = (
        "WORKSPACE_NOT_FOUND",
        "no `nightcore.toml` there: not a workspace (`nightcore init`, `-w DIR`)",
    )
    WORKSPACE_EXISTS = "WORKSPACE_EXISTS", "`nightcore init` over an existing workspace"
    CONFIG_INVALID = "CONFIG_INVALID", "`nightcore.toml` does not parse or breaks its schema"
    STATE_INVALID = (
        "STATE_INVALID",
        "a state file (revocation version mark, AUFS install record, mirror cursor) is corrupt",
    )
    INDEX_UNAVAILABLE = (
        "INDEX_UNAVAILABLE",
        "the run index database is unusable; it is derived data (`nightcore state rebuild`)",
    )
    NODE_KEY_MISSING = "NODE_KEY_MISSING", "`node.pub.pem` is missing"
    NODE_KEY_MISMATCH = "NODE_KEY_MISMATCH", "the node's private key does not match `node.pub.pem`"
    TENANT_NOT_FOUND = "TENANT_NOT_FOUND", "no such tenant under `modules/`"
    ALREADY_CORDONED = "ALREADY_CORDONED", "`cordon` of a tenant that is already cordoned"
    NOT_CORDONED = "NOT_CORDONED", "`uncordon` of a tenant that is not cordoned"
    TENANT_DIR_EXISTS = (
        "TENANT_DIR_EXISTS",
        "`nightcore new` over an existing path: it writes a new directory only",
    )
    TOOLCHAIN_MISSING = (
        "TOOLCHAIN_MISSING",
        "`nightcore build` of C needs the ziglang package (`pip install ziglang`)",
    )
    BUILD_FAILED = "BUILD_FAILED", "`nightcore build`: the WAT or C source did not compile"
    DEV_MODE_DISABLED = (
        "DEV_MODE_DISABLED",
        "`run --dev-limits` on a node whose policy is not in development mode "
        "(`[policy] development = true`); audited as `dev_override_refused`",
    )


class CliCode(Code):
    """Refusals common to every command."""

    USAGE = "USAGE", "the command line (or an API request) is malformed or asks the impossible"
    IO_ERROR = "IO_ERROR", "a file could not be read or written (the message has the OS error)"
    INTERRUPTED = "INTERRUPTED", "the command was interrupted (Ctrl-C)"
    INTERNAL = "INTERNAL", "a programming error inside Night Core (please report it)"
    JSON_INVALID = (
        "JSON_INVALID",
        "untrusted JSON is too large, malformed, has duplicate keys or non-finite numbers, "
        "or a value cannot be canonicalised",
    )
    ID_AMBIGUOUS = (
        "ID_AMBIGUOUS",
        "an id prefix matches more than one id (the message lists them): give more characters",
    )
    ID_NOT_FOUND = "ID_NOT_FOUND", "no id starts with the prefix given"


class AuditCode(Code):
    """The audit log and its mirrors (``audit verify``, ``audit mirror ...``)."""

    AUDIT_INVALID = "AUDIT_INVALID", "an audit failure without a more precise code"
    AUDIT_LINE_MALFORMED = (
        "AUDIT_LINE_MALFORMED",
        "a line is not JSON or has missing, unknown or mistyped fields",
    )
    AUDIT_NOT_CANONICAL = "AUDIT_NOT_CANONICAL", "a line is not RFC 8785 canonical JSON"
    AUDIT_SEQ_GAP = (
        "AUDIT_SEQ_GAP",
        "a line's `seq` is not the next one (a line deleted, inserted or reordered)",
    )
    AUDIT_CHAIN_BROKEN = (
        "AUDIT_CHAIN_BROKEN",
        "a line's `prev` is not the previous line's hash (an earlier line was edited)",
    )
    AUDIT_TORN_TAIL = (
        "AUDIT_TORN_TAIL",
        "the last line has no newline: a write was interrupted (the next append moves it aside)",
    )
    AUDIT_LINE_TOO_LARGE = "AUDIT_LINE_TOO_LARGE", "an audit event or line is above the line cap"
    AUDIT_WRITE_FAILED = "AUDIT_WRITE_FAILED", "a short write to the audit log"
    AUDIT_TREE_MISMATCH = (
        "AUDIT_TREE_MISMATCH",
        "the log is not what `tree.bin` ingested (changed or cut after ingestion); nothing "
        "is signed",
    )
    AUDIT_TRUNCATED = (
        "AUDIT_TRUNCATED",
        "the log is shorter than a signed checkpoint (lines removed)",
    )
    MIRROR_GAP = "MIRROR_GAP", "an audit mirror is missing lines before the ones it holds"
    MIRROR_NOT_FOUND = (
        "MIRROR_NOT_FOUND",
        "no audit mirror of that name is configured (or no audit stream on that NATS server)",
    )
    MIRROR_UNAVAILABLE = "MIRROR_UNAVAILABLE", "an audit mirror cannot be read or written"
    MIRROR_ROOT_MISMATCH = (
        "MIRROR_ROOT_MISMATCH",
        "tampering: a mirror's Merkle root differs from a checkpoint the node signed (its "
        "history was rewritten)",
    )
    MIRROR_DIVERGED = (
        "MIRROR_DIVERGED",
        "tampering: a mirror's line differs from the node's own line at that position",
    )
    MIRROR_AHEAD = (
        "MIRROR_AHEAD",
        "tampering: a mirror holds lines beyond the node's log (lines the node never wrote)",
    )
    MIRROR_TRUNCATED = (
        "MIRROR_TRUNCATED",
        "tampering: a mirror holds fewer lines than it acknowledged (node cursor, chunk "
        "names, delete markers, stream sequence)",
    )
    MIRROR_CHECKPOINT_MISSING = (
        "MIRROR_CHECKPOINT_MISSING",
        "tampering: a checkpoint the mirror received (or one below a checkpoint it holds) is gone",
    )
    MIRROR_LAG = (
        "MIRROR_LAG",
        "lag, not tampering: a mirror is consistent with the node's checkpoints but lacks its "
        "newest; sync it and verify again",
    )


class TlogCode(Code):
    """Checkpoints, signed notes, Merkle proofs and the tree store (``audit checkpoint``,
    ``audit prove``, ``audit verify-proof``, ``audit consistency``)."""

    CHECKPOINT_FORGED = (
        "CHECKPOINT_FORGED",
        "a checkpoint's signature does not verify with the node key",
    )
    CHECKPOINT_MALFORMED = (
        "CHECKPOINT_MALFORMED",
        "a checkpoint is not a well-formed C2SP checkpoint (or its file holds another size)",
    )
    CHECKPOINT_ORIGIN_MISMATCH = (
        "CHECKPOINT_ORIGIN_MISMATCH",
        "a checkpoint names another origin (another log)",
    )
    CHECKPOINT_ROOT_INVALID = (
        "CHECKPOINT_ROOT_INVALID",
        "a checkpoint root is not canonical base64 of 32 bytes",
    )
    CHECKPOINT_SIZE_INVALID = (
        "CHECKPOINT_SIZE_INVALID",
        "a checkpoint tree size is not a canonical decimal in [0, 2^64-1]",
    )
    CHECKPOINT_ROOT_MISMATCH = (
        "CHECKPOINT_ROOT_MISMATCH",
        "a validly signed checkpoint's root is not the log's root at its size (history rewritten)",
    )
    CHECKPOINT_EVENT_MISMATCH = (
        "CHECKPOINT_EVENT_MISMATCH",
        "a `checkpoint` audit event's root is not the log's root at its size",
    )
    CHECKPOINT_KEY_NAME_INVALID = (
        "CHECKPOINT_KEY_NAME_INVALID",
        "the node name cannot be a signed-note key name (space or `+`)",
    )
    CHECKPOINT_UNSUPPORTED_KEY = (
        "CHECKPOINT_UNSUPPORTED_KEY",
        "checkpoints need an Ed25519 or ECDSA P-256 node key (a P-384 key cannot sign notes)",
    )
    CHECKPOINT_KEY_OUT_OF_RANGE = (
        "CHECKPOINT_KEY_OUT_OF_RANGE",
        "a checkpoint is signed by a node key of the history outside the sizes it may sign",
    )
    NODE_KEY_HISTORY_INVALID = (
        "NODE_KEY_HISTORY_INVALID",
        "the node-key history is malformed, its chain or signature does not verify, "
        "or the log lacks a rotation it records",
    )
    NODE_KEY_UNKNOWN = (
        "NODE_KEY_UNKNOWN",
        "the pinned or named node key is not in the node-key history",
    )
    NODE_KEY_REVOKED = (
        "NODE_KEY_REVOKED",
        "signed by a revoked node key after its last trusted log size",
    )
    NODE_KEY_ROTATED = (
        "NODE_KEY_ROTATED",
        "the node key was rotated after this process loaded it (restart it)",
    )
    NODE_KEY_REVOKE_ACTIVE = (
        "NODE_KEY_REVOKE_ACTIVE",
        "the active node key cannot be revoked: rotate first",
    )
    CONSISTENCY_FAILED = (
        "CONSISTENCY_FAILED",
        "a newer checkpoint (or the log) does not extend an older checkpoint",
    )
    NOTE_MALFORMED = (
        "NOTE_MALFORMED",
        "a signed note is not bytes, lacks its final newline or the blank line before signatures",
    )
    NOTE_ENCODING_INVALID = (
        "NOTE_ENCODING_INVALID",
        "a note is not UTF-8 or holds control characters other than newline",
    )
    NOTE_TOO_LARGE = "NOTE_TOO_LARGE", "a note, signed note or note file is above its size cap"
    NOTE_TOO_MANY_SIGNATURES = (
        "NOTE_TOO_MANY_SIGNATURES",
        "a note carries more signatures than allowed",
    )
    NOTE_KEY_NAME_INVALID = (
        "NOTE_KEY_NAME_INVALID",
        "a note key name is empty or holds a space, `+` or a control character",
    )
    NOTE_SIGNATURE_ENCODING_INVALID = (
        "NOTE_SIGNATURE_ENCODING_INVALID",
        "a note signature line is not canonical base64 of a key ID and a signature",
    )
    NOTE_SIGNATURE_DUPLICATE = (
        "NOTE_SIGNATURE_DUPLICATE",
        "the same key signed the note twice",
    )
    NOTE_SIGNATURE_INVALID = (
        "NOTE_SIGNATURE_INVALID",
        "a known key's note signature has the wrong length or does not verify",
    )
    NOTE_SIGNER_INVALID = "NOTE_SIGNER_INVALID", "a note signing key is not an Ed25519 private key"
    NOTE_UNKNOWN_KEY = "NOTE_UNKNOWN_KEY", "the note carries no signature from a known key"
    NOTE_VERIFIER_INVALID = (
        "NOTE_VERIFIER_INVALID",
        "a note verifier is not a (name, Ed25519 public key) pair",
    )
    NOTE_VERIFIER_AMBIGUOUS = (
        "NOTE_VERIFIER_AMBIGUOUS",
        "several verifiers share one key name and key ID",
    )
    VKEY_INVALID = (
        "VKEY_INVALID",
        "a verifier key string is not `<name>+<key id>+<key>` with a valid name and key ID",
    )
    VKEY_ALGORITHM_UNSUPPORTED = (
        "VKEY_ALGORITHM_UNSUPPORTED",
        "a verifier key is not Ed25519 (signature type 0x01)",
    )
    VKEY_KEY_ID_MISMATCH = (
        "VKEY_KEY_ID_MISMATCH",
        "a verifier key's key ID does not match its name and key",
    )
    PROOF_FORMAT_INVALID = (
        "PROOF_FORMAT_INVALID",
        "not a tlog-proof (or consistency proof) file, or too large",
    )
    PROOF_LENGTH_INVALID = (
        "PROOF_LENGTH_INVALID",
        "a proof has a hash too many or too few",
    )
    PROOF_HASH_INVALID = "PROOF_HASH_INVALID", "a proof hash is not 32 bytes"
    PROOF_SIZE_INVALID = (
        "PROOF_SIZE_INVALID",
        "a proof's tree sizes are out of range or out of order, or do not match the checkpoint",
    )
    PROOF_INDEX_OUT_OF_RANGE = (
        "PROOF_INDEX_OUT_OF_RANGE",
        "the entry index is not below the tree size (or not covered by the checkpoint)",
    )
    PROOF_INDEX_MISMATCH = (
        "PROOF_INDEX_MISMATCH",
        "the entry's `seq` is not the index the proof puts it at",
    )
    PROOF_ROOT_MISMATCH = (
        "PROOF_ROOT_MISMATCH",
        "a proof does not lead to the checkpoint's root (entry or path altered)",
    )
    TREE_HASH_INVALID = (
        "TREE_HASH_INVALID",
        "a tree hash is not 32 bytes, or stored leaf hashes end in a partial record",
    )
    TREE_SIZE_OUT_OF_RANGE = (
        "TREE_SIZE_OUT_OF_RANGE",
        "a tree size or node is outside the tree, or the tree is too large",
    )
    TREE_STORE_CORRUPT = (
        "TREE_STORE_CORRUPT",
        "`tree.bin` has a bad magic or ends in a partial record (derived: rebuilt from the log)",
    )


class EvidenceCode(Code):
    """Evidence bundles, run attestations, SBOMs and replay (``evidence ...``, ``replay``)."""

    BUNDLE_INVALID = "BUNDLE_INVALID", "a bundle failure without a more precise code"
    BUNDLE_MALFORMED = (
        "BUNDLE_MALFORMED",
        "not a readable tar.gz bundle, or `index.json` is not a Night Core bundle index",
    )
    BUNDLE_UNSAFE_MEMBER = (
        "BUNDLE_UNSAFE_MEMBER",
        "a member is a link, device or sparse file, or has an absolute or `..` path",
    )
    BUNDLE_DUPLICATE = "BUNDLE_DUPLICATE", "two bundle members have the same path"
    BUNDLE_TOO_LARGE = (
        "BUNDLE_TOO_LARGE",
        "too many members, a member or header too large, or more bytes than the caps allow",
    )
    INDEX_SIGNATURE_INVALID = (
        "INDEX_SIGNATURE_INVALID",
        "`index.dsse.json` does not verify with the node key or does not cover `index.json`",
    )
    FILE_HASH_MISMATCH = (
        "FILE_HASH_MISMATCH",
        "a file does not match its index hash, or `SHA256SUMS` disagrees with the index",
    )
    FILE_UNEXPECTED = "FILE_UNEXPECTED", "a bundle file is not in the index"
    FILE_MISSING = "FILE_MISSING", "a file the index lists is missing from the bundle"
    ATTESTATION_SIGNATURE_INVALID = (
        "ATTESTATION_SIGNATURE_INVALID",
        "a run attestation is not signed by the node key",
    )
    ATTESTATION_INVALID = (
        "ATTESTATION_INVALID",
        "not a Night Core run attestation, or not the attestation of the run its path names",
    )
    ATTESTATION_SUBJECT_MISMATCH = (
        "ATTESTATION_SUBJECT_MISMATCH",
        "a run output in a bundle is not the one its node-signed attestation names",
    )
    ATTESTATION_AUDIT_MISMATCH = (
        "ATTESTATION_AUDIT_MISMATCH",
        "an attestation has no `run_outcome` line or disagrees with it (seq, code, fuel, digests)",
    )
    PROOF_CHECKPOINT_MISMATCH = (
        "PROOF_CHECKPOINT_MISMATCH",
        "an audit line's inclusion proof is against another checkpoint than `audit.tail`",
    )
    CHECKPOINT_MISSING = (
        "CHECKPOINT_MISSING",
        "an export needs a signed checkpoint and there is none (`forensics export "
        "--no-checkpoint` on a log never checkpointed)",
    )
    RUN_NOT_FOUND = "RUN_NOT_FOUND", "no such run (or not a run of that tenant)"
    SBOM_INVALID = "SBOM_INVALID", "the SBOM does not validate against CycloneDX 1.5"
    CONTENT_TAMPERED = (
        "CONTENT_TAMPERED",
        "replay: a stored module or input no longer matches its recorded digest",
    )
    REPLAY_MATCH = "REPLAY_MATCH", "replay: outcome, stdout and stderr digests match the record"
    REPLAY_DIVERGED = "REPLAY_DIVERGED", "replay: the re-run differs from the record"


class AufsCode(Code):
    """AUFS, the update framework (``aufs ...``; docs/aufs.md has the python-tuf mapping)."""

    OK = "OK", "a target was checked: installed, unchanged or rolled back as asked"
    AUFS_ROLLBACK = (
        "AUFS_ROLLBACK",
        "a metadata version went backwards (python-tuf `BadVersionNumberError`)",
    )
    AUFS_EXPIRED = (
        "AUFS_EXPIRED",
        "trusted metadata expired (freeze) or staged targets expired at publish",
    )
    AUFS_HASH_MISMATCH = (
        "AUFS_HASH_MISMATCH",
        "a file does not match the length/hash its signed parent names",
    )
    AUFS_THRESHOLD = (
        "AUFS_THRESHOLD",
        "not signed by a threshold of distinct authorised keys (client or `publish`)",
    )
    AUFS_METADATA_INVALID = "AUFS_METADATA_INVALID", "metadata does not parse"
    AUFS_REPOSITORY_ERROR = "AUFS_REPOSITORY_ERROR", "any other python-tuf `RepositoryError`"
    AUFS_DOWNLOAD = "AUFS_DOWNLOAD", "HTTP error, connection failure, truncated body"
    AUFS_TOO_LARGE = (
        "AUFS_TOO_LARGE",
        "more bytes than allowed (metadata limits, signed length, archive caps)",
    )
    AUFS_SLOW_RETRIEVAL = "AUFS_SLOW_RETRIEVAL", "deadline or gap timeout passed"
    AUFS_TARGET_INVALID = (
        "AUFS_TARGET_INVALID",
        "target path/custom data/content breaks the rules",
    )
    AUFS_TARGET_NOT_FOUND = "AUFS_TARGET_NOT_FOUND", "the signed targets do not list the path"
    AUFS_ARCHIVE_UNSAFE = "AUFS_ARCHIVE_UNSAFE", "hostile archive member"
    DOWNGRADE_REFUSED = (
        "DOWNGRADE_REFUSED",
        "lower version than installed without a valid dual-signed override",
    )
    AUFS_OVERRIDE_INVALID = (
        "AUFS_OVERRIDE_INVALID",
        "a downgrade override does not verify or does not match",
    )
    ABI_UNSUPPORTED = "ABI_UNSUPPORTED", "the module needs a host ABI this runtime lacks"
    SCHEMA_UNSUPPORTED = "SCHEMA_UNSUPPORTED", "manifest schema with no translation path"
    RUNTIME_TOO_OLD = "RUNTIME_TOO_OLD", "target's `min_runtime` is above this runtime"
    RUNTIME_SELFTEST_FAILED = (
        "RUNTIME_SELFTEST_FAILED",
        "a runtime release failed its self-test; the previous one stays",
    )
    AUFS_NOT_INITIALIZED = "AUFS_NOT_INITIALIZED", "no trusted root yet (`aufs client init`)"
    AUFS_ALREADY_INITIALIZED = (
        "AUFS_ALREADY_INITIALIZED",
        "`aufs client init` over an existing trusted root",
    )
    AUFS_ROOT_MISMATCH = (
        "AUFS_ROOT_MISMATCH",
        "`aufs client init`: `root.json` is not the one pinned by `--expect-sha256`",
    )
    AUFS_CONFIG_INVALID = "AUFS_CONFIG_INVALID", "`aufs.toml` or `aufs-repo.json` is malformed"
    AUFS_NOT_STAGED = "AUFS_NOT_STAGED", "repository tooling: sign/publish with nothing staged"
    AUFS_KEY_NOT_AUTHORIZED = (
        "AUFS_KEY_NOT_AUTHORIZED",
        "repository tooling: a key that the role does not list",
    )
    AUFS_REPO_EXISTS = "AUFS_REPO_EXISTS", "`aufs repo init` over an existing repository"
    AUFS_REPO_NOT_FOUND = "AUFS_REPO_NOT_FOUND", "not an AUFS repository directory"
    AUFS_BUSY = "AUFS_BUSY", "another update/publish holds the lock"
    AUFS_NOTHING_TO_ROLL_BACK = (
        "AUFS_NOTHING_TO_ROLL_BACK",
        "`aufs rollback` without a kept previous version",
    )


class ConsoleCode(Code):
    """The dashboard and the live console (``dashboard ...``, ``serve``; docs/dashboard.md)."""

    SERVE_TLS_INVALID = (
        "SERVE_TLS_INVALID",
        "`--tls-cert`/`--tls-key` cannot be loaded (refused before the URL is printed)",
    )
    SERVE_REMOTE_REFUSED = (
        "SERVE_REMOTE_REFUSED",
        "a non-loopback `--host` without `--allow-remote` and TLS",
    )
    SERVE_BIND_FAILED = "SERVE_BIND_FAILED", "cannot listen on the host and port asked for"
    DASHBOARD_DATA_MISSING = (
        "DASHBOARD_DATA_MISSING",
        "a template, stylesheet, script or the OpenAPI document of the dashboard is missing from "
        "the installation (package data not installed)",
    )
    TOKEN_MISSING = "TOKEN_MISSING", "HTTP 401: a bearer token is required"
    TOKEN_INVALID = "TOKEN_INVALID", "HTTP 401: malformed, unknown or revoked bearer token"
    TOKEN_EXPIRED = "TOKEN_EXPIRED", "HTTP 401: the bearer token has expired"
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND", "`serve token revoke`: no token with that id"
    TOKEN_LIMIT = "TOKEN_LIMIT", "too many unexpired tokens exist; revoke some first"
    TOKEN_STORE_INSECURE = (
        "TOKEN_STORE_INSECURE",
        "the token store is not a regular file with mode 0600",
    )
    TOKEN_STORE_INVALID = "TOKEN_STORE_INVALID", "the token store cannot be read or does not parse"
    ORIGIN_REJECTED = "ORIGIN_REJECTED", "HTTP 403: a cross-origin or cross-site request"
    HOST_REJECTED = "HOST_REJECTED", "HTTP 421: a `Host` header this server does not answer to"
    RATE_LIMITED = (
        "RATE_LIMITED",
        "HTTP 429: too many failed authentications, or a token's changes above its rate "
        "(`Retry-After`)",
    )
    EVENTS_CLIENT_LIMIT = (
        "EVENTS_CLIENT_LIMIT",
        "HTTP 429: this client address already has the most `/events` streams open (8)",
    )
    EVENTS_CAPACITY = (
        "EVENTS_CAPACITY",
        "HTTP 503: the console already serves the most `/events` streams (64)",
    )
    BUSY = "BUSY", "HTTP 409: a run started from the console is still in progress"
    NOT_FOUND = "NOT_FOUND", "HTTP 404: no such route"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", "HTTP 405: the route does not take that method"
    HTTP_ERROR = "HTTP_ERROR", "any other HTTP error of the console"
    NOT_VERIFIED = "NOT_VERIFIED", "shown in place of a verify code: the tenant was not verified"
    NO_RUNS = "NO_RUNS", "shown in place of a run code: the tenant has no recorded run"


class NodeCode(Code):
    """The resident node agent (``nightcore node``) and its clients."""

    NODE_RUNNING = "NODE_RUNNING", "a node is already running for this workspace"
    NODE_NOT_RUNNING = "NODE_NOT_RUNNING", "no node is running for this workspace"
    NODE_UNREACHABLE = (
        "NODE_UNREACHABLE",
        "the node's socket cannot be reached (`--local` works without it)",
    )
    NODE_DISCONNECTED = (
        "NODE_DISCONNECTED",
        "the node closed the connection before answering",
    )
    NODE_REPLY_INVALID = "NODE_REPLY_INVALID", "the node's reply is malformed or too large"
    NODE_REQUEST_INVALID = "NODE_REQUEST_INVALID", "a request to the node is malformed"
    NODE_PEER_REFUSED = (
        "NODE_PEER_REFUSED",
        "the connecting user may not use this node (peer uid is not the owner's)",
    )
    NODE_SHUTTING_DOWN = "NODE_SHUTTING_DOWN", "the node is shutting down and takes no new work"
    NODE_ERROR = "NODE_ERROR", "the node refused a request without naming a code"


class MeshCode(Code):
    """Night Mesh (``nightcore node --mesh``, ``nightcore mesh``): NATS JetStream between nodes."""

    MESH_CONFIG_INVALID = (
        "MESH_CONFIG_INVALID",
        "a mesh option is malformed: server URL, prefix, node name, credentials or TLS file",
    )
    MESH_UNREACHABLE = "MESH_UNREACHABLE", "no NATS server of the mesh answered in time"
    MESH_ERROR = "MESH_ERROR", "NATS or JetStream refused a request (the message says which)"
    MESH_NOT_CAUGHT_UP = (
        "MESH_NOT_CAUGHT_UP",
        "the node has not yet applied every trust change on the bus: it admits no run until then",
    )
    MESH_DOC_INVALID = (
        "MESH_DOC_INVALID",
        "a trust document on the bus is malformed, of an unknown kind, or too large",
    )
    MESH_DOC_SIGNER_INVALID = (
        "MESH_DOC_SIGNER_INVALID",
        "a trust document on the bus is not signed by a trusted, unexpired, unrevoked maintainer",
    )
    MESH_DOC_ROLLBACK = (
        "MESH_DOC_ROLLBACK",
        "a trust document's version is not newer than the one this node applied (replay)",
    )
    MESH_PUBLISH_CONFLICT = (
        "MESH_PUBLISH_CONFLICT",
        "another publisher took that document version first: run the command again",
    )
    MESH_WORK_REQUEST_INVALID = (
        "MESH_WORK_REQUEST_INVALID",
        "a work request on the bus is not strict JSON of the request schema (keys, request id, "
        "tenant list, `Nats-Msg-Id` header): terminated, audited, answered with this code",
    )
    MESH_WORK_REQUEST_TOO_LARGE = (
        "MESH_WORK_REQUEST_TOO_LARGE",
        "a work request on the bus is above the 16 KiB cap: terminated, audited, answered with "
        "this code",
    )
    MESH_WORK_RESULT_INVALID = (
        "MESH_WORK_RESULT_INVALID",
        "a result on the results stream does not parse as a work result (`mesh runs` shows it "
        "with this code; a node never runs its request again)",
    )
    MESH_PACKAGE_INVALID = (
        "MESH_PACKAGE_INVALID",
        "a tenant package in the mesh object store is not a package object for that tenant "
        "(schema, files, base64) or cannot be read whole: not installed, its run gets this code",
    )


class NetCode(Code):
    """The NET capability: each guest request through ``nightcore.http_request`` (``net_request``
    audit events; the guest gets the negative error number of docs/net.md)."""

    NET_FAULT = "NET_FAULT", "a pointer or length passed to `http_request` is outside guest memory"
    NET_URL_INVALID = (
        "NET_URL_INVALID",
        "the method or URL is malformed: not http(s), spaces or CR/LF (header injection), "
        "user info, fragment, bad escapes, `.`/`..` segments",
    )
    NET_DENIED = "NET_DENIED", "no granted destination matches the URL's scheme, host, port, path"
    NET_ADDRESS_DENIED = (
        "NET_ADDRESS_DENIED",
        "the host is or resolves to a non-public address that the grant does not name literally",
    )
    NET_RESOLVE_FAILED = "NET_RESOLVE_FAILED", "the host name does not resolve"
    NET_CONNECT_FAILED = (
        "NET_CONNECT_FAILED",
        "the connection or TLS verification to the checked address failed",
    )
    NET_TIMEOUT = "NET_TIMEOUT", "the run's wall-clock limit ran out before the exchange ended"
    NET_REQUEST_TOO_LARGE = (
        "NET_REQUEST_TOO_LARGE",
        "the request body exceeds the node's `policy.net.max_request_bytes`",
    )
    NET_RESPONSE_TOO_LARGE = (
        "NET_RESPONSE_TOO_LARGE",
        "the response body exceeds the guest's buffer or `policy.net.max_response_bytes`",
    )
    NET_LIMIT = "NET_LIMIT", "the run made more requests than `policy.net.max_requests`"
    NET_PROTOCOL = "NET_PROTOCOL", "the server's HTTP response is malformed"
    NET_UNSUPPORTED = "NET_UNSUPPORTED", "the host API was called outside a run with NET"
    NET_HOST_ERROR = "NET_HOST_ERROR", "the host failed while handling the request (a bug)"


class ReleaseCode(Code):
    """Night Core's own releases (``nightcore release verify``; docs/supply-chain.md)."""

    RELEASE_MALFORMED = (
        "RELEASE_MALFORMED",
        "the release is not a directory of regular files within the caps, or its file names "
        "disagree on the version",
    )
    RELEASE_FILE_MISSING = (
        "RELEASE_FILE_MISSING",
        "a release file is missing (`SHA256SUMS`, a signature, the provenance, the wheel, the "
        "sdist, the SBOM, or a file `SHA256SUMS` lists)",
    )
    RELEASE_FILE_UNLISTED = (
        "RELEASE_FILE_UNLISTED",
        "a file in the release directory is not listed in `SHA256SUMS`",
    )
    RELEASE_SUMS_MALFORMED = (
        "RELEASE_SUMS_MALFORMED",
        "`SHA256SUMS` is not `<sha256> <file name>` lines (two spaces) with unique plain names",
    )
    RELEASE_SUMS_MISMATCH = (
        "RELEASE_SUMS_MISMATCH",
        "`SHA256SUMS` is not the checksum list the release key signed",
    )
    RELEASE_DIGEST_MISMATCH = (
        "RELEASE_DIGEST_MISMATCH",
        "a release file's SHA-256 is not the one `SHA256SUMS` gives (the file is named)",
    )
    RELEASE_SIGNATURE_INVALID = (
        "RELEASE_SIGNATURE_INVALID",
        "a release envelope is malformed or not signed by the given release key",
    )
    RELEASE_PROVENANCE_INVALID = (
        "RELEASE_PROVENANCE_INVALID",
        "the signed statement is not in-toto v1 with SLSA provenance v1 naming a source commit "
        "and a builder",
    )
    RELEASE_SUBJECT_MISMATCH = (
        "RELEASE_SUBJECT_MISMATCH",
        "the provenance subjects are not exactly the release's artifacts with their digests",
    )
    RELEASE_SBOM_INVALID = (
        "RELEASE_SBOM_INVALID",
        "the release SBOM is not valid CycloneDX 1.5 or does not describe this wheel",
    )


class Domain(NamedTuple):
    name: str
    title: str  # the heading of its section in docs/codes.md
    codes: type[Code]


DOMAINS: tuple[Domain, ...] = (
    Domain(
        "verify",
        "Verification (`nightcore verify`, and the first step of `nightcore run`)",
        VerifyCode,
    ),
    Domain("run", "Run outcomes (`nightcore run`)", RunCode),
    Domain("sandbox", "Sandbox and strongbox refusals", SandboxCode),
    Domain("trust", "Keys, trust registry and revocations (`keygen`, `sign`, `trust`)", TrustCode),
    Domain("workspace", "Workspace, configuration and state", WorkspaceCode),
    Domain("cli", "Any command", CliCode),
    Domain("audit", "Audit log and mirrors", AuditCode),
    Domain("tlog", "Checkpoints, signed notes, proofs and the Merkle tree", TlogCode),
    Domain("evidence", "Evidence bundles, attestations and replay", EvidenceCode),
    Domain("aufs", "AUFS updates (`nightcore aufs`)", AufsCode),
    Domain(
        "console",
        "Dashboard and live console (`nightcore dashboard`, `nightcore serve`)",
        ConsoleCode,
    ),
    Domain("node", "Node agent (`nightcore node`)", NodeCode),
    Domain("mesh", "Night Mesh (`nightcore node --mesh`, `nightcore mesh`)", MeshCode),
    Domain("net", "NET capability (`nightcore.http_request`, `net_request` events)", NetCode),
    Domain("release", "Night Core releases (`nightcore release verify`)", ReleaseCode),
)


class CodeInfo(NamedTuple):
    code: str
    domain: str
    meaning: str


def _all_codes() -> dict[str, tuple[CodeInfo, ...]]:
    out: dict[str, list[CodeInfo]] = {}
    for d in DOMAINS:
        for member in d.codes:
            out.setdefault(member.value, []).append(CodeInfo(member.value, d.name, member.meaning))
    return {code: tuple(infos) for code, infos in sorted(out.items())}


ALL_CODES: Mapping[str, tuple[CodeInfo, ...]] = MappingProxyType(_all_codes())
"""Every code -> its (code, domain, meaning) in each domain that uses it."""


def markdown_tables() -> str:
    """The per-domain sections of docs/codes.md (``python -m nightcore.codes`` prints them)."""
    parts = []
    for d in DOMAINS:
        rows = "\n".join(f"| `{m.value}` | {m.meaning} |" for m in d.codes)
        parts.append(f"## {d.title}\n\n| code | meaning |\n|---|---|\n{rows}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(markdown_tables())
