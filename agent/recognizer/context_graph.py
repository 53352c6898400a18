"""A token-level Aho-Corasick graph of hotword phrases: the bonus a search adds as a hypothesis grows.

The design sherpa-onnx and icefall use for transducers (Aho-Corasick's automaton, 1975), in the model's
token ids: every token of a phrase earns `score x weight`; a phrase completed keeps what it earned; a
match that breaks off (a fail link back to a shorter suffix, or the utterance's end) gives its unfinished
part back. So a hypothesis's bonus is always: the full bonus of every phrase occurrence completed in it,
plus what the match in progress has earned so far. Phrases that share a prefix share its nodes; a shared
token earns the highest of their weights.
"""

from __future__ import annotations

from collections import deque
from typing import Dict, List, Sequence, Tuple

ROOT = 0


class ContextGraph:
    """`step(state, token)` -> (next state, bonus change, phrases completed); `finish(state)` -> bonus change.

    States are ints (node ids; 0 is the root: no match in progress). Transitions are computed once and
    memoised, so a search pays a dict lookup per hypothesis and token.
    """

    def __init__(self, phrases: Sequence[Tuple[Sequence[int], float, str]], score: float):
        """phrases: (token ids, weight, name); a name may come with several spellings."""
        self.phrases = tuple(dict.fromkeys(name for _, _, name in phrases))
        children: List[Dict[int, int]] = [{}]
        boost: List[float] = [0.0]  # what the token into this node earns
        name_of: List[str] = [""]  # the phrase ending here ("" when none)
        for tokens, weight, name in phrases:
            node = ROOT
            for token in tokens:
                nxt = children[node].get(token)
                if nxt is None:
                    nxt = len(children)
                    children[node][token] = nxt
                    children.append({})
                    boost.append(0.0)
                    name_of.append("")
                boost[nxt] = max(boost[nxt], score * weight)
                node = nxt
            if node != ROOT and not name_of[node]:
                name_of[node] = name
        n = len(children)
        self._children = children
        self._fail = [ROOT] * n
        earned = [0.0] * n  # bonus along the path from the root
        credited = [0.0] * n  # of that, what completed phrases on the path already keep
        self._complete_bonus = [0.0] * n  # every phrase ending here or at a suffix: their full bonus
        self._complete_names: List[Tuple[str, ...]] = [()] * n
        queue = deque()
        for node in children[ROOT].values():
            queue.append(node)
        order = []
        while queue:  # breadth first: a node's fail target is shallower, so it is done before it
            node = queue.popleft()
            order.append(node)
            for token, child in children[node].items():
                fail = self._fail[node]
                while fail != ROOT and token not in children[fail]:
                    fail = self._fail[fail]
                target = children[fail].get(token, ROOT)
                self._fail[child] = target if target != child else ROOT
                queue.append(child)
        parent = [ROOT] * n
        for node in [ROOT] + order:
            for child in children[node].values():
                parent[child] = node
        for node in order:
            up = parent[node]
            earned[node] = earned[up] + boost[node]
            own = earned[node] if name_of[node] else 0.0
            credited[node] = earned[node] if name_of[node] else credited[up]
            fail = self._fail[node]
            self._complete_bonus[node] = own + self._complete_bonus[fail]
            self._complete_names[node] = ((name_of[node],) if name_of[node] else ()) + self._complete_names[fail]
        # What a match in progress holds and would give back if it broke off now.
        self._pending = [e - c for e, c in zip(earned, credited)]
        self.max_boost = max(boost)
        self._memo: Dict[Tuple[int, int], Tuple[int, float, Tuple[str, ...]]] = {}

    def __len__(self) -> int:
        return len(self._children)

    def step(self, state: int, token: int) -> Tuple[int, float, Tuple[str, ...]]:
        key = (state, token)
        found = self._memo.get(key)
        if found is not None:
            return found
        node = state
        while node != ROOT and token not in self._children[node]:
            node = self._fail[node]
        nxt = self._children[node].get(token, ROOT)
        delta = self._pending[nxt] - self._pending[state] + self._complete_bonus[nxt]
        found = self._memo[key] = (nxt, delta, self._complete_names[nxt])
        return found

    def finish(self, state: int) -> float:
        """At the end of the utterance a match in progress gives back what it earned."""
        return -self._pending[state]
