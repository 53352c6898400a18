"""Hotwords for one vocabulary: phrase lists compiled into context graphs (cached), and the biased text.

Each stream's DecodeOptions carry their own phrase list, so each utterance of a batch is searched with its
own graph; graphs are cached by (phrases, score), so a list that comes again (Home Assistant sends the same
names with every command) costs a dict lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import List, Optional, Tuple

import numpy as np

from agent.recognizer import beam_search
from agent.recognizer.context_graph import ContextGraph
from agent.recognizer.phrases import (MAX_PHRASES, MAX_TOKENS, HotwordError, Hotwords, PhraseSpeller,
                                      parse_phrases, read_phrase_file)
from agent.recognizer.result import Token

CACHED_GRAPHS = 32
MAX_GRAPH_PHRASES = 2 * MAX_PHRASES  # the config's list and a stream's


class HotwordSearch:
    def __init__(self, vocab, blank_id: int, special: np.ndarray):
        self.vocab = vocab
        self.blank_id = blank_id
        self.special = special
        self.speller = PhraseSpeller(vocab.pieces, special, blank_id, getattr(vocab, "encode", None))
        self._graphs: "OrderedDict[tuple, Optional[ContextGraph]]" = OrderedDict()
        self._lock = threading.Lock()

    def check(self, hotwords: Hotwords, where: str) -> None:
        """Every phrase spelled in this vocabulary within MAX_TOKENS, else HotwordError naming it."""
        for phrase, _ in hotwords:
            spellings = self.speller.spellings(phrase)
            if not spellings:
                raise HotwordError(f"{where}: hotword {phrase[:40]!r} has characters this model's vocabulary "
                                   f"({self.vocab.source}) cannot spell")
            if min(len(s) for s in spellings) > MAX_TOKENS:
                raise HotwordError(f"{where}: hotword {phrase[:40]!r} is {min(len(s) for s in spellings)} tokens "
                                   f"long; at most {MAX_TOKENS}")

    def graph(self, hotwords: Hotwords, score: float) -> Optional[ContextGraph]:
        """The graph of these phrases (None: none of them can be spelled); phrases that cannot be spelled or
        are too long are left out, since a stream's list is only a hint."""
        if len(hotwords) > MAX_GRAPH_PHRASES:
            raise HotwordError(f"{len(hotwords)} hotwords; at most {MAX_GRAPH_PHRASES}")
        key = (hotwords, score)
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
        entries = [(ids, weight, phrase) for phrase, weight in hotwords
                   for ids in self.speller.spellings(phrase) if len(ids) <= MAX_TOKENS]
        graph = ContextGraph(entries, score) if entries else None
        with self._lock:
            self._graphs[key] = graph
            while len(self._graphs) > CACHED_GRAPHS:
                self._graphs.popitem(last=False)
        return graph

    def text(self, logits: np.ndarray, options, offset: float,
             seconds_per_frame: float) -> Optional[Tuple[List[int], List[Token], float, List[str]]]:
        """(ids, tokens, confidence, phrases matched) of the biased search; None when no phrase applies."""
        if not options.hotwords or len(logits) == 0:
            return None
        graph = self.graph(options.hotwords, options.hotwords_score)
        if graph is None:
            return None
        kept, matched, silence = beam_search.best_path(logits, graph, options.hotwords_beam, self.blank_id,
                                                        self.special)
        spf = seconds_per_frame
        tokens = [Token(self.vocab.piece_text(t), t, offset + s * spf, offset + e * spf, p) for t, s, e, p in kept]
        ids = [t.id for t in tokens]
        confidence = float(np.mean([t.prob for t in tokens])) if tokens else silence
        return ids, tokens, confidence, matched



def configured(settings) -> List[Tuple[str, Hotwords]]:
    """The configured phrase lists, each with where it came from (recognizer.hotwords, the hotwords file)."""
    lists = [("recognizer.hotwords", parse_phrases(settings.hotwords, "recognizer.hotwords"))]
    if settings.hotwords_file:
        lists.append((f"recognizer.hotwords_file {settings.hotwords_file}", read_phrase_file(settings.hotwords_file)))
    return lists
