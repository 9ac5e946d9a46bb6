"""RFC 9162 (RFC 6962) SHA-256 Merkle tree math, and an incremental tree for an append-only log.

Pure: no I/O, no clock, no randomness. Every refusal is an :class:`AuditError` with a stable code.

Hashing (RFC 9162 section 2.1.1)::

    leaf_hash(d)   = SHA-256(0x00 || d)
    node_hash(l,r) = SHA-256(0x01 || l || r)
    MTH({})        = SHA-256("")
    MTH(D[n])      = node_hash(MTH(D[0:k]), MTH(D[k:n]))  with k the largest power of two < n

Node addressing
---------------
The tree over ``n`` leaves is the same as the "left-balanced" tree in which node
``(level, index)`` covers leaves ``[index * 2**level, (index + 1) * 2**level)`` cut at ``n``:
a node whose right half lies entirely beyond ``n`` *is* its left child (it is promoted, not
hashed). A node is *perfect* when its whole range lies inside ``[0, n)``; a perfect node never
changes again once the log has grown past it, so it can be computed once and stored.

Proof generation only ever asks a ``get_node(level, index) -> bytes`` callback for **perfect**
nodes. The only non-perfect ("ephemeral") node a proof can need is the single right-border
sibling, and its hash is folded from at most ``log2(n)`` perfect nodes (the binary decomposition
of its range). So an inclusion or consistency proof costs O(log n) ``get_node`` look-ups and
O(log n) hash operations, and never rehashes leaves.

Incremental tree
----------------
:class:`TreeStore` keeps every perfect node, level by level: level 0 holds the leaf hashes,
level ``L`` holds the ``size >> L`` perfect subtree roots of width ``2**L``; in all about ``2n``
hashes, each level one contiguous ``bytearray`` of 32-byte records. Appending a leaf adds it to
level 0 and then, while the new node completes a pair, hashes the pair into the level above:
amortised one hash, worst case ``log2(n)`` hashes. Because perfect nodes never change, the store
answers for every *past* size too: ``root(size)``, ``inclusion_proof(index, size)`` and
``consistency_proof(size1, size2)`` for any ``size <= store.size``. At 10**6 leaves an inclusion
proof is about 20 slices of a ``bytearray`` and at most ~20 SHA-256 calls: tens of microseconds.

Persistence (:meth:`TreeStore.to_bytes` / :meth:`TreeStore.from_bytes`) is an append-only
format: the 8-byte magic :data:`FILE_MAGIC` (``b"NCMTREE1"``) followed by the 32-byte leaf hashes
in index order, nothing else. A writer appends exactly 32 bytes per leaf; there is no header
field to rewrite. Interior nodes are not stored: they are recomputed on load (one hash per
interior node, about one second per million leaves). A length that is not ``8 + 32k`` (a torn
tail after a crash) is refused with ``TREE_STORE_CORRUPT``; recovering (truncating to a whole
record) is the caller's decision. The file says nothing about authenticity: a loaded tree is
trusted only once its root matches a signed checkpoint.

Verification follows RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency) step by
step, preceded by strict checks: sizes are integers in ``[0, 2**64 - 1]``, ``index < size``,
``size1 <= size2``, every hash (leaf, roots, proof nodes) is exactly 32 bytes, and the proof has
exactly the length the sizes imply. For consistency, ``size1 == size2`` needs an empty proof and
equal roots, and ``size1 == 0`` needs an empty proof and ``root1 == SHA-256("")`` (the empty
tree is a prefix of every tree; RFC 9162 defines the proof algorithm only for ``0 < size1``).

Codes: ``PROOF_SIZE_INVALID``, ``PROOF_INDEX_OUT_OF_RANGE``, ``PROOF_LENGTH_INVALID``,
``PROOF_HASH_INVALID``, ``PROOF_ROOT_MISMATCH`` (verification and proof generation);
``TREE_HASH_INVALID``, ``TREE_SIZE_OUT_OF_RANGE``, ``TREE_STORE_CORRUPT`` (the tree store).

Note on what a proof binds: RFC 9162 verification binds the leaf, the index and the root, and
the size only through the *shape* of the hash chain. Two sizes with the same shape for an index
(e.g. index 0 in sizes 3 and 4) accept the same proof against the same root; the size is bound
to the root by the signed checkpoint, not by the proof.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from nightcore.errors import AuditError

__all__ = [
    "EMPTY_ROOT",
    "FILE_MAGIC",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "GetNode",
    "TreeStore",
    "compact_extend",
    "compact_push",
    "compact_root",
    "consistency_proof",
    "consistency_proof_length",
    "inclusion_proof",
    "inclusion_proof_length",
    "leaf_hash",
    "node_hash",
    "pair_hashes",
    "root",
    "run_levels",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
MAX_TREE_SIZE: Final = (1 << 64) - 1
FILE_MAGIC: Final = b"NCMTREE1"

GetNode = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``."""

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"


