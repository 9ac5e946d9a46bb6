"""RFC 9162 Merkle math and the incremental tree store (nightcore.audit.merkle).

Public vectors come from ``../shared/vectors/rfc6962.json`` (relative to the repository root);
those tests skip when the file is absent and fail when a vector disagrees. Property tests
compare against the RFC's recursive definitions (MTH, PATH, SUBPROOF) written out naively here.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nightcore.audit import merkle as m
from nightcore.errors import AuditError

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "rfc6962.json"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if not VECTORS.is_file():
        pytest.skip(f"public test vectors not found at {VECTORS} (checkout outside the workplace)")
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def hx(xs: Sequence[bytes]) -> list[str]:
    return [x.hex() for x in xs]


# ---------------------------------------------------------------------------------------------
# Naive RFC 9162 definitions (the oracle)


def _k(n: int) -> int:
    """Largest power of two strictly less than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def mth(hashes: Sequence[bytes]) -> bytes:
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def naive_path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _k(n)
    if index < k:
        return [*naive_path(index, hashes[:k]), mth(hashes[k:])]
    return [*naive_path(index - k, hashes[k:]), mth(hashes[:k])]


def naive_subproof(size1: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if size1 == n:
        return [] if complete else [mth(hashes)]
    k = _k(n)
    if size1 <= k:
        return [*naive_subproof(size1, hashes[:k], complete), mth(hashes[k:])]
    return [*naive_subproof(size1 - k, hashes[k:], False), mth(hashes[:k])]


def naive_consistency(size1: int, hashes: Sequence[bytes]) -> list[bytes]:
    if size1 in (0, len(hashes)):
        return []
    return naive_subproof(size1, hashes, True)


# The "shape" of an RFC 9162 verification: which side each proof hash is hashed on. Two size
# pairs with the same shape run the very same hash computation, so a proof for one verifies for
# the other against the same root: RFC verification binds the size only through this shape.


def inclusion_shape(index: int, size: int) -> tuple[int, ...] | None:
    if not 0 <= index < size:
        return None
    fn, sn, dirs = index, size - 1, []
    while sn:
        if fn & 1 or fn == sn:
            dirs.append(1)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            dirs.append(0)
        fn >>= 1
        sn >>= 1
    return tuple(dirs)


def consistency_shape(size1: int, size2: int) -> tuple[object, ...] | None:
    if not 0 <= size1 <= size2:
        return None
    if size1 == 0:
        return ("empty",)
    if size1 == size2:
        return ("equal",)
    fn, sn, dirs = size1 - 1, size2 - 1, []
    while fn & 1:
        fn >>= 1
        sn >>= 1
    while sn:
        if fn & 1 or fn == sn:
            dirs.append(1)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            dirs.append(0)
        fn >>= 1
        sn >>= 1
    return ("path", size1 & (size1 - 1) == 0, tuple(dirs))


# ---------------------------------------------------------------------------------------------
# Public vectors


def test_hasher_vectors(vectors: dict[str, Any]) -> None:
    assert vectors["hasher_vectors"]
    for v in vectors["hasher_vectors"]:
        if v["kind"] == "empty":
            got = m.root([])
            assert got == m.EMPTY_ROOT
        elif v["kind"] == "leaf":
            got = m.leaf_hash(h(v["leaf"]))
        else:
            assert v["kind"] == "node"
            got = m.node_hash(h(v["left"]), h(v["right"]))
        assert got.hex() == v["expected"], v


def _reference_store(vectors: dict[str, Any]) -> tuple[list[bytes], m.TreeStore]:
    leaves = [h(x) for x in vectors["reference_tree"]["leaves"]]
    hashes = [m.leaf_hash(x) for x in leaves]
    store = m.TreeStore()
    for i, lh in enumerate(hashes):
        assert store.append(lh) == i
    return hashes, store


def test_reference_tree(vectors: dict[str, Any]) -> None:
    ref = vectors["reference_tree"]
    hashes, store = _reference_store(vectors)
    assert len(ref["roots_by_size"]) == 9
    for size_text, want in ref["roots_by_size"].items():
        size = int(size_text)
        assert m.root(hashes[:size]).hex() == want
        assert store.root(size).hex() == want
        assert mth(hashes[:size]).hex() == want
        assert m.TreeStore.from_leaf_hashes(hashes[:size]).root().hex() == want
    for level, row in enumerate(ref["node_hashes_by_level"]):
        assert [store.node(level, i).hex() for i in range(len(row))] == row
    for size_text, want_range in ref["compact_range_by_size"].items():
        assert hx(store.compact_range(int(size_text))) == want_range
    assert store.root().hex() == ref["roots_by_size"]["8"]


def test_batch_builders_on_the_reference_tree(vectors: dict[str, Any]) -> None:
    """The streaming (compact range) and batch (pair levels, runs) builders the audit scanners
    use give the RFC 6962 reference roots and nodes."""
    ref = vectors["reference_tree"]
    hashes, store = _reference_store(vectors)
    stack: list[bytes] = []
    assert m.compact_root(stack) == m.EMPTY_ROOT
    for i, lh in enumerate(hashes):
        m.compact_push(stack, lh, i)
        assert hx(stack) == ref["compact_range_by_size"][str(i + 1)]
        assert m.compact_root(stack).hex() == ref["roots_by_size"][str(i + 1)]
    data = [h(x) for x in ref["leaves"]]
    for cut in range(len(data) + 1):  # in two batches, cut anywhere
        stack = []
        m.compact_extend(stack, data[:cut], 0)
        m.compact_extend(stack, data[cut:], cut)
        assert hx(stack) == ref["compact_range_by_size"][str(len(data))]
    level0 = b"".join(hashes)
    for level, row in enumerate(ref["node_hashes_by_level"][1:], start=1):
        below = b"".join(h(x) for x in ref["node_hashes_by_level"][level - 1])
        assert m.pair_hashes(below, 0, len(row)).hex() == "".join(row)
        assert m.pair_hashes(below[64:], 1, len(row), base=2).hex() == "".join(row[1:])
    for cut in range(len(hashes) + 1):
        runs = [
            (a, b - a, m.run_levels(level0[32 * a : 32 * b], a))
            for a, b in ((0, cut), (cut, len(hashes)))
        ]
        built = m.TreeStore.from_runs(level0, runs)
        assert built.root() == store.root()
        assert all(
            built.node(lv, i) == store.node(lv, i)
            for lv, row in enumerate(ref["node_hashes_by_level"])
            for i in range(len(row))
        )
    with pytest.raises(AuditError):
        m.TreeStore.from_runs(level0[:-1], [])


def test_known_inclusion_proofs(vectors: dict[str, Any]) -> None:
    _, store = _reference_store(vectors)
    assert vectors["inclusion_proofs"]
    for v in vectors["inclusion_proofs"]:
        proof = [h(x) for x in v["proof"]]
        args = (h(v["leaf_hash"]), v["leaf_index"], v["tree_size"], proof, h(v["root"]))
        if v["expect"] != "valid":
            with pytest.raises(AuditError):
                m.verify_inclusion(*args)
            continue
        assert m.leaf_hash(h(v["leaf"])).hex() == v["leaf_hash"]
        assert hx(store.inclusion_proof(v["leaf_index"], v["tree_size"])) == v["proof"]
        generated = m.inclusion_proof(v["leaf_index"], v["tree_size"], store.node)
        assert hx(generated) == v["proof"]
        m.verify_inclusion(*args)


def test_known_consistency_proofs(vectors: dict[str, Any]) -> None:
    _, store = _reference_store(vectors)
    assert vectors["consistency_proofs"]
    for v in vectors["consistency_proofs"]:
        proof = [h(x) for x in v["proof"]]
        args = (v["size1"], v["size2"], proof, h(v["root1"]), h(v["root2"]))
        if v["expect"] != "valid":
            with pytest.raises(AuditError):
                m.verify_consistency(*args)
            continue
        assert hx(store.consistency_proof(v["size1"], v["size2"])) == v["proof"]
        generated = m.consistency_proof(v["size1"], v["size2"], store.node)
        assert hx(generated) == v["proof"]
        m.verify_consistency(*args)


# ---------------------------------------------------------------------------------------------
# Property tests against the naive definitions

MAX_N = 300


@cache
def _leaves() -> tuple[bytes, ...]:
    return tuple(m.leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_N))


