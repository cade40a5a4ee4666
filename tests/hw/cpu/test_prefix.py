"""The prefix index (a path-compressed radix trie of token lists), checked case by case and
against a brute-force longest-common-prefix search."""

from __future__ import annotations

import random
from collections.abc import Hashable

from llmos.hw.cpu.prefix import PrefixIndex


def edge_labels(index: PrefixIndex) -> list[list[int]]:
    """Every edge label in the trie, depth first, children in key order (for shape checks)."""
    out: list[list[int]] = []

    def walk(node: object) -> None:
        for first in sorted(node.edges):  # type: ignore[attr-defined]
            edge = node.edges[first]  # type: ignore[attr-defined]
            out.append(list(edge.label))
            walk(edge.child)

    walk(index._root)
    return out


def test_empty_index_matches_nothing() -> None:
    index = PrefixIndex()
    assert len(index) == 0
    assert index.longest([1, 2, 3]) == (None, 0)
    assert index.longest([]) == (None, 0)


def test_exact_and_partial_matches_of_one_key() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3, 4])
    assert "a" in index and len(index) == 1
    assert index.longest([1, 2, 3, 4]) == ("a", 4)
    assert index.longest([1, 2, 3, 4, 5, 6]) == ("a", 4)
    assert index.longest([9, 1, 2]) == (None, 0)


def test_match_ending_inside_an_edge() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3, 4, 5])
    assert edge_labels(index) == [[1, 2, 3, 4, 5]]  # one compressed edge
    assert index.longest([1, 2, 3, 9]) == ("a", 3)
    assert index.longest([1, 2]) == ("a", 2)
    assert index.longest([1]) == ("a", 1)


def test_insert_splits_an_edge_where_keys_diverge() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3, 4])
    index.insert("b", [1, 2, 7, 8])
    assert edge_labels(index) == [[1, 2], [3, 4], [7, 8]]
    assert index.longest([1, 2, 3, 4]) == ("a", 4)
    assert index.longest([1, 2, 7]) == ("b", 3)
    key, n = index.longest([1, 2, 5])
    assert n == 2 and key in ("a", "b")


def test_a_key_that_is_a_prefix_of_another() -> None:
    index = PrefixIndex()
    index.insert("long", [1, 2, 3, 4, 5])
    index.insert("short", [1, 2, 3])
    assert edge_labels(index) == [[1, 2, 3], [4, 5]]
    assert index.longest([1, 2, 3, 4, 5, 6]) == ("long", 5)
    key, n = index.longest([1, 2, 3, 9])
    assert n == 3 and key in ("long", "short")
    index.remove("long")
    assert index.longest([1, 2, 3, 4, 5]) == ("short", 3)
    assert edge_labels(index) == [[1, 2, 3]]


def test_a_key_that_extends_another() -> None:
    index = PrefixIndex()
    index.insert("short", [1, 2])
    index.insert("long", [1, 2, 3, 4])
    assert edge_labels(index) == [[1, 2], [3, 4]]
    assert index.longest([1, 2, 3]) == ("long", 3)
    index.remove("short")
    assert index.longest([1, 2, 3, 4]) == ("long", 4)
    assert index.longest([1, 2]) == ("long", 2)


def test_removal_prunes_branches_nobody_uses() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3, 4])
    index.insert("b", [1, 2, 7, 8])
    index.insert("c", [5, 6])
    index.remove("b")
    assert "b" not in index and len(index) == 2
    assert index.longest([1, 2, 7, 8]) == ("a", 2)
    assert [7, 8] not in edge_labels(index)
    index.remove("a")
    index.remove("c")
    assert len(index) == 0
    assert edge_labels(index) == []
    assert index._root.keys == set()
    assert index.longest([1, 2, 3, 4]) == (None, 0)


def test_removing_a_missing_key_is_a_no_op() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2])
    index.remove("zzz")
    index.remove("zzz")
    assert index.longest([1, 2]) == ("a", 2)
    assert len(index) == 1


def test_reinsert_replaces_the_tokens_of_a_key() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3])
    index.insert("a", [4, 5, 6])
    assert len(index) == 1
    assert index.longest([1, 2, 3]) == (None, 0)
    assert index.longest([4, 5, 6]) == ("a", 3)
    assert edge_labels(index) == [[4, 5, 6]]


def test_identical_token_lists_under_two_keys() -> None:
    index = PrefixIndex()
    index.insert("a", [1, 2, 3])
    index.insert("b", [1, 2, 3])
    key, n = index.longest([1, 2, 3, 4])
    assert n == 3 and key in ("a", "b")
    index.remove(key)
    other = "b" if key == "a" else "a"
    assert index.longest([1, 2, 3, 4]) == (other, 3)


def test_keys_may_be_any_hashable() -> None:
    index = PrefixIndex()
    k1, k2 = object(), (1, "x")
    index.insert(k1, [3, 3, 3])
    index.insert(k2, [3, 3, 4])
    assert index.longest([3, 3, 3]) == (k1, 3)
    assert index.longest([3, 3, 4, 4]) == (k2, 3)


def test_common() -> None:
    assert PrefixIndex.common([1, 2, 3], [1, 2, 4]) == 2
    assert PrefixIndex.common([], [1]) == 0
    assert PrefixIndex.common([1, 2], [1, 2, 3]) == 2


def _brute_longest(paths: dict[Hashable, list[int]], query: list[int]) -> int:
    return max((PrefixIndex.common(p, query) for p in paths.values()), default=0)


def test_random_against_brute_force() -> None:
    rng = random.Random(1234)
    index = PrefixIndex()
    paths: dict[Hashable, list[int]] = {}
    # a small alphabet and shared stems make deep shared prefixes and many splits
    stems = [[rng.randrange(4) for _ in range(rng.randrange(0, 12))] for _ in range(8)]

    def make() -> list[int]:
        return rng.choice(stems) + [rng.randrange(4) for _ in range(rng.randrange(0, 10))]

    for i in range(200):
        key = f"k{rng.randrange(150)}"  # collisions exercise re-insert
        tokens = make()
        index.insert(key, tokens)
        paths[key] = tokens
        if rng.random() < 0.25:
            gone = rng.choice(sorted(paths))
            index.remove(gone)
            del paths[gone]
        assert len(index) == len(paths)
        for _ in range(5):
            query = make() if rng.random() < 0.8 else [rng.randrange(4)]
            key_found, n = index.longest(query)
            expected = _brute_longest(paths, query)
            assert n == expected, (i, query)
            if n == 0:
                assert key_found is None
            else:
                assert key_found in paths
                assert PrefixIndex.common(paths[key_found], query) == n
    for key in list(paths):
        index.remove(key)
    assert len(index) == 0 and edge_labels(index) == []
