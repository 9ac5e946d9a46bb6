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
