"""One exception tree for Night Core.

Every error carries a stable ``code`` (an upper-case identifier that scripts, the audit log
and the dashboard may rely on) and a one-line human message. The CLI prints
``error[CODE]: message`` and exits non-zero; it never prints a traceback for these.
"""

from __future__ import annotations


class NightCoreError(Exception):
    """Base of every error Night Core raises on purpose."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        # Messages are one line: a newline in an error would let tenant-controlled text
        # forge extra lines in terminals and logs.
        super().__init__(" ".join(message.split()))
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(NightCoreError):
    code = "USAGE"


class WorkspaceError(NightCoreError):
    code = "WORKSPACE_INVALID"


class ConfigError(NightCoreError):
    code = "CONFIG_INVALID"


class KeyError_(NightCoreError):
    """Problems with key files (named with a trailing underscore to not shadow KeyError)."""

    code = "KEY_INVALID"


class TrustError(NightCoreError):
    """A verification or trust decision refused something (the code says which rule)."""

    code = "TRUST_REFUSED"


class ManifestError(NightCoreError):
    code = "MANIFEST_INVALID"


class PackageError(NightCoreError):
    code = "PACKAGE_INVALID"


class AuditError(NightCoreError):
    code = "AUDIT_INVALID"


class SandboxError(NightCoreError):
    code = "SANDBOX_ERROR"


class StateError(NightCoreError):
    code = "STATE_INVALID"


# Stable reason codes of the verification decision. Every code, with its meaning, is in
# nightcore.codes (not imported here: this module is on the CLI's cold path).
VERIFY_CODES = (
    "OK",
    "ENVELOPE_MALFORMED",
    "SIGNATURE_INVALID",
    "KEY_UNTRUSTED",
    "KEY_OUT_OF_SCOPE",
    "KEY_EXPIRED",
    "KEY_REVOKED",
    "MODULE_REVOKED",
    "MODULE_MALFORMED",
    "DIGEST_MISMATCH",
    "MANIFEST_INVALID",
    "MANIFEST_MISMATCH",
    "MANIFEST_EXPIRED",
    "MANIFEST_NOT_YET_VALID",
    "CAPABILITY_DENIED",
    "ALGORITHM_NOT_ALLOWED",
    "PACKAGE_INVALID",
    "PACKAGE_TOO_LARGE",
    "TENANT_NAME_INVALID",
)

# Stable outcome codes of a run.
RUN_CODES = (
    "OK",
    "EXIT_NONZERO",
    "FUEL_EXHAUSTED",
    "TIMEOUT",
    "MEMORY_LIMIT",
    "STACK_OVERFLOW",
    "OUTPUT_LIMIT",
    "TRAP",
    "DISK_LIMIT",
    "FD_LIMIT",
    "COMPILE_LIMIT",
    "COMPILE_ERROR",
    "INSTANTIATE_ERROR",
    "CORDONED",
    # --strongbox: the confined worker process
    "SECCOMP_VIOLATION",
    "WORKER_CRASHED",
    "WORKER_REPLY_INVALID",
)
