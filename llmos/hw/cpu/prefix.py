"""The prefix index: a radix trie of token prefixes, mapping each to the sequences holding it.

Processes whose prompts start with the same tokens (one program's system prompt, one shared
document) should compute that prefix's KV once. The CPU inserts each resident sequence's
prompt tokens here; a new sequence asks `longest(tokens)` for the sequence sharing the longest
prefix with its prompt, and copies that many positions of KV instead of computing them.

The trie is path-compressed: each edge carries a run of tokens, so memory is proportional to
the number of distinct prompts, not their length times their count. Every node records which
keys pass through it, so a lookup ends at the deepest node its tokens reach and returns one of
that node's keys, with the exact matched length (which may end inside an edge).

Invariants: a key is in the trie at most once; `remove` of a key that is not there is a no-op.

What this module does not do: copy KV (the engine does) or decide when to share.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


@dataclass
class _Node:
    edges: dict[int, _Edge] = field(default_factory=dict)
    keys: set[Hashable] = field(default_factory=set)


@dataclass
class _Edge:
    label: list[int]
    child: _Node


class PrefixIndex:
    def __init__(self) -> None:
        self._root = _Node()
        self._paths: dict[Hashable, list[int]] = {}

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._paths

    def insert(self, key: Hashable, tokens: Sequence[int]) -> None:
        """Index `tokens` under `key` (replacing what `key` had)."""
        self.remove(key)
        tokens = list(tokens)
        self._paths[key] = tokens
        node = self._root
        node.keys.add(key)
        i = 0
        while i < len(tokens):
            edge = node.edges.get(tokens[i])
            if edge is None:
                leaf = _Node(keys={key})
                node.edges[tokens[i]] = _Edge(tokens[i:], leaf)
                return
            n = _common(edge.label, tokens, i)
            if n < len(edge.label):  # split the edge at n
                mid = _Node(keys=set(edge.child.keys))
                mid.edges[edge.label[n]] = _Edge(edge.label[n:], edge.child)
                edge.label = edge.label[:n]
                edge.child = mid
            node = edge.child
            node.keys.add(key)
            i += n

    def remove(self, key: Hashable) -> None:
        tokens = self._paths.pop(key, None)
        if tokens is None:
            return
        node = self._root
        node.keys.discard(key)
        i = 0
        while i < len(tokens):
            edge = node.edges.get(tokens[i])
            if edge is None:
                return
            edge.child.keys.discard(key)
            if not edge.child.keys:
                del node.edges[tokens[i]]  # nothing else passes here: prune the branch
                return
            node = edge.child
            i += len(edge.label)

    def longest(self, tokens: Sequence[int]) -> tuple[Hashable | None, int]:
        """(a key whose tokens share the longest prefix with `tokens`, that length)."""
        node = self._root
        best: Hashable | None = None
        i = 0
        while i < len(tokens):
            edge = node.edges.get(tokens[i])
            if edge is None:
                break
            n = _common(edge.label, tokens, i)
            best = next(iter(edge.child.keys))
            i += n
            if n < len(edge.label):
                break
            node = edge.child
        return best, i

    @staticmethod
    def common(a: Sequence[int], b: Sequence[int]) -> int:
        """Length of the common prefix of two token lists."""
        return _common(a, b, 0)


def _common(label: Sequence[int], tokens: Sequence[int], start: int) -> int:
    n = 0
    limit = min(len(label), len(tokens) - start)
    while n < limit and label[n] == tokens[start + n]:
        n += 1
    return n
