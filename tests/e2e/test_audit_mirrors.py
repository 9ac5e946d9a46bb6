"""Audit mirrors: a directory mirror and an S3 mirror on a local S3-compatible server.

The S3 server is moto's (``moto_server``), an emulator started by the test on 127.0.0.1: it
implements the S3 API closely enough for puts, lists, gets and Object Lock headers, but it is
not AWS. Outages are real: the server process is stopped and restarted on the same port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightcore.context import NodeContext
from tests.conftest import Env

MOTO = Path(sys.executable).parent / "moto_server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1)  # noqa: S310
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    if not MOTO.exists():
        pytest.skip("moto_server is not installed (requirements-dev.lock installs it)")
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    m = Moto(_free_port())
    m.start()
    yield m
    m.stop()


def _configure(env: Env, moto_url: str, mirror_dir: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.create_bucket(Bucket="audit", ObjectLockEnabledForBucket=True)
    cfg = env.ws / "nightcore.toml"
    cfg.write_text(
        cfg.read_text()
        + f"""
[[audit.mirror]]
name = "onprem"
kind = "dir"
path = "{mirror_dir}"

[[audit.mirror]]
name = "s3"
kind = "s3"
bucket = "audit"
prefix = "node-1"
endpoint_url = "{moto_url}"
object_lock_mode = "GOVERNANCE"
retention_days = 1
"""
    )


def _status(env: Env) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in env.cli("audit", "mirror", "status", "--json").json()}


def test_mirrors_receive_everything_survive_an_outage_and_verify(
    env: Env, moto: Moto, tmp_path: Path
) -> None:
    mirror_dir = tmp_path / "mirror"
    _configure(env, moto.url, mirror_dir)
    env.add_tenant("hello")
    assert env.cli("run", "--json").code == 0  # the run signs a checkpoint and syncs mirrors
    st = _status(env)
    assert st["onprem"]["ok"] and st["s3"]["ok"]
    local = (env.ws / "state/audit/audit.jsonl").read_bytes()
    assert local.startswith((mirror_dir / "audit.jsonl").read_bytes())
    assert (mirror_dir / "audit.tail").exists()
    for name in ("onprem", "s3"):
        res = env.cli("audit", "verify", "--source", name, "--json")
        assert res.code == 0 and res.json()["ok"], (name, res.out)

    # Outage: the node loses its route to the S3 endpoint (connection refused). Local work
    # continues; the mirror falls behind; nothing is lost.
    cfg = env.ws / "nightcore.toml"
    good = cfg.read_text()
    cfg.write_text(good.replace(moto.url, f"http://127.0.0.1:{_free_port()}"))
    assert env.cli("run", "--json").code == 0
    res = env.cli("run")
    assert res.code == 0 and "MIRROR_UNAVAILABLE" in res.err
    st = _status(env)
    assert not st["s3"]["ok"] and int(str(st["s3"]["lag"])) > 0
    assert st["onprem"]["ok"]

    # The route is back: the mirror resumes from its own cursor and catches up.
    cfg.write_text(good)
    res = env.cli("audit", "mirror", "sync", "--json")
    assert res.code == 0, res.out
    st = _status(env)
    local_lines = len((env.ws / "state/audit/audit.jsonl").read_bytes().splitlines())
    assert st["s3"]["ok"] and st["s3"]["lag"] == 0 and st["s3"]["lines"] == local_lines
    res = env.cli("audit", "verify", "--source", "s3", "--json")
    assert res.code == 0 and res.json()["ok"], res.out
    assert res.json()["entries"] == local_lines


def test_directory_mirror_catches_up_after_an_outage(env: Env, tmp_path: Path) -> None:
    blocked = tmp_path / "mirror"
    cfg = env.ws / "nightcore.toml"
    cfg.write_text(
        cfg.read_text() + f'\n[[audit.mirror]]\nname = "dr"\nkind = "dir"\npath = "{blocked}"\n'
    )
    blocked.write_text("not a directory")  # the mount is broken
    env.add_tenant("hello")
    res = env.cli("run")
    assert res.code == 0 and "MIRROR_UNAVAILABLE" in res.err
    assert not _status(env)["dr"]["ok"]
    blocked.unlink()  # the mount is back
    assert env.cli("audit", "mirror", "sync").code == 0
    assert (blocked / "audit.jsonl").read_bytes() == (
        env.ws / "state/audit/audit.jsonl"
    ).read_bytes()
    res = env.cli("audit", "verify", "--source", "dr", "--json")
    assert res.code == 0 and res.json()["ok"]
    # A mirror that was tampered with is caught on its own.
    lines = (blocked / "audit.jsonl").read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[1])
    rec["data"]["tampered"] = True
    from nightcore.canonical import canonical

    lines[1] = canonical(rec) + b"\n"
    (blocked / "audit.jsonl").write_bytes(b"".join(lines))
    res = env.cli("audit", "verify", "--source", "dr", "--json")
    assert res.code == 1 and res.json()["code"] == "AUDIT_CHAIN_BROKEN"


def test_mirror_config_is_validated(env: Env) -> None:
    cfg = env.ws / "nightcore.toml"
    good = cfg.read_text()
    for bad in (
        '[[audit.mirror]]\nname = "X Y"\nkind = "dir"\npath = "/tmp/x"\n',
        '[[audit.mirror]]\nname = "a"\nkind = "ftp"\n',
        '[[audit.mirror]]\nname = "a"\nkind = "s3"\nbucket = "b"\n'
        'object_lock_mode = "COMPLIANCE"\n',
        "[audit]\ncheckpoint_every = 0\n",
    ):
        cfg.write_text(good + "\n" + bad)
        res = env.cli("audit", "mirror", "status")
        assert res.code == 2 and "error[CONFIG_INVALID]" in res.err, bad
    cfg.write_text(good)
    res = env.cli("audit", "verify", "--source", "nope")
    assert res.code == 2 and "MIRROR_NOT_FOUND" in res.err


def test_heartbeat_only_when_idle(env: Env) -> None:
    import datetime as dt

    from nightcore.audit.heartbeat import heartbeat
    from nightcore.audit.tlog import TransparencyLog

    ws = NodeContext(env.ws)
    log = TransparencyLog(
        ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
    )
    assert heartbeat(log, 3600) is None  # the log just had activity
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    cp = heartbeat(log, 3600, now=later)
    assert cp is not None
    events = [e["event"] for e in env.audit_lines()]
    assert events[-2:] == ["heartbeat", "checkpoint"]
    res = env.cli("audit", "heartbeat", "--idle", "1", "--json")
    assert res.code == 0
    assert env.cli("audit", "verify").code == 0
    shutil.rmtree(env.ws / "state/audit/mirrors", ignore_errors=True)
    assert os.path.exists(env.ws / "state/audit/audit.tail")


# -- mirrors anchored to the node's own checkpoints ------------------------------------------


def _runs_until(env: Env, lines: int) -> int:
    """Run until the node's log has at least ``lines`` lines (each run signs a checkpoint and
    syncs the mirrors); the node's line count."""
    while len(env.audit_lines()) < lines:
        assert env.cli("run").code == 0
    return len(env.audit_lines())