# --------------------------------------------------------------------------------------------
# Hashing


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes (each 32 bytes); ``SHA-256("")`` for no leaves. O(n)."""
    stack: list[bytes] = []
    for i, h in enumerate(leaf_hashes):
        _tree_hash(h)
        compact_push(stack, h, i)
    return compact_root(stack)


# --------------------------------------------------------------------------------------------
# Streaming and batch building (the audit scanners and the tree store use these, and only these)


def compact_push(stack: list[bytes], leaf: bytes, index: int) -> None:
    """Add leaf hash number ``index`` to ``stack``, the compact range of leaves ``[0, index)``
    (the roots of its maximal perfect subtrees, widest first): O(log n) memory for a stream.

    Each new node that completes a pair is merged with its left neighbour (a binary counter's
    carry). ``leaf`` is not checked (hot path): callers pass :func:`leaf_hash` output.
    """
    sha = hashlib.sha256
    h = leaf
    done = index + 1
    while not done & 1:
        h = sha(_NODE_PREFIX + stack.pop() + h).digest()
        done >>= 1
    stack.append(h)


def compact_extend(stack: list[bytes], data: Iterable[bytes], first: int) -> None:
    """:func:`compact_push` the :func:`leaf_hash` of each entry of ``data`` (leaves ``first``,
    ``first + 1``, ...): the streaming scanners' batch, one loop with no call per leaf."""
    sha = hashlib.sha256
    index = first
    for d in data:
        h = sha(_LEAF_PREFIX + d).digest()
        index += 1
        done = index
        while not done & 1:
            h = sha(_NODE_PREFIX + stack.pop() + h).digest()
            done >>= 1
        stack.append(h)


def compact_root(stack: Sequence[bytes]) -> bytes:
    """The root of a compact range (:func:`compact_push`); ``SHA-256("")`` when empty."""
    return _fold(stack) if stack else EMPTY_ROOT


def pair_hashes(below: bytes | bytearray, lo: int, hi: int, base: int = 0) -> bytes:
    """Nodes ``lo .. hi-1`` of one level, concatenated, each the :func:`node_hash` of a pair of
    the level below; ``below`` holds that level's nodes from index ``base`` on (contiguous
    32-byte records, each pair ``left || right`` already adjacent: one SHA-256 per node)."""
    sha = hashlib.sha256
    step = 2 * HASH_SIZE
    start = (2 * lo - base) * HASH_SIZE
    return b"".join(
        sha(_NODE_PREFIX + below[i : i + step]).digest()
        for i in range(start, start + (hi - lo) * step, step)
    )


