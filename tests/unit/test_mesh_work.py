"""The mesh work formats (nightcore.mesh.work): requests parsed strictly, results bounded."""

from __future__ import annotations

import json

import pytest

from nightcore.canonical import canonical
from nightcore.errors import NightCoreError
from nightcore.mesh import work


def _req(**over: object) -> bytes:
    obj: dict[str, object] = {
        "schema": 1,
        "request_id": "0123456789abcdef",
        "tenants": ["hello", "b.c-d_e"],
        "submitted_at": "2026-12-05T12:00:00.000000Z",
    }
    obj.update(over)
    return canonical(obj)


def _code(data: bytes) -> str:
    with pytest.raises(NightCoreError) as exc:
        work.parse_request(data)
    assert "\n" not in exc.value.message
    return exc.value.code


def test_round_trip_and_fresh_ids() -> None:
    req = work.new_request(["hello", "other"])
    assert work.valid_request_id(req.request_id)
    back = work.parse_request(req.encode())
    assert back == req
    assert work.new_request(["hello"]).request_id != req.request_id
    assert work.parse_request(_req()).tenants == ("hello", "b.c-d_e")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "MESH_WORK_REQUEST_INVALID"),
        (b"\xff\xfe", "MESH_WORK_REQUEST_INVALID"),
        (b"[1, 2]", "MESH_WORK_REQUEST_INVALID"),
        (b'{"schema": 1, "schema": 1}', "MESH_WORK_REQUEST_INVALID"),
        (b'{"schema": NaN}', "MESH_WORK_REQUEST_INVALID"),
        (_req(extra=1), "MESH_WORK_REQUEST_INVALID"),
        (_req(schema=2), "MESH_WORK_REQUEST_INVALID"),
        (_req(schema=True), "MESH_WORK_REQUEST_INVALID"),
        (_req(request_id="short"), "MESH_WORK_REQUEST_INVALID"),
        (_req(request_id="has.dot.in.it.x"), "MESH_WORK_REQUEST_INVALID"),
        (_req(request_id="star*star*star"), "MESH_WORK_REQUEST_INVALID"),
        (_req(tenants=[]), "MESH_WORK_REQUEST_INVALID"),
        (_req(tenants="hello"), "MESH_WORK_REQUEST_INVALID"),
        (_req(tenants=["a"] * 2), "MESH_WORK_REQUEST_INVALID"),
        (_req(tenants=[f"t{i}" for i in range(work.MAX_TENANTS + 1)]), "MESH_WORK_REQUEST_INVALID"),
        (_req(tenants=["Hello"]), "TENANT_NAME_INVALID"),
        (_req(tenants=["../etc"]), "TENANT_NAME_INVALID"),
        (_req(tenants=["a;rm -rf"]), "TENANT_NAME_INVALID"),
        (_req(tenants=["a\n"]), "TENANT_NAME_INVALID"),
        (_req(tenants=[1]), "TENANT_NAME_INVALID"),
        (_req(submitted_at=5), "MESH_WORK_REQUEST_INVALID"),
    ],
)
def test_malformed_requests_are_refused_with_a_code(data: bytes, code: str) -> None:
    assert _code(data) == code


def test_oversized_request_is_refused_before_parsing() -> None:
    big = b'{"pad": "' + b"x" * work.MAX_REQUEST_BYTES + b'"}'
    assert _code(big) == "MESH_WORK_REQUEST_TOO_LARGE"
    with pytest.raises(NightCoreError) as exc:
        work.new_request(["Bad"])
    assert exc.value.code == "TENANT_NAME_INVALID"


def test_request_id_hint() -> None:
    assert work.request_id_hint("0123456789abcdef", 7) == "0123456789abcdef"
    assert work.request_id_hint("bad.id", 7) == "seq-7"
    assert work.request_id_hint(None, 9) == "seq-9"


def _result(**over: object) -> work.WorkResult:
    r = work.WorkResult(
        request_id="0123456789abcdef",
        node="n1",
        node_key_id="k" * 16,
        code="OK",
        runs=[
            {
                "tenant": "hello",
                "code": "OK",
                "run_id": "r1",
                "exit_code": 0,
                "fuel_used": 5,
                "wall_ms": 1.5,
            },
        ],
        attestations=[{"run_id": "r1", "envelope": {"payload": "x" * 100}}],
        delivery=2,
    )
    for k, v in over.items():
        setattr(r, k, v)
    return r