@cache
def _store() -> m.TreeStore:
    store = m.TreeStore()
    store.extend(_leaves())
    return store


@cache
def _root(size: int) -> bytes:
    return mth(_leaves()[:size])


index_in_tree = st.integers(1, MAX_N).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1))
)
size_pair = st.integers(0, MAX_N).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


def test_incremental_and_bulk_agree_at_every_size() -> None:
    leaves = _leaves()
    store = m.TreeStore()
    for i, lh in enumerate(leaves):
        store.append(lh)
        if i < 70 or i % 37 == 0:
            assert store.root() == m.root(leaves[: i + 1]) == mth(leaves[: i + 1])
            assert m.TreeStore.from_leaf_hashes(leaves[: i + 1]).to_bytes() == store.to_bytes()
    assert store.size == MAX_N
    for size in range(MAX_N + 1):
        assert store.root(size) == m.root(leaves[:size])


@settings(max_examples=300, deadline=None, database=None)
@given(index_in_tree)
def test_inclusion_proofs_match_rfc_and_verify(args: tuple[int, int]) -> None:
    size, index = args
    leaves, store = _leaves(), _store()
    proof = store.inclusion_proof(index, size)
    assert proof == naive_path(index, leaves[:size])
    assert proof == m.inclusion_proof(index, size, store.node)
    assert len(proof) == m.inclusion_proof_length(index, size)
    assert store.root(size) == _root(size)
    m.verify_inclusion(leaves[index], index, size, proof, _root(size))


