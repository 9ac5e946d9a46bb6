"""Issue 16, item 7: a TIMEOUT run's fuel is unknown (Wasmtime never wrote its counter back)
and must be recorded as null in the audit line and the attestation, never as a false 0.

The sandbox reports it (``RunResult.fuel_exact`` / ``fuel_reported``, tested in
tests/unit/test_sandbox.py); the run pipeline records ``fuel_reported`` in the audit line, the
attestation, the index and the CLI's JSON.
"""

from __future__ import annotations

from nightcore.evidence.attestation import open_attestation
from nightcore.trust.pubkey import PublicKey
from tests.conftest import Env
from tests.e2e.test_run_cli import install, run


def test_timeout_fuel_is_null_in_the_audit_line_and_attestation(env: Env) -> None:
    install(env, "infinite-loop")
    _, rows = run(env, "infinite-loop")
    row = rows["infinite-loop"]
    assert row["code"] == "TIMEOUT"
    outcome = next(
        e
        for e in env.audit_lines()
        if e["event"] == "run_outcome" and e["data"]["run_id"] == row["run_id"]
    )
    pub = PublicKey.from_pem((env.ws / "node.pub.pem").read_bytes())
    att = env.ws / "state/runs" / row["run_id"] / "attestation.intoto.dsse.json"
    predicate = open_attestation(att.read_bytes(), pub)["predicate"]
    assert (outcome["data"]["fuel_used"], predicate["fuel_used"], row["fuel_used"]) == (
        None,
        None,
        None,
    )
