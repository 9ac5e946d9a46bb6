"""``run --dev-limits``: a development override of a manifest's signed limits, allowed only
when node policy is in development mode, capped by policy maxima, and audited either way."""

from __future__ import annotations

from tests.conftest import Env, wat_module

LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))'


def _development(env: Env) -> None:
    toml = env.ws / "nightcore.toml"
    text = toml.read_text()
    assert "allow_deterministic = true\n" in text
    toml.write_text(
        text.replace(
            "allow_deterministic = true\n", "allow_deterministic = true\ndevelopment = true\n"
        )
    )


def test_refused_and_audited_without_development_policy(env: Env) -> None:
    env.add_tenant("hello")
    before = len(env.audit_lines())
    res = env.cli("run", "--dev-limits", "fuel=10", "--no-dashboard")
    assert res.code == 2 and "error[DEV_MODE_DISABLED]" in res.err and "Traceback" not in res.err
    lines = env.audit_lines()[before:]
    assert [r["event"] for r in lines] == ["dev_override_refused"]
    assert lines[0]["data"] == {"code": "DEV_MODE_DISABLED", "dev_limits": {"fuel": 10}}
    assert env.cli("audit", "verify").code == 0


def test_malformed_overrides_are_usage_errors(env: Env) -> None:
    _development(env)
    env.add_tenant("hello")
    for spec in ("fuel", "nope=1", "fuel=-1", "fuel=1,fuel=2", "fuel=0", "fuel=1e9", "=5", ""):
        res = env.cli("run", "--dev-limits", spec, "--no-dashboard")
        assert res.code == 2 and "error[USAGE]" in res.err, (spec, res.err)


def test_development_policy_overrides_capped_and_recorded(env: Env) -> None:
    _development(env)
    # Signed with fuel and wall time ample for nothing: a loop ends at one limit or the other.
    env.add_tenant("hello", "[limits]\nfuel = 1000\nwall_ms = 5000\n", wasm=wat_module(LOOP_WAT))
    res = env.cli(
        "run", "--json", "--no-dashboard", "--dev-limits", "fuel=5000000,wall_ms=999999999"
    )
    assert res.code == 1, res.err
    (row,) = res.json()
    assert row["code"] == "FUEL_EXHAUSTED"  # the override's budget, not the manifest's 1000
    (admit,) = [r for r in env.audit_lines() if r["event"] == "admit"]
    assert admit["data"]["dev_limits"] == {"fuel": 5000000, "wall_ms": 999999999}
    assert admit["data"]["limits"]["fuel"] == 5_000_000
    assert admit["data"]["limits"]["wall_ms"] == 10_000  # the policy maximum still holds
    assert row["fuel_used"] >= 5_000_000
    # The signed manifest is untouched: without the override the tenant runs as signed.
    again = env.cli("run", "--json", "--no-dashboard")
    assert again.code == 1 and again.json()[0]["code"] == "FUEL_EXHAUSTED"
    assert again.json()[0]["fuel_used"] <= 1000
    assert "dev_limits" not in [r for r in env.audit_lines() if r["event"] == "admit"][-1]["data"]
    assert env.cli("audit", "verify").code == 0