@settings(max_examples=300, deadline=None, database=None)
@given(size_pair)
def test_consistency_proofs_match_rfc_and_verify(args: tuple[int, int]) -> None:
    size1, size2 = args
    leaves, store = _leaves(), _store()
    proof = store.consistency_proof(size1, size2)
    assert proof == naive_consistency(size1, leaves[:size2])
    assert proof == m.consistency_proof(size1, size2, store.node)
    assert len(proof) == m.consistency_proof_length(size1, size2)
    m.verify_consistency(size1, size2, proof, _root(size1), _root(size2))


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def _inclusion_mutations(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes, *, bit: int
) -> Iterator[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]]:
    extra = m.leaf_hash(b"extra")
    for d in (-1, 1):
        yield f"index{d:+}", (leaf, index + d, size, proof, root)
        yield f"size{d:+}", (leaf, index, size + d, proof, root)
    yield "leaf bit", (_flip(leaf, bit), index, size, proof, root)
    yield "root bit", (leaf, index, size, proof, _flip(root, bit))
    for i in range(len(proof)):
        yield (
            f"proof[{i}] bit",
            (leaf, index, size, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]], root),
        )
        yield f"proof[{i}] removed", (leaf, index, size, proof[:i] + proof[i + 1 :], root)
        yield (
            f"proof[{i}] truncated",
            (leaf, index, size, [*proof[:i], proof[i][:31], *proof[i + 1 :]], root),
        )
    for i in range(len(proof) + 1):
        yield f"node added at {i}", (leaf, index, size, [*proof[:i], extra, *proof[i:]], root)
    if leaf != root:  # a one-leaf tree's root is its leaf
        yield "leaf as root", (root, index, size, proof, leaf)
    for other in (size - 1, size + 1):
        if 0 <= other <= MAX_N and _root(other) != root:
            yield f"root of size {other}", (leaf, index, size, proof, _root(other))


@settings(max_examples=200, deadline=None, database=None)
@given(index_in_tree, st.integers(0, 255))
def test_every_inclusion_mutation_fails(args: tuple[int, int], bit: int) -> None:
    size, index = args
    leaves = _leaves()
    proof = _store().inclusion_proof(index, size)
    root = _root(size)
    m.verify_inclusion(leaves[index], index, size, proof, root)
    for what, mutated in _inclusion_mutations(leaves[index], index, size, proof, root, bit=bit):
        _, mi, ms, _, _ = mutated
        if (mi, ms) != (index, size) and inclusion_shape(mi, ms) == inclusion_shape(index, size):
            # Same hash computation: undetectable by design (the checkpoint binds the size).
            assert what.startswith("size"), what
            continue
        with pytest.raises(AuditError):
            m.verify_inclusion(*mutated)


