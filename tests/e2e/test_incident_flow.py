"""The README's incident flow through the real CLI: run, cordon, forensic export, verify
elsewhere with only node.pub.pem — without a manual ``nightcore audit checkpoint``."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from tests.conftest import Env, run_cli_subprocess
from tests.e2e.test_run_cli import install


def _cli(env: Env, *args: str) -> Any:
    res = run_cli_subprocess("-w", str(env.ws), *args, "--json")
    assert res.code == 0 and "Traceback" not in res.err, res.err
    return json.loads(res.out)


def _verify_elsewhere(env: Env, bundle: Path, tmp: Path) -> dict[str, Any]:
    there = tmp / "elsewhere"
    there.mkdir()
    shutil.copy(bundle, there / "x.tar.gz")
    shutil.copy(env.ws / "node.pub.pem", there / "node.pub.pem")
    res = run_cli_subprocess(
        "forensics", "verify", "x.tar.gz", "--key", "node.pub.pem", "--json", cwd=there
    )
    assert "Traceback" not in res.err, res.err
    out: dict[str, Any] = json.loads(res.out)
    assert (res.code == 0) == out["ok"], out
    return out


def _lines(bundle: Path) -> list[dict[str, Any]]:
    with tarfile.open(bundle, "r:gz") as tar:
        f = tar.extractfile("audit/lines.jsonl")
        assert f is not None
        return [json.loads(x) for x in f.read().splitlines()]


def test_cordon_then_forensic_export_verifies_without_a_manual_checkpoint(
    env: Env, tmp_path: Path
) -> None:
    install(env, "hello")
    _cli(env, "run")
    _cli(env, "cordon", "hello", "--reason", "incident 42")
    log = env.ws / "state/audit/audit.jsonl"
    before = log.read_bytes()
    bundle = tmp_path / "x.tar.gz"
    out = _cli(env, "forensics", "export", "--tenant", "hello", "--out", str(bundle))
    assert out["runs"] == 1 and out["checkpoint_signed"] and out["lines_left_out"] == 0
    verdict = _verify_elsewhere(env, bundle, tmp_path)
    assert verdict["ok"], verdict
    # The cordon (logged after the run's checkpoint) is in the bundle, with its proof.
    events = [e["event"] for e in _lines(bundle)]
    assert "cordon" in events and "run_outcome" in events
    # The only record export wrote: the checkpoint that covers the cordon.
    added = log.read_bytes()[len(before) :].splitlines()
    assert [json.loads(x)["event"] for x in added] == ["checkpoint"]
    # A second export needs no new checkpoint (the latest covers the tenant's lines).
    again = _cli(env, "forensics", "export", "--tenant", "hello", "--out", str(bundle))
    assert not again["checkpoint_signed"]
    assert log.read_bytes()[len(before) :].splitlines() == added


def test_no_checkpoint_cuts_the_slice_at_the_latest_checkpoint_and_says_so(
    env: Env, tmp_path: Path
) -> None:
    install(env, "hello")
    _cli(env, "run")
    _cli(env, "cordon", "hello", "--reason", "incident 42")
    state = {p: p.read_bytes() for p in (env.ws / "state/audit").rglob("*") if p.is_file()}
    bundle = tmp_path / "x.tar.gz"
    args = ("forensics", "export", "--tenant", "hello", "--no-checkpoint", "--out", str(bundle))
    out = _cli(env, *args)
    assert out["runs"] == 1 and not out["checkpoint_signed"] and out["lines_left_out"] == 1
    derived = ("tree.bin", "tree.state")  # the Merkle tree cache may be refreshed
    after = {p: p.read_bytes() for p in (env.ws / "state/audit").rglob("*") if p.is_file()}
    assert {p: v for p, v in after.items() if not p.name.startswith(derived)} == {
        p: v for p, v in state.items() if not p.name.startswith(derived)
    }
    assert _verify_elsewhere(env, bundle, tmp_path)["ok"]
    assert "cordon" not in [e["event"] for e in _lines(bundle)]
    res = run_cli_subprocess("-w", str(env.ws), *args)  # the text output says it too
    assert res.code == 0 and "1 audit line after checkpoint" in res.err + res.out
