"""RFC 9162 §2.1 hashing, proofs and verification, against the RFC's definitions.

The reference below is the RFC's recursive definitions written out over
lists of leaf data, with nothing shared with ``pli.infrastructure.merkle``
but SHA-256; the module under test must agree with it for every tree size
and position up to a bound, and at the edges (m = n, m = 0, powers of two).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pytest

from pli.infrastructure.merkle import (
    EMPTY_ROOT,
    CompactRange,
    Node,
    TreeRangeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

SIZES = range(1, 40)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, recursively."""
    if not d:
        return sha(b"")
    if len(d) == 1:
        return sha(b"\x00" + d[0])
    k = largest_power_below(len(d))
    return sha(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH, recursively."""
    if len(d) == 1:
        return []
    k = largest_power_below(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF, recursively."""
    if m == len(d):
        return [] if whole else [mth(d)]
    k = largest_power_below(len(d))
    if m <= k:
        return subproof(m, d[:k], whole) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def data(n: int) -> list[bytes]:
    return [f"event {i}".encode() for i in range(n)]


class Store:
    """Complete subtrees as a store keeps them, counting what is read."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.nodes: dict[Node, bytes] = {}
        self.reads = 0
        self.calls = 0
        tree = CompactRange()
        for item in leaves:
            for level, index, value in tree.append(leaf_hash(item)):
                self.nodes[level, index] = value
        self.tree = tree

    def read(self, nodes: Sequence[Node]) -> Mapping[Node, bytes]:
        self.calls += 1
        self.reads += len(nodes)
        return {node: self.nodes[node] for node in nodes if node in self.nodes}


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"x") == sha(b"\x00x")
    assert node_hash(b"l" * 32, b"r" * 32) == sha(b"\x01" + b"l" * 32 + b"r" * 32)
    assert EMPTY_ROOT == sha(b"")


def test_roots_match_the_recursive_definition() -> None:
    assert root(0, Store([]).read) == mth([])
    for n in SIZES:
        store = Store(data(n))
        assert root(n, store.read) == mth(data(n))
        assert store.tree.root() == mth(data(n))
        for m in range(n + 1):
            assert root(m, store.read) == mth(data(m)), (m, n)


def test_inclusion_proofs_match_path_and_verify() -> None:
    for n in SIZES:
        d = data(n)
        store = Store(d)
        head = mth(d)
        for m in range(n):
            proof = inclusion_proof(m, n, store.read)
            assert proof == path(m, d), (m, n)
            assert verify_inclusion(leaf_hash(d[m]), m, n, proof, head)


def test_consistency_proofs_match_proof_and_verify() -> None:
    for n in SIZES:
        d = data(n)
        store = Store(d)
        for m in range(1, n):
            proof = consistency_proof(m, n, store.read)
            assert proof == subproof(m, d, True), (m, n)
            assert verify_consistency(m, n, mth(d[:m]), mth(d), proof), (m, n)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_consistency_edges_need_no_proof(n: int) -> None:
    d = data(n)
    store = Store(d)
    assert consistency_proof(n, n, store.read) == []
    assert consistency_proof(0, n, store.read) == []
    assert verify_consistency(n, n, mth(d), mth(d), [])
    assert verify_consistency(0, n, EMPTY_ROOT, mth(d), [])
    assert not verify_consistency(n, n, mth(d), mth(d[:-1]) if n > 1 else b"x", [])
    assert not verify_consistency(0, n, mth(d), mth(d), [])
    assert not verify_consistency(n, n, mth(d), mth(d), [mth(d)])


@pytest.mark.parametrize("m,n", [(1, 2), (2, 4), (4, 8), (8, 16), (4, 5), (3, 8)])
def test_powers_of_two_prepend_the_first_root(m: int, n: int) -> None:
    d = data(n)
    proof = consistency_proof(m, n, Store(d).read)
    assert proof == subproof(m, d, True)
    assert verify_consistency(m, n, mth(d[:m]), mth(d), proof)


def test_a_wrong_leaf_index_size_or_root_fails_inclusion() -> None:
    d = data(13)
    store = Store(d)
    head = mth(d)
    proof = inclusion_proof(5, 13, store.read)
    assert not verify_inclusion(leaf_hash(d[6]), 5, 13, proof, head)
    assert not verify_inclusion(leaf_hash(d[5]), 6, 13, proof, head)
    # A size of another shape fails; one of the same shape (13 and 14 here)
    # is bound to the root by the sealed checkpoint, not by the path.
    assert not verify_inclusion(leaf_hash(d[5]), 5, 8, proof, head)
    assert not verify_inclusion(leaf_hash(d[5]), 5, 13, proof, mth(d[:12]))
    assert not verify_inclusion(leaf_hash(d[5]), 5, 13, proof[:-1], head)
    assert not verify_inclusion(leaf_hash(d[5]), 5, 13, [*proof, head], head)
    assert not verify_inclusion(leaf_hash(d[5]), 13, 13, proof, head)


def test_a_tampered_proof_or_root_fails_consistency() -> None:
    d = data(21)
    store = Store(d)
    proof = consistency_proof(6, 21, store.read)
    assert verify_consistency(6, 21, mth(d[:6]), mth(d), proof)
    assert not verify_consistency(6, 21, mth(d[:7]), mth(d), proof)
    assert not verify_consistency(6, 21, mth(d[:6]), mth(d[:20]), proof)
    assert not verify_consistency(6, 16, mth(d[:6]), mth(d), proof)
    assert not verify_consistency(5, 21, mth(d[:6]), mth(d), proof)
    assert not verify_consistency(6, 21, mth(d[:6]), mth(d), proof[:-1])
    assert not verify_consistency(6, 21, mth(d[:6]), mth(d), [])
    assert not verify_consistency(21, 6, mth(d), mth(d[:6]), proof)
    changed = [proof[0], sha(b"other"), *proof[2:]]
    assert not verify_consistency(6, 21, mth(d[:6]), mth(d), changed)


def test_positions_outside_the_tree_are_refused() -> None:
    store = Store(data(4))
    with pytest.raises(TreeRangeError):
        inclusion_proof(4, 4, store.read)
    with pytest.raises(TreeRangeError):
        consistency_proof(5, 4, store.read)
    with pytest.raises(TreeRangeError):
        root(5, store.read)


def test_a_big_tree_costs_logarithmic_reads() -> None:
    """A million-leaf tree: one read call of O(log n) subtrees per answer."""
    size = 1_000_003

    def read(wanted: Sequence[Node]) -> Mapping[Node, bytes]:
        reads.append(len(wanted))
        # Any hash will do: only the number of subtrees read matters here.
        return {node: sha(repr(node).encode()) for node in wanted}

    for answer in (
        lambda: root(size, read),
        lambda: inclusion_proof(123_456, size, read),
        lambda: consistency_proof(654_321, size, read),
        lambda: CompactRange.load(size, read),
    ):
        reads: list[int] = []
        answer()
        assert len(reads) == 1
        assert reads[0] <= 2 * size.bit_length()


def test_compact_range_resumes_from_its_stored_edge() -> None:
    d = data(27)
    store = Store(d[:19])
    resumed = CompactRange.load(19, store.read)
    for item in d[19:]:
        resumed.append(leaf_hash(item))
    assert resumed.root() == mth(d)