def _consistency_mutations(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes, *, bit: int
) -> Iterator[tuple[str, tuple[int, int, list[bytes], bytes, bytes]]]:
    extra = m.leaf_hash(b"extra")
    for d in (-1, 1):
        yield f"size1{d:+}", (size1 + d, size2, proof, root1, root2)
        yield f"size2{d:+}", (size1, size2 + d, proof, root1, root2)
    yield "root1 bit", (size1, size2, proof, _flip(root1, bit), root2)
    if size1 != 0:  # any root2 is consistent with the empty tree
        yield "root2 bit", (size1, size2, proof, root1, _flip(root2, bit))
    if root1 != root2:
        yield "swapped roots", (size1, size2, proof, root2, root1)
    for i in range(len(proof)):
        yield (
            f"proof[{i}] bit",
            (size1, size2, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]], root1, root2),
        )
        yield f"proof[{i}] removed", (size1, size2, proof[:i] + proof[i + 1 :], root1, root2)
    for i in range(len(proof) + 1):
        yield f"node added at {i}", (size1, size2, [*proof[:i], extra, *proof[i:]], root1, root2)


@settings(max_examples=200, deadline=None, database=None)
@given(size_pair, st.integers(0, 255))
def test_every_consistency_mutation_fails(args: tuple[int, int], bit: int) -> None:
    size1, size2 = args
    proof = _store().consistency_proof(size1, size2)
    root1, root2 = _root(size1), _root(size2)
    m.verify_consistency(size1, size2, proof, root1, root2)
    for what, mutated in _consistency_mutations(size1, size2, proof, root1, root2, bit=bit):
        s1, s2 = mutated[0], mutated[1]
        if (s1, s2) != (size1, size2) and consistency_shape(s1, s2) == consistency_shape(
            size1, size2
        ):
            assert what.startswith("size"), what  # same computation: undetectable by design
            continue
        with pytest.raises(AuditError):
            m.verify_consistency(*mutated)


def test_size_mutation_with_same_shape_is_the_documented_exception() -> None:
    # Index 0 in sizes 3 and 4: same chain (two right siblings), so the same proof "verifies"
    # against the size-3 root at size 4. Only the signed checkpoint binds size to root.
    leaves = _leaves()
    proof = _store().inclusion_proof(0, 3)
    assert inclusion_shape(0, 3) == inclusion_shape(0, 4)
    m.verify_inclusion(leaves[0], 0, 4, proof, _root(3))
    with pytest.raises(AuditError) as e:
        m.verify_inclusion(leaves[0], 0, 4, proof, _root(4))
    assert e.value.code == "PROOF_ROOT_MISMATCH"


# ---------------------------------------------------------------------------------------------
# Strictness: each refusal has its code


def _code(fn: Callable[[], object]) -> str:
    with pytest.raises(AuditError) as e:
        fn()
    return e.value.code


def test_inclusion_refusal_codes() -> None:
    leaves = _leaves()
    proof = _store().inclusion_proof(5, 8)
    root = _root(8)
    leaf = leaves[5]
    assert _code(lambda: m.verify_inclusion(leaf, 8, 8, proof, root)) == "PROOF_INDEX_OUT_OF_RANGE"
    assert _code(lambda: m.verify_inclusion(leaf, -1, 8, proof, root)) == "PROOF_INDEX_OUT_OF_RANGE"
    assert (
        _code(lambda: m.verify_inclusion(leaf, 0, 0, [], m.EMPTY_ROOT))
        == "PROOF_INDEX_OUT_OF_RANGE"
    )
    assert _code(lambda: m.verify_inclusion(leaf, 5, -1, proof, root)) == "PROOF_SIZE_INVALID"
    assert _code(lambda: m.verify_inclusion(leaf, 5, 1 << 64, proof, root)) == "PROOF_SIZE_INVALID"
    assert _code(lambda: m.verify_inclusion(leaf, 5, 8, proof[:-1], root)) == "PROOF_LENGTH_INVALID"
    assert (
        _code(lambda: m.verify_inclusion(leaf, 5, 8, [*proof, root], root))
        == "PROOF_LENGTH_INVALID"
    )
    assert _code(lambda: m.verify_inclusion(leaf[:31], 5, 8, proof, root)) == "PROOF_HASH_INVALID"
    assert (
        _code(lambda: m.verify_inclusion(leaf, 5, 8, proof, root + b"\0")) == "PROOF_HASH_INVALID"
    )
    bad = [proof[0], proof[1][:31], proof[2]]
    assert _code(lambda: m.verify_inclusion(leaf, 5, 8, bad, root)) == "PROOF_HASH_INVALID"
    assert _code(lambda: m.verify_inclusion(leaves[4], 5, 8, proof, root)) == "PROOF_ROOT_MISMATCH"
    assert _code(lambda: m.inclusion_proof(8, 8, _store().node)) == "PROOF_INDEX_OUT_OF_RANGE"
    assert _code(lambda: m.inclusion_proof(0, 1 << 64, _store().node)) == "PROOF_SIZE_INVALID"