def _verify(env: Env, source: str) -> dict[str, object]:
    from tests.e2e.test_json_schemas import check

    res = env.cli("audit", "verify", "--source", source, "--json")
    report = check("audit-verify", res.json())  # the documented schema, anchor included
    assert res.code == (0 if report["ok"] else 1), res.err
    return dict(report)


def test_s3_attack_truncated_locked_chunk_and_hidden_checkpoints_is_tampering(
    env: Env, moto: Moto, tmp_path: Path
) -> None:
    """The attack of issue 13: with write access to the bucket (but not to the node), a new
    truncated version of a locked chunk plus delete markers over every later chunk, the
    checkpoints and audit.tail left a mirror that verified on its own ("OK: 30 entries,
    0 checkpoint(s)"). Object Lock keeps the old versions; the latest ones are what a reader
    sees. Anchored to the node's checkpoints it is MIRROR_TRUNCATED."""
    import boto3

    _configure(env, moto.url, tmp_path / "mirror")
    env.add_tenant("hello")
    node_lines = _runs_until(env, 82)
    assert _verify(env, "s3")["ok"]
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="audit", Prefix="node-1/")["Contents"]]
    chunks = sorted(k for k in keys if "/lines/" in k)
    for key in chunks:
        first, last = (int(x) for x in Path(key).stem.split("-"))
        if first <= 29 <= last:  # the chunk holding line 29: a new version with lines ..29
            body = s3.get_object(Bucket="audit", Key=key)["Body"].read()
            s3.put_object(
                Bucket="audit", Key=key, Body=b"".join(body.splitlines(True)[: 30 - first])
            )
        elif first > 29:
            s3.delete_object(Bucket="audit", Key=key)  # a delete marker; the version stays
    for key in keys:
        if "/checkpoints/" in key or key.endswith("/audit.tail"):
            s3.delete_object(Bucket="audit", Key=key)

    report = _verify(env, "s3")
    assert not report["ok"] and report["code"] == "MIRROR_TRUNCATED", report
    assert report["entries"] == 30 and report["anchor"]["status"] == "tampered"  # type: ignore[index]
    assert report["anchor"]["acknowledged_lines"] == node_lines  # type: ignore[index]
    res = env.cli("audit", "verify", "--source", "s3")
    assert res.code == 1 and "error[MIRROR_TRUNCATED]" in res.err and "tampering" in res.err

    # Without the node's cursor the bucket's own record still convicts it: the chunk's name
    # and the delete markers say what it held.
    shutil.rmtree(env.ws / "state/audit/mirrors")
    report = _verify(env, "s3")
    assert report["code"] == "MIRROR_TRUNCATED", report

    # Renamed instead of overwritten (a fresh key 0..29, the original behind a delete marker):
    # the delete marker over the original chunk still says the bucket held more.
    for key in chunks:
        first, last = (int(x) for x in Path(key).stem.split("-"))
        if first <= 29 <= last:
            body = s3.get_object(Bucket="audit", Key=key)["Body"].read()
            s3.delete_object(Bucket="audit", Key=key)
            s3.put_object(
                Bucket="audit",
                Key=f"node-1/lines/{first:012d}-{29:012d}.jsonl",
                Body=body,
            )
    report = _verify(env, "s3")
    assert report["code"] == "MIRROR_TRUNCATED", report