def test_result_round_trip_and_rows() -> None:
    data = _result().encode()
    parsed = work.parse_result(data)
    assert parsed["delivery"] == 2 and parsed["attestations_omitted"] is False
    (row,) = work.result_rows(parsed)
    assert row == {
        "request_id": "0123456789abcdef",
        "node": "n1",
        "tenant": "hello",
        "code": "OK",
        "reason": "",
        "run_id": "r1",
        "exit_code": 0,
        "fuel_used": 5,
        "wall_ms": 1.5,
    }
    refused = work.refusal("seq-3", "n1", "k", "MESH_WORK_REQUEST_INVALID", "not JSON")
    (row,) = work.result_rows(work.parse_result(refused.encode()))
    assert row["code"] == "MESH_WORK_REQUEST_INVALID" and row["tenant"] is None


def test_result_code_is_the_first_failure() -> None:
    assert work.result_code([{"code": "OK"}, {"code": "OK"}]) == "OK"
    assert work.result_code([{"code": "OK"}, {"code": "DIGEST_MISMATCH"}]) == "DIGEST_MISMATCH"


def test_oversized_result_drops_its_attestations() -> None:
    big = [{"run_id": "r", "envelope": {"payload": "x" * (work.MAX_RESULT_BYTES + 1)}}]
    r = _result(attestations=big)
    data = r.encode()
    assert len(data) <= work.MAX_RESULT_BYTES
    assert work.parse_result(data)["attestations_omitted"] is True


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("node"),
        lambda d: d.update(code="not a code"),
        lambda d: d.update(runs=[1]),
        lambda d: d.update(delivery=True),
        lambda d: d.update(request_id="a.b"),
        lambda d: d.update(schema=True),
    ],
)
def test_hostile_results_are_refused(mutate: object) -> None:
    d = json.loads(_result().encode())
    mutate(d)  # type: ignore[operator]
    with pytest.raises(NightCoreError) as exc:
        work.parse_result(json.dumps(d).encode())
    assert exc.value.code == "MESH_WORK_RESULT_INVALID"


def test_open_requests_are_starts_without_a_closing_line() -> None:
    from nightcore.mesh.workqueue import open_requests

    def line(seq: int, event: str, rid: str, **data: object) -> bytes:
        return json.dumps(
            {"seq": seq, "event": event, "data": {"request_id": rid, **data}}
        ).encode()

    lines = [
        line(1, "mesh_work_start", "aaaaaaaa", delivery=1),
        line(2, "mesh_work_start", "bbbbbbbb", delivery=2),
        line(3, "run_outcome", "aaaaaaaa"),
        line(4, "mesh_work_result", "aaaaaaaa", recorded=True),
        line(5, "mesh_work_start", "cccccccc", delivery=1),
        line(6, "mesh_work_abandoned", "cccccccc"),
        line(7, "mesh_work_start", "cccccccc", delivery=3),  # redelivered to it again
    ]
    assert open_requests(lines) == {
        "bbbbbbbb": {"seq": 2, "delivery": 2},
        "cccccccc": {"seq": 7, "delivery": 3},
    }


def _pkg(**over: object) -> bytes:
    import base64

    obj: dict[str, object] = {
        "schema": 1,
        "tenant": "hello",
        "files": {
            "module.wasm": base64.b64encode(b"\0asm\1\0\0\0").decode(),
            "module.intoto.dsse.json": base64.b64encode(b"{}").decode(),
        },
    }
    obj.update(over)
    return canonical(obj)


def test_package_objects_are_parsed_strictly() -> None:
    from nightcore.mesh.packages import decode_package

    files = decode_package(_pkg(), "hello")
    assert files["module.wasm"] == b"\0asm\1\0\0\0"
    hostile = [
        _pkg(tenant="other"),  # an object filed under another tenant's name
        _pkg(schema=2),
        _pkg(extra=1),
        _pkg(files={"../module.wasm": "AA=="}),  # only the package's own file names
        _pkg(files={"module.intoto.dsse.json": "AA=="}),  # no module
        _pkg(files={"module.wasm": "not base64!"}),
        _pkg(files={"module.wasm": 5}),
        b"[]",
        b'{"schema": 1, "schema": 1}',
    ]
    for data in hostile:
        with pytest.raises(NightCoreError) as exc:
            decode_package(data, "hello")
        assert exc.value.code == "MESH_PACKAGE_INVALID", data[:80]