def test_consistency_refusal_codes() -> None:
    r = _root
    proof = _store().consistency_proof(3, 7)
    assert _code(lambda: m.verify_consistency(7, 3, proof, r(7), r(3))) == "PROOF_SIZE_INVALID"
    assert _code(lambda: m.verify_consistency(-1, 3, [], r(0), r(3))) == "PROOF_SIZE_INVALID"
    assert (
        _code(lambda: m.verify_consistency(3, 1 << 64, proof, r(3), r(7))) == "PROOF_SIZE_INVALID"
    )
    assert (
        _code(lambda: m.verify_consistency(3, 7, proof[1:], r(3), r(7))) == "PROOF_LENGTH_INVALID"
    )
    assert _code(lambda: m.verify_consistency(3, 7, [], r(3), r(7))) == "PROOF_LENGTH_INVALID"
    assert _code(lambda: m.verify_consistency(3, 7, proof, r(3)[:31], r(7))) == "PROOF_HASH_INVALID"
    assert _code(lambda: m.verify_consistency(3, 7, proof, r(4), r(7))) == "PROOF_ROOT_MISMATCH"
    # size1 == size2: empty proof and equal roots
    assert _code(lambda: m.verify_consistency(5, 5, [r(5)], r(5), r(5))) == "PROOF_LENGTH_INVALID"
    assert _code(lambda: m.verify_consistency(5, 5, [], r(5), r(6))) == "PROOF_ROOT_MISMATCH"
    m.verify_consistency(5, 5, [], r(5), r(5))
    # size1 == 0: empty proof, root1 = SHA-256("")
    m.verify_consistency(0, 9, [], m.EMPTY_ROOT, r(9))
    m.verify_consistency(0, 0, [], m.EMPTY_ROOT, m.EMPTY_ROOT)
    assert (
        _code(lambda: m.verify_consistency(0, 9, [r(9)], m.EMPTY_ROOT, r(9)))
        == "PROOF_LENGTH_INVALID"
    )
    assert _code(lambda: m.verify_consistency(0, 9, [], r(1), r(9))) == "PROOF_ROOT_MISMATCH"
    assert _code(lambda: m.consistency_proof(7, 3, _store().node)) == "PROOF_SIZE_INVALID"


