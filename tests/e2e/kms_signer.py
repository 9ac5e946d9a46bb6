"""A software signer behind securesystemslib's signer-URI interface, as a KMS/HSM plugin is.

``softkms:<path>`` loads an unencrypted PKCS#8 PEM with securesystemslib's ``CryptoSigner``:
the node reaches it only through ``Signer.from_priv_key_uri`` (Night Core's ``SslibSignerAdapter``
path, not its local-file fast path). ``python -m tests.e2e.kms_signer ARGS`` registers the scheme
and runs the ``nightcore`` CLI with ARGS, as a host with a KMS plugin installed would.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, CryptoSigner

SCHEME = "softkms"


class SoftKmsSigner(CryptoSigner):
    calls = 0

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Any, secrets_handler: Any = None
    ) -> CryptoSigner:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        path = Path(priv_key_uri.partition(":")[2])
        private = load_pem_private_key(path.read_bytes(), None)
        return CryptoSigner(private, public_key)


def register() -> None:
    SIGNER_FOR_URI_SCHEME[SCHEME] = SoftKmsSigner


if __name__ == "__main__":
    register()
    from nightcore.cli.main import main

    sys.exit(main(sys.argv[1:]))
