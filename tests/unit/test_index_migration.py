"""The run index migrates an index written by version 1 (fuel_used NOT NULL) in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nightcore.store.index import COLUMNS, SCHEMA_VERSION, RunIndex

V1 = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, code TEXT NOT NULL, exit_code INTEGER,
    fuel_used INTEGER NOT NULL, wall_ms REAL NOT NULL, memory_bytes INTEGER NOT NULL,
    output_bytes INTEGER NOT NULL, key_id TEXT NOT NULL, module_sha256 TEXT NOT NULL,
    ts TEXT NOT NULL, audit_seq INTEGER NOT NULL
);
CREATE INDEX runs_tenant ON runs (tenant, ts);
"""


def _row(run_id: str, fuel: int | None, seq: int) -> dict[str, object]:
    return {
        "run_id": run_id,
        "tenant": "loop",
        "code": "TIMEOUT" if fuel is None else "OK",
        "exit_code": None,
        "fuel_used": fuel,
        "wall_ms": 1.0,
        "memory_bytes": 0,
        "output_bytes": 0,
        "key_id": "k",
        "module_sha256": "m",
        "ts": f"2026-12-05T00:00:0{seq}Z",
        "audit_seq": seq,
    }


def test_v1_index_is_migrated_and_accepts_unknown_fuel(tmp_path: Path) -> None:
    db = tmp_path / "nightcore.db"
    conn = sqlite3.connect(db)
    conn.executescript(V1)
    old = _row("old", 42, 1)
    conn.execute(
        f"INSERT INTO runs VALUES ({', '.join('?' for _ in COLUMNS)})",  # noqa: S608
        [old[c] for c in COLUMNS],
    )
    conn.commit()
    conn.close()

    index = RunIndex(db)
    index.add([_row("new", None, 2)])
    rows = index.query("loop")
    index.close()
    assert [(r["run_id"], r["fuel_used"]) for r in rows] == [("new", None), ("old", 42)]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
