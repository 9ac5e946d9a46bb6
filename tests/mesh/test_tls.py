"""TLS to the mesh: a real nats-server requiring TLS with client certificates (mutual TLS),
certificates made at test time (a throwaway CA, server and client keys)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
from pathlib import Path

from nightcore.trust.keys import GeneratedKey
from tests.conftest import run_cli_subprocess
from tests.mesh.nodes import MeshNode, make_workspace
from tests.mesh.servers import NatsServer


def _pki(d: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test mesh CA"))
        .issuer_name(name("test mesh CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"test mesh {who}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out[who] = d / f"{who}.pem"
        out[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"] = write_key(key, d / f"{who}.key")
    return out


def test_mutual_tls_is_plumbed_through_node_and_cli(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    pki = _pki(tmp_path / "pki")
    tls = (
        "tls {\n"
        f'  cert_file: "{pki["server"]}"\n'
        f'  key_file: "{pki["server_key"]}"\n'
        f'  ca_file: "{pki["ca"]}"\n'
        "  verify: true\n"
        "}"
    )
    server = NatsServer(tmp_path / "nats", extra_conf=tls).start()
    node: MeshNode | None = None
    client_tls = (
        *("--mesh-tls-ca", str(pki["ca"])),
        *("--mesh-tls-cert", str(pki["client"]), "--mesh-tls-key", str(pki["client_key"])),
    )
    try:
        ws = make_workspace(tmp_path / "ws", keys_dir)
        # No client certificate: the server refuses; no CA: the client refuses the server.
        for extra in ((), ("--mesh-tls-ca", str(pki["ca"]))):
            res = run_cli_subprocess("-w", str(ws), "mesh", "status", "--mesh", server.url, *extra)
            assert res.code == 2 and "error[MESH_" in res.err, res.err
            assert "Traceback" not in res.err
        node = MeshNode(ws, server.url, "n1", extra=client_tls)
        node.wait_caught_up()
        assert node.run_codes("hello") == ["OK"]
        deadline = time.monotonic() + 60
        while True:  # until the node's first heartbeat is in
            res = run_cli_subprocess(
                *("-w", str(ws), "mesh", "status", "--mesh", server.url, *client_tls, "--json")
            )
            assert res.code == 0, res.err
            status = json.loads(res.out)
            assert status["mesh"]["tls"] is True
            if status["nodes"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling a condition with a deadline
        assert [n["node"] for n in status["nodes"]] == ["n1"]
    finally:
        if node is not None:
            node.kill()
        server.stop()