def test_largest_sizes_are_handled() -> None:
    def fake_node(level: int, index: int) -> bytes:
        return hashlib.sha256(f"{level}/{index}".encode()).digest()

    top = m.MAX_TREE_SIZE
    leaf = fake_node(0, 0)
    for index, length in ((0, 64), (top // 2, 64), (top - 1, 63)):  # top - 1: last leaf
        proof = m.inclusion_proof(index, top, fake_node)
        assert len(proof) == m.inclusion_proof_length(index, top) == length
        with pytest.raises(AuditError) as e:
            m.verify_inclusion(leaf, index, top, proof, leaf)
        assert e.value.code == "PROOF_ROOT_MISMATCH"
    cproof = m.consistency_proof(top - 2, top, fake_node)
    assert len(cproof) == m.consistency_proof_length(top - 2, top)
    assert (
        _code(lambda: m.verify_consistency(top - 2, top, cproof, leaf, leaf))
        == "PROOF_ROOT_MISMATCH"
    )


# ---------------------------------------------------------------------------------------------
# Tree store: persistence, refusals, cost


def test_persistence_round_trip_and_append_only_format() -> None:
    leaves = _leaves()
    store = m.TreeStore.from_leaf_hashes(leaves[:123])
    data = store.to_bytes()
    assert data.startswith(m.FILE_MAGIC)
    assert len(data) == len(m.FILE_MAGIC) + 123 * 32
    assert data[len(m.FILE_MAGIC) :] == b"".join(leaves[:123])
    loaded = m.TreeStore.from_bytes(data)
    assert loaded.size == 123
    assert loaded.root() == store.root() == _root(123)
    for size in (1, 64, 100, 123):
        assert loaded.root(size) == _root(size)
        assert loaded.inclusion_proof(size - 1, size) == store.inclusion_proof(size - 1, size)
        assert loaded.consistency_proof(size // 2, size) == store.consistency_proof(size // 2, size)
    # Appending a leaf appends exactly its 32 bytes to the serialised form.
    loaded.append(leaves[123])
    assert loaded.to_bytes() == data + leaves[123]
    assert m.TreeStore.from_bytes(m.FILE_MAGIC).size == 0
    assert m.TreeStore.from_bytes(m.FILE_MAGIC).root() == m.EMPTY_ROOT


def test_store_refusal_codes() -> None:
    leaves = _leaves()
    data = m.TreeStore.from_leaf_hashes(leaves[:5]).to_bytes()
    assert _code(lambda: m.TreeStore.from_bytes(data[:-1])) == "TREE_STORE_CORRUPT"
    assert _code(lambda: m.TreeStore.from_bytes(b"XXMTREE1" + data[8:])) == "TREE_STORE_CORRUPT"
    assert _code(lambda: m.TreeStore.from_bytes(b"")) == "TREE_STORE_CORRUPT"
    store = m.TreeStore()
    assert _code(lambda: store.append(b"\0" * 31)) == "TREE_HASH_INVALID"
    assert _code(lambda: m.TreeStore.from_leaf_hashes([leaves[0], b"x"])) == "TREE_HASH_INVALID"
    assert _code(lambda: m.root([leaves[0], b"x"])) == "TREE_HASH_INVALID"
    store.extend(leaves[:5])
    assert _code(lambda: store.root(6)) == "TREE_SIZE_OUT_OF_RANGE"
    assert _code(lambda: store.root(-1)) == "TREE_SIZE_OUT_OF_RANGE"
    assert _code(lambda: store.inclusion_proof(0, 6)) == "TREE_SIZE_OUT_OF_RANGE"
    assert _code(lambda: store.inclusion_proof(5, 5)) == "PROOF_INDEX_OUT_OF_RANGE"
    assert _code(lambda: store.consistency_proof(1, 6)) == "TREE_SIZE_OUT_OF_RANGE"
    assert _code(lambda: store.consistency_proof(4, 3)) == "PROOF_SIZE_INVALID"
    assert _code(lambda: store.node(0, 5)) == "TREE_SIZE_OUT_OF_RANGE"
    assert _code(lambda: store.node(1, 2)) == "TREE_SIZE_OUT_OF_RANGE"
    assert store.root(0) == m.EMPTY_ROOT
    assert m.TreeStore().root() == m.EMPTY_ROOT


def test_proofs_are_logarithmic_and_never_rehash_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Timing lives in benchmarks/ (tests never assert wall-clock time); here we count work.
    n = 1 << 16  # tree hashes need not be real leaf hashes here
    store = m.TreeStore.from_leaf_hashes(i.to_bytes(32, "big") for i in range(n))
    assert store.size == n
    store.append(hashlib.sha256(b"one more").digest())  # make the right border non-perfect
    n += 1
    root = store.root()

    rng = random.Random(1)
    indexes = [rng.randrange(n) for _ in range(2000)]
    proofs = [store.inclusion_proof(i) for i in indexes]
    for i, proof in zip(indexes[:50], proofs[:50], strict=True):
        m.verify_inclusion(store.leaf_hash(i), i, n, proof, root)

    # O(log n) node look-ups and hashes per proof; leaves are never rehashed.
    lookups = 0
    hashes = 0
    real_node_hash = m.node_hash

    def counting_node(level: int, index: int) -> bytes:
        nonlocal lookups
        lookups += 1
        return store.node(level, index)

    def counting_hash(left: bytes, right: bytes) -> bytes:
        nonlocal hashes
        hashes += 1
        return real_node_hash(left, right)

    monkeypatch.setattr(m, "node_hash", counting_hash)
    for i in (0, n // 2, n - 2, n - 1):
        lookups = hashes = 0
        m.inclusion_proof(i, n, counting_node)
        assert lookups <= 2 * n.bit_length() and hashes <= n.bit_length(), (i, lookups, hashes)
    for size1 in (1, 3, n // 3, n - 1):
        lookups = hashes = 0
        m.consistency_proof(size1, n, counting_node)
        assert lookups <= 2 * n.bit_length() + 1 and hashes <= n.bit_length(), (size1, lookups)