def test_s3_mirror_lag_is_not_tampering(env: Env, moto: Moto, tmp_path: Path) -> None:
    _configure(env, moto.url, tmp_path / "mirror")
    env.add_tenant("hello")
    assert env.cli("run").code == 0
    report = _verify(env, "s3")
    assert report["ok"] and report["anchor"]["status"] == "consistent"  # type: ignore[index]
    # The route to S3 is down while the node signs another checkpoint: the mirror is behind.
    cfg = env.ws / "nightcore.toml"
    good = cfg.read_text()
    cfg.write_text(good.replace(moto.url, f"http://127.0.0.1:{_free_port()}"))
    res = env.cli("run")
    assert res.code == 0 and "MIRROR_UNAVAILABLE" in res.err
    cfg.write_text(good)
    report = _verify(env, "s3")
    assert report["code"] == "MIRROR_LAG" and report["anchor"]["status"] == "lag", report  # type: ignore[index]
    assert env.cli("audit", "mirror", "sync").code == 0
    assert _verify(env, "s3")["ok"]


def _dir_mirror(env: Env, path: Path) -> None:
    cfg = env.ws / "nightcore.toml"
    cfg.write_text(
        cfg.read_text() + f'\n[[audit.mirror]]\nname = "dr"\nkind = "dir"\npath = "{path}"\n'
    )


def test_directory_mirror_cut_short_with_checkpoints_removed_is_tampering(
    env: Env, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    _dir_mirror(env, mirror)
    env.add_tenant("hello")
    node_lines = _runs_until(env, 40)
    assert _verify(env, "dr")["ok"]
    log = mirror / "audit.jsonl"
    whole = log.read_bytes()
    log.write_bytes(b"".join(whole.splitlines(True)[:30]))
    shutil.rmtree(mirror / "checkpoints")
    (mirror / "audit.tail").unlink()
    report = _verify(env, "dr")
    assert report["code"] == "MIRROR_TRUNCATED" and report["entries"] == 30, report
    assert report["anchor"]["acknowledged_lines"] == node_lines  # type: ignore[index]

    # Whole lines but a checkpoint the mirror had received removed: tampering too.
    log.write_bytes(whole)
    (mirror / "checkpoints").mkdir()
    report = _verify(env, "dr")
    assert report["code"] == "MIRROR_CHECKPOINT_MISSING", report


def test_directory_mirror_with_rewritten_history_disagrees_with_the_node(
    env: Env, tmp_path: Path
) -> None:
    """A self-consistent rewrite (lines edited and re-chained, the mirror's own checkpoints
    dropped) verifies on its own; the node's checkpoint at that size says otherwise."""
    import hashlib

    from nightcore.canonical import canonical

    mirror = tmp_path / "mirror"
    _dir_mirror(env, mirror)
    env.add_tenant("hello")
    _runs_until(env, 20)
    lines = (mirror / "audit.jsonl").read_bytes().splitlines(True)
    first_cp = next(i for i, raw in enumerate(lines) if json.loads(raw)["event"] == "checkpoint")
    out: list[bytes] = []
    for i, raw in enumerate(lines[:first_cp]):  # the lines the first checkpoint signed
        rec = json.loads(raw)
        if i == 1:
            rec["data"]["rewritten"] = True
        if i > 0:
            rec["prev"] = hashlib.sha256(out[-1][:-1]).hexdigest()
        out.append(canonical(rec) + b"\n")
    (mirror / "audit.jsonl").write_bytes(b"".join(out))
    shutil.rmtree(mirror / "checkpoints")
    (mirror / "audit.tail").unlink()
    (env.ws / "state/audit/mirrors/dr.json").unlink()  # no cursor: the roots alone decide
    report = _verify(env, "dr")
    assert report["code"] == "MIRROR_ROOT_MISMATCH", report
    assert report["anchor"]["status"] == "tampered"  # type: ignore[index]


def test_directory_mirror_lag_then_catch_up(env: Env, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    _dir_mirror(env, mirror)
    env.add_tenant("hello")
    assert env.cli("run").code == 0
    assert _verify(env, "dr")["ok"]
    aside = tmp_path / "aside"
    mirror.rename(aside)
    mirror.write_text("the mount is broken")
    assert "MIRROR_UNAVAILABLE" in env.cli("run").err  # a new checkpoint the mirror lacks
    mirror.unlink()
    aside.rename(mirror)
    report = _verify(env, "dr")
    assert report["code"] == "MIRROR_LAG", report
    assert env.cli("audit", "mirror", "sync").code == 0
    report = _verify(env, "dr")
    assert report["ok"] and report["anchor"]["status"] == "consistent", report  # type: ignore[index]
