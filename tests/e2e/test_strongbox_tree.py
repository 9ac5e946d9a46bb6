"""Issue 16, item 1: under ``--strongbox`` a tenant whose data tree is ~1,000 levels deep
ends with its own ``TREE_LIMIT``; the run goes on and its neighbour runs (real workers,
real CLI, a real tree built with descriptor-relative mkdir because its path exceeds
PATH_MAX)."""

from __future__ import annotations

import os

import pytest

from nightcore.sandbox.strongbox import seccomp_available
from tests.conftest import Env
from tests.deep_tree import build_deep_tree, remove_deep_tree
from tests.e2e.test_run_cli import install

_WHY = seccomp_available() or ("" if os.geteuid() == 0 else "strongbox workers need root")
pytestmark = pytest.mark.skipif(bool(_WHY), reason=_WHY or "available")


def test_a_deep_data_tree_fails_only_its_tenant(env: Env) -> None:
    install(env, "fs-writer", "hello")
    data = env.ws / "state" / "tenants" / "fs-writer" / "data"
    data.mkdir(parents=True)
    build_deep_tree(data, 1000)
    try:
        res = env.cli("run", "--json", "--strongbox", "--no-dashboard")
        rows = {r["tenant"]: r for r in res.json()}
        assert res.code == 1
        assert rows["fs-writer"]["code"] == "TREE_LIMIT", rows["fs-writer"]
        assert rows["hello"]["code"] == "OK"
        outcomes = {
            e["tenant"]: e["data"]["code"] for e in env.audit_lines() if e["event"] == "run_outcome"
        }
        assert outcomes == {"fs-writer": "TREE_LIMIT", "hello": "OK"}
    finally:
        assert remove_deep_tree(data) == 1000