def run_levels(leaves: bytes | bytearray, first: int) -> list[bytes]:
    """Interior levels 1.. of the perfect nodes lying wholly inside leaves
    ``[first, first + len(leaves) // 32)`` (one run of a log scanned in parts): level ``L``
    holds the nodes ``k`` with ``ceil(first / 2^L) <= k < floor(end / 2^L)``, in order."""
    end = first + len(leaves) // HASH_SIZE
    levels: list[bytes] = []
    prev: bytes | bytearray = leaves
    prev_lo, level = first, 1
    while True:
        lo, hi = (first + (1 << level) - 1) >> level, end >> level
        if hi <= lo:
            return levels
        cur = pair_hashes(prev, lo, hi, prev_lo)
        levels.append(cur)
        prev, prev_lo, level = cur, lo, level + 1


# --------------------------------------------------------------------------------------------
# Shared helpers


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Root of a run of perfect subtrees of strictly decreasing width, left to right."""
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def _pieces(start: int, count: int) -> list[tuple[int, int]]:
    """Perfect nodes (level, index) covering ``[start, start + count)``, widest first.

    ``start`` must be a multiple of the widest piece (true for a prefix ``[0, n)`` and for a
    right-border sibling, whose start is aligned to a width larger than ``count``).
    """
    out: list[tuple[int, int]] = []
    pos = start
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def _tree_hash(h: bytes) -> None:
    if not isinstance(h, bytes) or len(h) != HASH_SIZE:
        raise AuditError("a tree hash must be exactly 32 bytes", code="TREE_HASH_INVALID")


def _proof_hash(h: object, what: str) -> bytes:
    if not isinstance(h, bytes) or len(h) != HASH_SIZE:
        raise AuditError(f"{what} is not a 32-byte hash", code="PROOF_HASH_INVALID")
    return h


def _check_size(size: object, what: str = "tree size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
        raise AuditError(f"{what} must be an integer in [0, 2^64-1]", code="PROOF_SIZE_INVALID")
    return size


def _check_index(index: object, size: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise AuditError(
            f"leaf index {index!r} is not below tree size {size}", code="PROOF_INDEX_OUT_OF_RANGE"
        )
    return index


def _path(level: int, index: int, size: int, get_node: GetNode) -> list[bytes]:
    """Sibling hashes of node (level, index) from ``level`` up to the root of tree ``size``."""
    proof: list[bytes] = []
    while (1 << level) < size:  # until the node covers [0, size)
        sibling = index ^ 1
        first = sibling << level
        if first < size:  # otherwise there is no sibling at this level (the node is promoted)
            if (sibling + 1) << level <= size:
                proof.append(get_node(level, sibling))
            else:  # the single ephemeral right-border node: fold its perfect pieces
                proof.append(_fold([get_node(lv, i) for lv, i in _pieces(first, size - first)]))
        index >>= 1
        level += 1
    return proof


# --------------------------------------------------------------------------------------------
# Proof generation


def inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of ``index`` in a tree of ``size`` leaves."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_length(size1: int, size2: int) -> int:
    """Number of hashes in the consistency proof from ``size1`` to ``size2``."""
    if size1 in (0, size2):
        return 0
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    inner = ((size1 - 1) ^ (size2 - 1)).bit_length()
    border = ((size1 - 1) >> inner).bit_count()
    seed = 0 if size1 == 1 << shift else 1
    return seed + inner - shift + border


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 ``PATH(index, D[size])``, leaf to root, from perfect-node look-ups only."""
    _check_size(size)
    _check_index(index, size)
    return _path(0, index, size, get_node)


