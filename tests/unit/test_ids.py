"""ids.resolve_prefix: one id per prefix, or a refusal that names the candidates."""

from __future__ import annotations

import pytest

from nightcore.errors import NightCoreError
from nightcore.ids import MAX_LISTED, resolve_prefix

IDS = ["20261205T0900-hello-4100a41d", "20261205T0900-hello-4100b000", "20261205T0901-echo-77aa"]


def test_unique_prefix_and_whole_id() -> None:
    assert resolve_prefix("20261205T0901", IDS, "run") == IDS[2]
    assert resolve_prefix("20261205T0900-hello-4100a", IDS, "run") == IDS[0]
    assert resolve_prefix(IDS[1], IDS, "run") == IDS[1]


def test_exact_match_wins_over_longer_ids() -> None:
    assert resolve_prefix("abc", ["abcd", "abc", "abce"], "key") == "abc"


def test_ambiguous_prefix_names_the_matches() -> None:
    with pytest.raises(NightCoreError) as exc:
        resolve_prefix("20261205T0900", IDS, "run")
    assert exc.value.code == "ID_AMBIGUOUS"
    assert IDS[0] in str(exc.value) and IDS[1] in str(exc.value) and IDS[2] not in str(exc.value)


def test_ambiguous_message_is_capped() -> None:
    many = [f"run-{i:03d}" for i in range(50)]
    with pytest.raises(NightCoreError) as exc:
        resolve_prefix("run-", many, "run")
    msg = str(exc.value)
    assert "50 run ids" in msg and f"and {50 - MAX_LISTED} more" in msg
    assert "run-049" not in msg


@pytest.mark.parametrize("prefix", ["", "zzz", "20261205T0900-hello-4100a41dX"])
def test_no_match_raises_the_not_found_code(prefix: str) -> None:
    with pytest.raises(NightCoreError) as exc:
        resolve_prefix(prefix, IDS, "run")
    assert exc.value.code == "ID_NOT_FOUND"
    with pytest.raises(NightCoreError) as exc:
        resolve_prefix(prefix, IDS, "run", code="RUN_NOT_FOUND")
    assert exc.value.code == "RUN_NOT_FOUND"


def test_duplicates_among_candidates_are_one_match() -> None:
    assert resolve_prefix("ab", ["abc", "abc"], "run") == "abc"
