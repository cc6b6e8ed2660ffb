"""Merkle tree hashing of RFC 9162 (Certificate Transparency 2.0), section 2.1.

The transparency log is a Merkle tree over every sealed event, hashed as
RFC 9162 §2.1.1 defines: a leaf is ``SHA-256(0x00 || data)``, an interior
node ``SHA-256(0x01 || left || right)``, and the tree of ``n`` leaves splits
at the largest power of two smaller than ``n``. Inclusion proofs (§2.1.3)
and consistency proofs (§2.1.4) are produced and verified by the RFC's
algorithms.

Proofs and roots are computed from stored *complete subtrees*: the node
``(level, index)`` is the root of the perfect subtree over the leaves
``index * 2**level`` to ``(index + 1) * 2**level - 1``. Every range the RFC's
recursion asks for decomposes into O(log n) such nodes, so a root or a proof
of a log of millions of leaves reads O(log n) stored hashes through a
:data:`NodeReader`, never the leaves. :class:`CompactRange` appends leaves
and names the complete subtrees each append finishes, which is what a store
keeps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "Node",
    "NodeReader",
    "TreeRangeError",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

Node = tuple[int, int]
"""A complete subtree, as (level, index): ``2**level`` leaves from
``index * 2**level``."""

NodeReader = Callable[[Sequence[Node]], Mapping[Node, bytes]]
"""Reads the hashes of the named complete subtrees, all at once."""

# RFC 9162 §2.1.1: MTH({}) = HASH(), the hash of an empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


class TreeRangeError(ValueError):
    """A proof was asked for positions or sizes the tree does not have."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of a leaf, ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: an interior node, ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n`` > 1): the RFC's k."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[Node]:
    """The complete subtrees whose hashes make up MTH(D[start:end]), left first.

    ``start`` must be a multiple of a power of two at least ``end - start``,
    as every range of the RFC's recursion from ``D[0:n]`` is.
    """
    nodes: list[Node] = []
    while end - start > 0:
        length = end - start
        part = length if length & (length - 1) == 0 else _split(length)
        level = part.bit_length() - 1
        if start % part:
            raise TreeRangeError(f"range [{start}, {end}) is not aligned")
        nodes.append((level, start >> level))
        start += part
    return nodes


def _range_hash(nodes: Sequence[Node], hashes: Mapping[Node, bytes]) -> bytes:
    """Fold the subtrees of one range from the right, as the recursion does."""
    result = hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        result = node_hash(hashes[node], result)
    return result


def _hash_ranges(ranges: Sequence[tuple[int, int]], read: NodeReader) -> list[bytes]:
    """The Merkle hash of each range, from one read of all their subtrees."""
    per_range = [range_nodes(start, end) for start, end in ranges]
    wanted = sorted({node for nodes in per_range for node in nodes})
    hashes = read(wanted) if wanted else {}
    missing = [node for node in wanted if node not in hashes]
    if missing:
        raise TreeRangeError(f"the store lacks complete subtrees {missing[:4]}")
    return [_range_hash(nodes, hashes) for nodes in per_range]


def root(size: int, read: NodeReader) -> bytes:
    """MTH(D[0:size]), the tree head of the first ``size`` leaves."""
    if size < 0:
        raise TreeRangeError("a tree size cannot be negative")
    if size == 0:
        return EMPTY_ROOT
    return _hash_ranges([(0, size)], read)[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.3.1 PATH(index, D[0:size]) as ranges, leaf end first."""
    if not 0 <= index < size:
        raise TreeRangeError(f"leaf {index} is not in a tree of {size}")
    ranges: list[tuple[int, int]] = []
    low, high = 0, size
    while high - low > 1:
        k = _split(high - low)
        if index < low + k:
            ranges.append((low + k, high))
            high = low + k
        else:
            ranges.append((low, low + k))
            low += k
    return ranges[::-1]


def inclusion_proof(index: int, size: int, read: NodeReader) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
    return _hash_ranges(inclusion_ranges(index, size), read)


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.4.1 PROOF(first, D[0:second]) as ranges, deepest first.

    Empty when ``first`` is 0 or equals ``second``: the empty tree and a
    tree itself need nothing to show that a tree extends them.
    """
    if not 0 <= first <= second:
        raise TreeRangeError(f"a tree of {first} cannot precede one of {second}")
    if first in (0, second):
        return []
    ranges: list[tuple[int, int]] = []
    low, high, whole = 0, second, True
    while first != high:
        k = _split(high - low)
        if first - low <= k:
            ranges.append((low + k, high))
            high = low + k
        else:
            ranges.append((low, low + k))
            low += k
            whole = False
    if not whole:
        ranges.append((low, high))
    return ranges[::-1]


def consistency_proof(first: int, second: int, read: NodeReader) -> list[bytes]:
    """The proof that the tree of ``second`` leaves extends that of ``first``."""
    return _hash_ranges(consistency_ranges(first, second), read)


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root_hash: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: whether ``path`` proves ``leaf`` at ``index``."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    result = leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == root_hash


def verify_consistency(
    first: int,
    second: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """RFC 9162 §2.1.4.2: whether ``proof`` shows tree ``second`` extends ``first``.

    The RFC covers 0 < first < second; at the edges the proof must be empty:
    a tree extends itself (equal roots) and every tree extends the empty one.
    """
    if not 0 <= first <= second:
        return False
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for value in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(value, fr)
            sr = node_hash(value, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, value)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


class CompactRange:
    """The right edge of a growing tree: one complete subtree per bit of its size.

    Appending a leaf merges equal-sized subtrees as a binary counter carries,
    and reports each complete subtree it finishes, so a store can keep every
    complete subtree while holding only O(log n) hashes in memory.
    """

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        levels = [bit for bit in range(size.bit_length()) if size >> bit & 1][::-1]
        held = list(hashes)
        if len(held) != len(levels):
            raise TreeRangeError(f"a tree of {size} has {len(levels)} edge subtrees")
        self.size = size
        self._edge: list[tuple[int, bytes]] = list(zip(levels, held, strict=True))

    @staticmethod
    def edge_nodes(size: int) -> list[Node]:
        """The complete subtrees on the right edge of a tree of ``size`` leaves."""
        return range_nodes(0, size)

    @classmethod
    def load(cls, size: int, read: NodeReader) -> CompactRange:
        """The right edge of a stored tree of ``size`` leaves."""
        nodes = cls.edge_nodes(size)
        hashes = read(nodes) if nodes else {}
        missing = [node for node in nodes if node not in hashes]
        if missing:
            raise TreeRangeError(f"the store lacks complete subtrees {missing[:4]}")
        return cls(size, [hashes[node] for node in nodes])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the (level, index, hash) of subtrees it completes.

        The leaf itself is reported as level 0.
        """
        position = self.size
        completed = [(0, position, leaf)]
        level, carry = 0, leaf
        while self._edge and self._edge[-1][0] == level:
            _, left = self._edge.pop()
            carry = node_hash(left, carry)
            level += 1
            completed.append((level, position >> level, carry))
        self._edge.append((level, carry))
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self._edge:
            return EMPTY_ROOT
        result = self._edge[-1][1]
        for _, left in reversed(self._edge[:-1]):
            result = node_hash(left, result)
        return result