def consistency_proof(size1: int, size2: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 ``PROOF(size1, D[size2])`` from perfect-node look-ups only.

    Empty for ``size1 == 0`` and ``size1 == size2``. The proof is the last perfect subtree of the
    old tree (omitted when the old tree is itself perfect: the verifier has its root) followed by
    that subtree's sibling path in the new tree.
    """
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    if size1 > size2:
        raise AuditError(f"size1 {size1} exceeds size2 {size2}", code="PROOF_SIZE_INVALID")
    if size1 in (0, size2):
        return []
    level = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> level
    head = [get_node(level, index)] if index else []
    return head + _path(level, index, size2, get_node)


# --------------------------------------------------------------------------------------------
# Verification (RFC 9162 2.1.3.2 and 2.1.4.2)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    _check_size(size)
    _check_index(index, size)
    if len(proof) != inclusion_proof_length(index, size):
        raise AuditError(
            f"inclusion proof has {len(proof)} hashes, expected "
            f"{inclusion_proof_length(index, size)}",
            code="PROOF_LENGTH_INVALID",
        )
    r = _proof_hash(leaf_hash, "leaf hash")
    _proof_hash(root, "root hash")
    path = [_proof_hash(p, "proof node") for p in proof]

    fn, sn = index, size - 1
    for p in path:
        if sn == 0:
            raise AuditError("inclusion proof is too long", code="PROOF_LENGTH_INVALID")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("inclusion proof is too short", code="PROOF_LENGTH_INVALID")
    if not hmac.compare_digest(r, root):
        raise AuditError("inclusion proof does not lead to the root", code="PROOF_ROOT_MISMATCH")


def _consistency_inputs(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> list[bytes]:
    """:func:`verify_consistency`'s arguments checked (sizes, proof length, hash shapes);
    returns the proof's hashes as a new list (the algorithm may prepend ``root1``)."""
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    if size1 > size2:
        raise AuditError(f"size1 {size1} exceeds size2 {size2}", code="PROOF_SIZE_INVALID")
    expected = consistency_proof_length(size1, size2)
    if len(proof) != expected:
        raise AuditError(
            f"consistency proof has {len(proof)} hashes, expected {expected}",
            code="PROOF_LENGTH_INVALID",
        )
    _proof_hash(root1, "root1")
    _proof_hash(root2, "root2")
    return [_proof_hash(p, "proof node") for p in proof]


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (``size1``, ``root1``) is a prefix of the tree (``size2``, ``root2``)."""
    path = _consistency_inputs(size1, size2, proof, root1, root2)

    if size1 == size2:
        if not hmac.compare_digest(root1, root2):
            raise AuditError("equal sizes but different roots", code="PROOF_ROOT_MISMATCH")
        return
    if size1 == 0:
        if not hmac.compare_digest(root1, EMPTY_ROOT):
            raise AuditError("root of the empty tree is wrong", code="PROOF_ROOT_MISMATCH")
        return

    if size1 & (size1 - 1) == 0:  # step 2: size1 is an exact power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditError("consistency proof is too long", code="PROOF_LENGTH_INVALID")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("consistency proof is too short", code="PROOF_LENGTH_INVALID")
    if not (hmac.compare_digest(fr, root1) and hmac.compare_digest(sr, root2)):
        raise AuditError("consistency proof does not match the roots", code="PROOF_ROOT_MISMATCH")


# --------------------------------------------------------------------------------------------
# Incremental tree


class TreeStore:
    """Append-only Merkle tree keeping every perfect subtree hash (see the module docstring)."""

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    # construction ---------------------------------------------------------------------------

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> TreeStore:
        """Build from leaf hashes in index order (bulk: one hash per interior node)."""
        hashes = list(leaf_hashes)
        for h in hashes:
            _tree_hash(h)
        return cls._from_level0(b"".join(hashes))

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeStore:
        """Load the :meth:`to_bytes` format: ``FILE_MAGIC`` then 32-byte leaf hashes."""
        if not data.startswith(FILE_MAGIC):
            raise AuditError("not a Merkle tree store (bad magic)", code="TREE_STORE_CORRUPT")
        body = bytes(data[len(FILE_MAGIC) :])
        if len(body) % HASH_SIZE:
            raise AuditError(
                "Merkle tree store ends in a partial record", code="TREE_STORE_CORRUPT"
            )
        return cls._from_level0(body)

    @classmethod
    def _from_level0(cls, level0: bytes) -> TreeStore:
        tree = cls()
        size = len(level0) // HASH_SIZE
        if size > MAX_TREE_SIZE:  # pragma: no cover - not reachable in memory
            raise AuditError("tree too large", code="TREE_SIZE_OUT_OF_RANGE")
        tree._size = size
        tree._levels = [bytearray(level0)]
        prev = level0
        count = size
        while count >= 2:
            nxt = pair_hashes(prev, 0, count // 2)
            tree._levels.append(bytearray(nxt))
            prev = nxt
            count //= 2
        return tree

    @classmethod
    def from_runs(
        cls, leaves: bytes | bytearray, runs: Sequence[tuple[int, int, Sequence[bytes]]]
    ) -> TreeStore:
        """Build from leaf hashes whose consecutive runs ``(first, count, run_levels(...))``
        already carry their interior nodes (a log scanned in parts): only the nodes straddling
        two runs are hashed here. The runs must be in order and cover the leaves."""
        if len(leaves) % HASH_SIZE:
            raise AuditError("leaf hashes end in a partial record", code="TREE_HASH_INVALID")
        n = len(leaves) // HASH_SIZE
        levels = [bytearray(leaves)]
        level = 1
        while n >> level:
            below, out, expected = levels[-1], bytearray(), 0
            for first, count, inner in runs:
                lo, hi = (first + (1 << level) - 1) >> level, (first + count) >> level
                if hi <= lo:
                    continue
                if lo > expected:  # the node straddling the runs' boundary
                    out += pair_hashes(below, expected, lo)
                out += inner[level - 1]
                expected = hi
            out += pair_hashes(below, expected, n >> level)
            levels.append(out)
            level += 1
        tree = cls()
        tree._levels = levels
        tree._size = n
        return tree

    def to_bytes(self) -> bytes:
        """``FILE_MAGIC || leaf_hash[0] || leaf_hash[1] || ...`` (append-only)."""
        return FILE_MAGIC + bytes(self._levels[0])

    # growth -----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash; returns its index. O(1) amortised, O(log n) worst case."""
        _tree_hash(leaf_hash)
        index = self._size
        levels = self._levels
        levels[0] += leaf_hash
        self._size += 1
        count, level, h = self._size, 0, leaf_hash
        while count & 1 == 0:  # the node just added at `level` completes a pair
            row = levels[level]
            h = node_hash(bytes(row[-2 * HASH_SIZE : -HASH_SIZE]), h)
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += h
            count >>= 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes; all are checked first, so a bad one appends none."""
        hashes = list(leaf_hashes)
        for h in hashes:
            _tree_hash(h)
        for h in hashes:
            self.append(h)

    # reading ----------------------------------------------------------------------------------

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree (level, index); it must lie inside the current tree."""
        if level < 0 or level >= len(self._levels) or not 0 <= index < (self._size >> level):
            raise AuditError(
                f"no perfect node ({level}, {index}) in a tree of {self._size}",
                code="TREE_SIZE_OUT_OF_RANGE",
            )
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def leaf_hash(self, index: int) -> bytes:
        return self.node(0, index)

    def _size_arg(self, size: int | None) -> int:
        if size is None:
            return self._size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= self._size:
            raise AuditError(
                f"size {size!r} is outside the tree (size {self._size})",
                code="TREE_SIZE_OUT_OF_RANGE",
            )
        return size

    def compact_range(self, size: int | None = None) -> list[bytes]:
        """Roots of the maximal perfect subtrees covering ``[0, size)``, left to right."""
        n = self._size_arg(size)
        return [self.node(level, index) for level, index in _pieces(0, n)]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all). O(log n)."""
        pieces = self.compact_range(size)
        return _fold(pieces) if pieces else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        n = self._size_arg(size)
        _check_index(index, n)
        return _path(0, index, n, self.node)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        n2 = self._size_arg(size2)
        n1 = self._size_arg(size1)
        return consistency_proof(n1, n2, self.node)
